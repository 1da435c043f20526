//! arbiter behind a real Envoy 1.40: `failure_mode_allow: false`, `with_request_body`,
//! `include_peer_certificate: true`, in front of an upstream that echoes what it receives.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use arbiter_conformance::envoy::{HttpResponse, request};
use arbiter_conformance::harness::{Harness, authorizer_for, loopback_config};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/e2e")
}

fn harness() -> Harness {
    let authorizer =
        authorizer_for(&fixtures(), "envoy/authz/allow").unwrap_or_else(|e| panic!("{e}"));
    Harness::start(authorizer, loopback_config(None), |_| {}).unwrap_or_else(|e| panic!("{e}"))
}

fn send(
    h: &Harness,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    request(h.envoy.port, method, target, headers, body)
        .unwrap_or_else(|e| panic!("{method} {target}: {e}\nEnvoy log:\n{}", h.envoy.log_text()))
}

fn echoed(r: &HttpResponse) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("upstream did not echo JSON ({e}): {}", r.body_text()))
}

#[test]
fn decisions_through_envoy() {
    let h = harness();

    // Allowed: 200, the upstream sees the injected headers and not the removed one; the
    // query parameters were rewritten; the client gets the response header.
    let r = send(
        &h,
        "GET",
        "/allowed?drop=1&keep=2",
        &[("x-secret", "s3cret"), ("x-keep", "k")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let e = echoed(&r);
    assert_eq!(e["headers"]["x-injected"], serde_json::json!(["yes"]));
    // Both values of a multi-valued header reach the upstream (Envoy joins them).
    assert_eq!(e["headers"]["x-multi"], serde_json::json!(["a,b"]), "{e}");
    assert!(
        e["headers"].get("x-secret").is_none(),
        "x-secret reached the upstream: {e}"
    );
    assert_eq!(e["headers"]["x-keep"], serde_json::json!(["k"]));
    let target = e["target"].as_str().unwrap();
    assert!(target.contains("from-policy=1"), "{target}");
    assert!(target.contains("keep=2"), "{target}");
    assert!(!target.contains("drop="), "{target}");
    assert_eq!(r.header("x-resp"), Some("added"));

    // Denied by the policy's object: its status, body and headers.
    let r = send(&h, "GET", "/login", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.body_text(), "login please");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"arbiter\"")
    );

    // The default denial.
    let r = send(&h, "GET", "/private", &[], b"");
    assert_eq!(r.status, 403);
    assert_eq!(r.body_text(), "denied by policy");
    assert_eq!(r.header("x-denied-by"), Some("arbiter"));

    // A rule on the JSON body.
    let json = [("content-type", "application/json")];
    let r = send(&h, "POST", "/orders", &json, br#"{"amount": 42}"#);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(echoed(&r)["body"], r#"{"amount": 42}"#);
    let r = send(&h, "POST", "/orders", &json, br#"{"amount": 4200}"#);
    assert_eq!(r.status, 403);
    // A body that is not the JSON it claims to be is a bad request, never a lenient parse.
    let r = send(&h, "POST", "/orders", &json, b"amount: 42");
    assert_eq!(r.status, 400);
    assert_eq!(r.body_text(), "body_parse_error");
    // Duplicate keys are ambiguous: refused.
    let r = send(
        &h,
        "POST",
        "/orders",
        &json,
        br#"{"amount": 1, "amount": 1000}"#,
    );
    assert_eq!(r.status, 400);

    // Non-canonical paths are denied with 400 before the policy runs, even where the policy
    // would allow the path they resolve to.
    for target in [
        "//public/x",
        "/public/../admin",
        "/public/./x",
        "/public/%2e%2e/admin",
        "/public%2Fx",
        "/public/a%5Cb",
        "/public/%252e",
        "/public/x%00",
        "/public/%C0%AE",
    ] {
        let r = send(&h, "GET", target, &[], b"");
        assert_eq!(r.status, 400, "{target} was not refused: {}", r.body_text());
        assert_eq!(r.body_text(), "non_canonical_path", "{target}");
    }
    // The canonical form of the same path passes.
    assert_eq!(
        send(&h, "GET", "/public/x?next=/admin", &[], b"").status,
        200
    );

    // A header sent twice is seen whole (Envoy joins it; the policy sees both values).
    let r = send(
        &h,
        "GET",
        "/public/y",
        &[("x-role", "user"), ("x-role", "admin")],
        b"",
    );
    assert_eq!(r.status, 200);
    let oks = h.envoy.stat("http.ingress.ext_authz.ok").unwrap_or(0);
    assert!(oks >= 4, "Envoy counted {oks} ext_authz OKs");
    assert_eq!(
        h.envoy.stat("http.ingress.ext_authz.error"),
        Some(0),
        "no check was an error"
    );
}

#[test]
fn fail_closed_when_arbiter_is_down() {
    let mut h = harness();
    assert_eq!(send(&h, "GET", "/public/x", &[], b"").status, 200);
    h.stop_arbiter().unwrap();
    for _ in 0..3 {
        let r = send(&h, "GET", "/public/x", &[], b"");
        assert_eq!(
            r.status, 403,
            "Envoy let a request through with arbiter down"
        );
    }
}
