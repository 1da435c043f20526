//! The request model: what Envoy tells the authorizer, without Envoy's protobuf types.
//!
//! It mirrors `envoy.service.auth.v3.AttributeContext` field for field, so the server converts a
//! `CheckRequest` into it without loss and the engine builds OPA-Envoy's `input` document from
//! it in one place ([`crate::input`]). Embedders and tests construct it directly.

use serde_json::Value as Json;

/// `AttributeContext`: everything known about one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthzRequest {
    pub source: Option<Peer>,
    pub destination: Option<Peer>,
    /// `request.time`.
    pub time: Option<Timestamp>,
    /// `request.http`.
    pub http: Option<HttpRequest>,
    pub context_extensions: Vec<(String, String)>,
    pub metadata_context: Option<Metadata>,
    pub route_metadata_context: Option<Metadata>,
    pub tls_session: Option<TlsSession>,
}

/// A protobuf `Timestamp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: i32,
}

impl Timestamp {
    /// The time `ns` nanoseconds after the epoch.
    pub fn from_ns(ns: i64) -> Self {
        Timestamp {
            seconds: ns.div_euclid(1_000_000_000),
            nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
        }
    }
}

/// `AttributeContext.Peer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub address: Option<Address>,
    pub service: String,
    pub labels: Vec<(String, String)>,
    /// URI SAN, DNS SAN or subject of the peer certificate, as Envoy chose it.
    pub principal: String,
    /// URL-encoded PEM of the peer certificate (`include_peer_certificate: true`).
    pub certificate: String,
}

/// `envoy.config.core.v3.Address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Socket(SocketAddress),
    Pipe {
        path: String,
        mode: u32,
    },
    EnvoyInternal {
        server_listener_name: String,
        endpoint_id: String,
    },
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketAddress {
    /// `"UDP"` when not TCP (TCP is the protobuf default and is omitted, as in protojson).
    pub protocol: Option<String>,
    pub address: String,
    pub port_value: u32,
    pub named_port: String,
    pub resolver_name: String,
    pub ipv4_compat: bool,
}

/// `AttributeContext.HttpRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    pub id: String,
    pub method: String,
    /// `headers`: lower-case names, values comma-joined by Envoy. In arrival order.
    pub headers: Vec<(String, String)>,
    /// `header_map` (Envoy's `encode_raw_headers: true`): every header line on its own.
    pub header_map: Option<Vec<RawHeader>>,
    /// The request target as the client sent it, query included, not decoded.
    pub path: String,
    pub host: String,
    pub scheme: String,
    pub query: String,
    pub fragment: String,
    pub size: i64,
    pub protocol: String,
    pub body: String,
    pub raw_body: Vec<u8>,
}

/// A request's header lines, read once ([`HttpRequest::header_lines`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLines<'a> {
    /// Lower-case names, in arrival order (borrowed when Envoy sent them lower-case, as
    /// HTTP/2 requires).
    pub lines: Vec<(std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
    /// Each header line is on its own (Envoy's `header_map`). Otherwise the lines are Envoy's
    /// `headers` map, where repeated lines arrive joined with commas.
    pub separate: bool,
}

/// `name` in ASCII lower case, copied only when it is not already.
fn lower_case(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

impl HttpRequest {
    /// The header lines every language reads: Envoy's `headers` map, or, when Envoy sent only
    /// `header_map` (`encode_raw_headers: true`), each of its lines. The Rego `input`, the CEL
    /// bindings and the Istio matcher are projections of this one reading.
    pub fn header_lines(&self) -> HeaderLines<'_> {
        use std::borrow::Cow;
        if self.headers.is_empty()
            && let Some(map) = &self.header_map
        {
            return HeaderLines {
                lines: map
                    .iter()
                    .map(|h| (lower_case(&h.key), Cow::Owned(h.text())))
                    .collect(),
                separate: true,
            };
        }
        HeaderLines {
            lines: self
                .headers
                .iter()
                .map(|(k, v)| (lower_case(k), Cow::Borrowed(v.as_str())))
                .collect(),
            separate: false,
        }
    }

    /// The value of a header (names compared case-insensitively), from `headers`, or from
    /// `header_map` joined with commas when only that was sent.
    pub fn header(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            return Some(v.clone());
        }
        let values: Vec<String> = self
            .header_map
            .iter()
            .flatten()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(RawHeader::text)
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// `envoy.config.core.v3.HeaderValue` in a `header_map`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawHeader {
    pub key: String,
    pub value: String,
    pub raw_value: Vec<u8>,
}

impl RawHeader {
    /// The header's value as text: `raw_value` when Envoy sent it, else `value`.
    pub fn text(&self) -> String {
        if self.raw_value.is_empty() {
            self.value.clone()
        } else {
            String::from_utf8_lossy(&self.raw_value).into_owned()
        }
    }
}

/// `envoy.config.core.v3.Metadata`: `filter_metadata` as JSON objects, per namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub filter_metadata: Vec<(String, Json)>,
    /// `typed_filter_metadata`: namespace → `@type` URL (the packed bytes are not decoded).
    pub typed_filter_metadata: Vec<(String, String)>,
}

/// `AttributeContext.TLSSession`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSession {
    pub sni: String,
}

/// Reads a whole `CheckRequest` written in protobuf JSON (the form of Envoy's docs, OPA-Envoy's
/// fixtures and decision tests' `attributes:` requests). The engine has none of its own: the
/// server's converter is the one reading of a `CheckRequest` (`arbiter_ext_authz::protojson`
/// decodes the JSON into Envoy's protobuf message and converts that).
pub type CheckRequestReader = fn(&Json) -> Result<AuthzRequest, String>;

/// The reader of a runner that was given none: whole `CheckRequest`s are refused with a clear
/// error.
pub fn no_check_request_reader(_: &Json) -> Result<AuthzRequest, String> {
    Err("a whole CheckRequest (`attributes: …`) needs the server's converter; this runner has none (`arbiter test` has it)".into())
}
