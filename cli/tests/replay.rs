//! `arbiter replay` as a command: its output, exit codes and counts on hand-written logs (the
//! replay of a log recorded through real Envoy is `conformance/tests/replay_e2e.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value as Json, json};

mod common;

fn tmp(name: &str) -> arbiter_engine::scratch::ScratchDir {
    common::tmp("replay", name)
}

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .output()
        .unwrap()
}

const POLICY: &str = "package envoy.authz

import rego.v1

default allow := false

allow if input.parsed_path[0] == \"public\"
";

fn policy_dir(dir: &Path, name: &str, rego: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("authz.rego"), rego).unwrap();
    d.display().to_string()
}

/// An event as `serve` writes one, with the fields replay reads.
fn event(id: &str, path: &str, allowed: bool, extra: Json) -> String {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut e = json!({
        "decision_id": id,
        "path": "envoy/authz/allow",
        "timestamp": "2026-12-04T10:00:00.5Z",
        "allowed": allowed,
        "reason": if allowed { "allowed" } else { "policy_denied" },
        "policy": "data.envoy.authz.allow",
        "origin": "grpc",
        "input": {
            "attributes": {"request": {"http": {
                "method": "GET", "path": path, "host": "shop", "scheme": "http",
                "headers": {":method": "GET", ":path": path, ":authority": "shop"}
            }}},
            "parsed_path": segments,
        },
    });
    if let (Json::Object(e), Json::Object(x)) = (&mut e, extra) {
        e.extend(x);
    }
    e.to_string()
}

#[test]
fn flips_counts_and_exit_codes() {
    let dir = tmp("flips");
    let base = policy_dir(&dir, "base", POLICY);
    let candidate = policy_dir(
        &dir,
        "candidate",
        &POLICY.replace(
            "\"public\"",
            "\"public\"\nallow if input.parsed_path == [\"admin\"]",
        ),
    );
    // A rotated set: `log.1` is older than `log`; giving `log` reads both.
    let log = dir.join("decisions.log");
    let older = [
        event("d-1", "/public/a", true, json!({})),
        event("d-2", "/admin", false, json!({})),
    ];
    let newer = [
        event("d-3", "/admin", false, json!({})),
        event("d-4", "/private", false, json!({})),
        // Not compared: a Data API query, a refusal without input, an overload.
        event("d-5", "/x", false, json!({"origin": "data_api"})),
        json!({"decision_id": "d-6", "allowed": false, "reason": "non_canonical_path",
            "error": {"code": "non_canonical_path"}, "timestamp": "2026-12-04T10:00:01Z"})
        .to_string(),
        event(
            "d-7",
            "/admin",
            false,
            json!({"reason": "overload", "error": {"code": "overload"}}),
        ),
        "not an event".to_string(),
        String::new(),
    ];
    std::fs::write(format!("{}.1", log.display()), older.join("\n") + "\n").unwrap();
    std::fs::write(&log, newer.join("\n") + "\n").unwrap();
    let log = log.display().to_string();

    let out = arbiter(&["replay", "--policies", &candidate, "-f", "json", &log]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["lines"], 8, "{r:#}");
    assert_eq!(r["compared"], 4, "{r:#}");
    assert_eq!(r["new_access"], 2, "{r:#}");
    assert_eq!(r["new_denials"], 0, "{r:#}");
    assert_eq!(r["not_replayed"]["data_api"], 1);
    assert_eq!(
        r["not_replayed"]["without_input"],
        json!({"non_canonical_path": 1})
    );
    assert_eq!(
        r["not_replayed"]["recorded_not_decisions"],
        json!({"overload": 1})
    );
    assert_eq!(r["not_replayed"]["unreadable"], 1);
    let unreadable = r["not_replayed"]["unreadable_examples"][0]
        .as_str()
        .unwrap();
    assert!(
        unreadable.ends_with("decisions.log:6: not JSON: expected ident at line 1 column 2"),
        "{unreadable}"
    );
    assert_eq!(
        r["recorded_errors"],
        json!({"non_canonical_path": 1, "overload": 1})
    );
    let group = &r["flips"]["new_access"]["by_request"][0];
    assert_eq!(group["path"], "/admin");
    assert_eq!(group["count"], 2);
    // The earliest first: the rotated file's event, then the newer one.
    let ids: Vec<&str> = group["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d-2", "d-3"]);
    assert!(
        group["examples"][0]["at"]
            .as_str()
            .unwrap()
            .ends_with("decisions.log.1:2"),
        "{group}"
    );

    // The pretty report says the same.
    let out = arbiter(&["replay", "--policies", &candidate, &log]);
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "compared 4 · unchanged 2 · new access 2 · new denials 0",
        "not compared: 1 Data API queries · 1 without input (non_canonical_path 1) · 1 recorded errors that are not decisions (overload 1) · 1 unreadable",
        "NEW ACCESS (denied before, allowed now): 2 events",
        "         2  (no identity)  GET /admin",
        "d-2 at 2026-12-04T10:00:00.5Z",
        "policy_denied by data.envoy.authz.allow -> allowed by data.envoy.authz.allow",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // The gates; the same policies flip nothing.
    let gate = |policies: &str, baseline: Option<&str>, on: &str| {
        let mut a = vec!["replay", "--policies", policies, "--fail-on", on, &log];
        if let Some(b) = baseline {
            a.extend(["--baseline", b]);
        }
        arbiter(&a).status.code()
    };
    assert_eq!(gate(&candidate, None, "new-access"), Some(1));
    assert_eq!(gate(&candidate, Some(&base), "any"), Some(1));
    assert_eq!(gate(&base, None, "any"), Some(0));
    assert_eq!(gate(&base, Some(&base), "any"), Some(0));
}

#[test]
fn broken_policies_and_missing_logs_are_usage_errors() {
    let dir = tmp("errors");
    let broken = policy_dir(&dir, "broken", "package envoy.authz\n\nallow if {\n");
    let log = dir.join("decisions.log");
    std::fs::write(&log, event("d-1", "/public", true, json!({})) + "\n").unwrap();
    let log = log.display().to_string();
    let out = arbiter(&["replay", "--policies", &broken, &log]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("the candidate policies:") && err.contains("authz.rego:4:1:"),
        "{err}"
    );

    let good = policy_dir(&dir, "good", POLICY);
    let missing = dir.join("nope.log").display().to_string();
    let out = arbiter(&["replay", "--policies", &good, &missing]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.log"));
}

/// `arbiter audit serve --candidate`: the impact page shows the replay of the served files and
/// the shadow disagreements recorded in them.
#[test]
fn the_dashboard_shows_the_impact_of_a_candidate_and_of_the_shadow() {
    use std::io::{BufRead, BufReader};
    let dir = tmp("impact");
    let candidate = policy_dir(
        &dir,
        "candidate",
        &POLICY.replace(
            "\"public\"",
            "\"public\"\nallow if input.parsed_path == [\"admin\"]",
        ),
    );
    let log = dir.join("decisions.log");
    let shadowed = json!({"shadow": {"allowed": true, "reason": "allowed", "revision": "r2"},
        "identity": {"spiffe_id": "spiffe://td/ns/a/sa/b", "source": "x509"},
        "request": {"method": "GET", "path": "/admin", "host": "shop"}});
    let lines = [
        event("d-1", "/public/a", true, json!({})),
        event("d-2", "/admin", false, shadowed.clone()),
        event("d-3", "/admin", false, shadowed),
        event("d-4", "/private", false, json!({})),
    ];
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let mut child = common::Server::from(
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args([
                "audit",
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--candidate",
                &candidate,
            ])
            .arg(&log)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = stderr.next().unwrap().unwrap();
        if let Some(u) = line.split("serving http://").nth(1) {
            break u.trim().trim_end_matches('/').to_string();
        }
    };
    std::thread::spawn(move || for _ in stderr {});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let impact = loop {
        let (code, body) = common::http(&addr, "GET", "/api/impact", "");
        assert_eq!(code, 200, "{body}");
        let j: Json = serde_json::from_str(&body).unwrap();
        if j["replay"]["status"] == "done" || std::time::Instant::now() > deadline {
            break j;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let (_, page) = common::http(&addr, "GET", "/impact", "");
    let _ = child.kill();
    let _ = child.wait();
    let replay = &impact["replay"];
    assert_eq!(replay["status"], "done", "{impact:#}");
    assert_eq!(
        (replay["compared"].as_u64(), replay["new_access"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(
        replay["flips"]["new_access"]["by_request"][0]["path"],
        "/admin"
    );
    assert_eq!(impact["shadow"]["new_access"], 2, "{impact:#}");
    assert_eq!(impact["shadow"]["new_denials"], 0);
    assert_eq!(
        impact["shadow"]["disagreements"][0],
        json!({"direction": "new_access", "identity": "spiffe://td/ns/a/sa/b",
            "method": "GET", "path": "/admin", "count": 2})
    );
    for want in [
        "2 checks the shadow set would have <b>allowed</b>",
        "<b>2 new access</b>",
        "<code title=",
        ">d-2</code>",
    ] {
        assert!(page.contains(want), "missing {want:?} in:\n{page}");
    }
}
