//! The adversarial suite (`conformance/cases/adversarial/*.yaml`, reliability.md §3 groups A, B,
//! E, F and H): every case in-process and through the gRPC server, against each fixture policy
//! in Rego and in CEL. All failures are reported together.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::loader::SourceFile;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use arbiter_ext_authz::convert::authz_request;
use arbiter_ext_authz::reload::{Build, reload};
use arbiter_ext_authz::{ListenAddr, RunningServer, ServeOptions, ServerConfig};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};
use prost::Message;
use serde::Deserialize;

const DEADLINE: Duration = Duration::from_millis(50);

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cases/adversarial")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    id: String,
    note: String,
    source: String,
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default)]
    rego: Option<String>,
    #[serde(default)]
    cel: Option<String>,
    #[serde(default)]
    cel_generate: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    data: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    request: Option<Req>,
    #[serde(default)]
    generate: Option<BTreeMap<String, usize>>,
    #[serde(default)]
    transport: Option<String>,
    #[serde(default)]
    server_only: bool,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<To>,
    expect: Expect,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Req {
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    header_map: Vec<RawHeader>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    source_address: Option<String>,
    #[serde(default)]
    principal: Option<String>,
    /// `attributes.request.http.host` (default `example.com`).
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    key: String,
    raw: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct To {
    #[serde(default)]
    rego: Option<String>,
    #[serde(default)]
    cel: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    rego_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    decision: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    http_status: Option<u16>,
    /// The gRPC status the server answers with instead of a `CheckResponse`, by its canonical
    /// name (`RESOURCE_EXHAUSTED`).
    #[serde(default)]
    grpc_error: Option<String>,
    #[serde(default)]
    load_error: Option<String>,
    #[serde(default)]
    reload: Option<String>,
}

fn cases() -> Vec<(String, Case)> {
    let mut out = Vec::new();
    for file in [
        "path.yaml",
        "header.yaml",
        "size.yaml",
        "policy.yaml",
        "reload.yaml",
    ] {
        let text = std::fs::read_to_string(dir().join(file)).unwrap();
        let list: Vec<Case> = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for c in list {
            assert!(
                !c.note.is_empty() && !c.source.is_empty(),
                "{}: note and source",
                c.id
            );
            out.push((file.to_string(), c));
        }
    }
    out
}

/// The CheckRequest Envoy would send for a case.
fn check_request(r: &Req, generate: Option<&BTreeMap<String, usize>>) -> CheckRequest {
    let mut path = r.path.clone();
    let mut headers: std::collections::HashMap<String, String> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut body = r.body.clone().unwrap_or_default();
    for (k, n) in generate.into_iter().flatten() {
        match k.as_str() {
            "headers" => {
                for i in 0..*n {
                    headers.insert(format!("x-h{i}"), "v".into());
                }
            }
            "header_bytes" => {
                headers.insert("x-big".into(), "a".repeat(*n));
            }
            "body_nested" => body = format!("{}{}", "[".repeat(*n), "]".repeat(*n)),
            "body_bytes" => body = format!("{{\"pad\": \"{}\"}}", "a".repeat(*n)),
            "path_bytes" => path = format!("{path}{}", "a".repeat(n - path.len())),
            "unique_query_params" => {
                let q: Vec<String> = (0..*n).map(|i| format!("q{i}=1")).collect();
                path = format!("{path}?{}", q.join("&"));
            }
            "query_params" => {
                let q: Vec<String> = (0..*n).map(|i| format!("q{}=1", i % 100)).collect();
                path = format!("{path}?{}", q.join("&"));
            }
            other => panic!("unknown generator {other}"),
        }
    }
    let header_map = (!r.header_map.is_empty()).then(|| HeaderMap {
        headers: r
            .header_map
            .iter()
            .map(|h| HeaderValue {
                key: h.key.clone(),
                value: String::new(),
                raw_value: h.raw.as_bytes().to_vec(),
            })
            .collect(),
    });
    let source = AttributeContext {
        source: Some(attribute_context::Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: r
                        .source_address
                        .clone()
                        .unwrap_or_else(|| "192.0.2.1".into()),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(40000)),
                    ..Default::default()
                })),
            }),
            principal: r.principal.clone().unwrap_or_default(),
            ..Default::default()
        }),
        request: Some(attribute_context::Request {
            time: None,
            http: Some(attribute_context::HttpRequest {
                method: r.method.clone(),
                path,
                host: r.host.clone().unwrap_or_else(|| "example.com".into()),
                scheme: r.scheme.clone().unwrap_or_default(),
                headers: if header_map.is_some() {
                    Default::default()
                } else {
                    headers
                },
                header_map,
                body,
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(source),
    }
}

/// Special transports: a request too large, a Struct too deep, a string that is not UTF-8.
fn raw_request(kind: &str) -> Vec<u8> {
    match kind {
        "oversize" => {
            let r = Req {
                method: "POST".into(),
                path: "/public".into(),
                body: Some("a".repeat(5 << 20)),
                ..Req::default()
            };
            check_request(&r, None).encode_to_vec()
        }
        "deep_struct" => {
            use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
            let mut v = Value {
                kind: Some(Kind::NullValue(0)),
            };
            for _ in 0..150 {
                v = Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [("k".to_string(), v)].into_iter().collect(),
                    })),
                };
            }
            let mut req = check_request(
                &Req {
                    method: "GET".into(),
                    path: "/public".into(),
                    ..Req::default()
                },
                None,
            );
            if let Some(a) = req.attributes.as_mut() {
                let Some(Kind::StructValue(s)) = v.kind else {
                    unreachable!()
                };
                a.metadata_context = Some(Metadata {
                    filter_metadata: [("deep".to_string(), s)].into_iter().collect(),
                    ..Default::default()
                });
            }
            req.encode_to_vec()
        }
        "invalid_utf8" => {
            let mut bytes = check_request(
                &Req {
                    method: "GET".into(),
                    path: "/MARKER".into(),
                    ..Req::default()
                },
                None,
            )
            .encode_to_vec();
            let at = bytes.windows(6).position(|w| w == b"MARKER").unwrap();
            bytes[at] = 0xff;
            bytes
        }
        other => panic!("unknown transport {other}"),
    }
}

/// Transports written as raw HTTP/2 frames: a `Check` whose 5-byte gRPC prefix declares a
/// length (1 MiB for `stalled`, 64 MiB for `declared_over_limit`) and no bytes after it.
const H2_TRANSPORTS: &[&str] = &["stalled", "declared_over_limit"];

/// Open one such stream and wait (at most 10 s) for the server to end it: its gRPC status.
async fn stalled_check(addr: std::net::SocketAddr, declared: u32) -> tonic::Status {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/envoy.service.auth.v3.Authorization/Check"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&declared.to_be_bytes());
    send.send_data(bytes::Bytes::from(prefix), false).unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let response = response.await.unwrap();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
        let pick = |name: &str| {
            headers
                .get(name)
                .or_else(|| trailers.get(name))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        (pick("grpc-status"), pick("grpc-message"))
    })
    .await;
    drop(send);
    driver.abort();
    match answer {
        Ok((code, message)) => {
            tonic::Status::new(tonic::Code::from_i32(code.parse().unwrap_or(2)), message)
        }
        Err(_) => tonic::Status::unknown("the server did not end the stream within 10 s"),
    }
}

/// Sends already-encoded bytes as a `Check` and decodes the answer.
#[derive(Debug, Clone, Default)]
struct RawCodec;

struct RawDecoder;

impl tonic::codec::Decoder for RawDecoder {
    type Item = CheckResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<CheckResponse>, tonic::Status> {
        CheckResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = arbiter_conformance::grpc_body::BytesEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> arbiter_conformance::grpc_body::BytesEncoder {
        arbiter_conformance::grpc_body::BytesEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Policy sources for one variant.
fn sources_of(case: &Case, fixture: Option<&str>, lang: &str) -> PolicySources {
    let mut s = match fixture {
        Some(f) => PolicySources::discover(&[dir().join("policies").join(f)]).unwrap(),
        None => PolicySources::default(),
    };
    if fixture.is_none() {
        if lang != "cel"
            && let Some(r) = &case.rego
        {
            s.add_rego("inline.rego", r.clone());
        }
        if lang != "rego"
            && let Some(c) = &case.cel
        {
            s.cel.push(SourceFile {
                name: "inline.cel.yaml".into(),
                text: c.clone(),
            });
        }
        if let Some(g) = &case.cel_generate {
            let expr = match g.iter().next() {
                Some((k, n)) if k == "nested_list" => {
                    format!("{}1{}", "[".repeat(*n), "]".repeat(*n))
                }
                Some((k, n)) if k == "motif_306" => "!-(".repeat(*n * 8) + "1",
                other => panic!("unknown cel generator {other:?}"),
            };
            s.cel.push(SourceFile {
                name: "generated.cel.yaml".into(),
                text: format!(
                    "name: g\nrules:\n  - name: r\n    effect: allow\n    when: '{expr}'\n"
                ),
            });
        }
        if let Some(d) = &case.data {
            let n = d["big"];
            s.add_data(
                "data.json",
                serde_json::json!({"big": (0..n).collect::<Vec<_>>()}),
            );
        }
    } else {
        if lang == "rego" {
            s.cel.clear();
        }
        if lang == "cel" {
            s.rego.clear();
        }
    }
    s
}

fn load(s: &PolicySources) -> Result<Authorizer, String> {
    let set = PolicySet::from_sources(
        s,
        &LoadOptions {
            eval_timeout: Some(DEADLINE),
            ..LoadOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    ))
}

/// The variants of a case: (label, fixture, language).
fn variants(case: &Case) -> Vec<(String, Option<String>, &'static str)> {
    let mut v = Vec::new();
    if let Some(f) = case.from.as_ref() {
        v.push((format!("{f}/rego"), Some(f.clone()), "rego"));
        v.push((format!("{f}/cel"), Some(f.clone()), "cel"));
        return v;
    }
    for f in &case.policies {
        v.push((format!("{f}/rego"), Some(f.clone()), "rego"));
        v.push((format!("{f}/cel"), Some(f.clone()), "cel"));
    }
    if case.policies.is_empty() {
        if case.rego.is_some() {
            v.push(("inline/rego".into(), None, "rego"));
        }
        if case.cel.is_some() || case.cel_generate.is_some() {
            v.push(("inline/cel".into(), None, "cel"));
        }
    }
    v
}

fn verdict(expect: &Expect, allowed: bool, reason: &str, status: u16) -> Result<(), String> {
    if let Some(d) = &expect.decision
        && (d == "allow") != allowed
    {
        return Err(format!(
            "expected {d}, got {} ({reason})",
            if allowed { "allow" } else { "deny" }
        ));
    }
    if let Some(r) = &expect.reason
        && !r.split('|').any(|alt| alt == reason)
    {
        return Err(format!("expected reason {r}, got {reason}"));
    }
    if let Some(s) = expect.http_status
        && s != status
    {
        return Err(format!("expected status {s}, got {status}"));
    }
    Ok(())
}

fn meta(r: &CheckResponse, key: &str) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match r
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get(key))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(s)) => s.clone(),
        _ => String::new(),
    }
}

fn response_verdict(expect: &Expect, r: &CheckResponse) -> Result<(), String> {
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    let allowed = r.status.as_ref().is_some_and(|s| s.code == 0);
    // The metadata carries the reason of every denial except the policy's own no.
    let reason = match (allowed, meta(r, "arbiter_reason")) {
        (true, _) => "allowed".to_string(),
        (false, m) if m.is_empty() => "policy_denied".to_string(),
        (false, m) => m,
    };
    let status = match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            u16::try_from(d.status.as_ref().map_or(403, |s| s.code)).unwrap_or(0)
        }
        _ => 200,
    };
    verdict(expect, allowed, &reason, status)
}

async fn server(a: Authorizer) -> RunningServer {
    arbiter_ext_authz::start(
        ServerConfig {
            grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
            http: None,
            options: ServeOptions {
                dry_run: false,
                deadline: DEADLINE,
                labels: arbiter_engine::record::InstanceLabels {
                    id: "adversarial".into(),
                    version: "0".into(),
                    extra: Default::default(),
                },
                api: Default::default(),
                grpc_duration_buckets: Vec::new(),
                active_config: serde_json::Value::Null,
            },
            workers: 0,
            queue: 64,
            decision_log: None,
            tls: None,
            // Short, so that the stalled-stream case ends quickly.
            limits: arbiter_engine::limits::Limits {
                request_timeout: std::time::Duration::from_secs(1),
                ..Default::default()
            },
            ui: None,
            diagnostic: None,
            http_authz: None,
            otlp: None,
        },
        a,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_cases_in_process_and_over_grpc() {
    let all = cases();
    let mut failures: Vec<String> = Vec::new();
    let mut runs = 0;
    let mut ids = std::collections::BTreeSet::new();
    for (file, case) in &all {
        assert!(ids.insert(case.id.clone()), "duplicate id {}", case.id);
        for (label, fixture, lang) in variants(case) {
            let name = format!("{file} {} [{label}]", case.id);
            let started = std::time::Instant::now();
            let _slow = SlowNote(&name, started);
            let mut fail = |what: &str, e: String| {
                failures.push(format!("{name} {what}: {e}\n    ({})", case.note))
            };
            // Reloads.
            if let (Some(_), Some(to)) = (&case.from, &case.to) {
                let from = load(&sources_of(case, fixture.as_deref(), lang)).unwrap();
                let s = server(from).await;
                let mut next = PolicySources::default();
                if let Some(r) = &to.rego {
                    next.add_rego("next.rego", r.clone());
                }
                if let Some(n) = to.rego_bytes {
                    next.add_rego(
                        "next.rego",
                        format!("package envoy.authz\nallow := true\n# {}\n", "x".repeat(n)),
                    );
                }
                if let Some(c) = &to.cel {
                    next.cel.push(SourceFile {
                        name: "next.cel.yaml".into(),
                        text: c.clone(),
                    });
                }
                if let Some(d) = &to.data {
                    next.add_data("data.json", d.clone());
                }
                let build: Build = Arc::new(move || {
                    let a = load(&next)?;
                    a.policies()
                        .check_entrypoint(a.path())
                        .map_err(|r| r.to_string())?;
                    Ok(a)
                });
                let result = reload(&s.state, &build);
                let want = case.expect.reload.as_deref().unwrap_or("rejected");
                if result.is_ok() != (want == "accepted") {
                    fail("reload", format!("expected {want}, got {result:?}"));
                }
                let req = check_request(case.request.as_ref().unwrap(), None);
                let mut client =
                    AuthorizationClient::connect(format!("http://{}", s.grpc_addr.unwrap()))
                        .await
                        .unwrap();
                match client.check(req).await {
                    Ok(r) => {
                        if let Err(e) = response_verdict(&case.expect, &r.into_inner()) {
                            fail("after reload", e);
                        }
                    }
                    Err(e) => fail("after reload", format!("gRPC error {e}")),
                }
                s.shutdown().await.unwrap();
                runs += 1;
                continue;
            }
            // Load errors.
            let sources = sources_of(case, fixture.as_deref(), lang);
            let loaded = load(&sources);
            if let Some(want) = &case.expect.load_error {
                match &loaded {
                    Err(e) if e.contains(want.as_str()) => {}
                    Err(e) => fail("load", format!("error without `{want}`: {e}")),
                    Ok(_) => fail("load", format!("loaded; expected an error with `{want}`")),
                }
                runs += 1;
                continue;
            }
            let authorizer = match loaded {
                Ok(a) => a,
                Err(e) => {
                    fail("load", e);
                    continue;
                }
            };
            // In-process.
            let (bytes, proto) = match &case.transport {
                // Frames no gRPC client sends: only the server sees them.
                Some(t) if H2_TRANSPORTS.contains(&t.as_str()) => (None, None),
                Some(t) => (Some(raw_request(t)), None),
                None => (
                    None,
                    Some(check_request(
                        case.request.as_ref().unwrap(),
                        case.generate.as_ref(),
                    )),
                ),
            };
            if let Some(p) = &proto
                && !case.server_only
            {
                let d = authorizer.check(&authz_request(p).unwrap()).decision;
                if let Err(e) = verdict(&case.expect, d.allowed, d.reason_code(), d.http_status) {
                    fail("in-process", e);
                }
            }
            if let (Some(b), Some(t)) = (&bytes, &case.transport)
                && t != "oversize"
            {
                // The decoder refuses these bytes before anything else sees them.
                if CheckRequest::decode(b.as_slice()).is_ok() {
                    fail(
                        "in-process",
                        "the protobuf decoder accepted the bytes".into(),
                    );
                }
            }
            // Over gRPC.
            let s = server(authorizer).await;
            let endpoint = format!("http://{}", s.grpc_addr.unwrap());
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .unwrap()
                .connect()
                .await
                .unwrap();
            let outcome: Result<CheckResponse, tonic::Status> = match (&proto, &bytes) {
                (None, None) => {
                    let declared = match case.transport.as_deref() {
                        Some("declared_over_limit") => 64 << 20,
                        _ => 1 << 20,
                    };
                    Err(stalled_check(s.grpc_addr.unwrap(), declared).await)
                }
                (Some(p), _) => AuthorizationClient::new(channel)
                    .check(p.clone())
                    .await
                    .map(tonic::Response::into_inner),
                (None, Some(b)) => {
                    let mut g = tonic::client::Grpc::new(channel);
                    g.ready().await.unwrap();
                    g.unary(
                        tonic::Request::new(b.clone()),
                        "/envoy.service.auth.v3.Authorization/Check"
                            .parse()
                            .unwrap(),
                        RawCodec,
                    )
                    .await
                    .map(tonic::Response::into_inner)
                }
            };
            match (outcome, &case.expect.grpc_error) {
                (Err(e), Some(code)) if status_name(e.code()) == *code => {}
                (Err(e), Some(code)) => fail(
                    "gRPC",
                    format!(
                        "expected gRPC status {code}, got {}: {e}",
                        status_name(e.code())
                    ),
                ),
                (Ok(r), Some(code)) => fail(
                    "gRPC",
                    format!("expected gRPC status {code}, got a response: {r:?}"),
                ),
                (Err(e), None) => fail("gRPC", format!("gRPC error {e}")),
                (Ok(r), None) => {
                    if let Err(e) = response_verdict(&case.expect, &r) {
                        fail("gRPC", e);
                    }
                }
            }
            s.shutdown().await.unwrap();
            runs += 1;
        }
    }
    eprintln!("adversarial: {} cases, {runs} runs", all.len());
    assert!(all.len() >= 60, "{} cases", all.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A gRPC status code's canonical name (`ResourceExhausted` → `RESOURCE_EXHAUSTED`), as the
/// gRPC status-code list writes it.
fn status_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Prints a case that took more than a second (the suite should stay fast).
struct SlowNote<'a>(&'a str, std::time::Instant);

impl Drop for SlowNote<'_> {
    fn drop(&mut self) {
        let t = self.1.elapsed();
        if t > Duration::from_secs(1) {
            eprintln!("slow: {} took {t:?}", self.0);
        }
    }
}

/// The README states the suite's size: keep it honest.
#[test]
fn readme_states_the_case_count() {
    let n = cases().len();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    assert!(
        readme.contains(&format!("{n} adversarial cases")),
        "README must say `{n} adversarial cases`"
    );
}
