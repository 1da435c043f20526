//! `arbiter audit verify` and `arbiter audit summary` on logs written by `arbiter serve`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
fn serve(log: &Path) -> (common::Server, String) {
    let (child, _, http) = common::serve(serve_command(log));
    (child, http)
}

/// The command [`serve`] runs.
fn serve_command(log: &Path) -> Command {
    let mut cmd = common::serve_command();
    cmd.args(["--decision-log", log.to_str().unwrap()])
        .args(["--decision-log-max-size", "6KiB"])
        .current_dir(repo());
    cmd
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
    let out = succeeded(&args);
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

/// What a SIGKILL can leave, written as it leaves it: a gap in the rotated numbers (killed
/// between two renames of a rotation: `x.N` moved to `x.(N+1)`, `x.(N-1)` not yet to `x.N`) and
/// half an event at the end of the current file (killed mid-`write`). The next run cuts the half
/// event back and its rotations close the gap: `audit verify` finds the chain intact with every
/// whole event of both runs, `audit summary` counts them all.
#[test]
fn a_log_killed_mid_rotation_and_mid_write_verifies_after_the_restart() {
    let dir = tmp("killed");
    let log = dir.join("decisions.log");
    let decide = |addr: &str, n: usize| {
        for i in 0..n {
            post(
                addr,
                &format!(
                    r#"{{"input": {{"attributes": {{"request": {{"http": {{"method": "GET", "path": "/api/v1/orders/{i}"}}}}}}, "parsed_path": ["api"]}}}}"#
                ),
            );
        }
    };
    // 25 events a run, about 8 to a 6 KiB file: no file reaches the default limit of 10.
    let (child, addr) = serve(&log);
    decide(&addr, 25);
    stop(child);
    let rotated = |n: usize| PathBuf::from(format!("{}.{n}", log.display()));
    let highest = (1..).take_while(|n| rotated(*n).exists()).last().unwrap();
    assert!(highest >= 3, "the first run rotated {highest} times");
    // Killed mid-rotation: the oldest moved up, the next not yet.
    std::fs::rename(rotated(highest), rotated(highest + 1)).unwrap();
    // Killed mid-write: the current file ends in the first 300 bytes of an event.
    let current = std::fs::read_to_string(&log).unwrap();
    let whole_before: usize = log_files(&dir).iter().map(|f| lines_in(f)).sum();
    let half = &current
        .lines()
        .next()
        .expect("an event in the current file")[..300];
    std::fs::write(&log, format!("{current}{half}")).unwrap();
    let cut_id: serde_json::Value = serde_json::from_str(current.lines().next().unwrap()).unwrap();
    let cut_id = cut_id["decision_id"].as_str().unwrap().to_string();

    // The next run says what it cut, naming the cut event's decision_id.
    let (child, _, addr, said) = common::serve_announced(serve_command(&log));
    assert!(
        said.iter()
            .any(|l| l.contains("300 bytes of an event cut short") && l.contains(&cut_id)),
        "{said:?}"
    );
    decide(&addr, 25);
    stop(child);
    let files = log_files(&dir);
    let numbers: Vec<usize> = files
        .iter()
        .filter_map(|f| f.rsplit('.').next()?.parse().ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        numbers,
        (1..=numbers.len()).collect::<Vec<_>>(),
        "the rotations closed the gap: {files:?}"
    );
    let whole: usize = files.iter().map(|f| lines_in(f)).sum();
    assert_eq!(
        whole,
        whole_before + 25,
        "every whole event of both runs is kept"
    );
    for f in &files {
        for (n, l) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            assert!(
                serde_json::from_str::<serde_json::Value>(l).is_ok() && l.ends_with("\"}"),
                "{f}:{}: not a whole event (the half event is not cut back): {l}",
                n + 1
            );
        }
    }

    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().map(String::as_str));
    let out = succeeded(&args);
    assert!(out.starts_with(&format!("OK: {whole} events in")), "{out}");
    assert!(out.contains("at the beginning of the chain"), "{out}");
    args[1] = "summary";
    let out = succeeded(&args);
    assert!(
        out.starts_with(&format!("{whole} decisions from ")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `arbiter ARGS` run to success: its stdout.
fn succeeded(args: &[&str]) -> String {
    let o = arbiter(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Lines in a file.
fn lines_in(f: &str) -> usize {
    std::fs::read_to_string(f).unwrap().lines().count()
}
