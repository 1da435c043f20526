//! Envoy's HTTP ext_authz protocol (`http_service`) behind a real Envoy 1.40, beside the gRPC
//! one: the same policy, the same requests through two Envoys — one asking over gRPC, one over
//! HTTP (with a `path_prefix`) — must get the same answers: statuses, the headers the policy
//! adds upstream, the denial's body and headers. The HTTP-mode events carry the input the
//! protocol can supply (`origin: http_authz`), and no source address (Envoy does not send it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use arbiter_conformance::envoy::{TempDir, free_port, request};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use serde_json::Value as Json;

const POLICY: &str = r#"package envoy.authz

default allow := {"allowed": false, "http_status": 403, "body": "not for you", "headers": {"x-why": "default"}}

allow := {"allowed": true, "headers": {"x-arbiter-user": user}} if {
	input.parsed_path[0] == "public"
	user := object.get(input.attributes.request.http.headers, "x-user", "anonymous")
} else := {"allowed": true, "headers": {"x-arbiter-order": "small"}} if {
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["orders"]
	input.parsed_body.amount < 100
} else := {"allowed": false, "http_status": 401, "body": "who are you?", "headers": {"www-authenticate": "Bearer"}} if {
	input.parsed_path[0] == "private"
	not input.attributes.request.http.headers.authorization
}
"#;

/// The ext_authz filter in HTTP mode, to the `ext_authz_http` cluster, with a path prefix.
fn http_filter() -> String {
    r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              with_request_body: {max_request_bytes: 65536, allow_partial_message: true}
              http_service:
                server_uri: {uri: "http://127.0.0.1", cluster: ext_authz_http, timeout: 0.5s}
                path_prefix: /check
                authorization_request:
                  allowed_headers:
                    patterns: [{prefix: "x-"}, {exact: content-type}, {exact: authorization}]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{prefix: "x-arbiter-"}]
                  allowed_client_headers:
                    patterns: [{prefix: "x-why"}, {exact: www-authenticate}]
"#
    .into()
}

fn http_cluster(port: u16) -> String {
    format!(
        r#"  - name: ext_authz_http
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: ext_authz_http
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
    )
}

/// What a request got: status, the policy header the upstream saw, the denial's body, the
/// denial header.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    upstream_header: Option<String>,
    body: Option<String>,
    denial_header: Option<String>,
}

type Sent<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [u8]);

fn send(port: u16, sent: &[Sent]) -> Vec<Seen> {
    sent.iter()
        .map(|(method, target, headers, body)| {
            let r = request(port, method, target, headers, body)
                .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
            let echoed: Option<Json> = (r.status == 200)
                .then(|| serde_json::from_str(&r.body_text()).ok())
                .flatten();
            let upstream_header = echoed.and_then(|e| {
                let h = &e["headers"];
                ["x-arbiter-user", "x-arbiter-order"]
                    .iter()
                    .find_map(|n| h[n][0].as_str().map(String::from))
            });
            Seen {
                status: r.status,
                upstream_header,
                body: (r.status != 200).then(|| r.body_text()),
                denial_header: r
                    .header("x-why")
                    .or(r.header("www-authenticate"))
                    .map(String::from),
            }
        })
        .collect()
}

fn authorizer(dir: &std::path::Path) -> arbiter_engine::authorizer::Authorizer {
    let settings = arbiter_cli::serve::Args {
        policies: vec![dir.to_path_buf()],
        ..Default::default()
    }
    .settings()
    .unwrap();
    arbiter_cli::serve::authorizer(&settings).unwrap()
}

#[test]
fn http_mode_answers_as_grpc_mode_does() {
    let dir = TempDir::new("http-authz").unwrap();
    std::fs::create_dir_all(dir.0.join("policy")).unwrap();
    std::fs::write(dir.0.join("policy/authz.rego"), POLICY).unwrap();
    let json = [("content-type", "application/json")];
    let sent: Vec<Sent> = vec![
        ("GET", "/public/docs", &[("x-user", "ann")], b""),
        ("GET", "/public/docs?page=2", &[], b""),
        ("POST", "/orders", &json, br#"{"amount": 50}"#),
        ("POST", "/orders", &json, br#"{"amount": 500}"#),
        ("POST", "/orders", &json, br#"{"amount": 5, "amount": 500}"#),
        ("GET", "/private/x", &[], b""),
        ("GET", "/private/x", &[("authorization", "Bearer t")], b""),
        ("GET", "/public/../private", &[], b""),
        ("GET", "/admin", &[("x-user", "ann")], b""),
    ];

    // gRPC mode.
    let grpc_log = dir.0.join("grpc.log");
    let h = Harness::start(
        authorizer(&dir.0.join("policy")),
        loopback_config(Some(DecisionLogConfig::to(LogTarget::File(
            grpc_log.clone(),
        )))),
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let by_grpc = send(h.envoy.port, &sent);
    drop(h);

    // HTTP mode.
    let http_log = dir.0.join("http.log");
    let port = free_port();
    let mut config = loopback_config(Some(DecisionLogConfig::to(LogTarget::File(
        http_log.clone(),
    ))));
    config.http_authz = Some((
        format!("127.0.0.1:{port}"),
        arbiter_ext_authz::http_authz::HttpAuthzOptions {
            path_prefix: "/check".into(),
            max_body_bytes: 1 << 20,
        },
    ));
    let mut h = Harness::start(authorizer(&dir.0.join("policy")), config, |o| {
        o.authz_filters = Some(http_filter());
        o.extra_clusters = http_cluster(port);
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        h.arbiter
            .as_ref()
            .unwrap()
            .http_authz_addr
            .map(|a| a.port()),
        Some(port)
    );
    let by_http = send(h.envoy.port, &sent);
    h.stop_arbiter().unwrap();

    for (((method, target, _, body), g), t) in sent.iter().zip(&by_grpc).zip(&by_http) {
        assert_eq!(
            g,
            t,
            "{method} {target} {}: gRPC mode and HTTP mode differ",
            String::from_utf8_lossy(body)
        );
    }
    // And the answers are the policy's, not an accident of both modes failing alike.
    let statuses: Vec<u16> = by_http.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [200, 200, 200, 403, 400, 401, 403, 400, 403]);
    assert_eq!(by_http[0].upstream_header.as_deref(), Some("ann"));
    assert_eq!(by_http[1].upstream_header.as_deref(), Some("anonymous"));
    assert_eq!(by_http[2].upstream_header.as_deref(), Some("small"));
    assert_eq!(by_http[3].body.as_deref(), Some("not for you"));
    assert_eq!(by_http[3].denial_header.as_deref(), Some("default"));
    assert_eq!(by_http[5].denial_header.as_deref(), Some("Bearer"));

    // The HTTP-mode events: origin, the input the protocol carries, and what it does not.
    let text = std::fs::read_to_string(&http_log).unwrap();
    let events = arbiter_conformance::harness::read_events(&http_log).unwrap();
    assert_eq!(events.len(), sent.len(), "{text}");
    assert!(events.iter().all(|e| e["origin"] == "http_authz"), "{text}");
    let e = &events[0];
    let http = &e["input"]["attributes"]["request"]["http"];
    assert_eq!(http["path"], "/public/docs", "the prefix is removed: {e}");
    assert_eq!(http["method"], "GET");
    assert_eq!(http["headers"]["x-user"], "ann");
    assert!(http["host"].as_str().is_some_and(|h| !h.is_empty()), "{e}");
    assert_eq!(
        e["input"]["parsed_path"],
        serde_json::json!(["public", "docs"])
    );
    assert!(e["input"]["attributes"].get("source").is_none(), "{e}");
    let order = &events[2]["input"];
    assert_eq!(order["parsed_body"]["amount"], 50, "{order}");
    let grpc_events = arbiter_conformance::harness::read_events(&grpc_log).unwrap();
    assert!(grpc_events.iter().all(|e| e["origin"] == "grpc"));
    // Both modes read the same request line: method, path, host (the original authority).
    for (g, t) in grpc_events.iter().zip(&events) {
        assert_eq!(g["request"], t["request"], "{g}\n{t}");
        let (gh, th) = (
            &g["input"]["attributes"]["request"]["http"],
            &t["input"]["attributes"]["request"]["http"],
        );
        assert_eq!(gh["host"], th["host"], "{g}\n{t}");
        assert_eq!(g["input"]["parsed_query"], t["input"]["parsed_query"]);
    }
}
