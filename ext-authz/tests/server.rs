//! The servers in-process over loopback: every failure mode is a `CheckResponse` denial with a
//! reason, never a gRPC error; dry-run, decision logs, health, metrics and the Data API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use arbiter_ext_authz::{ListenAddr, RunningServer, ServeOptions, ServerConfig};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};

const POLICY: &str = r#"
package envoy.authz

default allow := false

allow if input.parsed_path == ["ok"]

allow := {"allowed": false, "http_status": 429, "body": "slow down"} if input.parsed_path == ["limited"]

allow if {
    input.parsed_path == ["slow"]
    some x in numbers.range(1, 100000)
    some y in numbers.range(1, 100000)
    x + y < 0
}

allow if {
    input.parsed_path == ["broken"]
    1 / count([]) > 0
}
"#;

fn authorizer(policy: &str) -> Authorizer {
    let mut s = PolicySources::default();
    s.add_rego("policy.rego", policy);
    let set = PolicySet::from_sources(
        &s,
        &LoadOptions {
            eval_timeout: Some(Duration::from_millis(20)),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    )
}

fn config(
    workers: usize,
    queue: usize,
    dry_run: bool,
    log: Option<DecisionLogConfig>,
) -> ServerConfig {
    ServerConfig {
        grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
        http: Some(ListenAddr::Tcp("127.0.0.1:0".into())),
        options: ServeOptions {
            dry_run,
            deadline: Duration::from_millis(40),
            labels: InstanceLabels {
                id: "test-instance".into(),
                version: "0.0.0".into(),
                extra: Default::default(),
            },
            api: Default::default(),
            grpc_duration_buckets: Vec::new(),
            active_config: serde_json::Value::Null,
        },
        workers,
        queue,
        decision_log: log,
        tls: None,
        limits: Default::default(),
        ui: None,
        diagnostic: None,
        http_authz: None,
        otlp: None,
    }
}

fn check_request(path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    headers: [(
                        "traceparent".to_string(),
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
                    )]
                    .into_iter()
                    .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

async fn client(s: &RunningServer) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{}", s.grpc_addr.unwrap()))
        .await
        .unwrap()
}

fn status(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(-1, |s| s.code)
}

fn denied(r: &CheckResponse) -> (u16, String) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (
            u16::try_from(d.status.as_ref().unwrap().code).unwrap(),
            d.body.clone(),
        ),
        other => panic!("not denied: {other:?}"),
    }
}

fn metadata_str(r: &CheckResponse, key: &str) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    match r
        .dynamic_metadata
        .as_ref()?
        .fields
        .get(key)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn every_failure_is_a_denial_with_a_reason() {
    let s = arbiter_ext_authz::start(config(2, 64, false, None), authorizer(POLICY))
        .await
        .unwrap();
    let mut c = client(&s).await;

    let r = c.check(check_request("/ok")).await.unwrap().into_inner();
    assert_eq!(status(&r), 0);
    assert!(matches!(r.http_response, Some(HttpResponse::OkResponse(_))));
    assert!(metadata_str(&r, "decision_id").is_some());

    let r = c.check(check_request("/nope")).await.unwrap().into_inner();
    assert_eq!(status(&r), 7);
    assert_eq!(denied(&r), (403, String::new()));

    let r = c
        .check(check_request("/limited"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&r), (429, "slow down".into()));

    // An evaluation error: a denial carrying the reason, not a gRPC error.
    let r = c
        .check(check_request("/broken"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&r), 7);
    assert_eq!(denied(&r), (403, "eval_error".into()));
    assert_eq!(
        metadata_str(&r, "arbiter_reason").as_deref(),
        Some("eval_error")
    );

    // A runaway policy: stopped by the time limit or the deadline, denied either way.
    let r = c.check(check_request("/slow")).await.unwrap().into_inner();
    assert_eq!(status(&r), 7);
    let reason = metadata_str(&r, "arbiter_reason").unwrap();
    assert!(
        reason == "timeout" || reason == "limit_exceeded:time",
        "{reason}"
    );

    // A malformed request.
    let r = c
        .check(check_request("/a/../ok"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&r), (400, "non_canonical_path".into()));

    // An empty CheckRequest.
    let r = c.check(CheckRequest::default()).await.unwrap().into_inner();
    assert_eq!(status(&r), 7);

    // Bytes that are not a CheckRequest: a gRPC error (INTERNAL, as prost's codec answers),
    // never a response that could be read as a decision; another method: UNIMPLEMENTED.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", s.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    let call = |path: &'static str, bytes: Vec<u8>| {
        let mut raw = raw.clone();
        async move {
            raw.ready().await.unwrap();
            raw.unary(
                tonic::Request::new(bytes),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
        }
    };
    let check = "/envoy.service.auth.v3.Authorization/Check";
    // Field 1 (attributes) as a varint: the wrong wire type.
    let e = call(check, vec![0x08, 0x01]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    // A path that is not UTF-8, deep inside.
    let e = call(
        check,
        vec![0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x22, 0x01, 0xe9],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
    // The same bytes with a valid path decide.
    let r = call(
        check,
        vec![0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x22, 0x01, b'/'],
    )
    .await
    .unwrap()
    .into_inner();
    assert!(r.status.is_some());
    let e = call("/envoy.service.auth.v3.Authorization/Other", Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    raw.ready().await.unwrap();

    s.shutdown().await.unwrap();
}

/// A client codec that sends bytes as they are and reads a `CheckResponse`.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = CheckResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = CheckResponse;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<CheckResponse>, tonic::Status> {
        use prost::Message;
        CheckResponse::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

#[tokio::test]
async fn overload_is_shed_as_denials() {
    let s = arbiter_ext_authz::start(config(1, 1, false, None), authorizer(POLICY))
        .await
        .unwrap();
    let c = client(&s).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.check(check_request("/slow"))
                .await
                .map(|r| r.into_inner())
        }));
    }
    let mut overload = 0;
    for t in tasks {
        let r = t
            .await
            .unwrap()
            .expect("a CheckResponse, never a gRPC error");
        assert_eq!(status(&r), 7);
        if metadata_str(&r, "arbiter_reason").as_deref() == Some("overload") {
            overload += 1;
        }
    }
    assert!(overload > 0, "no check was shed");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn dry_run_allows_and_logs_the_real_decision() {
    let dir =
        arbiter_engine::scratch::ScratchDir::new(&format!("arbiter-dryrun-{}", std::process::id()));
    let log = dir.join("decisions.jsonl");
    let _ = std::fs::remove_file(&log);
    let s = arbiter_ext_authz::start(
        config(
            2,
            64,
            true,
            Some(DecisionLogConfig {
                queue: 100,
                ..DecisionLogConfig::to(LogTarget::File(log.clone()))
            }),
        ),
        authorizer(POLICY),
    )
    .await
    .unwrap();
    let mut c = client(&s).await;
    let r = c.check(check_request("/nope")).await.unwrap().into_inner();
    assert_eq!(status(&r), 0, "dry-run answers OK");
    let id = metadata_str(&r, "decision_id").unwrap();
    let r2 = c.check(check_request("/ok")).await.unwrap().into_inner();
    let id2 = metadata_str(&r2, "decision_id").unwrap();
    s.shutdown().await.unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    let e = events
        .iter()
        .find(|e| e["decision_id"] == id.as_str())
        .unwrap();
    assert_eq!(e["allowed"], false, "the real decision is logged");
    assert_eq!(e["dry_run"], true);
    assert_eq!(e["path"], "envoy/authz/allow");
    assert_eq!(e["input"]["parsed_path"], serde_json::json!(["nope"]));
    assert_eq!(e["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(e["labels"]["id"], "test-instance");
    assert!(
        e["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let e2 = events
        .iter()
        .find(|e| e["decision_id"] == id2.as_str())
        .unwrap();
    assert_eq!(e2["allowed"], true);
    assert_eq!(e2["result"], true);
}

async fn http(s: &RunningServer, method: &str, target: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(s.http_addr.unwrap())
        .await
        .unwrap();
    let req = format!(
        "{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn health_metrics_and_data_api() {
    let policy = format!("{POLICY}\nroles := {{\"alice\": [\"admin\"]}}\n");
    let s = arbiter_ext_authz::start(config(2, 64, false, None), authorizer(&policy))
        .await
        .unwrap();
    let (code, body) = http(&s, "GET", "/health", "").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("revision"));

    let (code, body) = http(
        &s,
        "POST",
        "/v1/data/envoy/authz/allow",
        r#"{"input": {"parsed_path": ["ok"]}}"#,
    )
    .await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"], true);
    assert!(v["decision_id"].is_string());

    let (code, body) = http(&s, "GET", "/v1/data/envoy/authz/roles/alice", "").await;
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["result"],
        serde_json::json!(["admin"])
    );

    // Undefined: no `result`.
    let (code, body) = http(&s, "GET", "/v1/data/envoy/authz/nothing", "").await;
    assert_eq!(code, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .get("result")
            .is_none()
    );

    // Rego syntax in the URL is a key, never code (CVE-2025-46569).
    let (code, body) = http(
        &s,
        "GET",
        "/v1/data/envoy/authz%5B%22allow%22%5D%20%3D%20x",
        "",
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .get("result")
            .is_none(),
        "{body}"
    );
    let (code, _) = http(&s, "GET", "/v1/data/a%0Ab", "").await;
    assert_eq!(code, 400);
    let (code, _) = http(&s, "POST", "/v1/data/envoy/authz/allow", "not json").await;
    assert_eq!(code, 400);

    let mut c = client(&s).await;
    c.check(check_request("/ok")).await.unwrap();
    let (code, metrics) = http(&s, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("arbiter_decisions_total{outcome=\"allow\",origin=\"grpc\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("arbiter_decisions_total{outcome=\"allow\",origin=\"data_api\"}"));
    assert!(metrics.contains("arbiter_ready 1"));

    // gRPC health.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    s.shutdown().await.unwrap();
}

/// Awaiting its policy (a bundle URL not fetched yet), the server denies every check, and
/// both health checks say NOT_SERVING; the first good reload makes it SERVING and deciding.
#[tokio::test]
async fn awaiting_policy_is_not_serving_until_a_reload() {
    let empty = {
        let set =
            PolicySet::from_sources(&PolicySources::default(), &LoadOptions::default()).unwrap();
        Authorizer::new(
            Arc::new(set),
            DataRef::parse("envoy/authz/allow").unwrap(),
            InputOptions::default(),
        )
    };
    let s = arbiter_ext_authz::start_with(config(0, 16, false, None), empty, true)
        .await
        .unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let h = tonic_health::pb::health_client::HealthClient::new(channel);
    let health = |service: &'static str| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        assert_eq!(
            health(service).await,
            ServingStatus::NotServing as i32,
            "{service:?}"
        );
    }
    // OPA's probes (issue 25, item 5): plain /health stays 200, so a liveness probe does not
    // restart a server waiting for its bundle; `?bundles` and `?plugins` say it is not ready.
    let (code, body) = http(&s, "GET", "/health", "").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"awaiting_policy\":true"), "{body}");
    for (query, error) in [
        ("bundles", "one or more bundles are not activated"),
        ("bundle=true", "one or more bundles are not activated"),
        ("plugins", "one or more plugins are not up"),
        (
            "plugins&exclude-plugin=decision_logs",
            "one or more plugins are not up",
        ),
    ] {
        let (code, body) = http(&s, "GET", &format!("/health?{query}"), "").await;
        assert_eq!(code, 500, "{query}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], error, "{query}");
    }
    // Excluding the plugin that is down makes `?plugins` healthy; `bundles=false` asks nothing.
    for query in ["plugins&exclude-plugin=bundle", "bundles=false"] {
        let (code, body) = http(&s, "GET", &format!("/health?{query}"), "").await;
        assert_eq!(code, 200, "{query}: {body}");
    }
    let mut c = client(&s).await;
    let r = c.check(check_request("/ok")).await.unwrap().into_inner();
    assert_eq!(status(&r), 7, "denied");
    assert_eq!(
        metadata_str(&r, "arbiter_reason").as_deref(),
        Some("no_policy")
    );

    // The policy arrives.
    let build: arbiter_ext_authz::reload::Build =
        Arc::new(|| Ok(authorizer("package envoy.authz\n\nallow := true\n")));
    arbiter_ext_authz::reload::reload(&s.state, &build).unwrap();
    let start = std::time::Instant::now();
    while health("").await != ServingStatus::Serving as i32 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "gRPC health stayed NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        health("envoy.service.auth.v3.Authorization").await,
        ServingStatus::Serving as i32
    );
    for query in ["", "?bundles", "?plugins"] {
        let (code, body) = http(&s, "GET", &format!("/health{query}"), "").await;
        assert_eq!(code, 200, "{query}: {body}");
        assert!(!body.contains("\"error\""), "{body}");
    }
    let r = c.check(check_request("/ok")).await.unwrap().into_inner();
    assert_eq!(status(&r), 0, "allowed");
    s.shutdown().await.unwrap();
}

/// Issue 16, finding 1 (the log's side): the deadline counts from when the check arrived. A
/// check that waited behind another evaluation and finished after Envoy stopped waiting is the
/// `timeout` denial the caller saw, never an allow, and its event keeps the input it built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_counts_from_arrival() {
    for workers in [0, 2] {
        let s = arbiter_ext_authz::start(config(workers, 16, false, None), authorizer(POLICY))
            .await
            .unwrap();
        let a = authorizer(POLICY);
        let request = arbiter_ext_authz::convert::authz_request(&check_request("/ok")).unwrap();
        let fresh = a.check(&request);
        assert!(fresh.decision.allowed, "the work alone allows");
        // Arrived 100 ms ago (the deadline is 40 ms): refused without evaluating.
        let arrived = std::time::Instant::now() - Duration::from_millis(100);
        let r = s.state.run(arrived, move || fresh).await;
        assert!(!r.decision.allowed);
        assert_eq!(r.decision.reason_code(), "timeout");
        // Arrived in time, but the evaluation ends after the deadline: a timeout that keeps
        // the input it built.
        let (a, request) = (a.clone(), request.clone());
        let r = s
            .state
            .run(std::time::Instant::now(), move || {
                let outcome = a.check(&request);
                std::thread::sleep(Duration::from_millis(60));
                outcome
            })
            .await;
        assert_eq!(r.decision.reason_code(), "timeout", "workers {workers}");
        if workers == 0 {
            assert!(r.input.is_some(), "the finished work's input is kept");
        }
        s.shutdown().await.unwrap();
    }
}
