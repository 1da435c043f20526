#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;

use arbiter_engine::audit::chain::{GENESIS, seal};
use arbiter_engine::scratch::ScratchDir;
use axum::body::Body;
use axum::http::Request;
use serde_json::json;
use tower::ServiceExt as _;

use super::*;

const SCRIPT: &str = "<script>alert(1)</script>";

/// A log of 12 events in a scratch folder (removed when the folder is dropped).
fn log(name: &str) -> (ScratchDir, PathBuf) {
    let dir = ScratchDir::new(&format!("arbiter-dashboard-{}-{name}", std::process::id()));
    let f = dir.join("decisions.log");
    let mut out = std::fs::File::create(&f).unwrap();
    let mut prev = GENESIS.to_string();
    for i in 0..12 {
        let allowed = i % 3 != 0;
        let e = json!({
            "decision_id": format!("d{i}"),
            "timestamp": format!("2026-11-26T10:00:{i:02}Z"),
            "allowed": allowed,
            "reason": if allowed { "allowed" } else { "policy_denied" },
            "identity": {"spiffe_id": if i == 3 { format!("spiffe://td/ns/x/sa/{SCRIPT}") } else { "spiffe://td/ns/a/sa/b".into() }},
            "input": {"attributes": {"request": {"http": {
                "path": if i == 6 { "/<img src=x onerror=alert(2)>".to_string() } else { format!("/p{i}") },
                "headers": {"x-evil": SCRIPT}}}}},
            "policy": "authz.rego",
            "metrics": {"timer_server_handler_ns": 1000 * (i + 1)},
        });
        let (line, hash) = seal(e.as_object().unwrap().clone(), &prev);
        out.write_all(&line).unwrap();
        prev = hash;
    }
    (dir, f)
}

async fn get(app: &Router, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn everything_rendered_is_escaped_and_the_page_is_locked_down() {
    let (_dir, f) = log("escape");
    let d = Dashboard::open(&[f], Auth::None, "").unwrap();
    let app = router(d);
    let (status, headers, body) = get(&app, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!body.contains(SCRIPT), "raw script in the page");
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!body.contains("<img"), "raw img in the page");
    assert!(body.contains("/&lt;img src=x onerror=alert(2)&gt;"));
    assert_eq!(
        body.matches("<script").count(),
        1,
        "only the page's own script"
    );
    // The event: the header value as text.
    let (status, _, body) = get(&app, "/event/3", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("&quot;x-evil&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;"),
        "{body}"
    );
    assert_eq!(body.matches("<script").count(), 1);
    let (status, _, _) = get(&app, "/event/999", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn filters_and_api() {
    let (_dir, f) = log("filter");
    let d = Dashboard::open(&[f], Auth::None, "").unwrap();
    let app = router(d);
    let (_, _, body) = get(&app, "/?decision=denied", &[]).await;
    assert!(body.contains("data-k=\"matching\">4<"), "{body}");
    let (_, _, body) = get(&app, "/api/events?identity=ns/x&decision=denied", &[]).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["matching"], json!(1));
    assert_eq!(
        v["events"][0]["identity"],
        json!(format!("spiffe://td/ns/x/sa/{SCRIPT}"))
    );
    assert_eq!(v["chain"]["ok"], json!(true));
    let (_, _, body) = get(
        &app,
        "/?from=2026-11-26T10:00:05Z&to=2026-11-26T10:00:07",
        &[],
    )
    .await;
    assert!(body.contains("data-k=\"matching\">3<"), "{body}");
    let (_, _, body) = get(&app, "/?from=yesterday", &[]).await;
    assert!(body.contains("data-k=\"filter-error\""), "{body}");
    let (_, _, body) = get(&app, "/api/summary", &[]).await;
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (s["events"].as_u64(), s["denied"].as_u64()),
        (Some(12), Some(4))
    );
}

#[tokio::test]
async fn a_token_guards_every_page_but_the_login() {
    let (_dir, f) = log("token");
    let d = Dashboard::open(&[f], Auth::Token("s3cret-token-0123456789".into()), "/ui").unwrap();
    let app = router(d);
    for uri in ["/", "/event/0", "/api/summary", "/api/events"] {
        let (status, _, body) = get(&app, uri, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(!body.contains("d0"), "{uri} leaks");
    }
    let (status, _, _) = get(
        &app,
        "/",
        &[("authorization", "Bearer wrong-token-0123456789")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = get(
        &app,
        "/",
        &[("authorization", "Bearer s3cret-token-0123456789")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(
        &app,
        "/",
        &[("cookie", "a=b; arbiter_audit_token=s3cret-token-0123456789")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&app, "/login", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let resp = app
        .clone()
        .oneshot(
            Request::post("/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("token=s3cret-token-0123456789"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/ui/"),
        "{cookie}"
    );
}

#[test]
fn exposure_needs_loopback_a_token_or_mtls() {
    let lo: SocketAddr = "127.0.0.1:8282".parse().unwrap();
    let any: SocketAddr = "0.0.0.0:8282".parse().unwrap();
    let v6: SocketAddr = "[::1]:8282".parse().unwrap();
    assert!(check_exposure(&lo, &Auth::None, false).is_ok());
    assert!(check_exposure(&v6, &Auth::None, false).is_ok());
    assert!(check_exposure(&any, &Auth::None, false).is_err());
    assert!(check_exposure(&any, &Auth::Token("x".repeat(16)), false).is_ok());
    assert!(check_exposure(&any, &Auth::None, true).is_ok());
}

#[test]
fn a_live_log_is_followed() {
    let (_dir, f) = log("live");
    let d = Dashboard::follow(&f, Auth::None, "/ui");
    assert_eq!(d.events(), 0, "nothing read yet");
    assert!(d.refresh().unwrap());
    assert_eq!(d.events(), 12);
    assert!(!d.refresh().unwrap());
    let text = std::fs::read(&f).unwrap();
    let last = arbiter_engine::audit::chain::last_hash(&text).unwrap();
    let (line, _) = seal(
        json!({"decision_id": "d12", "allowed": true})
            .as_object()
            .unwrap()
            .clone(),
        &last,
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(&line)
        .unwrap();
    assert!(d.refresh().unwrap());
    assert_eq!(d.events(), 13);
    assert_eq!(d.summary().events, 13);
}

/// Text and attribute values: markup escaped by maud, control characters (a terminal escape,
/// a NUL, a carriage return) spelled out; newlines and tabs kept.
#[test]
fn shown_text_escapes_markup_and_spells_control_characters() {
    let m = html! {
        p title=(Shown("x\" onmouseover=\"alert(1)")) { (Shown("a\u{1b}[31m<b>\0\r\n\tz")) }
    }
    .into_string();
    assert_eq!(
        m,
        "<p title=\"x&quot; onmouseover=&quot;alert(1)\">a\\u{1b}[31m&lt;b&gt;\\u{0}\\u{d}\n\tz</p>"
    );
}
