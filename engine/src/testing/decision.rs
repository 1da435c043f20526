//! Decision tests: `*_test.yaml` files of requests and the decisions they must get, decided
//! exactly as `arbiter serve` decides (CEL and Rego together, same input, same identity rules).
//!
//! ```yaml
//! path: envoy/authz/allow          # optional: the decision path (serve's default)
//! now: "2026-11-26T10:00:00Z"      # optional: the time every case is decided at
//! data: {}                         # optional: deep-merged over the data documents
//! cases:
//!   - name: frontend reads products
//!     request:                     # short form, or a whole OPA-Envoy input (`attributes: …`)
//!       method: GET
//!       path: /api/v1/products
//!       headers: {x-tenant-id: acme}
//!       principal: spiffe://cluster.local/ns/shop/sa/frontend
//!     expect:
//!       allowed: true
//!       http_status: 200
//! ```
//!
//! A file may also name `proto_descriptor: FILE` (a protobuf descriptor set, relative to the
//! file): gRPC bodies are then decoded into `parsed_body` as `serve --proto-descriptor` does,
//! and a case's short form may give `grpc: {…}`, the call's message in the protobuf JSON
//! mapping for the method its `path` names.
//!
//! A file may also be a bare list of cases. `expect` takes any of `allowed`, `http_status`,
//! `headers` (each named header must be set to that value), `rule` (a rule, file or
//! `file:rule` that decided) and `reason` (the denial's reason code, `allowed` when allowed).
//! A decision that comes from an evaluation error is a test error unless `reason` expects it:
//! a test that expects a denial must not pass because the policy crashed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::{Bench, Failure, Mismatch, Outcome, TestKind, TestOptions, TestResult};
use crate::authorizer::{Authorizer, RegoEngine};
use crate::data_ref::DataRef;
use crate::decision::{Decision, DenyReason};
use crate::diagnostic::{Diagnostic, LoadError};
use crate::identity::SpiffeId;
use crate::input::InputOptions;
use crate::loader::{PolicySources, SourceFile};
use crate::policy_set::{LoadOptions, PolicySet, merge_over};
use crate::request::{
    Address, AuthzRequest, CheckRequestReader, HttpRequest, Metadata, Peer, SocketAddress,
    Timestamp, TlsSession,
};

const DEFAULT_PATH: &str = "envoy/authz/allow";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    now: Option<String>,
    #[serde(default)]
    data: Option<Json>,
    /// Short-form request fields every case starts from (a case's own fields win; `headers`
    /// and `context_extensions` are merged).
    #[serde(default)]
    request: Option<Json>,
    /// Where the cases come from (a URL, a document): shown when one fails.
    #[serde(default)]
    doc: Option<String>,
    /// A protobuf descriptor set (relative to this file), as `serve --proto-descriptor`: gRPC
    /// bodies are decoded into `parsed_body`, and cases may give a `grpc` message.
    #[serde(default)]
    proto_descriptor: Option<String>,
    cases: Vec<CaseDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDoc {
    name: String,
    request: Json,
    #[serde(default)]
    data: Option<Json>,
    #[serde(default)]
    now: Option<String>,
    #[serde(default)]
    doc: Option<String>,
    expect: Expect,
}

/// What a case expects. At least one field must be set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub allowed: Option<bool>,
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Expect {
    fn is_empty(&self) -> bool {
        self.allowed.is_none()
            && self.http_status.is_none()
            && self.headers.is_none()
            && self.rule.is_none()
            && self.reason.is_none()
    }
}

/// The short request form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShortRequest {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Envoy's `source.principal`.
    #[serde(default)]
    principal: Option<String>,
    /// Like `principal`, but must be a valid SPIFFE ID (checked when the file loads).
    #[serde(default)]
    spiffe_id: Option<String>,
    /// A string is sent as is; anything else as JSON (`content-type: application/json`).
    #[serde(default)]
    body: Option<Json>,
    /// A gRPC call's message in the protobuf JSON mapping, for the method `path` names
    /// (`/pkg.Service/Method`): sent as a gRPC client sends it (`POST`, `content-type:
    /// application/grpc`, one length-prefixed frame, as Envoy packs it with `pack_as_bytes`).
    /// Needs the file's `proto_descriptor`.
    #[serde(default)]
    grpc: Option<Json>,
    #[serde(default)]
    source_address: Option<String>,
    /// The destination (the workload's) address; 10.0.0.2 when not given.
    #[serde(default)]
    destination_address: Option<String>,
    /// The caller's certificate (PEM), as Envoy forwards it with `include_peer_certificate`.
    #[serde(default)]
    certificate: Option<String>,
    /// The destination (the workload's) port; 8080 when not given.
    #[serde(default)]
    destination_port: Option<u32>,
    /// The route's `check_settings.context_extensions` (for Istio policies: the workload's
    /// `namespace` and labels).
    #[serde(default)]
    context_extensions: BTreeMap<String, String>,
    /// The payload of a JWT that Envoy's `jwt_authn` filter verified, as it appears in the
    /// `envoy.filters.http.jwt_authn` metadata under its issuer (Istio's RequestAuthentication).
    #[serde(default)]
    jwt_payload: Option<Json>,
    /// The TLS server name the caller asked for.
    #[serde(default)]
    sni: Option<String>,
}

/// One case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub line: u32,
    pub request: AuthzRequest,
    /// File and case data, merged.
    pub data: Option<Json>,
    pub now_ns: Option<i64>,
    pub expect: Expect,
    /// Where the case comes from (the case's `doc`, else the file's).
    pub doc: Option<String>,
    /// The short-form request after the file's defaults were applied (`None` for a whole
    /// OPA-Envoy input): what a test that replays the case through Envoy needs.
    pub short: Option<Json>,
}

/// One file of cases.
#[derive(Debug, Clone)]
pub struct DecisionFile {
    pub file: String,
    pub doc: Option<String>,
    pub path: DataRef,
    pub cases: Vec<Case>,
    /// The file's `proto_descriptor`, read.
    pub grpc: Option<crate::body::GrpcBodies>,
}

/// Parse every decision-test file; all problems are reported together.
/// `reader` reads whole `CheckRequest`s (`attributes: …`); the short form needs none.
pub fn parse_all(
    sources: &PolicySources,
    reader: CheckRequestReader,
) -> Result<Vec<DecisionFile>, LoadError> {
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    for f in &sources.decision_tests {
        match parse(f, reader) {
            Ok(d) => files.push(d),
            Err(mut e) => diagnostics.append(&mut e),
        }
    }
    if diagnostics.is_empty() {
        Ok(files)
    } else {
        Err(LoadError { diagnostics })
    }
}

fn yaml_error(file: &str, e: &yaml_serde::Error) -> Diagnostic {
    let (line, col, message) = crate::loader::yaml_position(e);
    Diagnostic::at(file, line, col, message).with_code("decision_test_error")
}

/// Parse one file.
pub fn parse(f: &SourceFile, reader: CheckRequestReader) -> Result<DecisionFile, Vec<Diagnostic>> {
    let top: Json =
        crate::loader::parse_data(&format!("{}.yaml", f.name), &f.text).map_err(|mut d| {
            d.file = f.name.clone();
            vec![d.with_code("decision_test_error")]
        })?;
    let doc: FileDoc = match top {
        Json::Array(_) => FileDoc {
            path: None,
            now: None,
            data: None,
            request: None,
            doc: None,
            proto_descriptor: None,
            cases: yaml_serde::from_str(&f.text).map_err(|e| vec![yaml_error(&f.name, &e)])?,
        },
        Json::Object(_) => {
            yaml_serde::from_str(&f.text).map_err(|e| vec![yaml_error(&f.name, &e)])?
        }
        _ => {
            return Err(vec![
                Diagnostic::at(
                    &f.name,
                    1,
                    1,
                    "a decision test file is a mapping with `cases`, or a list of cases",
                )
                .with_code("decision_test_error"),
            ]);
        }
    };
    let mut errors = Vec::new();
    let err = |line: u32, msg: String| {
        Diagnostic::at(&f.name, line, 0, msg).with_code("decision_test_error")
    };
    let path = match DataRef::parse(doc.path.as_deref().unwrap_or(DEFAULT_PATH)) {
        Ok(p) => Some(p),
        Err(e) => {
            errors.push(err(line_of(&f.text, "path:", ""), format!("`path`: {e}")));
            None
        }
    };
    let file_now = match doc.now.as_deref().map(parse_time).transpose() {
        Ok(n) => n,
        Err(e) => {
            errors.push(err(line_of(&f.text, "now:", ""), format!("`now`: {e}")));
            None
        }
    };
    if doc.cases.is_empty() {
        errors.push(err(line_of(&f.text, "cases:", ""), "no cases".into()));
    }
    let grpc = match &doc.proto_descriptor {
        None => None,
        Some(p) => {
            let dir = std::path::Path::new(&f.name)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            match crate::body::GrpcBodies::load(&dir.join(p)) {
                Ok(g) => Some(g),
                Err(e) => {
                    errors.push(err(
                        line_of(&f.text, "proto_descriptor:", ""),
                        format!("`proto_descriptor`: {e}"),
                    ));
                    None
                }
            }
        }
    };
    let mut cases = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for c in &doc.cases {
        let line = line_of(&f.text, "name:", &c.name);
        let mut case_err =
            |msg: String| errors.push(err(line, format!("case `{}`: {msg}", c.name)));
        if c.name.trim().is_empty() {
            case_err("`name` must not be empty".into());
        }
        if names.contains(&c.name.as_str()) {
            case_err("duplicate case name".into());
        }
        names.push(&c.name);
        if c.expect.is_empty() {
            case_err(
                "`expect` must name at least one of allowed, http_status, headers, rule, reason"
                    .into(),
            );
        }
        let now_ns = match c.now.as_deref().map(parse_time).transpose() {
            Ok(n) => n.or(file_now),
            Err(e) => {
                case_err(format!("`now`: {e}"));
                None
            }
        };
        let short = match (&doc.request, c.request.get("attributes")) {
            (_, Some(_)) => None,
            (None, None) => Some(c.request.clone()),
            (Some(defaults), None) => {
                if !defaults.is_object() {
                    case_err("the file's `request` must be a mapping".into());
                }
                let mut merged = defaults.clone();
                merge_over(&mut merged, &c.request);
                Some(merged)
            }
        };
        let request = match build_request(
            short.as_ref().unwrap_or(&c.request),
            now_ns,
            reader,
            grpc.as_ref(),
        ) {
            Ok(r) => r,
            Err(e) => {
                case_err(format!("request: {e}"));
                continue;
            }
        };
        let data = match (&doc.data, &c.data) {
            (None, None) => None,
            (a, b) => {
                let mut d = a.clone().unwrap_or_else(|| json!({}));
                if let Some(b) = b {
                    merge_over(&mut d, b);
                }
                if !d.is_object() {
                    case_err("`data` must be a mapping".into());
                }
                Some(d)
            }
        };
        cases.push(Case {
            name: c.name.clone(),
            line,
            request,
            data,
            now_ns,
            expect: c.expect.clone(),
            doc: c.doc.clone().or_else(|| doc.doc.clone()),
            short,
        });
    }
    match path {
        Some(path) if errors.is_empty() => Ok(DecisionFile {
            file: f.name.clone(),
            doc: doc.doc.clone(),
            path,
            cases,
            grpc,
        }),
        _ => Err(errors),
    }
}

/// The 1-based line of the first line holding `key` and `value`; 0 when not found.
fn line_of(text: &str, key: &str, value: &str) -> u32 {
    text.lines()
        .position(|l| l.contains(key) && l.contains(value))
        .and_then(|i| u32::try_from(i + 1).ok())
        .unwrap_or(0)
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
        format!("`{s}` is not an RFC 3339 time such as 2026-11-26T10:00:00Z ({e})")
    })?;
    i64::try_from(t.unix_timestamp_nanos()).map_err(|_| format!("`{s}` is out of range"))
}

/// A request from a case: a whole OPA-Envoy input (it has `attributes`) or the short form.
fn build_request(
    request: &Json,
    now_ns: Option<i64>,
    reader: CheckRequestReader,
    grpc: Option<&crate::body::GrpcBodies>,
) -> Result<AuthzRequest, String> {
    if request.get("attributes").is_some() {
        return reader(request);
    }
    let r: ShortRequest = serde_json::from_value(request.clone()).map_err(|e| e.to_string())?;
    if let Some(id) = &r.spiffe_id {
        SpiffeId::parse(id).map_err(|e| format!("`spiffe_id`: {e}"))?;
    }
    if r.principal.is_some() && r.spiffe_id.is_some() {
        return Err("give `principal` or `spiffe_id`, not both".into());
    }
    let default_method = if r.grpc.is_some() { "POST" } else { "GET" };
    let method = r
        .method
        .unwrap_or_else(|| default_method.into())
        .to_ascii_uppercase();
    let path = r.path.unwrap_or_else(|| "/".into());
    let raw_body = match (&r.grpc, grpc) {
        (None, _) => Vec::new(),
        (Some(_), None) => {
            return Err("`grpc` needs the file's `proto_descriptor`".into());
        }
        (Some(_), Some(_)) if r.body.is_some() => {
            return Err("give `grpc` or `body`, not both".into());
        }
        (Some(m), Some(g)) => g
            .encode_call(&path, m)
            .map_err(|e| format!("`grpc`: {e}"))?,
    };
    let host = r.host.unwrap_or_else(|| "example.com".into());
    let scheme = r.scheme.unwrap_or_else(|| "http".into());
    // Lower-case names; a later spelling of a name replaces an earlier one.
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String, replace: bool| match headers.iter_mut().find(|(n, _)| n == k)
    {
        Some((_, old)) if replace => *old = v,
        Some(_) => {}
        None => headers.push((k.to_string(), v)),
    };
    for (k, v) in &r.headers {
        set(&k.to_ascii_lowercase(), v.clone(), true);
    }
    // What Envoy always sends.
    set(":method", method.clone(), true);
    set(":path", path.clone(), true);
    set(":authority", host.clone(), true);
    set(":scheme", scheme.clone(), true);
    let body = match r.body {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s,
        Some(v) => {
            set("content-type", "application/json".into(), false);
            v.to_string()
        }
    };
    if !body.is_empty() {
        set("content-length", body.len().to_string(), false);
    }
    if !raw_body.is_empty() {
        set("content-type", "application/grpc".into(), false);
        set("te", "trailers".into(), false);
    }
    let now = now_ns.unwrap_or_else(crate::clock::now_ns);
    let mut filter_metadata = Vec::new();
    if let Some(p) = r.jwt_payload {
        let iss = p
            .get("iss")
            .and_then(Json::as_str)
            .ok_or("`jwt_payload` needs an `iss` claim (Envoy files the payload under its issuer)")?
            .to_string();
        filter_metadata.push((
            "envoy.filters.http.jwt_authn".to_string(),
            json!({ iss: p }),
        ));
    }
    let socket = |address: String, port_value: u32| {
        Some(Address::Socket(SocketAddress {
            address,
            port_value,
            ..SocketAddress::default()
        }))
    };
    Ok(AuthzRequest {
        source: Some(Peer {
            address: socket(r.source_address.unwrap_or_else(|| "10.0.0.1".into()), 40000),
            principal: r.principal.or(r.spiffe_id).unwrap_or_default(),
            certificate: r
                .certificate
                .map(|c| percent_encode_pem(&c))
                .unwrap_or_default(),
            ..Peer::default()
        }),
        destination: Some(Peer {
            address: socket(
                r.destination_address.unwrap_or_else(|| "10.0.0.2".into()),
                r.destination_port.unwrap_or(8080),
            ),
            ..Peer::default()
        }),
        time: Some(Timestamp::from_ns(now)),
        http: Some(HttpRequest {
            id: "decision-test".into(),
            method,
            headers,
            path,
            host,
            scheme,
            protocol: r.protocol.unwrap_or_else(|| "HTTP/1.1".into()),
            size: i64::try_from(body.len() + raw_body.len()).unwrap_or(i64::MAX),
            body,
            raw_body,
            ..HttpRequest::default()
        }),
        context_extensions: r.context_extensions.into_iter().collect(),
        metadata_context: Some(Metadata {
            filter_metadata,
            typed_filter_metadata: Vec::new(),
        }),
        route_metadata_context: None,
        tls_session: r.sni.map(|sni| TlsSession { sni }),
    })
}

/// Envoy URL-encodes the PEM it forwards (everything but RFC 3986's unreserved characters).
fn percent_encode_pem(pem: &str) -> String {
    crate::path::encode_component(pem)
}

/// Denials that mean the policy broke, not that it said no.
fn is_policy_failure(r: &DenyReason) -> bool {
    matches!(
        r,
        DenyReason::EvalConflict(_)
            | DenyReason::EvalError(_)
            | DenyReason::LimitExceeded(_, _)
            | DenyReason::Timeout
            | DenyReason::InvalidDecisionType(_)
            | DenyReason::InvalidDecisionField(_)
            | DenyReason::NoPolicy(_)
    )
}

/// The error of a case the bytecode VM (which serves it) decided otherwise than the
/// interpreter (`reference`, the engine OPA's answers are checked against), if it did: one of
/// them is wrong, whatever the case expects.
fn engines_disagree(served: &Decision, reference: Option<&Decision>) -> Option<String> {
    let r = reference?;
    let key = |d: &Decision| (d.allowed, d.http_status, d.reason_code());
    (key(r) != key(served)).then(|| {
        format!(
            "arbiter's two Rego engines decide this request differently — the bytecode VM (which serves it): {}; the interpreter: {}. A bug in arbiter: please report it with this test",
            describe(served),
            describe(r)
        )
    })
}

fn describe(d: &Decision) -> String {
    let by: Vec<String> = d
        .decided_by
        .iter()
        .map(|b| match &b.rule {
            Some(r) => format!("{}:{r}", b.policy),
            None => b.policy.clone(),
        })
        .collect();
    let mut s = format!(
        "{} ({}), status {}",
        if d.allowed { "allowed" } else { "denied" },
        d.reason
            .as_ref()
            .map_or_else(|| "allowed".to_string(), ToString::to_string),
        d.http_status
    );
    if !by.is_empty() {
        s.push_str(&format!(", decided by {}", by.join(" + ")));
    }
    s
}

fn rule_matches(d: &Decision, want: &str) -> bool {
    d.decided_by.iter().any(|b| {
        let full = b
            .rule
            .as_ref()
            .map_or_else(|| b.policy.clone(), |r| format!("{}:{r}", b.policy));
        b.rule.as_deref() == Some(want)
            || b.policy == want
            || b.policy.ends_with(&format!("/{want}"))
            || full == want
            || full.ends_with(&format!("/{want}"))
    })
}

/// Compare a decision with what the case expects.
pub fn compare(d: &Decision, e: &Expect) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if let Some(a) = e.allowed
        && a != d.allowed
    {
        out.push(Mismatch {
            what: "allowed".into(),
            expected: a.to_string(),
            actual: d.allowed.to_string(),
        });
    }
    if let Some(s) = e.http_status
        && s != d.http_status
    {
        out.push(Mismatch {
            what: "http_status".into(),
            expected: s.to_string(),
            actual: d.http_status.to_string(),
        });
    }
    if let Some(r) = &e.reason
        && r != d.reason_code()
    {
        out.push(Mismatch {
            what: "reason".into(),
            expected: r.clone(),
            actual: d.reason_code().to_string(),
        });
    }
    if let Some(hs) = &e.headers {
        for (name, want) in hs {
            let got: Vec<&str> = d
                .headers
                .iter()
                .chain(&d.response_headers_to_add)
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str())
                .collect();
            if !got.contains(&want.as_str()) {
                out.push(Mismatch {
                    what: format!("headers.{name}"),
                    expected: want.clone(),
                    actual: if got.is_empty() {
                        "absent".into()
                    } else {
                        got.join(", ")
                    },
                });
            }
        }
    }
    if let Some(r) = &e.rule
        && !rule_matches(d, r)
    {
        out.push(Mismatch {
            what: "rule".into(),
            expected: r.clone(),
            actual: if d.decided_by.is_empty() {
                "none".into()
            } else {
                d.decided_by
                    .iter()
                    .map(|b| match &b.rule {
                        Some(r) => format!("{}:{r}", b.policy),
                        None => b.policy.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    out
}

/// Run every case.
pub(crate) fn run(
    sources: &PolicySources,
    files: &[DecisionFile],
    options: &TestOptions,
) -> Result<Vec<TestResult>, LoadError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let load = LoadOptions {
        rego_version: options.rego_version,
        include_tests: false,
        eval_timeout: Some(options.timeout),
        cel_cost_limit: LoadOptions::default().cel_cost_limit,
        istio: options.istio.clone(),
        // Decisions are made as the server makes them.
        strict_builtin_errors: true,
    };
    let base = Arc::new(PolicySet::from_sources(sources, &load)?);
    let mut with_data: HashMap<String, Arc<PolicySet>> = HashMap::new();
    let mut results = Vec::new();
    for f in files {
        for case in &f.cases {
            let mut result = TestResult {
                kind: TestKind::Decision,
                file: f.file.clone(),
                line: case.line,
                col: 0,
                package: f.path.as_rego().to_string(),
                name: case.name.clone(),
                outcome: Outcome::Pass,
                duration: Duration::ZERO,
                output: Vec::new(),
                bench: None,
            };
            if let Some(re) = &options.filter
                && !re.is_match(&result.full_name())
            {
                continue;
            }
            let set = match &case.data {
                None => base.clone(),
                Some(d) => {
                    let key = d.to_string();
                    match with_data.get(&key) {
                        Some(s) => s.clone(),
                        None => {
                            let s = Arc::new(PolicySet::from_sources_with_data(sources, &load, d)?);
                            with_data.insert(key, s.clone());
                            s
                        }
                    }
                }
            };
            let authorizer = Authorizer::new(
                set,
                f.path.clone(),
                InputOptions {
                    grpc: f.grpc.clone(),
                    ..InputOptions::default()
                },
            );
            let decide_on = |authorizer: &Authorizer| {
                let _frozen = case.now_ns.map(crate::clock::freeze);
                authorizer.check(&case.request).decision
            };
            let decide = || decide_on(&authorizer);
            let start = Instant::now();
            let decision = decide();
            result.duration = start.elapsed();
            // Served requests are decided on the bytecode VM where the path compiles for it; the
            // interpreter is the reference. Where they decide a case differently, one of them
            // is wrong whatever the test expects: the case fails, saying so.
            let reference = (authorizer.rego_engine() == Ok(RegoEngine::Rvm)).then(|| {
                // The same authorizer on the interpreter (nothing compiled again).
                decide_on(&authorizer.clone().with_rego_engine(RegoEngine::Interpreter))
            });
            let disagreement = engines_disagree(&decision, reference.as_ref());
            result.outcome = match &decision.reason {
                _ if disagreement.is_some() => Outcome::Error(disagreement.unwrap_or_default()),
                Some(r) if is_policy_failure(r) && case.expect.reason.is_none() => {
                    Outcome::Error(format!("the decision failed: {r}"))
                }
                _ => {
                    let mismatches = compare(&decision, &case.expect);
                    if mismatches.is_empty() {
                        Outcome::Pass
                    } else {
                        Outcome::Fail(Failure {
                            message: match &case.doc {
                                Some(doc) => format!("got: {} (see {doc})", describe(&decision)),
                                None => format!("got: {}", describe(&decision)),
                            },
                            failed_at: None,
                            mismatches,
                        })
                    }
                }
            };
            if let (Some(budget), Outcome::Pass) = (options.bench, &result.outcome) {
                let start = Instant::now();
                let mut iterations: u64 = 0;
                while iterations < 10 || start.elapsed() < budget {
                    let _ = decide();
                    iterations += 1;
                }
                result.bench = Some(Bench {
                    iterations,
                    ns_per_op: start.elapsed().as_nanos() as f64 / iterations as f64,
                });
            }
            results.push(result);
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestReport, run as run_all};

    fn sources(rego: &str, cel: Option<&str>, test: &str) -> PolicySources {
        let mut s = PolicySources::default();
        if !rego.is_empty() {
            s.add_rego("authz.rego", rego);
        }
        if let Some(c) = cel {
            s.cel.push(SourceFile {
                name: "authz.cel.yaml".into(),
                text: c.into(),
            });
        }
        s.decision_tests.push(SourceFile {
            name: "authz_test.yaml".into(),
            text: test.into(),
        });
        s
    }

    const REGO: &str = r#"package envoy.authz
default allow := false
allow if {
    input.attributes.request.http.method == "GET"
    input.attributes.source.principal in data.readers
}
allow if {
    input.parsed_path == ["night"]
    [h, _, _] := time.clock([time.now_ns(), "UTC"])
    h >= 22
}
"#;

    fn labels(r: &TestReport) -> Vec<(&str, &'static str)> {
        r.results
            .iter()
            .map(|t| (t.name.as_str(), t.outcome.label()))
            .collect()
    }

    #[test]
    fn file_request_defaults_and_envoy_fields_reach_the_input() {
        let f = parse(
            &SourceFile {
                name: "t_test.yaml".into(),
                text: r#"
doc: https://example.com/cases
request:
  host: api.example.com
  headers: {x-a: "1"}
  context_extensions: {namespace: foo, app: web}
cases:
  - name: merged
    doc: https://example.com/one
    request:
      headers: {x-b: "2"}
      context_extensions: {app: api}
      destination_port: 9000
      sni: www.example.com
      jwt_payload: {iss: issuer.example.com, sub: u}
    expect: {allowed: true}
  - name: defaults only
    request: {}
    expect: {allowed: false}
"#
                .into(),
            },
            crate::request::no_check_request_reader,
        )
        .unwrap();
        let c = &f.cases[0];
        assert_eq!(c.doc.as_deref(), Some("https://example.com/one"));
        assert_eq!(f.cases[1].doc.as_deref(), Some("https://example.com/cases"));
        let input = crate::input::build_input(&c.request, &InputOptions::default()).unwrap();
        let v = crate::value::to_json(&input.value);
        let a = &v["attributes"];
        assert_eq!(
            a["contextExtensions"],
            json!({"namespace": "foo", "app": "api"})
        );
        assert_eq!(
            a["destination"]["address"]["socketAddress"]["portValue"],
            json!(9000)
        );
        assert_eq!(a["tlsSession"]["sni"], json!("www.example.com"));
        assert_eq!(
            a["metadataContext"]["filterMetadata"]["envoy.filters.http.jwt_authn"]["issuer.example.com"]
                ["sub"],
            json!("u")
        );
        assert_eq!(a["request"]["http"]["host"], json!("api.example.com"));
        assert_eq!(a["request"]["http"]["headers"]["x-a"], json!("1"));
        assert_eq!(a["request"]["http"]["headers"]["x-b"], json!("2"));
        assert_eq!(
            c.short.as_ref().unwrap()["context_extensions"]["namespace"],
            json!("foo")
        );
        let e = parse(&SourceFile {
            name: "t_test.yaml".into(),
            text: "cases:\n  - name: no issuer\n    request: {jwt_payload: {sub: u}}\n    expect: {allowed: true}\n".into(),
        }, crate::request::no_check_request_reader)
        .unwrap_err();
        assert!(
            e[0].message.contains("`jwt_payload` needs an `iss` claim"),
            "{e:?}"
        );
    }

    #[test]
    fn short_and_full_requests_data_overrides_and_now() {
        let s = sources(
            REGO,
            None,
            r#"
data: {readers: ["spiffe://td/ns/a/sa/reader"]}
cases:
  - name: reader reads
    request: {method: GET, path: /x, spiffe_id: spiffe://td/ns/a/sa/reader}
    expect: {allowed: true, http_status: 200}
  - name: stranger denied
    request: {method: GET, path: /x, principal: spiffe://td/ns/a/sa/other}
    expect: {allowed: false, http_status: 403, reason: policy_denied}
  - name: stranger with an override
    request: {method: GET, path: /x, principal: spiffe://td/ns/a/sa/other}
    data: {readers: ["spiffe://td/ns/a/sa/other"]}
    expect: {allowed: true}
  - name: full input
    request:
      attributes:
        source: {principal: spiffe://td/ns/a/sa/reader}
        request: {http: {method: GET, path: /x, headers: {":path": /x, ":method": GET}}}
    expect: {allowed: true}
  - name: at night
    now: "2026-11-26T23:00:00Z"
    request: {path: /night}
    expect: {allowed: true}
  - name: by day
    now: "2026-11-26T12:00:00Z"
    request: {path: /night}
    expect: {allowed: false}
  - name: wrong expectation
    request: {method: POST, path: /x, spiffe_id: spiffe://td/ns/a/sa/reader}
    expect: {allowed: true, http_status: 200}
  - name: dot segments are refused
    request: {path: /a/../x}
    expect: {allowed: false, http_status: 400, reason: non_canonical_path}
"#,
        );
        // Stands in for the server's converter (ext-authz's protojson, tested there): reads
        // just what this file's whole input holds.
        fn reader(j: &Json) -> Result<AuthzRequest, String> {
            let text = |p: &str| {
                j.pointer(p)
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let headers = j
                .pointer("/attributes/request/http/headers")
                .and_then(Json::as_object)
                .ok_or("no headers")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            Ok(AuthzRequest {
                source: Some(Peer {
                    principal: text("/attributes/source/principal"),
                    ..Peer::default()
                }),
                http: Some(HttpRequest {
                    method: text("/attributes/request/http/method"),
                    path: text("/attributes/request/http/path"),
                    headers,
                    ..HttpRequest::default()
                }),
                ..AuthzRequest::default()
            })
        }
        let options = TestOptions {
            check_request_reader: reader,
            ..TestOptions::default()
        };
        let r = run_all(&s, &options).unwrap();
        assert_eq!(
            labels(&r),
            vec![
                ("reader reads", "PASS"),
                ("stranger denied", "PASS"),
                ("stranger with an override", "PASS"),
                ("full input", "PASS"),
                ("at night", "PASS"),
                ("by day", "PASS"),
                ("wrong expectation", "FAIL"),
                ("dot segments are refused", "PASS"),
            ],
            "{r:#?}"
        );
        let Outcome::Fail(f) = &r.results[6].outcome else {
            panic!()
        };
        assert_eq!(
            f.mismatches,
            vec![
                Mismatch {
                    what: "allowed".into(),
                    expected: "true".into(),
                    actual: "false".into()
                },
                Mismatch {
                    what: "http_status".into(),
                    expected: "200".into(),
                    actual: "403".into()
                }
            ]
        );
        assert!(f.message.contains("policy_denied"), "{}", f.message);
    }

    #[test]
    fn cel_and_rego_together_with_rules_and_headers() {
        let cel = r#"
name: api
rules:
  - name: block-debug
    effect: deny
    when: request.headers["x-debug"] == "1"
    status: 429
  - name: readers
    effect: allow
    when: request.method == "GET"
    headers: {x-checked: "yes"}
"#;
        let s = sources(
            REGO,
            Some(cel),
            r#"
- name: debug is blocked by CEL
  request: {method: GET, path: /x, headers: {x-debug: "1"}, principal: spiffe://td/ns/a/sa/reader}
  expect: {allowed: false, http_status: 429, rule: block-debug}
- name: both allow
  request: {method: GET, path: /x, principal: spiffe://td/ns/a/sa/reader}
  data: {readers: ["spiffe://td/ns/a/sa/reader"]}
  expect: {allowed: true, rule: "authz.cel.yaml:readers", headers: {x-checked: "yes"}}
- name: CEL allows, Rego does not
  request: {method: GET, path: /x}
  expect: {allowed: false, rule: data.envoy.authz.allow}
- name: wrong rule
  request: {method: GET, path: /x, headers: {x-debug: "1"}}
  expect: {rule: readers}
"#,
        );
        let r = run_all(&s, &TestOptions::default()).unwrap();
        assert_eq!(
            labels(&r),
            vec![
                ("debug is blocked by CEL", "PASS"),
                ("both allow", "PASS"),
                ("CEL allows, Rego does not", "PASS"),
                ("wrong rule", "FAIL"),
            ],
            "{r:#?}"
        );
    }

    /// A case the bytecode VM (which serves the request) and the interpreter decide
    /// differently is an error of the test, whatever it expects. No policy is known to make
    /// them differ (the last, a set leaf beside a general ref head, is left to the
    /// interpreter by regorus patch 65), so the comparison is checked on decisions that
    /// differ, and the whole run on a policy where they agree.
    #[test]
    fn the_two_rego_engines_deciding_differently_fails_the_case() {
        let allow = Decision::allow();
        let deny = Decision::deny(crate::decision::DenyReason::PolicyDenied);
        let why = engines_disagree(&allow, Some(&deny)).expect("they differ");
        assert!(why.contains("two Rego engines decide"), "{why}");
        assert!(
            why.contains("the bytecode VM (which serves it): allowed"),
            "{why}"
        );
        assert_eq!(engines_disagree(&deny, Some(&deny.clone())), None);
        assert_eq!(
            engines_disagree(&allow, None),
            None,
            "no reference, nothing to compare"
        );
        // Where they agree, the expectation decides as before.
        let agreeing = sources(
            "package envoy.authz\nimport rego.v1\nallow if input.parsed_path == [\"x\"]\n",
            None,
            "- name: allowed\n  request: {path: /x}\n  expect: {allowed: true}\n",
        );
        let r = run_all(&agreeing, &TestOptions::default()).unwrap();
        assert_eq!(labels(&r), vec![("allowed", "PASS")], "{r:#?}");
    }

    /// regorus patch 65: a multi-value rule with a computed key in its head is OPA's object
    /// of sets. The VM built one set of its keys and members, so with `grants.admin contains
    /// "everything"` beside it, `grants[user]` held for the user "everything" and `arbiter
    /// serve` allowed what OPA 1.7.1 denies (`opa eval`: `grants` is `{"admin":
    /// ["everything"], "alice": ["read"]}`, `allow` false). The VM now leaves such a rule to
    /// the interpreter; the served decision is OPA's.
    #[test]
    fn a_multi_value_rule_with_a_computed_key_is_decided_as_in_opa() {
        let rego = r#"package envoy.authz
import rego.v1
default allow := false
grants[user] contains perm if {
  some user, perms in data.perms
  some perm in perms
}
grants.admin contains "everything"
allow if grants[input.attributes.request.http.headers["x-user"]]
"#;
        let mut s = sources(
            rego,
            None,
            r#"
- name: a grant's member is no user
  request: {path: /x, headers: {x-user: everything}}
  expect: {allowed: false}
- name: a user with grants
  request: {path: /x, headers: {x-user: alice}}
  expect: {allowed: true}
- name: the admin
  request: {path: /x, headers: {x-user: admin}}
  expect: {allowed: true}
"#,
        );
        s.add_data(
            "data.json",
            serde_json::json!({"perms": {"alice": ["read"]}}),
        );
        let r = run_all(&s, &TestOptions::default()).unwrap();
        assert_eq!(
            labels(&r),
            vec![
                ("a grant's member is no user", "PASS"),
                ("a user with grants", "PASS"),
                ("the admin", "PASS")
            ],
            "{r:#?}"
        );
        let path = crate::data_ref::DataRef::parse("envoy/authz/allow").unwrap();
        let set = crate::policy_set::PolicySet::from_sources(
            &s,
            &crate::policy_set::LoadOptions::default(),
        )
        .unwrap();
        assert!(
            crate::rvm::RvmDecider::compile(&set, &path).is_err(),
            "the VM compiles the rule it built as a set"
        );
    }

    #[test]
    fn policy_errors_are_test_errors_not_denials() {
        let rego = r#"package envoy.authz
allow if to_number("abc") > 0
"#;
        let s = sources(
            rego,
            None,
            r#"
- name: expects a denial
  request: {path: /x}
  expect: {allowed: false}
- name: expects the error
  request: {path: /x}
  expect: {allowed: false, reason: eval_error}
"#,
        );
        let r = run_all(&s, &TestOptions::default()).unwrap();
        assert_eq!(
            labels(&r),
            vec![("expects a denial", "ERROR"), ("expects the error", "PASS")],
            "{r:#?}"
        );
    }

    #[test]
    fn bad_files_are_load_errors_with_lines() {
        let cases = [
            (
                "cases:\n  - name: a\n    request: {path: /}\n    expected: {allowed: true}\n",
                "unknown field `expected`",
                4,
            ),
            (
                "cases:\n  - name: a\n    request: {path: /}\n    expect: {}\n",
                "`expect` must name",
                2,
            ),
            (
                "cases:\n  - name: a\n    request: {methdo: GET}\n    expect: {allowed: true}\n",
                "unknown field `methdo`",
                2,
            ),
            (
                "cases:\n  - name: a\n    request: {spiffe_id: \"spiffe://TD/x\"}\n    expect: {allowed: true}\n",
                "spiffe_id",
                2,
            ),
            (
                "now: yesterday\ncases:\n  - name: a\n    request: {}\n    expect: {allowed: true}\n",
                "RFC 3339",
                1,
            ),
        ];
        for (text, want, line) in cases {
            let s = sources(REGO, None, text);
            let e = run_all(&s, &TestOptions::default()).unwrap_err();
            let d = &e.diagnostics[0];
            assert!(d.message.contains(want), "{text}: {d}");
            assert_eq!(d.line, line, "{text}: {d}");
            assert_eq!(d.file, "authz_test.yaml");
        }
    }
}
