//! `arbiter serve --watch` and SIGHUP: a changed folder replaces the running set only when it
//! is valid; a broken one leaves the last good set serving and shows in `/health` and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{http, stop};

fn tmp(name: &str) -> arbiter_engine::scratch::ScratchDir {
    common::tmp("reload-cli", name)
}

fn serve(dir: &Path, extra: &[&str]) -> (common::Server, String) {
    let mut cmd = common::serve_command();
    cmd.arg(dir).args(extra);
    let (child, _, http) = common::serve(cmd);
    (child, http)
}

fn health(addr: &str) -> serde_json::Value {
    serde_json::from_str(&http(addr, "GET", "/health", "").1).unwrap()
}

fn allowed(addr: &str, path: &str) -> bool {
    let body = format!(r#"{{"input": {{"parsed_path": ["{path}"]}}}}"#);
    let (code, text) = http(addr, "POST", "/v1/data/envoy/authz/allow", &body);
    assert_eq!(code, 200, "{text}");
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["result"] == true
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `Check` over gRPC (`GET path` to `svc` with `headers`): the status code answered.
fn check_code(
    runtime: &tokio::runtime::Runtime,
    grpc: &str,
    path: &str,
    headers: Vec<(String, String)>,
) -> i32 {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        client
            .check(common::check_request(path, headers))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .code
    })
}

fn policy(allow: &str) -> String {
    format!(
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] == \"{allow}\"\n"
    )
}

#[test]
fn watch_reloads_good_sets_and_keeps_serving_through_broken_ones() {
    let dir = tmp("watch");
    let file = dir.join("authz.rego");
    std::fs::write(&file, policy("a")).unwrap();
    let (child, addr) = serve(&dir, &["--watch", "--watch-interval", "100ms"]);
    assert!(allowed(&addr, "a") && !allowed(&addr, "b"));
    let first = health(&addr)["revision"].as_str().unwrap().to_string();

    // Broken: the previous set keeps serving; the error is visible.
    std::fs::write(&file, "package envoy.authz\n\nallow if {\n").unwrap();
    wait("the reload error", || {
        !health(&addr)["last_reload_error"].is_null()
    });
    let h = health(&addr);
    assert_eq!(h["revision"], first.as_str());
    assert!(
        h["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("authz.rego:"),
        "{h}"
    );
    assert!(allowed(&addr, "a"), "still the last good set");
    let (_, metrics) = http(&addr, "GET", "/metrics", "");
    assert!(
        metrics.contains("arbiter_policy_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );

    // Fixed: the new set serves.
    std::fs::write(&file, policy("b")).unwrap();
    wait("the new revision", || {
        health(&addr)["revision"] != first.as_str()
    });
    assert!(allowed(&addr, "b") && !allowed(&addr, "a"));
    assert!(health(&addr)["last_reload_error"].is_null());
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_reloads_and_bundled_tests_can_be_required() {
    let dir = tmp("hup");
    let file = dir.join("authz.rego");
    std::fs::write(&file, policy("a")).unwrap();
    // The set's own test expects `a` to be allowed.
    std::fs::write(
        dir.join("authz_test.rego"),
        "package envoy.authz_test\n\nimport data.envoy.authz\n\ntest_a if authz.allow with input as {\"parsed_path\": [\"a\"]}\n",
    )
    .unwrap();
    let (child, addr) = serve(&dir, &["--reload-require-tests"]);
    let first = health(&addr)["revision"].as_str().unwrap().to_string();
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
    };
    // Valid Rego that fails the set's own test: refused.
    std::fs::write(&file, policy("b")).unwrap();
    hup();
    wait("the test failure", || {
        !health(&addr)["last_reload_error"].is_null()
    });
    let h = health(&addr);
    assert!(
        h["last_reload_error"].as_str().unwrap().contains("test_a"),
        "{h}"
    );
    assert_eq!(h["revision"], first.as_str());
    assert!(allowed(&addr, "a"));
    // A change that keeps the test green: accepted on the next SIGHUP.
    std::fs::write(
        &file,
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] in {\"a\", \"c\"}\n",
    )
    .unwrap();
    hup();
    wait("the new revision", || {
        health(&addr)["revision"] != first.as_str()
    });
    assert!(allowed(&addr, "c"));
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// The announcement comes after every signal handler is installed: a SIGHUP or SIGTERM sent
/// the moment the server says it is up reloads or drains, never kills the process outright.
#[test]
fn signals_sent_right_after_the_announcement_are_handled() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tmp("early-signals");
    std::fs::write(dir.join("authz.rego"), policy("a")).unwrap();
    for signal in ["-HUP", "-TERM"] {
        for _ in 0..5 {
            let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
                .args(["serve", dir.to_str().unwrap()])
                .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let addr = loop {
                let line = lines.next().unwrap().unwrap();
                if let Some(rest) = line.split("HTTP (health, metrics, Data API) on ").nth(1) {
                    break rest.trim().to_string();
                }
            };
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            std::thread::spawn(move || for _ in lines {});
            if signal == "-HUP" {
                // Still up after the reload, and it answers.
                wait("the SIGHUP reload", || health(&addr)["reloads"] != 0);
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "SIGHUP killed the server"
                );
                stop(child);
            } else {
                let status = child.wait().unwrap();
                assert_eq!(
                    (status.code(), status.signal()),
                    (Some(0), None),
                    "SIGTERM drains and exits 0"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `--shadow` reloads with the live set: after SIGHUP the shadow decides with its new files
/// (its disagreements start), the live set's decisions are unchanged.
#[test]
fn the_shadow_set_reloads_with_sighup() {
    let dir = tmp("shadow");
    let (live, shadow) = (dir.join("live"), dir.join("shadow"));
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&shadow).unwrap();
    std::fs::write(live.join("authz.rego"), policy("a")).unwrap();
    std::fs::write(shadow.join("authz.rego"), policy("a")).unwrap();
    let mut cmd = common::serve_command();
    cmd.arg(&live).arg("--shadow").arg(&shadow);
    let (child, grpc, addr) = common::serve(cmd);
    let metric = |name: &str| -> u64 {
        let (_, text) = http(&addr, "GET", "/metrics", "");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let new_access = "arbiter_shadow_disagreements_total{direction=\"new_access\"}";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let check_b = || check_code(&runtime, &grpc, "/b", Vec::new());
    // The same policy on both sides: no disagreement.
    assert_eq!(check_b(), 7, "denied by the live set");
    wait("the shadow's decision", || {
        metric("arbiter_shadow_evaluations_total") == 1
    });
    assert_eq!(metric(new_access), 0);
    // The shadow's files change; SIGHUP reloads both sets.
    std::fs::write(shadow.join("authz.rego"), policy("b")).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    wait("the shadow's new set", || {
        assert_eq!(check_b(), 7, "the live set still denies");
        metric(new_access) >= 1
    });
    // The client's connections close with its runtime.
    drop(runtime);
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that keeps its gRPC connection open and no longer reads (its runtime is not
/// polled) does not hold the shutdown past the drain bound (10 s): `stop` waits 20 s at most.
#[test]
fn an_unresponsive_client_does_not_hold_the_shutdown() {
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let dir = tmp("drain");
    std::fs::write(dir.join("authz.rego"), policy("a")).unwrap();
    let mut cmd = common::serve_command();
    cmd.arg(&*dir);
    let (child, grpc, _) = common::serve(cmd);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _client = runtime.block_on(async {
        let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let answer = client.check(CheckRequest::default()).await.unwrap();
        assert_eq!(answer.into_inner().status.unwrap().code, 7);
        client
    });
    // The connection stays open; nothing polls it from here on.
    let started = Instant::now();
    stop(child);
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "stopped in {:?}: the client did not hold the drain at all, so this test shows nothing",
        started.elapsed()
    );
    drop(runtime);
    let _ = std::fs::remove_dir_all(dir);
}

/// JWT bundles rotate: without `--watch`, a changed `--jwt-bundle` file is re-read, so a
/// token signed with the new key identifies its caller and one signed with the retired key no
/// longer does.
#[test]
fn jwt_bundles_are_re_read_when_they_change() {
    use arbiter_conformance::istio_envoy::Signer;
    let dir = tmp("jwt-bundle");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("authz.rego"),
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.identity.source == \"jwt-svid\"\n",
    )
    .unwrap();
    let (old, new) = (Signer::new(), Signer::new());
    let bundle = dir.join("example.jwks");
    std::fs::write(&bundle, &old.jwks).unwrap();
    let mut cmd = common::serve_command();
    cmd.arg(&policies)
        .arg(format!("--jwt-bundle=example.org={}", bundle.display()))
        .args(["--jwt-audience", "orders"]);
    let (child, grpc, _) = common::serve(cmd);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({
        "sub": "spiffe://example.org/ns/shop/sa/frontend", "aud": "orders", "exp": exp
    });
    let check = |signer: &Signer| -> i32 {
        let token = format!("Bearer {}", signer.token(&claims));
        check_code(
            &runtime,
            &grpc,
            "/orders",
            vec![("authorization".to_string(), token)],
        )
    };
    assert_eq!(check(&old), 0, "the current key identifies the caller");
    assert_eq!(check(&new), 7, "a key not yet in the bundle does not");
    // The bundle is replaced (written aside and renamed, as SPIRE's helpers do).
    let staged = dir.join("example.jwks.new");
    std::fs::write(&staged, &new.jwks).unwrap();
    std::fs::rename(&staged, &bundle).unwrap();
    wait("the new JWT bundle", || check(&new) == 0);
    assert_eq!(check(&old), 7, "the retired key no longer verifies");
    drop(runtime);
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// `--log-format json`: the server's own lines are JSON objects with a level, a message and
/// stable fields (`event`, the addresses, the reload's reason and revision, the error);
/// `--log-level warn` leaves the info lines out and keeps the failures.
#[test]
fn server_logs_are_structured_when_asked() {
    use std::io::BufRead as _;
    let dir = tmp("json-log");
    let file = dir.join("authz.rego");
    std::fs::write(&file, policy("a")).unwrap();
    let spawn = |level: &str, http_addr: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["serve", dir.to_str().unwrap(), "--log-format", "json"])
            .args(["--log-level", level])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", http_addr])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        (child, rx)
    };
    let next = |rx: &std::sync::mpsc::Receiver<serde_json::Value>, event: &str| loop {
        let v = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no `{event}` line"));
        for key in ["timestamp", "level", "message", "event"] {
            assert!(v.get(key).is_some(), "no `{key}`: {v}");
        }
        if v["event"] == event {
            return v;
        }
    };
    let hup = |child: &Child| {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
    };

    let (child, rx) = spawn("info", "127.0.0.1:0");
    let start = next(&rx, "start");
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["path"], "envoy/authz/allow");
    assert_eq!(
        start["revision"].as_str().map(str::len),
        Some(24),
        "{start}"
    );
    let listening = next(&rx, "listening");
    let http_addr = listening["http_addr"].as_str().unwrap().to_string();
    assert!(
        listening["grpc_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(health(&http_addr)["revision"], start["revision"]);
    hup(&child);
    let reload = next(&rx, "reload");
    assert_eq!(
        (reload["reason"].as_str(), reload["level"].as_str()),
        (Some("SIGHUP"), Some("INFO"))
    );
    std::fs::write(&file, "package envoy.authz\n\nallow if {\n").unwrap();
    hup(&child);
    let failed = next(&rx, "reload_failed");
    assert_eq!(failed["level"], "ERROR");
    assert_eq!(
        failed["revision"], start["revision"],
        "still serving the last good set"
    );
    assert!(
        failed["error"].as_str().unwrap().contains("authz.rego:"),
        "{failed}"
    );
    stop(child);

    // At `warn`, the start and reload lines are left out; a failed reload is not.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(&file, policy("a")).unwrap();
    let (child, rx) = spawn("warn", &addr);
    wait("the server", || {
        std::net::TcpStream::connect(&addr).is_ok() && health(&addr)["revision"].is_string()
    });
    std::fs::write(&file, "package envoy.authz\n\nallow if {\n").unwrap();
    hup(&child);
    // Every line up to the failure, and after it, is a warning or an error.
    let mut seen = Vec::new();
    loop {
        let v = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        seen.push(v.clone());
        if v["event"] == "reload_failed" {
            assert_eq!(v["level"], "ERROR");
            break;
        }
    }
    stop(child);
    seen.extend(rx.try_iter());
    assert!(seen.iter().all(|v| v["level"] != "INFO"), "{seen:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Once serving, and again after each reload, `serve` takes its executable's pages that only
/// starting used out of its resident set (`code_pages_released`, with the bytes advised: the
/// executable's code at least), and goes on answering with the code mapped back as it runs.
#[test]
fn the_executables_startup_pages_are_released_at_start_and_after_each_reload() {
    let dir = tmp("release-pages");
    std::fs::write(dir.join("authz.rego"), policy("a")).unwrap();
    // Ended however the test ends (a failed assertion must not leave it running).
    let mut server = common::Server::from(
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["serve", dir.to_str().unwrap()])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = server.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = server.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // Lines up to the next logged release: the bytes it advised, and the HTTP address if
    // announced meanwhile.
    let released = |addr: &mut Option<String>| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no release of the executable's pages was logged");
        if let Some(rest) = line.split("HTTP (health, metrics, Data API) on ").nth(1) {
            *addr = Some(rest.trim().to_string());
        }
        assert!(!line.contains("pages stay mapped"), "{line}");
        if let Some(rest) = line.split("unmapped until used again: ").nth(1) {
            return rest.split(' ').next().unwrap().parse::<usize>().unwrap();
        }
    };
    let mut addr = None;
    let first = released(&mut addr);
    let addr = addr.expect("announced before the release");
    // The code the executable maps (read-only and executable), from the kernel's view.
    let code_bytes: usize = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains(" r-xp ") && l.ends_with("/arbiter"))
        .map(|l| {
            let (a, b) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap()
        })
        .sum();
    assert!(code_bytes > 0);
    assert!(
        first >= code_bytes,
        "{first} bytes advised, the code is {code_bytes}"
    );
    assert!(allowed(&addr, "a"));
    std::fs::write(dir.join("authz.rego"), policy("b")).unwrap();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    let again = released(&mut None);
    assert!(
        again >= code_bytes,
        "{again} bytes advised, the code is {code_bytes}"
    );
    wait("the reload", || health(&addr)["reloads"] != 0);
    assert!(allowed(&addr, "b"));
    assert!(!allowed(&addr, "a"));
    stop(server);
    let _ = std::fs::remove_dir_all(dir);
}
