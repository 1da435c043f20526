//! Who may use the Data API and `/metrics` (issue 16, item 4): loopback callers only by default,
//! OPA's `--authorization=basic` with a `system.authz` policy, or everyone when asked.
//! Non-loopback callers are simulated by giving the router a peer address; nothing leaves
//! loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use arbiter_ext_authz::api_auth::{ApiAccess, Authentication, Authorization};
use arbiter_ext_authz::http::PeerAddr;
use arbiter_ext_authz::{ListenAddr, ServeOptions, ServerConfig};
use axum::body::Body;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const POLICY: &str = r#"
package envoy.authz

default allow := false

allow if input.parsed_path == ["ok"]
"#;

const SYSTEM_AUTHZ: &str = r#"
package system.authz

default allow := false

# Probes may read health.
allow if input.path == ["health"]

# The holder of the token may query the envoy package.
allow if {
    input.identity == "s3cret"
    input.path[0] == "v1"
    input.path[1] == "data"
    input.path[2] == "envoy"
}
"#;

async fn server(api: ApiAccess, with_system_authz: bool) -> arbiter_ext_authz::RunningServer {
    let mut s = PolicySources::default();
    s.add_rego("policy.rego", POLICY);
    if with_system_authz {
        s.add_rego("system.rego", SYSTEM_AUTHZ);
    }
    let set = PolicySet::from_sources(&s, &LoadOptions::default()).unwrap();
    let authorizer = Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    );
    arbiter_ext_authz::start(
        ServerConfig {
            grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
            http: Some(ListenAddr::Tcp("127.0.0.1:0".into())),
            options: ServeOptions {
                dry_run: false,
                deadline: Duration::from_millis(50),
                labels: InstanceLabels {
                    id: "t".into(),
                    version: "0".into(),
                    extra: Default::default(),
                },
                api,
                grpc_duration_buckets: Vec::new(),
                active_config: serde_json::Value::Null,
            },
            workers: 0,
            queue: 16,
            decision_log: None,
            tls: None,
            limits: Default::default(),
            ui: None,
            diagnostic: None,
            http_authz: None,
            otlp: None,
        },
        authorizer,
    )
    .await
    .unwrap()
}

/// One request through the HTTP router as if from `peer`: the status and the body.
async fn ask(
    server: &arbiter_ext_authz::RunningServer,
    peer: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut request = axum::http::Request::builder().method(method).uri(target);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut request = request.body(Body::from(body.to_string())).unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
    let response = arbiter_ext_authz::http::router(server.state.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

const QUERY: &str = r#"{"input": {"parsed_path": ["ok"]}}"#;

#[tokio::test]
async fn by_default_only_loopback_callers_reach_the_data_api_and_metrics() {
    let s = server(ApiAccess::default(), false).await;
    let remote = "10.1.2.3:40000";
    let (code, body) = ask(&s, remote, "POST", "/v1/data/envoy/authz/allow", &[], QUERY).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
    assert!(
        body.contains("--authorization=basic"),
        "says how to open it: {body}"
    );
    assert_eq!(ask(&s, remote, "GET", "/metrics", &[], "").await.0, 401);
    // An IPv6 peer that is not loopback, and one that is IPv4 loopback mapped into IPv6.
    assert_eq!(
        ask(&s, "[2001:db8::1]:1", "GET", "/metrics", &[], "")
            .await
            .0,
        401
    );
    assert_eq!(
        ask(&s, "[::ffff:127.0.0.1]:1", "GET", "/metrics", &[], "")
            .await
            .0,
        200
    );
    // Probes still reach health.
    assert_eq!(ask(&s, remote, "GET", "/health", &[], "").await.0, 200);
    // Loopback callers are served.
    let (code, body) = ask(
        &s,
        "127.0.0.1:5",
        "POST",
        "/v1/data/envoy/authz/allow",
        &[],
        QUERY,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"result\":true"), "{body}");
    // The refused query made no decision (no event could be forged through it).
    assert!(
        ask(&s, "127.0.0.1:5", "GET", "/metrics", &[], "")
            .await
            .1
            .contains("arbiter_decisions_total{outcome=\"allow\",origin=\"data_api\"} 1")
    );
    s.shutdown().await.unwrap();

    // mTLS with allowed callers already decides who connects.
    let s = server(
        ApiAccess {
            mtls_callers: true,
            ..ApiAccess::default()
        },
        false,
    )
    .await;
    assert_eq!(ask(&s, remote, "GET", "/metrics", &[], "").await.0, 200);
    s.shutdown().await.unwrap();

    // `--authorization=off` serves everyone, as OPA without options.
    let s = server(
        ApiAccess {
            authorization: Authorization::Off,
            ..ApiAccess::default()
        },
        false,
    )
    .await;
    assert_eq!(ask(&s, remote, "GET", "/metrics", &[], "").await.0, 200);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn basic_authorization_asks_system_authz_with_the_bearer_token_as_identity() {
    let access = ApiAccess {
        authentication: Authentication::Token,
        authorization: Authorization::Basic,
        mtls_callers: false,
        max_write_bytes: None,
    };
    let s = server(access.clone(), true).await;
    let remote = "10.1.2.3:40000";
    let token = [("authorization", "Bearer s3cret")];
    let wrong = [("authorization", "Bearer guess")];
    let (code, body) = ask(
        &s,
        remote,
        "POST",
        "/v1/data/envoy/authz/allow",
        &token,
        QUERY,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"result\":true"), "{body}");
    let (code, body) = ask(
        &s,
        remote,
        "POST",
        "/v1/data/envoy/authz/allow",
        &wrong,
        QUERY,
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(
        body,
        r#"{"code":"unauthorized","message":"request rejected by administrative policy"}"#
    );
    // Loopback is no exception under basic authorization (as in OPA).
    assert_eq!(
        ask(
            &s,
            "127.0.0.1:5",
            "POST",
            "/v1/data/envoy/authz/allow",
            &[],
            QUERY
        )
        .await
        .0,
        401
    );
    // The token opens only what the policy says: not /metrics, not another package.
    assert_eq!(ask(&s, remote, "GET", "/metrics", &token, "").await.0, 401);
    assert_eq!(
        ask(&s, remote, "GET", "/v1/data/system/authz", &token, "")
            .await
            .0,
        401
    );
    assert_eq!(ask(&s, remote, "GET", "/health", &[], "").await.0, 200);
    s.shutdown().await.unwrap();

    // Without a system.authz policy everything is refused (fail closed).
    let s = server(access, false).await;
    assert_eq!(ask(&s, remote, "GET", "/health", &token, "").await.0, 401);
    assert_eq!(
        ask(
            &s,
            remote,
            "POST",
            "/v1/data/envoy/authz/allow",
            &token,
            QUERY
        )
        .await
        .0,
        401
    );
    s.shutdown().await.unwrap();
}
