//! The one place the policy `input` document is built.
//!
//! The document is the one opa-envoy-plugin builds, so a policy written for OPA-Envoy runs
//! unchanged: the `CheckRequest` in protobuf JSON names (`attributes.source.address.socketAddress
//! .portValue`, `contextExtensions`, `metadataContext`, …; only fields that are set), plus
//! `parsed_path`, `parsed_query`, `parsed_body`, `truncated_body`, `version` and
//! `source_principal`. It is built as a Rego value directly, without a JSON detour.
//!
//! Deliberate differences from OPA-Envoy (also in the README):
//! - `parsed_path` comes from the canonical path: non-canonical targets are refused before any
//!   policy runs (see [`crate::path`]);
//! - with `encode_raw_headers`, Envoy sends `headerMap` and no `headers`; arbiter then fills
//!   `headers` from `headerMap`, repeated headers joined with `,` as Envoy does, so policies that
//!   read `headers` keep working and no value is dropped;
//! - header names and values with NUL, CR or LF, and a `:path`/`:method` pseudo-header that
//!   disagrees with the request, are refused as malformed;
//! - JSON bodies are parsed strictly (no duplicate keys, nesting limit).

use regorus::Value;

use crate::body;
use crate::decision::DenyReason;
use crate::path::{self, CanonicalPath, PathPolicy};
use crate::request::{AuthzRequest, HttpRequest};

mod document;
pub mod needs;
pub use needs::Needs;

/// How the input document is built.
#[derive(Debug, Clone, PartialEq)]
pub struct InputOptions {
    pub path_policy: PathPolicy,
    /// OPA-Envoy's `skip-request-body-parse`: no `parsed_body`, no `truncated_body`.
    pub skip_body_parse: bool,
    /// Nesting limit for JSON bodies.
    pub max_body_depth: usize,
    /// Request body size, bytes.
    pub max_body_bytes: usize,
    /// Distinct header names.
    pub max_headers: usize,
    /// Total value bytes of one header name.
    pub max_header_bytes: usize,
    /// Request target length, bytes.
    pub max_path_bytes: usize,
    /// OPA-Envoy's `proto-descriptor`: gRPC request bodies decoded into `parsed_body`.
    pub grpc: Option<body::GrpcBodies>,
}

impl Default for InputOptions {
    fn default() -> Self {
        Self::with_limits(&crate::limits::Limits::default())
    }
}

impl InputOptions {
    /// Strict paths, bodies parsed, and the input limits of `limits`.
    pub fn with_limits(limits: &crate::limits::Limits) -> Self {
        Self {
            path_policy: PathPolicy::Strict,
            skip_body_parse: false,
            max_body_depth: limits.max_body_depth,
            max_body_bytes: limits.max_body_bytes,
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes,
            max_path_bytes: limits.max_path_bytes,
            grpc: None,
        }
    }
}

/// The input document and what was derived on the way.
#[derive(Debug, Clone)]
pub struct Input {
    /// The Rego `input` document (OPA-Envoy's shape).
    pub value: Value,
    /// The canonical path (refused before any policy when it could be read two ways).
    pub path: CanonicalPath,
    /// The host, read once: CEL and Istio read it from here.
    pub host: crate::path::Host,
    /// Header values by lower-case name, repeated lines joined with `,` in arrival order,
    /// checked and bounded: what Rego's `headers` and CEL's `request.headers` hold.
    pub headers: Vec<(String, String)>,
}

/// The document's fixed keys (and two fixed values), allocated once: each use is a reference
/// count, not an allocation and a copy.
macro_rules! keys {
    ($($field:ident = $text:literal,)*) => {
        struct Keys {
            $($field: Value,)*
        }
        static KEYS: std::sync::LazyLock<Keys> = std::sync::LazyLock::new(|| Keys {
            $($field: Value::from($text),)*
        });
    };
}

keys! {
    address = "address",
    at_type = "@type",
    attributes = "attributes",
    body = "body",
    certificate = "certificate",
    context_extensions = "contextExtensions",
    destination = "destination",
    encoding = "encoding",
    endpoint_id = "endpointId",
    envoy_internal_address = "envoyInternalAddress",
    ext_authz = "ext_authz",
    filter_metadata = "filterMetadata",
    fragment = "fragment",
    header_map = "headerMap",
    headers = "headers",
    host = "host",
    http = "http",
    id = "id",
    identity = "identity",
    ipv4_compat = "ipv4Compat",
    key = "key",
    labels = "labels",
    metadata_context = "metadataContext",
    method = "method",
    mode = "mode",
    named_port = "namedPort",
    nanos = "nanos",
    parsed_body = "parsed_body",
    parsed_path = "parsed_path",
    parsed_query = "parsed_query",
    path = "path",
    pipe = "pipe",
    port_value = "portValue",
    principal = "principal",
    protocol = "protocol",
    protojson = "protojson",
    query = "query",
    raw_body = "rawBody",
    raw_value = "rawValue",
    request = "request",
    resolver_name = "resolverName",
    route_metadata_context = "routeMetadataContext",
    scheme = "scheme",
    seconds = "seconds",
    server_listener_name = "serverListenerName",
    service = "service",
    size = "size",
    sni = "sni",
    socket_address = "socketAddress",
    source = "source",
    source_principal = "source_principal",
    time = "time",
    tls_session = "tlsSession",
    truncated_body = "truncated_body",
    typed_filter_metadata = "typedFilterMetadata",
    v3 = "v3",
    value = "value",
    version = "version",
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What `n` reads below `key`.
fn below<'n>(n: &'n Needs, key: &Value) -> Option<&'n Needs> {
    key.as_string().ok().and_then(|s| n.get(s))
}

/// Whether `n` reads anything below `key`.
fn wants(n: &Needs, key: &Value) -> bool {
    below(n, key).is_some()
}

/// Reject header names or values that carry NUL, CR or LF (CVE-2019-9900's class).
fn check_header(name: &str, value: &str) -> Result<(), DenyReason> {
    let bad = |s: &str| s.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n');
    if bad(name) || bad(value) {
        return Err(DenyReason::BadInput(format!(
            "header `{}` contains NUL, CR or LF",
            name.escape_default()
        )));
    }
    Ok(())
}

/// `headers` as policies see it: Envoy's map, or one built from `headerMap`, names lower-cased,
/// checked. `None` when that is the request's own `headers` as they are (names in lower case,
/// none repeated: what Envoy sends), which are then read from the request instead of being
/// copied; otherwise the merged copy.
fn effective_headers(
    h: &HttpRequest,
    opts: &InputOptions,
) -> Result<Option<Vec<(String, String)>>, DenyReason> {
    let lines = h.header_lines();
    let raw = lines.lines;
    // Bound the work before doing it: the count is checked on the raw entries.
    if raw.len() > opts.max_headers.saturating_mul(4) {
        return Err(too_many_headers(raw.len(), opts));
    }
    let as_sent = !lines.separate
        && raw.len() <= INDEX_HEADERS_ABOVE
        && raw.iter().enumerate().all(|(i, (name, _))| {
            matches!(name, std::borrow::Cow::Borrowed(_))
                && !raw[..i].iter().any(|(seen, _)| seen == name)
        });
    let lines_read = raw.len();
    // Lines kept as sent are checked alone; the others are merged into a copy (nothing is
    // allocated for it when they are kept as sent).
    let mut out: Vec<(String, String)> = Vec::with_capacity(if as_sent { 0 } else { raw.len() });
    // Names repeat rarely and requests carry a few dozen: a scan of what is kept finds a
    // repeat without a map, which only many names need.
    let mut index: Option<std::collections::HashMap<String, usize>> = (raw.len()
        > INDEX_HEADERS_ABOVE)
        .then(|| std::collections::HashMap::with_capacity(raw.len()));
    for (name, value) in raw {
        check_header(&name, &value)?;
        // Kept as sent, nothing is in `out` and no name repeats: never seen.
        let seen = match &index {
            Some(m) => m.get(name.as_ref()).copied(),
            None => out.iter().position(|(n, _)| *n == name),
        };
        match seen {
            Some(i) => {
                let v = &mut out[i].1;
                v.push(',');
                v.push_str(&value);
                if v.len() > opts.max_header_bytes {
                    return Err(header_too_large(&name, opts));
                }
            }
            None => {
                if value.len() > opts.max_header_bytes {
                    return Err(header_too_large(&name, opts));
                }
                if as_sent {
                    continue;
                }
                if let Some(m) = &mut index {
                    m.insert(name.to_string(), out.len());
                }
                out.push((name.into_owned(), value.into_owned()));
            }
        }
    }
    let kept = if as_sent { lines_read } else { out.len() };
    if kept > opts.max_headers {
        return Err(too_many_headers(kept, opts));
    }
    Ok((!as_sent).then_some(out))
}

/// Above this many header lines, repeats are found with a map (see [`effective_headers`]).
const INDEX_HEADERS_ABOVE: usize = 32;

fn too_many_headers(n: usize, opts: &InputOptions) -> DenyReason {
    DenyReason::InputTooLarge(format!(
        "{n} headers, more than the limit of {}",
        opts.max_headers
    ))
}

fn header_too_large(name: &str, opts: &InputOptions) -> DenyReason {
    DenyReason::InputTooLarge(format!(
        "header `{}` is larger than the limit of {} bytes",
        name.escape_default(),
        opts.max_header_bytes
    ))
}

/// Build the input document for `req`, or the reason the request is refused before any policy
/// runs.
pub fn build_input(req: &AuthzRequest, opts: &InputOptions) -> Result<Input, DenyReason> {
    build_input_with_identity(req, opts, None)
}

/// [`build_input`], with the caller's established identity as `input.identity` (see
/// [`crate::identity`]).
pub fn build_input_with_identity(
    req: &AuthzRequest,
    opts: &InputOptions,
    identity: Option<&Value>,
) -> Result<Input, DenyReason> {
    Ok(read_request(req, opts)?.into_input(req, identity))
}

/// The request as every language reads it: checked against the limits, its path, host and
/// headers read once, its query and body parsed. What refuses a request before any policy runs
/// is all here; the Rego document ([`Input`]) is built from it only when something reads it
/// ([`Reading::into_input`]).
#[derive(Debug, Clone)]
pub struct Reading {
    /// The canonical path.
    pub path: CanonicalPath,
    /// The host, read once.
    pub host: crate::path::Host,
    /// Header values by lower-case name (see [`Input::headers`]), when they are not the
    /// request's own as sent ([`Reading::headers`]).
    headers: Option<Vec<(String, String)>>,
    query: Vec<(String, Vec<String>)>,
    body: Option<body::ParsedBody>,
    path_policy: PathPolicy,
}

/// The attributes every language reads, borrowed from a [`Reading`] or an [`Input`], with the
/// Rego document when it was built.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub path: &'a CanonicalPath,
    pub host: &'a crate::path::Host,
    pub headers: &'a [(String, String)],
    /// The Rego `input` document, when built.
    pub document: Option<&'a Value>,
}

impl Input {
    /// The attributes, with the document.
    pub fn attributes(&self) -> Attributes<'_> {
        Attributes {
            path: &self.path,
            host: &self.host,
            headers: &self.headers,
            document: Some(&self.value),
        }
    }
}

/// Read `req` as every language does, or the reason it is refused before any policy runs
/// (the same reasons, in the same order, as [`build_input`]).
pub fn read_request(req: &AuthzRequest, opts: &InputOptions) -> Result<Reading, DenyReason> {
    let empty = HttpRequest::default();
    let http = req.http.as_ref().unwrap_or(&empty);
    if http.path.len() > opts.max_path_bytes {
        return Err(DenyReason::InputTooLarge(format!(
            "the request target is {} bytes, more than the limit of {}",
            http.path.len(),
            opts.max_path_bytes
        )));
    }
    let body_len = http.body.len().max(http.raw_body.len());
    if body_len > opts.max_body_bytes {
        return Err(DenyReason::InputTooLarge(format!(
            "the request body is {body_len} bytes, more than the limit of {}",
            opts.max_body_bytes
        )));
    }
    let merged = effective_headers(http, opts)?;
    let headers: &[(String, String)] = merged.as_deref().unwrap_or(&http.headers);
    let host = crate::path::Host::parse(&http.host, &http.scheme);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    for (pseudo, actual) in [(":path", &http.path), (":method", &http.method)] {
        if let Some(v) = header(pseudo)
            && v != actual.as_str()
        {
            return Err(DenyReason::BadInput(format!(
                "inconsistent_request: `{pseudo}` header `{}` differs from the request's `{}`",
                v.escape_default(),
                actual.escape_default()
            )));
        }
    }

    // Only CONNECT has no request target (and a check without HTTP attributes has no path).
    // Lenient mode keeps OPA-Envoy's reading (`parsed_path` [""]).
    if opts.path_policy == PathPolicy::Strict
        && req.http.is_some()
        && http.path.is_empty()
        && !http.method.eq_ignore_ascii_case("CONNECT")
    {
        return Err(DenyReason::NonCanonicalPath(
            "empty request target (only CONNECT has none)".into(),
        ));
    }
    let canonical = path::canonicalize(&http.path, opts.path_policy).map_err(|e| {
        DenyReason::NonCanonicalPath(format!("{e}: `{}`", http.path.escape_default()))
    })?;
    // Strict mode refuses a query that does not parse; lenient mode reads it as OPA-Envoy does
    // (Go's `URL.Query()`: the bad pairs are left out).
    let query = match opts.path_policy {
        PathPolicy::Strict => {
            path::parse_query(&canonical.raw_query).map_err(DenyReason::BadInput)?
        }
        PathPolicy::Lenient => path::parse_query_lossy(&canonical.raw_query),
    };

    let body = if opts.skip_body_parse {
        None
    } else {
        let body_bytes: &[u8] = if http.body.is_empty() {
            &http.raw_body
        } else {
            http.body.as_bytes()
        };
        let content_type = header("content-type");
        let media = content_type.map(body::media_type);
        let parsed = match (&opts.grpc, media.as_deref()) {
            (Some(grpc), Some(m)) if m.starts_with("application/grpc") => grpc.parse(
                &body::grpc::GrpcCall {
                    media: m,
                    encoding: header("grpc-encoding"),
                    partial: header("x-envoy-auth-partial-body"),
                    body: body_bytes,
                    packed: http.body.is_empty(),
                    segments: &canonical.segments().collect::<Vec<_>>(),
                },
                opts.max_body_depth,
            ),
            _ => body::parse_body(
                content_type,
                header("content-length"),
                header("x-envoy-auth-partial-body"),
                body_bytes,
                opts.max_body_depth,
            ),
        }
        .map_err(|e| DenyReason::BodyParseError(e.0))?;
        Some(parsed)
    };
    Ok(Reading {
        path: canonical,
        host,
        headers: merged,
        query,
        body,
        path_policy: opts.path_policy,
    })
}

impl Reading {
    /// Header values by lower-case name (see [`Input::headers`]) of `req`, the request this
    /// reads.
    pub fn headers<'a>(&'a self, req: &'a AuthzRequest) -> &'a [(String, String)] {
        match (&self.headers, &req.http) {
            (Some(merged), _) => merged,
            (None, Some(http)) => &http.headers,
            (None, None) => &[],
        }
    }

    /// The attributes of `req`, the request this reads, without a document.
    pub fn attributes<'a>(&'a self, req: &'a AuthzRequest) -> Attributes<'a> {
        Attributes {
            path: &self.path,
            host: &self.host,
            headers: self.headers(req),
            document: None,
        }
    }

    /// The request's [`Input`]: `self` and its document.
    pub fn into_input(self, req: &AuthzRequest, identity: Option<&Value>) -> Input {
        Input {
            value: self.document(req, identity),
            headers: self.headers(req).to_vec(),
            path: self.path,
            host: self.host,
        }
    }

    /// The Rego `input` document (OPA-Envoy's shape) for `req`, read as `self`, with the
    /// caller's identity as `input.identity`.
    pub fn document(&self, req: &AuthzRequest, identity: Option<&Value>) -> Value {
        self.document_of(req, identity, &Needs::Whole)
    }

    /// The parts of [`Self::document`] that `needs` names, and nothing else: what a policy set
    /// that reads only those parts gets (see [`needs`]). With [`Needs::Whole`], the document.
    pub fn document_of(
        &self,
        req: &AuthzRequest,
        identity: Option<&Value>,
        needs: &Needs,
    ) -> Value {
        let mut tree = document::Tree::new();
        document::Walk {
            req,
            reading: self,
            identity,
            needs,
            masked: &[],
        }
        .document(&mut tree);
        tree.done()
    }

    /// [`Self::document`] as JSON text, appended to `out`, without the headers `masked` names
    /// (in `headers` and in `headerMap`, as a decision record leaves out credentials): the bytes
    /// serde_json writes for the document's value with those headers taken out
    /// ([`crate::audit::mask::Masked`]), written from the request with no value built.
    /// Which headers were left out: [`Self::masked_pointers`]. False when a value in it (a
    /// parsed body, metadata, the identity) did not encode: what was appended is then not the
    /// document, as serializing its value would have failed.
    pub fn write_document(
        &self,
        req: &AuthzRequest,
        identity: Option<&Value>,
        masked: &[String],
        out: &mut Vec<u8>,
    ) -> bool {
        let mut text = document::Text::new(out);
        document::Walk {
            req,
            reading: self,
            identity,
            needs: &Needs::Whole,
            masked,
        }
        .document(&mut text);
        text.done()
    }

    /// The pointers of the headers [`Self::write_document`] leaves out, as
    /// [`crate::audit::mask::header_mask`] names them in the document.
    pub fn masked_pointers(&self, req: &AuthzRequest, masked: &[String]) -> Vec<String> {
        crate::audit::mask::request_header_pointers(
            self.headers(req),
            req.http.as_ref().and_then(|h| h.header_map.as_deref()),
            masked,
        )
    }
}

#[cfg(test)]
mod tests;
