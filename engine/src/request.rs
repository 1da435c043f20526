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
    /// Lower-case names, in arrival order.
    pub lines: Vec<(String, std::borrow::Cow<'a, str>)>,
    /// Each header line is on its own (Envoy's `header_map`). Otherwise the lines are Envoy's
    /// `headers` map, where repeated lines arrive joined with commas.
    pub separate: bool,
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
                    .map(|h| (h.key.to_ascii_lowercase(), Cow::Owned(h.text())))
                    .collect(),
                separate: true,
            };
        }
        HeaderLines {
            lines: self
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), Cow::Borrowed(v.as_str())))
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

impl AuthzRequest {
    /// Read a `CheckRequest` written in protobuf JSON (the form Envoy's docs, opa-envoy-plugin's
    /// fixtures and arbiter's test cases use). Unknown fields are ignored; wrong types are
    /// errors.
    pub fn from_check_request_json(json: &Json) -> Result<AuthzRequest, String> {
        protojson::check_request(json)
    }
}

mod protojson {
    use super::*;

    fn obj<'a>(
        v: &'a Json,
        what: &str,
    ) -> Result<Option<&'a serde_json::Map<String, Json>>, String> {
        match v {
            Json::Null => Ok(None),
            Json::Object(m) => Ok(Some(m)),
            _ => Err(format!("`{what}` must be an object")),
        }
    }

    fn string(m: &serde_json::Map<String, Json>, k: &str) -> Result<String, String> {
        match m.get(k) {
            None | Some(Json::Null) => Ok(String::new()),
            Some(Json::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    }

    fn number(m: &serde_json::Map<String, Json>, k: &str) -> Result<i64, String> {
        match m.get(k) {
            None | Some(Json::Null) => Ok(0),
            Some(Json::Number(n)) => n
                .as_i64()
                .ok_or_else(|| format!("`{k}` must be an integer")),
            // protojson writes 64-bit integers as strings
            Some(Json::String(s)) => s.parse().map_err(|_| format!("`{k}` must be an integer")),
            Some(_) => Err(format!("`{k}` must be a number")),
        }
    }

    fn string_map(
        m: &serde_json::Map<String, Json>,
        k: &str,
    ) -> Result<Vec<(String, String)>, String> {
        match m.get(k) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Object(o)) => o
                .iter()
                .map(|(k, v)| match v {
                    Json::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(format!("`{k}` must map to strings")),
                })
                .collect(),
            Some(_) => Err(format!("`{k}` must be an object")),
        }
    }

    fn b64(s: &str) -> Result<Vec<u8>, String> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("invalid base64: {e}"))
    }

    pub(super) fn check_request(json: &Json) -> Result<AuthzRequest, String> {
        let Some(root) = obj(json, "CheckRequest")? else {
            return Ok(AuthzRequest::default());
        };
        let Some(a) = root
            .get("attributes")
            .map(|v| obj(v, "attributes"))
            .transpose()?
            .flatten()
        else {
            return Ok(AuthzRequest::default());
        };
        let mut out = AuthzRequest {
            source: a.get("source").map(peer).transpose()?,
            destination: a.get("destination").map(peer).transpose()?,
            context_extensions: string_map(a, "contextExtensions")?,
            metadata_context: a.get("metadataContext").map(metadata).transpose()?,
            route_metadata_context: a.get("routeMetadataContext").map(metadata).transpose()?,
            ..AuthzRequest::default()
        };
        if let Some(t) = a
            .get("tlsSession")
            .map(|v| obj(v, "tlsSession"))
            .transpose()?
            .flatten()
        {
            out.tls_session = Some(TlsSession {
                sni: string(t, "sni")?,
            });
        }
        if let Some(r) = a
            .get("request")
            .map(|v| obj(v, "request"))
            .transpose()?
            .flatten()
        {
            if let Some(t) = r.get("time") {
                out.time = Some(match t {
                    Json::Object(tm) => Timestamp {
                        seconds: number(tm, "seconds")?,
                        nanos: i32::try_from(number(tm, "nanos")?)
                            .map_err(|_| "`nanos` out of range")?,
                    },
                    Json::String(s) => {
                        let dt = time::OffsetDateTime::parse(
                            s,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .map_err(|e| format!("`time`: {e}"))?;
                        Timestamp {
                            seconds: dt.unix_timestamp(),
                            nanos: i32::try_from(dt.nanosecond()).unwrap_or(0),
                        }
                    }
                    _ => return Err("`time` must be a timestamp".into()),
                });
            }
            if let Some(h) = r.get("http").map(|v| obj(v, "http")).transpose()?.flatten() {
                out.http = Some(http(h)?);
            }
        }
        Ok(out)
    }

    fn http(h: &serde_json::Map<String, Json>) -> Result<HttpRequest, String> {
        let header_map = match h.get("headerMap") {
            None | Some(Json::Null) => None,
            Some(Json::Object(m)) => {
                let mut list = Vec::new();
                if let Some(Json::Array(items)) = m.get("headers") {
                    for item in items {
                        let Json::Object(hv) = item else {
                            return Err("`headerMap.headers` must hold objects".into());
                        };
                        let raw = string(hv, "rawValue")?;
                        list.push(RawHeader {
                            key: string(hv, "key")?,
                            value: string(hv, "value")?,
                            raw_value: if raw.is_empty() {
                                Vec::new()
                            } else {
                                b64(&raw)?
                            },
                        });
                    }
                }
                Some(list)
            }
            Some(_) => return Err("`headerMap` must be an object".into()),
        };
        let raw_body = string(h, "rawBody")?;
        Ok(HttpRequest {
            id: string(h, "id")?,
            method: string(h, "method")?,
            headers: string_map(h, "headers")?,
            header_map,
            path: string(h, "path")?,
            host: string(h, "host")?,
            scheme: string(h, "scheme")?,
            query: string(h, "query")?,
            fragment: string(h, "fragment")?,
            size: number(h, "size")?,
            protocol: string(h, "protocol")?,
            body: string(h, "body")?,
            raw_body: if raw_body.is_empty() {
                Vec::new()
            } else {
                b64(&raw_body)?
            },
        })
    }

    fn peer(v: &Json) -> Result<Peer, String> {
        let Some(p) = obj(v, "peer")? else {
            return Ok(Peer::default());
        };
        let address = match p.get("address") {
            None | Some(Json::Null) => None,
            Some(Json::Object(a)) => {
                if let Some(Json::Object(s)) = a.get("socketAddress") {
                    let protocol = string(s, "protocol")?;
                    Some(Address::Socket(SocketAddress {
                        protocol: (!protocol.is_empty() && protocol != "TCP").then_some(protocol),
                        address: string(s, "address")?,
                        port_value: u32::try_from(number(s, "portValue")?)
                            .map_err(|_| "`portValue` out of range")?,
                        named_port: string(s, "namedPort")?,
                        resolver_name: string(s, "resolverName")?,
                        ipv4_compat: matches!(s.get("ipv4Compat"), Some(Json::Bool(true))),
                    }))
                } else if let Some(Json::Object(pipe)) = a.get("pipe") {
                    Some(Address::Pipe {
                        path: string(pipe, "path")?,
                        mode: u32::try_from(number(pipe, "mode")?)
                            .map_err(|_| "`mode` out of range")?,
                    })
                } else if let Some(Json::Object(e)) = a.get("envoyInternalAddress") {
                    Some(Address::EnvoyInternal {
                        server_listener_name: string(e, "serverListenerName")?,
                        endpoint_id: string(e, "endpointId")?,
                    })
                } else {
                    None
                }
            }
            Some(_) => return Err("`address` must be an object".into()),
        };
        Ok(Peer {
            address,
            service: string(p, "service")?,
            labels: string_map(p, "labels")?,
            principal: string(p, "principal")?,
            certificate: string(p, "certificate")?,
        })
    }

    fn metadata(v: &Json) -> Result<Metadata, String> {
        let Some(m) = obj(v, "metadata")? else {
            return Ok(Metadata::default());
        };
        let filter_metadata = match m.get("filterMetadata") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Object(f)) => f.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Some(_) => return Err("`filterMetadata` must be an object".into()),
        };
        let typed_filter_metadata = match m.get("typedFilterMetadata") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Object(f)) => f
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.get("@type")
                            .and_then(Json::as_str)
                            .unwrap_or("")
                            .to_string(),
                    )
                })
                .collect(),
            Some(_) => return Err("`typedFilterMetadata` must be an object".into()),
        };
        Ok(Metadata {
            filter_metadata,
            typed_filter_metadata,
        })
    }
}
