//! OpenTelemetry spans, received by a real OTLP receiver (OpenTelemetry's protobuf definitions)
//! over gRPC and over HTTP: a check continues the trace context it came with (the call's own
//! metadata first, then the checked request's `traceparent`), a caller that did not sample gets
//! no span, the span carries the decision, the decision record names the span, and a collector
//! that fails costs counted drops, not decisions. Then through a real Envoy 1.40 that traces
//! with its OpenTelemetry tracer: arbiter's span is the child of Envoy's span for the check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use arbiter_conformance::envoy::{TempDir, get, http2_cluster, request};
use arbiter_conformance::harness::{Harness, authorizer_for, loopback_config, read_events};
use arbiter_conformance::otlp::{Received, Receiver};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use arbiter_ext_authz::otel::{OtlpConfig, Protocol};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};

const POLICY: &str = r#"package envoy.authz

default allow := false

allow if input.parsed_path[0] == "public"

allow if {
	input.parsed_path[0] == "broken"
	1 / count([]) > 0
}
"#;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const PRINCIPAL: &str = "spiffe://example.org/ns/shop/sa/web";

fn policy_dir() -> TempDir {
    let dir = TempDir::new("tracing").unwrap();
    std::fs::create_dir_all(dir.0.join("policy")).unwrap();
    std::fs::write(dir.0.join("policy/authz.rego"), POLICY).unwrap();
    dir
}

fn otlp(addr: std::net::SocketAddr, protocol: Protocol) -> OtlpConfig {
    let mut c = OtlpConfig::new(format!("http://{addr}"), protocol);
    c.delay = Duration::from_millis(50);
    c.timeout = Duration::from_secs(2);
    c.headers = vec![("x-collector-key".into(), "k1".into())];
    c
}

/// arbiter exporting spans with `o` (and a decision log, when given), and a client for it.
async fn serve_traced(
    dir: &TempDir,
    o: OtlpConfig,
    log: Option<DecisionLogConfig>,
) -> (
    arbiter_ext_authz::RunningServer,
    AuthorizationClient<tonic::transport::Channel>,
) {
    let mut config = loopback_config(log);
    config.otlp = Some(o);
    let authorizer = authorizer_for(&dir.0.join("policy"), "envoy/authz/allow").unwrap();
    let server = arbiter_ext_authz::start(config, authorizer).await.unwrap();
    let client = AuthorizationClient::connect(format!("http://{}", server.grpc_addr.unwrap()))
        .await
        .unwrap();
    (server, client)
}

fn check(path: &str, traceparent: Option<&str>) -> CheckRequest {
    let mut headers = std::collections::HashMap::new();
    if let Some(t) = traceparent {
        headers.insert("traceparent".to_string(), t.to_string());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                principal: PRINCIPAL.into(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "shop".into(),
                    headers,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn decision_id(r: &CheckResponse) -> String {
    use envoy_types::pb::google::protobuf::value::Kind;
    match r
        .dynamic_metadata
        .as_ref()
        .and_then(|m| m.fields.get("decision_id"))
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("no decision id in the response: {other:?}"),
    }
}

fn by_decision<'a>(spans: &'a [Received], id: &str) -> Option<&'a Received> {
    spans
        .iter()
        .find(|s| s.attr("arbiter.decision_id").as_deref() == Some(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_continue_the_callers_trace_over_otlp_grpc() {
    let dir = policy_dir();
    let receiver = Receiver::grpc().await.unwrap();
    let log = dir.0.join("decisions.log");
    let (server, mut client) = serve_traced(
        &dir,
        otlp(receiver.addr, Protocol::Grpc),
        Some(DecisionLogConfig::to(LogTarget::File(log.clone()))),
    )
    .await;
    let call = |req: CheckRequest, meta: &[(&'static str, &str)]| {
        let mut r = tonic::Request::new(req);
        for (k, v) in meta {
            r.metadata_mut().insert(*k, v.parse().unwrap());
        }
        r
    };
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    // 1. The call's metadata (Envoy's span for the check) is the parent, over the request's.
    let meta_parent = "1111111111111111";
    let r1 = client
        .check(call(
            check(
                "/public/a",
                Some(&format!("00-{TRACE}-2222222222222222-01")),
            ),
            &[
                ("traceparent", &format!("00-{TRACE}-{meta_parent}-01")),
                ("tracestate", "vendor=x"),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    // 2. No metadata: the checked request's own `traceparent`.
    let r2 = client
        .check(call(check("/private", Some(&sampled)), &[]))
        .await
        .unwrap()
        .into_inner();
    // 3. A caller that did not sample: no span.
    let r3 = client
        .check(call(
            check("/public/b", None),
            &[("traceparent", &format!("00-{TRACE}-{PARENT}-00"))],
        ))
        .await
        .unwrap()
        .into_inner();
    // 4. No context at all: a new trace (100 % sampled by default).
    let r4 = client
        .check(call(check("/broken", None), &[]))
        .await
        .unwrap()
        .into_inner();
    let spans = receiver
        .spans
        .wait_for(Duration::from_secs(10), |s| s.len() >= 3);
    // Let a span that should not exist have its chance to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans = receiver
        .spans
        .all()
        .into_iter()
        .chain(spans)
        .collect::<Vec<_>>();

    let s1 = by_decision(&spans, &decision_id(&r1)).expect("a span for check 1");
    assert_eq!(s1.trace_id(), TRACE);
    assert_eq!(s1.parent_span_id(), meta_parent);
    assert_eq!(s1.span.trace_state, "vendor=x");
    assert_eq!(s1.span.name, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(s1.span.kind, 2, "SERVER");
    assert_eq!(s1.attr("arbiter.decision").as_deref(), Some("allow"));
    assert_eq!(s1.attr("arbiter.reason").as_deref(), Some("allowed"));
    assert_eq!(s1.attr("arbiter.identity").as_deref(), Some(PRINCIPAL));
    assert_eq!(
        s1.attr("arbiter.path").as_deref(),
        Some("envoy/authz/allow")
    );
    assert_eq!(s1.attr("rpc.method").as_deref(), Some("Check"));
    assert!(
        s1.attr("arbiter.policy")
            .is_some_and(|p| p.contains("allow"))
    );
    assert!(s1.attr("arbiter.revision").is_some_and(|r| !r.is_empty()));
    assert!(s1.span.end_time_unix_nano >= s1.span.start_time_unix_nano);
    assert!(s1.span.start_time_unix_nano > 1_700_000_000_000_000_000);
    assert_eq!(s1.resource_attr("service.name").as_deref(), Some("arbiter"));
    assert_eq!(
        s1.resource_attr("service.instance.id").as_deref(),
        Some("test")
    );
    assert!(
        s1.headers
            .contains(&("x-collector-key".into(), "k1".into())),
        "{:?}",
        s1.headers
    );

    let s2 = by_decision(&spans, &decision_id(&r2)).expect("a span for check 2");
    assert_eq!(
        (s2.trace_id().as_str(), s2.parent_span_id().as_str()),
        (TRACE, PARENT)
    );
    assert_eq!(s2.attr("arbiter.decision").as_deref(), Some("deny"));
    assert_eq!(s2.span.status, None, "a policy's denial is not an error");

    assert!(
        by_decision(&spans, &decision_id(&r3)).is_none(),
        "unsampled caller"
    );

    let s4 = by_decision(&spans, &decision_id(&r4)).expect("a span for check 4");
    assert_ne!(s4.trace_id(), TRACE);
    assert_eq!(s4.parent_span_id(), "", "a new trace's root");
    let status = s4.span.status.clone().expect("an error status");
    assert_eq!(status.code, 2, "ERROR");
    assert!(!status.message.is_empty());
    assert_eq!(s4.attr("arbiter.reason").as_deref(), Some("eval_error"));

    server.shutdown().await.unwrap();
    // The record names the span; an unsampled check names its caller's.
    let events = read_events(&log).unwrap();
    let event = |id: String| {
        events
            .iter()
            .find(|e| e["decision_id"] == id.as_str())
            .cloned()
            .unwrap()
    };
    let e1 = event(decision_id(&r1));
    assert_eq!(
        (e1["trace_id"].as_str(), e1["span_id"].as_str()),
        (Some(TRACE), Some(s1.span_id().as_str()))
    );
    let e3 = event(decision_id(&r3));
    assert_eq!(
        (e3["trace_id"].as_str(), e3["span_id"].as_str()),
        (Some(TRACE), Some(PARENT))
    );
    assert_eq!(event(decision_id(&r4))["trace_id"], s4.trace_id().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_counts_what_a_failing_collector_loses() {
    let dir = policy_dir();
    let receiver = Receiver::http("/v1/traces").await.unwrap();
    receiver
        .spans
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut o = otlp(receiver.addr, Protocol::HttpProtobuf);
    o.sample_ratio = 0.0;
    let (server, mut client) = serve_traced(&dir, o, None).await;
    let sampled = format!("00-{TRACE}-{PARENT}-01");
    for _ in 0..2 {
        let r = client
            .check(check("/public/x", Some(&sampled)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status.unwrap().code, 0, "the collector does not decide");
    }
    // At 0 %, a request without a context starts no trace.
    client
        .check(check("/public/y", None))
        .await
        .unwrap()
        .into_inner();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while server.state.metrics.span_counts().1[1] < 2 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.state.metrics.span_counts(), (0, [0, 2, 0]));
    assert!(receiver.spans.all().is_empty());

    // The collector is back: the next spans arrive, over HTTP, with the headers.
    receiver
        .spans
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    client
        .check(check("/public/z", Some(&sampled)))
        .await
        .unwrap();
    let spans = receiver
        .spans
        .wait_for(Duration::from_secs(10), |s| !s.is_empty());
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].parent_span_id(), PARENT);
    assert!(
        spans[0]
            .headers
            .contains(&("x-collector-key".into(), "k1".into()))
    );
    assert_eq!(server.state.metrics.span_counts(), (1, [0, 2, 0]));

    // The Data API: a span per query, continuing the caller's trace.
    let http = server.http_addr.unwrap();
    let tp = format!("00-{TRACE}-3333333333333333-01");
    let answer = tokio::task::spawn_blocking(move || {
        request(
            http.port(),
            "GET",
            "/v1/data/envoy/authz/allow",
            &[("traceparent", &tp)],
            b"",
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    let spans = receiver
        .spans
        .wait_for(Duration::from_secs(10), |s| s.len() >= 2);
    let data = spans
        .iter()
        .find(|s| s.attr("arbiter.origin").as_deref() == Some("data_api"))
        .expect("a Data API span");
    assert_eq!(data.parent_span_id(), "3333333333333333");
    assert_eq!(data.trace_id(), TRACE);

    let metrics = tokio::task::spawn_blocking(move || get(http.port(), "/metrics"))
        .await
        .unwrap()
        .unwrap()
        .body_text();
    assert!(
        metrics.contains("arbiter_trace_spans_dropped_total{reason=\"export_failed\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("arbiter_trace_spans_exported_total 2"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

/// Envoy's OpenTelemetry tracer, exporting to `cluster` at once (a flush per span).
fn envoy_tracing() -> (String, String) {
    (
        r#"          tracing:
            random_sampling: {value: 100}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: envoy
                grpc_service:
                  envoy_grpc: {cluster_name: otlp}
                  timeout: 1s
"#
        .into(),
        r#"layered_runtime:
  layers:
  - name: tracing
    static_layer:
      tracing.opentelemetry.flush_interval_ms: 50
      tracing.opentelemetry.min_flush_spans: 1
"#
        .into(),
    )
}

#[test]
fn through_envoy_the_span_is_the_child_of_envoys() {
    let dir = policy_dir();
    // The collector both Envoy and arbiter export to, on a runtime of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = rt.block_on(Receiver::grpc()).unwrap();
    let mut config = loopback_config(None);
    config.otlp = Some(otlp(receiver.addr, Protocol::Grpc));
    let (hcm, bootstrap) = envoy_tracing();
    let mut h = Harness::start(
        authorizer_for(&dir.0.join("policy"), "envoy/authz/allow").unwrap(),
        config,
        |o| {
            o.hcm_extra = hcm;
            o.bootstrap_extra = bootstrap;
            o.extra_clusters = http2_cluster("otlp", receiver.addr.port());
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // Envoy starts the trace; then a client that brings its own.
    let allowed = request(h.envoy.port, "GET", "/public/docs", &[], b"").unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.body_text());
    let client_parent = format!("00-{TRACE}-{PARENT}-01");
    let denied = request(
        h.envoy.port,
        "GET",
        "/private",
        &[("traceparent", &client_parent)],
        b"",
    )
    .unwrap();
    assert_eq!(denied.status, 403);

    let service = |s: &Received| s.resource_attr("service.name").unwrap_or_default();
    let spans = receiver.spans.wait_for(Duration::from_secs(15), |all| {
        all.iter().filter(|s| service(s) == "arbiter").count() >= 2
            && all.iter().filter(|s| service(s) == "envoy").count() >= 4
    });
    h.stop_arbiter().unwrap();
    let ours: Vec<&Received> = spans.iter().filter(|s| service(s) == "arbiter").collect();
    let envoys: Vec<&Received> = spans.iter().filter(|s| service(s) == "envoy").collect();
    let names = |v: &[&Received]| {
        v.iter()
            .map(|s| {
                format!(
                    "{} trace={} id={} parent={}",
                    s.span.name,
                    s.trace_id(),
                    s.span_id(),
                    s.parent_span_id()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(ours.len(), 2, "arbiter's spans:\n{}", names(&ours));
    for span in &ours {
        let parent = envoys
            .iter()
            .find(|e| e.span.span_id == span.span.parent_span_id)
            .unwrap_or_else(|| {
                panic!(
                    "arbiter's span has no parent among Envoy's spans:\n{}\nEnvoy's:\n{}",
                    names(&[span]),
                    names(&envoys)
                )
            });
        assert_eq!(parent.trace_id(), span.trace_id());
        // Envoy's span for the ext_authz call itself (its gRPC client's egress span).
        assert!(
            parent.span.name.contains("Authorization") && parent.span.name.contains("Check"),
            "parent: {}",
            parent.span.name
        );
        // …whose own parent is Envoy's span for the request.
        assert!(
            envoys
                .iter()
                .any(|e| e.span.span_id == parent.span.parent_span_id),
            "{}",
            names(&envoys)
        );
    }
    let decisions: Vec<(String, String)> = ours
        .iter()
        .map(|s| (s.attr("arbiter.decision").unwrap_or_default(), s.trace_id()))
        .collect();
    assert!(
        decisions.contains(&("deny".into(), TRACE.into())),
        "the client's trace continues through Envoy into arbiter: {decisions:?}"
    );
    assert!(
        decisions.iter().any(|(d, t)| d == "allow" && t != TRACE),
        "{decisions:?}"
    );
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_spans_still_queued() {
    let dir = policy_dir();
    let receiver = Receiver::grpc().await.unwrap();
    let mut o = otlp(receiver.addr, Protocol::Grpc);
    // No batch would leave within the test but for the shutdown.
    o.delay = Duration::from_secs(600);
    let (server, mut client) = serve_traced(&dir, o, None).await;
    for path in ["/public/1", "/public/2", "/private"] {
        client.check(check(path, None)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        receiver.spans.all().is_empty(),
        "nothing sent before the delay"
    );
    drop(client);
    server.shutdown().await.unwrap();
    assert_eq!(receiver.spans.all().len(), 3);
}
