//! Bundles end to end: `arbiter build`, `arbiter serve --bundle` from a file and from a URL
//! polled with ETags, signatures, and `arbiter test` on a bundle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::stop;

fn tmp(name: &str) -> arbiter_engine::scratch::ScratchDir {
    common::tmp("bundle-cli", name)
}

fn http(addr: &str, method: &str, target: &str, body: &str) -> String {
    common::http(addr, method, target, body).1
}

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .output()
        .unwrap()
}

fn policy(dir: &Path, allow: &str) {
    std::fs::create_dir_all(dir.join("envoy")).unwrap();
    std::fs::write(
        dir.join("envoy/authz.rego"),
        format!("package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] == \"{allow}\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("envoy/authz_test.rego"),
        format!("package envoy.authz_test\n\nimport data.envoy.authz\n\ntest_allow if authz.allow with input as {{\"parsed_path\": [\"{allow}\"]}}\n"),
    )
    .unwrap();
}

/// Start `arbiter serve`: the server and its HTTP address, or `Err` with what it wrote if it
/// exits instead of listening.
fn serve(args: &[&str]) -> Result<(common::Server, String), String> {
    let mut cmd = common::serve_command();
    cmd.args(args).stdout(Stdio::null());
    common::try_serve_announced(cmd).map(|(child, _, http, _)| (child, http))
}

fn revision(addr: &str) -> String {
    let h: serde_json::Value = serde_json::from_str(&http(addr, "GET", "/health", "")).unwrap();
    h["revision"].as_str().unwrap().to_string()
}

fn allowed(addr: &str, seg: &str) -> bool {
    let v: serde_json::Value = serde_json::from_str(&http(
        addr,
        "POST",
        "/v1/data/envoy/authz/allow",
        &format!(r#"{{"input": {{"parsed_path": ["{seg}"]}}}}"#),
    ))
    .unwrap();
    v["result"] == true
}

/// A bundle server on `listener`: `respond` gets the request's `If-None-Match` and returns
/// the whole response.
fn bundle_server(
    listener: TcpListener,
    respond: impl Fn(Option<String>) -> Vec<u8> + Send + 'static,
) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut if_none_match = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("if-none-match:") {
                    if_none_match = Some(v.trim().to_string());
                }
            }
            let _ = conn.write_all(&respond(if_none_match));
        }
    });
}

/// `200 OK` with an ETag and the bundle's bytes.
fn ok(etag: &str, bytes: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\netag: {etag}\r\ncontent-length: {}\r\n\r\n",
        bytes.len()
    )
    .into_bytes();
    r.extend_from_slice(bytes);
    r
}

#[test]
fn build_serve_and_test_a_bundle_file() {
    let dir = tmp("file");
    policy(&dir.join("src"), "a");
    let bundle = dir.join("b.tar.gz");
    let o = arbiter(&[
        "build",
        dir.join("src").to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--revision",
        "r1",
        "--root",
        "envoy",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The bundle's own tests run from the archive.
    let o = arbiter(&["test", bundle.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains("PASS: 1/1"));
    let (child, addr) = serve(&["--bundle", bundle.to_str().unwrap()]).unwrap();
    assert_eq!(revision(&addr), "r1");
    assert!(allowed(&addr, "a") && !allowed(&addr, "b"));
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn signatures_are_required_and_checked() {
    let dir = tmp("signed");
    policy(&dir.join("src"), "a");
    let bundle = dir.join("b.tar.gz");
    let o = arbiter(&[
        "build",
        dir.join("src").to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
        "--signing-key",
        "s3cret",
        "--signing-alg",
        "HS256",
        "--signing-key-id",
        "k",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = bundle.to_str().unwrap();
    let e = serve(&[
        "--bundle",
        b,
        "--verification-key",
        "wrong",
        "--verification-alg",
        "HS256",
    ])
    .unwrap_err();
    assert!(e.contains("signature verification failed"), "{e}");
    let e = serve(&["--bundle", b]).unwrap_err();
    assert!(e.contains("no verification key"), "{e}");
    let (child, addr) = serve(&[
        "--bundle",
        b,
        "--verification-key",
        "s3cret",
        "--verification-alg",
        "HS256",
        "--verification-key-id",
        "k",
    ])
    .unwrap();
    assert!(allowed(&addr, "a"));
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bundle_url_is_polled_with_etags() {
    let dir = tmp("url");
    let build = |allow: &str, rev: &str| -> Vec<u8> {
        let src = dir.join(format!("src-{rev}"));
        policy(&src, allow);
        let out = dir.join(format!("{rev}.tar.gz"));
        let o = arbiter(&[
            "build",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--revision",
            rev,
        ]);
        assert!(o.status.success());
        std::fs::read(out).unwrap()
    };
    let current = Arc::new(Mutex::new(("v1".to_string(), build("a", "r1"))));
    let not_modified = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/bundles/authz.tar.gz",
        listener.local_addr().unwrap()
    );
    {
        let (current, not_modified) = (current.clone(), not_modified.clone());
        bundle_server(listener, move |if_none_match| {
            let (etag, bytes) = current.lock().unwrap().clone();
            if if_none_match.as_deref() == Some(etag.as_str()) {
                not_modified.fetch_add(1, Ordering::SeqCst);
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n".to_vec()
            } else {
                ok(&etag, &bytes)
            }
        });
    }
    let (child, addr) = serve(&["--bundle", &url, "--bundle-poll", "100ms"]).unwrap();
    assert_eq!(revision(&addr), "r1");
    assert!(allowed(&addr, "a"));
    let start = Instant::now();
    while not_modified.load(Ordering::SeqCst) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no conditional GETs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    *current.lock().unwrap() = ("v2".to_string(), build("b", "r2"));
    while revision(&addr) != "r2" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the new bundle was not loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(allowed(&addr, "b") && !allowed(&addr, "a"));
    // A broken bundle at the URL is refused; r2 keeps serving.
    *current.lock().unwrap() = ("v3".to_string(), b"not a bundle".to_vec());
    let start = Instant::now();
    loop {
        let h: serde_json::Value =
            serde_json::from_str(&http(&addr, "GET", "/health", "")).unwrap();
        if !h["last_reload_error"].is_null() {
            assert_eq!(h["revision"], "r2");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the broken bundle was not reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(allowed(&addr, "b"));
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// A bundle URL that cannot be fetched at start: the server starts anyway, as OPA does, but
/// decides nothing — `/health?bundles` 500 (plain `/health` 200, as OPA), `awaiting_policy`,
/// every query undefined — and loads
/// the bundle as soon as the URL answers.
#[test]
fn a_bundle_url_down_at_start_is_awaited() {
    let dir = tmp("url-down");
    let src = dir.join("src");
    policy(&src, "a");
    let out = dir.join("b.tar.gz");
    let o = arbiter(&[
        "build",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--revision",
        "r1",
    ]);
    assert!(o.status.success());
    let bytes = std::fs::read(&out).unwrap();
    let up = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/b.tar.gz", listener.local_addr().unwrap());
    {
        let up = up.clone();
        bundle_server(listener, move |_| {
            if up.load(Ordering::SeqCst) == 0 {
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec()
            } else {
                ok("v1", &bytes)
            }
        });
    }
    let (child, addr) = serve(&["--bundle", &url, "--bundle-poll", "60s"]).unwrap();
    let health = || -> (u16, serde_json::Value) {
        let (code, body) = common::http(&addr, "GET", "/health?bundles", "");
        (code, serde_json::from_str(&body).unwrap())
    };
    let (code, h) = health();
    assert_eq!(code, 500, "{h}");
    assert_eq!(h["awaiting_policy"], true);
    assert_eq!(h["error"], "one or more bundles are not activated");
    assert_eq!(common::http(&addr, "GET", "/health", "").0, 200);
    assert!(!allowed(&addr, "a"), "no policy, nothing is allowed");
    // The URL comes up: the bundle loads within the retry interval, not the 60 s poll.
    up.store(1, Ordering::SeqCst);
    let start = Instant::now();
    while health().0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the bundle was not loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(revision(&addr), "r1");
    assert_eq!(health().1["awaiting_policy"], false);
    assert!(allowed(&addr, "a") && !allowed(&addr, "b"));
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// What a request to the bundle server carried.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    if_none_match: Option<String>,
}

/// OPA's configuration end to end (issue 25, items 1–3): two bundles from one service whose
/// requests carry the bearer token read from `token_path` (re-read, so a rotated token is
/// sent), each at OPA's default resource `bundles/<name>`, polled within the configured delays,
/// the signed one verified with the key its `keyid` names although the signer wrote `default`.
#[test]
fn opa_bundles_config_downloads_with_credentials_every_bundle_at_opas_resource() {
    let dir = tmp("opa-config");
    // envoy/authz: signed as `opa build --signing-key` signs (kid `default`), rooted at envoy.
    let src = dir.join("authz-src");
    policy(&src, "a");
    let authz = dir.join("authz.tar.gz");
    let o = arbiter(&[
        "build",
        src.to_str().unwrap(),
        "-o",
        authz.to_str().unwrap(),
        "--revision",
        "authz-1",
        "--root",
        "envoy",
        "--signing-key",
        "s3cret",
        "--signing-alg",
        "HS256",
        "--signing-key-id",
        "default",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // roles: data only, unsigned, rooted at roles.
    let roles_src = dir.join("roles-src");
    std::fs::create_dir_all(roles_src.join("roles")).unwrap();
    std::fs::write(roles_src.join("roles/data.json"), r#"{"admin": ["ann"]}"#).unwrap();
    let roles = dir.join("roles.tar.gz");
    let o = arbiter(&[
        "build",
        roles_src.to_str().unwrap(),
        "-o",
        roles.to_str().unwrap(),
        "--revision",
        "roles-7",
        "--root",
        "roles",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bundles: Vec<(String, Vec<u8>)> = vec![
        (
            "/bundles/envoy/authz".into(),
            std::fs::read(&authz).unwrap(),
        ),
        ("/bundles/roles".into(), std::fs::read(&roles).unwrap()),
    ];

    let token = dir.join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let (mut authorization, mut if_none_match) = (None, None);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    let (k, v) = line.split_once(':').unwrap_or(("", ""));
                    match k.to_ascii_lowercase().as_str() {
                        "authorization" => authorization = Some(v.trim().to_string()),
                        "if-none-match" => if_none_match = Some(v.trim().to_string()),
                        _ => {}
                    }
                }
                let reply = match bundles.iter().find(|(p, _)| *p == path) {
                    _ if authorization
                        .as_deref()
                        .is_none_or(|a| !a.starts_with("Bearer ")) =>
                    {
                        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_vec()
                    }
                    Some(_) if if_none_match.as_deref() == Some("\"v1\"") => {
                        b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n".to_vec()
                    }
                    Some((_, bytes)) => ok("\"v1\"", bytes),
                    None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
                };
                seen.lock().unwrap().push(Seen {
                    path,
                    authorization,
                    if_none_match,
                });
                let _ = conn.write_all(&reply);
            }
        });
    }
    let config = dir.join("opa.yaml");
    std::fs::write(
        &config,
        format!(
            "services:
  controller:
    url: http://127.0.0.1:{port}
    credentials:
      bearer:
        token_path: token
bundles:
  envoy/authz:
    service: controller
    signing:
      keyid: global_key
    polling: {{min_delay_seconds: 1, max_delay_seconds: 1}}
  roles:
    service: controller
keys:
  global_key:
    key: s3cret
    algorithm: HS256
"
        ),
    )
    .unwrap();
    let (child, addr) =
        serve(&["--config", config.to_str().unwrap()]).unwrap_or_else(|e| panic!("serve: {e}"));
    assert_eq!(revision(&addr), "envoy/authz=authz-1,roles=roles-7");
    assert!(allowed(&addr, "a") && !allowed(&addr, "b"));
    let roles: serde_json::Value =
        serde_json::from_str(&http(&addr, "GET", "/v1/data/roles", "")).unwrap();
    assert_eq!(roles["result"]["admin"][0], "ann", "{roles}");
    // The Data API's debugging parameters and OPA's /v1/status (issue 25, item 10).
    let read: serde_json::Value =
        serde_json::from_str(&http(&addr, "GET", "/v1/data/roles?provenance&metrics", "")).unwrap();
    assert_eq!(
        read["provenance"]["bundles"],
        serde_json::json!({"envoy/authz": {"revision": "authz-1"}, "roles": {"revision": "roles-7"}}),
        "{read}"
    );
    assert!(
        read["metrics"]["timer_server_handler_ns"].is_u64(),
        "{read}"
    );
    let (code, body) = common::http(&addr, "GET", "/v1/data/roles?explain=full", "");
    assert_eq!(code, 400, "{body}");
    let status: serde_json::Value =
        serde_json::from_str(&http(&addr, "GET", "/v1/status", "")).unwrap();
    assert_eq!(
        status["result"]["bundles"]["envoy/authz"]["active_revision"], "authz-1",
        "{status}"
    );
    assert!(status["result"]["bundles"]["roles"]["last_successful_activation"].is_string());
    assert_eq!(status["result"]["plugins"]["bundle"]["state"], "OK");
    assert!(status["result"]["labels"]["id"].is_string());
    // OPA's /v1/config: the configuration without credentials and keys.
    let config: serde_json::Value =
        serde_json::from_str(&http(&addr, "GET", "/v1/config", "")).unwrap();
    let active = &config["result"];
    assert_eq!(
        active["services"]["controller"]["url"],
        format!("http://127.0.0.1:{port}"),
        "{config}"
    );
    assert!(
        active["services"]["controller"]
            .get("credentials")
            .is_none(),
        "{config}"
    );
    assert_eq!(
        active["keys"]["global_key"],
        serde_json::json!({"algorithm": "HS256"})
    );
    assert!(active["bundles"]["envoy/authz"].is_object());
    assert!(active["labels"]["id"].is_string());
    // OPA's data.system.bundles and the read-only /v1/policies.
    let manifest: serde_json::Value = serde_json::from_str(&http(
        &addr,
        "GET",
        "/v1/data/system/bundles/roles/manifest",
        "",
    ))
    .unwrap();
    assert_eq!(
        manifest["result"],
        serde_json::json!({"revision": "roles-7", "roots": ["roles"]}),
        "{manifest}"
    );
    let policies: serde_json::Value =
        serde_json::from_str(&http(&addr, "GET", "/v1/policies", "")).unwrap();
    let ids: Vec<&str> = policies["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let authz = ids
        .iter()
        .find(|id| id.ends_with("envoy/authz.rego"))
        .unwrap_or_else(|| panic!("{policies}"));
    let one: serde_json::Value = serde_json::from_str(&http(
        &addr,
        "GET",
        &format!("/v1/policies/{}", authz.trim_start_matches('/')),
        "",
    ))
    .unwrap();
    assert!(
        one["result"]["raw"]
            .as_str()
            .is_some_and(|r| r.contains("package envoy.authz")),
        "{one}"
    );
    assert_eq!(
        common::http(&addr, "PUT", "/v1/policies/x", "package x").0,
        405
    );
    // An undefined read is not an allow (issue 25, item 6).
    let _ = http(&addr, "GET", "/v1/data/nothing/here", "");
    // OPA's metric families (issue 25, item 6), with the bundles by name.
    let metrics = http(&addr, "GET", "/metrics", "");
    for want in [
        "bundle_loaded_counter{name=\"envoy/authz\"} 1",
        "bundle_loaded_counter{name=\"roles\"} 1",
        "last_success_bundle_activation{active_revision=\"authz-1\",name=\"envoy/authz\"} ",
        "last_success_bundle_download{name=\"roles\"} ",
        "plugin_status_gauge{name=\"bundle\",status=\"OK\"} 1",
        "http_request_duration_seconds_bucket{code=\"200\",handler=\"v1/data\",method=\"POST\",le=\"1\"} ",
        "grpc_request_duration_seconds_count{handler=\"check\"} 0",
        // allowed("a"), the two roles reads and the manifest read; allowed("b") and the
        // undefined read.
        "arbiter_decisions_total{outcome=\"allow\",origin=\"data_api\"} 4",
        "arbiter_decisions_total{outcome=\"deny\",origin=\"data_api\"} 2",
        "arbiter_decisions_total{outcome=\"error\",origin=\"data_api\"} 0",
        "arbiter_decision_denials_total{reason=\"undefined_decision\"} 1",
        "process_resident_memory_bytes ",
    ] {
        assert!(metrics.contains(want), "no `{want}` in\n{metrics}");
    }
    {
        let seen = seen.lock().unwrap();
        let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
        assert!(
            paths.contains(&"/bundles/envoy/authz") && paths.contains(&"/bundles/roles"),
            "{paths:?}"
        );
        assert!(
            seen.iter()
                .all(|s| s.authorization.as_deref() == Some("Bearer first-token")),
            "{seen:?}"
        );
    }
    // The token rotates; the next polls of envoy/authz (every second) send the new one, with
    // the ETag.
    std::fs::write(&token, "second-token").unwrap();
    let start = Instant::now();
    loop {
        let rotated = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| {
                s.path == "/bundles/envoy/authz"
                    && s.authorization.as_deref() == Some("Bearer second-token")
                    && s.if_none_match.as_deref() == Some("\"v1\"")
            })
            .count();
        if rotated >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no polls with the rotated token: {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // roles polls at OPA's default delay (60–120 s): it has not been asked again.
    let roles_requests = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/bundles/roles")
        .count();
    assert_eq!(roles_requests, 1);
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// `tar czf` of `files` (name, bytes), written into `dir`.
fn tar_gz(dir: &Path, name: &str, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    for (f, bytes) in files {
        let p = src.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let out = dir.join(format!("{name}.tar.gz"));
    let mut cmd = Command::new("tar");
    cmd.arg("czf").arg(&out).arg("-C").arg(&src);
    for (f, _) in files {
        cmd.arg(f);
    }
    assert!(cmd.status().unwrap().success());
    std::fs::read(out).unwrap()
}

/// Issue 18 item 6: OPA's delta bundles, replayed from what the reference OPA did with the same
/// snapshot and deltas (`conformance/opa-data-writes/record-deltas.py`): each delta applied or
/// refused as OPA did (refusals with OPA's words, in `bundle_failed_load_counter`), the data
/// and the bundle's revision after each one as OPA had them.
#[test]
fn delta_bundles_apply_as_opa_applies_them() {
    let dir = tmp("deltas");
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/opa-data-writes");
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(here.join("../fixtures/opa-data-writes/deltas.json")).unwrap(),
    )
    .unwrap();
    let deltas: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(here.join("deltas/deltas.json")).unwrap())
            .unwrap();
    let read = |p: &str| std::fs::read(here.join("bundle").join(p)).unwrap();
    let snapshot = tar_gz(
        &dir,
        "snap",
        &[
            (".manifest", read(".manifest")),
            ("envoy/policy.rego", read("envoy/policy.rego")),
            ("envoy/data.json", read("envoy/data.json")),
        ],
    );
    // The bundle server: the current (etag, bytes); `served` is set when it is sent and
    // `asked_again` when a request follows (the server under test has dealt with it).
    type Current = (String, Vec<u8>, bool, bool);
    let current: Arc<Mutex<Current>> =
        Arc::new(Mutex::new(("snap".into(), snapshot, false, false)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    {
        let current = current.clone();
        bundle_server(listener, move |if_none_match| {
            let mut c = current.lock().unwrap();
            if c.2 {
                c.3 = true;
            }
            if if_none_match.as_deref() == Some(c.0.as_str()) {
                return b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n".to_vec();
            }
            c.2 = true;
            ok(&c.0, &c.1)
        });
    }
    let wait_dealt_with = || {
        let start = Instant::now();
        while !current.lock().unwrap().3 {
            assert!(start.elapsed() < Duration::from_secs(30), "not asked again");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        std::fs::read_to_string(here.join("deltas/config.yaml"))
            .unwrap()
            .replace("${BUNDLE_SERVER}", &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let (child, addr) =
        serve(&["--config", config.to_str().unwrap()]).unwrap_or_else(|e| panic!("serve: {e}"));
    wait_dealt_with();
    let data = |p: &str| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&http(&addr, "GET", &format!("/v1/data/{p}"), "")).unwrap();
        v["result"].clone()
    };
    assert_eq!(data("envoy"), recorded["snapshot"]["envoy"]);
    assert_eq!(
        data("system/bundles/b/manifest/revision"),
        recorded["snapshot"]["revision"]
    );
    let failures = || -> Vec<String> {
        http(&addr, "GET", "/metrics", "")
            .lines()
            .filter(|l| l.starts_with("bundle_failed_load_counter{") && l.contains("name=\"b\""))
            .map(str::to_string)
            .collect()
    };
    let mut differences = Vec::new();
    for (delta, want) in deltas
        .as_array()
        .unwrap()
        .iter()
        .zip(recorded["deltas"].as_array().unwrap())
    {
        let name = delta["name"].as_str().unwrap();
        let before = failures();
        let bytes = tar_gz(
            &dir,
            name,
            &[
                (".manifest", delta["manifest"].to_string().into_bytes()),
                ("patch.json", delta["patch"].to_string().into_bytes()),
            ],
        );
        *current.lock().unwrap() = (name.to_string(), bytes, false, false);
        wait_dealt_with();
        let after = failures();
        let failed = after != before;
        if failed == want["applied"].as_bool().unwrap() {
            differences.push(format!("{name}: failed {failed}, OPA {want}: {after:?}"));
        }
        if let Some(message) = want["failure"].as_str() {
            // OPA's words after its "Bundle load/activation failed: " (after the file and
            // line for a rule conflict, whose file names differ).
            let words = message.split_once("failed: ").map_or(message, |(_, m)| m);
            let words = words
                .split_once("rego_compile_error: ")
                .map_or(words, |(_, m)| m);
            if !after.iter().any(|l| l.contains(words)) {
                differences.push(format!("{name}: no failure saying `{words}`: {after:?}"));
            }
        }
        if data("envoy") != want["envoy"] {
            differences.push(format!(
                "{name}: envoy {}, OPA {}",
                data("envoy"),
                want["envoy"]
            ));
        }
        if data("system/bundles/b/manifest/revision") != want["revision"] {
            differences.push(format!(
                "{name}: revision {}, OPA {}",
                data("system/bundles/b/manifest/revision"),
                want["revision"]
            ));
        }
    }
    // The set's revision is the bundle's, which the decision log records.
    assert_eq!(revision(&addr), "r9");
    stop(child);
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    let _ = std::fs::remove_dir_all(dir);
}
