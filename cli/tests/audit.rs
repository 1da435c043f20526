//! `arbiter audit verify` and `arbiter audit summary` on logs written by `arbiter serve`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

mod common;
use common::stop;

fn tmp(name: &str) -> arbiter_engine::scratch::ScratchDir {
    common::tmp("audit", name)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

/// `arbiter serve` on free ports with a small rotating log; returns the child and the HTTP
/// address (Data API requests are decisions too, and need no gRPC client).
fn serve(log: &Path) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arbiter"));
    cmd.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .args(["--decision-log", log.to_str().unwrap()])
    .args(["--decision-log-max-size", "6KiB"])
    .current_dir(repo());
    let (child, _, http) = common::serve(cmd);
    (child, http)
}

fn post(addr: &str, body: &str) {
    let (code, out) = common::http(addr, "POST", "/v1/data/envoy/authz/allow", body);
    assert_eq!(code, 200, "{out}");
}

fn log_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn verify_across_a_restart_and_rotation_then_catch_tampering() {
    let dir = tmp("verify");
    let log = dir.join("decisions.log");
    for round in 0..2 {
        let (child, addr) = serve(&log);
        for i in 0..15 {
            let path = if i % 3 == 0 {
                "/public/x"
            } else {
                "/api/v1/orders"
            };
            post(
                &addr,
                &format!(
                    r#"{{"input": {{"attributes": {{"request": {{"http": {{"method": "GET", "path": "{path}", "headers": {{"cookie": "secret-{round}-{i}"}}}}}}}}, "parsed_path": ["{}"]}}}}"#,
                    path.trim_start_matches('/').split('/').next().unwrap()
                ),
            );
        }
        stop(child);
    }
    let files = log_files(&dir);
    assert!(files.len() >= 3, "rotated: {files:?}");
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert_eq!(
        all.lines().count(),
        30,
        "every decision of both runs is logged"
    );
    assert!(!all.contains("secret-"), "cookies are erased");

    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().map(String::as_str)); // any order: rotation suffixes sort them
    let o = arbiter(&args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.starts_with("OK: 30 events in"), "{out}");
    assert!(out.contains("at the beginning of the chain"), "{out}");

    // Tamper with the file holding the most events (deleting the very last event of a log
    // is truncation, which only a hash kept elsewhere can reveal).
    let victim = files
        .iter()
        .max_by_key(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .unwrap()
        .clone();
    let current = victim.clone();
    let original = std::fs::read_to_string(&victim).unwrap();
    assert!(original.lines().count() >= 3);
    let tamper = |text: String, want: &str| {
        std::fs::write(&victim, text).unwrap();
        let o = arbiter(&args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(out.contains(want), "wanted `{want}` in {out}");
    };
    // One byte.
    let pos = original.find("\"GET\"").unwrap();
    let mut changed = original.clone();
    changed.replace_range(pos + 1..pos + 2, "P");
    tamper(changed, &format!("FAILED: {current}:"));
    // A deleted line.
    let lines: Vec<&str> = original.lines().collect();
    let mut deleted = lines.clone();
    deleted.remove(1);
    tamper(
        deleted.join("\n") + "\n",
        &format!("FAILED: {current}:2: prev_hash"),
    );
    // Two swapped lines.
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    tamper(
        swapped.join("\n") + "\n",
        &format!("FAILED: {current}:2: prev_hash"),
    );
    std::fs::write(&victim, original).unwrap();
    assert_eq!(arbiter(&args).status.code(), Some(0));

    // The summary reads the same files.
    let mut sargs = vec!["audit", "summary", "--format", "json"];
    sargs.extend(files.iter().map(String::as_str));
    let o = arbiter(&sargs);
    assert_eq!(o.status.code(), Some(0));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["events"], 30);
    assert_eq!(s["allowed"], 10, "the public reads");
    assert_eq!(s["denied"], 20);
    // These events are Data API queries (the test posts to /v1/data): filed as such, never as
    // requests to the path their input names.
    assert_eq!(
        s["top_denied_paths"][0]["name"],
        "data api: envoy/authz/allow"
    );
    assert_eq!(s["top_denied_paths"][0]["count"], 20);
    assert_eq!(s["revisions"].as_array().unwrap().len(), 1);
    assert!(s["latency"]["p99_ns"].as_u64().unwrap() > 0);
    let o = arbiter(
        &sargs[..2]
            .iter()
            .chain(&sargs[4..])
            .copied()
            .collect::<Vec<_>>(),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("30 decisions from "), "{text}");
    assert!(text.contains("top denied paths:"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
