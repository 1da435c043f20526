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
use crate::request::{Address, AuthzRequest, HttpRequest, Metadata, Peer};
use crate::value::from_json;

/// How the input document is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// An object under construction: only non-empty fields are set, as protojson does.
struct Obj(Value);

impl Obj {
    fn new() -> Self {
        Obj(Value::new_object())
    }
    fn set(&mut self, k: &str, v: Value) {
        if let Ok(m) = self.0.as_object_mut() {
            m.insert(Value::from(k), v);
        }
    }
    fn str(&mut self, k: &str, s: &str) {
        if !s.is_empty() {
            self.set(k, Value::from(s));
        }
    }
    fn map(&mut self, k: &str, pairs: &[(String, String)]) {
        if !pairs.is_empty() {
            self.set(
                k,
                string_map(pairs.iter().map(|(a, b)| (a.as_str(), b.clone()))),
            );
        }
    }
    fn done(self) -> Value {
        self.0
    }
}

fn string_map<'a>(pairs: impl Iterator<Item = (&'a str, String)>) -> Value {
    let mut o = Obj::new();
    for (k, v) in pairs {
        o.set(k, Value::from(v));
    }
    o.done()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn peer(p: &Peer) -> Value {
    let mut o = Obj::new();
    if let Some(a) = &p.address {
        o.set("address", address(a));
    }
    o.str("service", &p.service);
    o.map("labels", &p.labels);
    o.str("principal", &p.principal);
    o.str("certificate", &p.certificate);
    o.done()
}

fn address(a: &Address) -> Value {
    let mut o = Obj::new();
    match a {
        Address::Socket(s) => {
            let mut so = Obj::new();
            if let Some(p) = &s.protocol {
                so.str("protocol", p);
            }
            so.str("address", &s.address);
            if s.port_value != 0 {
                so.set("portValue", Value::from(u64::from(s.port_value)));
            }
            so.str("namedPort", &s.named_port);
            so.str("resolverName", &s.resolver_name);
            if s.ipv4_compat {
                so.set("ipv4Compat", Value::Bool(true));
            }
            o.set("socketAddress", so.done());
        }
        Address::Pipe { path, mode } => {
            let mut po = Obj::new();
            po.str("path", path);
            if *mode != 0 {
                po.set("mode", Value::from(u64::from(*mode)));
            }
            o.set("pipe", po.done());
        }
        Address::EnvoyInternal {
            server_listener_name,
            endpoint_id,
        } => {
            let mut eo = Obj::new();
            eo.str("serverListenerName", server_listener_name);
            eo.str("endpointId", endpoint_id);
            o.set("envoyInternalAddress", eo.done());
        }
    }
    o.done()
}

fn metadata(m: &Metadata) -> Value {
    let mut o = Obj::new();
    if !m.filter_metadata.is_empty() {
        let mut f = Obj::new();
        for (ns, v) in &m.filter_metadata {
            f.set(ns, from_json(v));
        }
        o.set("filterMetadata", f.done());
    }
    if !m.typed_filter_metadata.is_empty() {
        let mut t = Obj::new();
        for (ns, url) in &m.typed_filter_metadata {
            let mut any = Obj::new();
            any.str("@type", url);
            t.set(ns, any.done());
        }
        o.set("typedFilterMetadata", t.done());
    }
    o.done()
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

/// `headers` as policies see it: Envoy's map, or one built from `headerMap`, names lower-cased.
fn effective_headers(
    h: &HttpRequest,
    opts: &InputOptions,
) -> Result<Vec<(String, String)>, DenyReason> {
    let raw = h.header_lines().lines;
    // Bound the work before doing it: the count is checked on the raw entries.
    if raw.len() > opts.max_headers.saturating_mul(4) {
        return Err(too_many_headers(raw.len(), opts));
    }
    let mut out: Vec<(String, String)> = Vec::with_capacity(raw.len());
    let mut index: std::collections::HashMap<String, usize> =
        std::collections::HashMap::with_capacity(raw.len());
    for (name, value) in raw {
        check_header(&name, &value)?;
        match index.get(&name) {
            Some(&i) => {
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
                index.insert(name.clone(), out.len());
                out.push((name, value.into_owned()));
            }
        }
    }
    if out.len() > opts.max_headers {
        return Err(too_many_headers(out.len(), opts));
    }
    Ok(out)
}

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

fn http_request(
    h: &HttpRequest,
    headers: &[(String, String)],
    host: &crate::path::Host,
    policy: PathPolicy,
) -> Value {
    let mut o = Obj::new();
    o.str("id", &h.id);
    o.str("method", &h.method);
    o.map("headers", headers);
    if let Some(raw) = &h.header_map {
        let items: Vec<Value> = raw
            .iter()
            .map(|r| {
                let mut ho = Obj::new();
                ho.str("key", &r.key);
                ho.str("value", &r.value);
                if !r.raw_value.is_empty() {
                    ho.set("rawValue", Value::from(base64(&r.raw_value)));
                }
                ho.done()
            })
            .collect();
        let mut hm = Obj::new();
        if !items.is_empty() {
            hm.set("headers", Value::from(items));
        }
        o.set("headerMap", hm.done());
    }
    o.str("path", &h.path);
    // Strict mode gives the host one spelling, as it gives the path one (see the README).
    match policy {
        PathPolicy::Strict => o.str("host", &host.canonical()),
        PathPolicy::Lenient => o.str("host", &h.host),
    }
    o.str("scheme", &h.scheme);
    o.str("query", &h.query);
    o.str("fragment", &h.fragment);
    if h.size != 0 {
        o.set("size", Value::from(h.size));
    }
    o.str("protocol", &h.protocol);
    o.str("body", &h.body);
    if !h.raw_body.is_empty() {
        o.set("rawBody", Value::from(base64(&h.raw_body)));
    }
    o.done()
}

/// Build the input document for `req`, or the reason the request is refused before any policy
/// runs.
pub fn build_input(req: &AuthzRequest, opts: &InputOptions) -> Result<Input, DenyReason> {
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
    let headers = effective_headers(http, opts)?;
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

    let mut attributes = Obj::new();
    if let Some(s) = &req.source {
        attributes.set("source", peer(s));
    }
    if let Some(d) = &req.destination {
        attributes.set("destination", peer(d));
    }
    if req.time.is_some() || req.http.is_some() {
        let mut r = Obj::new();
        if let Some(t) = req.time {
            let mut to = Obj::new();
            if t.seconds != 0 {
                to.set("seconds", Value::from(t.seconds));
            }
            if t.nanos != 0 {
                to.set("nanos", Value::from(i64::from(t.nanos)));
            }
            r.set("time", to.done());
        }
        if req.http.is_some() {
            r.set(
                "http",
                http_request(http, &headers, &host, opts.path_policy),
            );
        }
        attributes.set("request", r.done());
    }
    attributes.map("contextExtensions", &req.context_extensions);
    if let Some(m) = &req.metadata_context {
        attributes.set("metadataContext", metadata(m));
    }
    if let Some(m) = &req.route_metadata_context {
        attributes.set("routeMetadataContext", metadata(m));
    }
    if let Some(t) = &req.tls_session {
        let mut to = Obj::new();
        to.str("sni", &t.sni);
        attributes.set("tlsSession", to.done());
    }

    let mut input = Obj::new();
    input.set("attributes", attributes.done());
    input.set(
        "parsed_path",
        Value::from(
            canonical
                .segments
                .iter()
                .map(|s| Value::from(s.as_str()))
                .collect::<Vec<_>>(),
        ),
    );
    let mut q = Obj::new();
    for (k, vs) in query {
        q.set(
            &k,
            Value::from(vs.into_iter().map(Value::from).collect::<Vec<_>>()),
        );
    }
    input.set("parsed_query", q.done());
    if !opts.skip_body_parse {
        let body_bytes: &[u8] = if http.body.is_empty() {
            &http.raw_body
        } else {
            http.body.as_bytes()
        };
        let parsed = body::parse_body(
            header("content-type"),
            header("content-length"),
            header("x-envoy-auth-partial-body"),
            body_bytes,
            opts.max_body_depth,
        )
        .map_err(|e| DenyReason::BodyParseError(e.0))?;
        input.set("parsed_body", parsed.value);
        input.set("truncated_body", Value::Bool(parsed.truncated));
    }
    let mut version = Obj::new();
    version.str("encoding", "protojson");
    version.str("ext_authz", "v3");
    input.set("version", version.done());
    if let Some(p) = req.source.as_ref().map(|s| s.principal.as_str())
        && !p.is_empty()
    {
        input.set("source_principal", Value::from(p));
    }
    Ok(Input {
        value: input.done(),
        path: canonical,
        host,
        headers,
    })
}

#[cfg(test)]
mod tests;
