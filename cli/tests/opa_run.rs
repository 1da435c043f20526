//! `arbiter run --server` with an OPA-Envoy Deployment's command line (issue 25, item 9): the
//! quick start's `args` with loopback addresses, OPA's configuration file with `${VAR}`
//! substitution, `--set` overrides, `--ignore`, and the diagnostic address for probes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{http, stop};

/// Start `arbiter <args>` and wait for its announcement: the child, the HTTP address and the
/// diagnostic address.
fn start(args: &[&str], env: &[(&str, &str)]) -> (common::Server, String, String) {
    let mut child = common::Server::from(
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut http_addr, mut seen) = (None, String::new());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let Some(Ok(line)) = lines.next() else {
            panic!("arbiter exited: {seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.split("HTTP (health, metrics, Data API) on ").nth(1) {
            http_addr = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.split("diagnostic (health, metrics) on ").nth(1) {
            let diagnostic = rest.trim().to_string();
            std::thread::spawn(move || for _ in lines {});
            return (child, http_addr.expect("HTTP first"), diagnostic);
        }
    }
    panic!("arbiter did not start: {seen}");
}

#[test]
fn the_quick_start_command_line_runs() {
    let dir = common::tmp("opa-run", "quick-start");
    let policy = dir.join("policy");
    std::fs::create_dir_all(policy.join("..2026_12_03")).unwrap();
    std::fs::write(
        policy.join("policy.rego"),
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n",
    )
    .unwrap();
    // What a ConfigMap volume holds beside the file (hidden, skipped), and a file the
    // Deployment ignores by name: loading either would break the policy.
    std::fs::write(
        policy.join("..2026_12_03/policy.rego"),
        "package envoy.authz\n\nallow := true\n",
    )
    .unwrap();
    std::fs::write(policy.join("scratch.rego"), "package broken {").unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "plugins:\n  envoy_ext_authz_grpc:\n    addr: ${ARBITER_TEST_GRPC}\n    path: envoy/authz/allow\ndecision_logs:\n  console: false\n",
    )
    .unwrap();
    let (child, addr, diagnostic) = start(
        &[
            "run",
            "--server",
            &format!("--config-file={}", config.display()),
            "--addr=127.0.0.1:0",
            "--diagnostic-addr=127.0.0.1:0",
            "--ignore=.*",
            "--ignore=scratch*",
            "--set=decision_logs.console=true",
            "--set=labels.region=eu-1",
            "--log-level=info",
            "--disable-telemetry",
            policy.to_str().unwrap(),
        ],
        &[("ARBITER_TEST_GRPC", "127.0.0.1:0")],
    );
    let ask = |method: &str| {
        let (code, body) = http(
            &addr,
            "POST",
            "/v1/data/envoy/authz/allow",
            &format!(
                r#"{{"input": {{"attributes": {{"request": {{"http": {{"method": "{method}"}}}}}}}}}}"#
            ),
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["result"].clone()
    };
    let mut child = child;
    let mut console = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(ask("GET"), true);
    // The console line OPA writes for a decision (issue 25, item 8): the event's fields with
    // `level`, `msg`, `time` and `type`, and the configured labels.
    let line = console.next().unwrap().unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["msg"], "Decision Log", "{line}");
    assert_eq!(event["level"], "info");
    assert_eq!(event["type"], "openpolicyagent.org/decision_logs");
    assert!(
        event["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    assert_eq!(event["labels"]["region"], "eu-1");
    assert!(event["labels"]["id"].is_string() && event["labels"]["version"].is_string());
    assert_eq!(event["result"], true);
    assert!(
        event.get("bundles").is_none(),
        "files are not bundles: {line}"
    );
    std::thread::spawn(move || for _ in console {});
    assert_eq!(ask("POST"), false, "the hidden copy was loaded");
    // The probes of the quick start: /health?plugins on the diagnostic address.
    let (code, body) = http(&diagnostic, "GET", "/health?plugins", "");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(&diagnostic, "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(body.contains("arbiter_"), "{body}");
    // Nothing else is served there.
    let (code, _) = http(&diagnostic, "GET", "/v1/data/envoy/authz/allow", "");
    assert_eq!(code, 404);
    stop(child);

    // Without --server there is nothing to run; a flag OPA does not have is refused.
    for args in [
        vec!["run", policy.to_str().unwrap()],
        vec!["run", "--server", "--no-such-flag"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
