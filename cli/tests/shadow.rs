//! `serve --shadow` with one I/O thread: the shadow set decides in that thread's idle time
//! (through a real Envoy 1.40 too), and a shadow set too slow for it moves to a side thread.
//! (The shadow on a side thread through Envoy: `conformance/tests/shadow_e2e.rs`; its reload:
//! `reload.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

mod common;
use common::{http, stop};

const LIVE: &str =
    "package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] == \"a\"\n";

/// The shadow allows `/b` instead of `/a`: every check disagrees.
const SHADOW: &str =
    "package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] == \"b\"\n";

/// The shadow above, made slow: a comprehension over 50,000 numbers on every check (about 5 ms
/// in a release build, 35 ms in a debug one). The server runs with a 30 s evaluation timeout:
/// with 1 s, one evaluation of 40 on a machine loaded by a build beside the tests took longer
/// (`limit_exceeded:time`), and these tests are not about the timeout.
const SLOW_SHADOW: &str = "package envoy.authz\n\ndefault allow := false\n\nallow if {\n\tcount([x | some x in numbers.range(1, 50000)]) > 0\n\tinput.parsed_path[0] == \"b\"\n}\n";

/// `arbiter serve` with one I/O thread, `live` enforced, `shadow` beside it, a file log: the
/// child, the gRPC and HTTP addresses, and every line it writes to stderr (kept as they come).
/// The server is killed if a test fails before it stops it (`common::Server`).
fn serve(dir: &Path, shadow: &str) -> (common::Server, String, String, Arc<Mutex<Vec<String>>>) {
    std::fs::create_dir_all(dir.join("live")).unwrap();
    std::fs::create_dir_all(dir.join("shadow")).unwrap();
    std::fs::write(dir.join("live/authz.rego"), LIVE).unwrap();
    std::fs::write(dir.join("shadow/authz.rego"), shadow).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .arg("serve")
        .arg(dir.join("live"))
        .arg("--shadow")
        .arg(dir.join("shadow"))
        .arg("--decision-log")
        .arg(dir.join("decisions.log"))
        .args(["--io-threads", "1", "--eval-timeout", "30s"])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    let start = Instant::now();
    loop {
        let announced = lines.lock().unwrap().iter().find_map(|l| {
            let rest = l.split("gRPC ext_authz on ").nth(1)?;
            let (grpc, http) = rest.split_once(", HTTP (health, metrics, Data API) on ")?;
            Some((grpc.trim().to_string(), http.trim().to_string()))
        });
        if let Some((grpc, http)) = announced {
            return (common::Server::from(child), grpc, http, lines);
        }
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not start: {:?}", lines.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` checks, `/a` and `/b` in turn, 20 at a time over one connection; the status codes.
fn checks(grpc: &str, n: usize) -> Vec<i32> {
    common::block_on(async {
        let client = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let mut codes = Vec::new();
        for batch in (0..n).collect::<Vec<_>>().chunks(20) {
            let mut set = tokio::task::JoinSet::new();
            for &i in batch {
                let mut c = client.clone();
                let path = if i % 2 == 0 { "/a" } else { "/b" };
                set.spawn(async move {
                    let answer = c.check(common::check_request(path, Vec::new())).await;
                    (i, answer.unwrap().into_inner().status.unwrap().code)
                });
            }
            let mut done = set.join_all().await;
            done.sort_unstable();
            codes.extend(done.into_iter().map(|(_, code)| code));
        }
        codes
    })
}

fn metric(addr: &str, name: &str) -> u64 {
    let (_, text) = http(addr, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn events(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Whether the server wrote a line holding `text` to stderr.
fn said(lines: &Mutex<Vec<String>>, text: &str) -> bool {
    lines.lock().unwrap().iter().any(|l| l.contains(text))
}

/// The live set allowed `/a` and denied `/b`; the shadow decided each the other way, wrote
/// so in the event (its reason too) and counted it; no check went unshadowed.
fn every_check_disagrees(written: &[serde_json::Value], addr: &str) {
    for e in written {
        let path = e["request"]["path"].as_str().unwrap();
        assert_eq!(e["allowed"], path == "/a", "{e}");
        assert_eq!(e["shadow"]["allowed"], path == "/b", "{e}");
        let reason = if path == "/b" {
            "allowed"
        } else {
            "policy_denied"
        };
        assert_eq!(e["shadow"]["reason"], reason, "{e}");
    }
    let n = written.len() as u64;
    assert_eq!(metric(addr, "arbiter_shadow_evaluations_total"), n);
    let direction = |d: &str| format!("arbiter_shadow_disagreements_total{{direction=\"{d}\"}}");
    assert_eq!(metric(addr, &direction("new_access")), n / 2);
    assert_eq!(metric(addr, &direction("new_denial")), n / 2);
    assert_eq!(metric(addr, "arbiter_shadow_dropped_total"), 0);
}

/// Waits, without a request to the server, until its log holds `n` events; at most `bound`.
fn wait_for_events(log: &Path, n: usize, bound: Duration) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let e = events(log);
        if e.len() >= n {
            return e;
        }
        assert!(
            start.elapsed() < bound,
            "{} of {n} events written in {bound:?}",
            e.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every check of a burst is shadowed with no request after it: queued checks are decided in
/// the idle time that follows, not when the next I/O comes. Each event is written once the
/// shadow has decided it, with the shadow's verdict; the counters agree.
#[test]
fn with_one_io_thread_the_shadow_decides_in_idle_time() {
    let dir = common::tmp("shadow", "idle");
    let log = dir.join("decisions.log");
    let (child, grpc, addr, lines) = serve(&dir, SHADOW);
    assert!(said(&lines, "in the I/O thread's idle time"), "{lines:?}");
    let n = 200;
    let codes = checks(&grpc, n);
    // The live set decides: `/a` allowed (0), `/b` denied (7).
    for (i, code) in codes.iter().enumerate() {
        assert_eq!(*code, if i % 2 == 0 { 0 } else { 7 }, "check {i}");
    }
    // The events reach the log after the shadow decided them; nothing else reaches the server.
    // Decided in idle time, the 200 take tens of milliseconds; were the queue left for the
    // next wake-up of the runtime (its timers) it takes about 15 s (tried): 5 s tells them
    // apart on a loaded machine.
    let written = wait_for_events(&log, n, Duration::from_secs(5));
    assert_eq!(written.len(), n);
    every_check_disagrees(&written, &addr);
    assert!(
        !said(&lines, "on a side thread from now on"),
        "a fast shadow set stays in idle time: {lines:?}"
    );
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}

/// Three shadow evaluations in a row over the idle-time budget (2 ms of CPU time) move the
/// shadow to a side thread, said once on stderr; it goes on deciding every check there.
#[test]
fn a_slow_shadow_set_moves_to_a_side_thread() {
    let dir = common::tmp("shadow", "slow");
    let log = dir.join("decisions.log");
    let (child, grpc, addr, lines) = serve(&dir, SLOW_SHADOW);
    let n = 40;
    let codes = checks(&grpc, n);
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), n / 2);
    let written = wait_for_events(&log, n, Duration::from_secs(30));
    assert_eq!(written.len(), n);
    every_check_disagrees(&written, &addr);
    stop(child);
    let moved: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("the shadow set decides on a side thread from now on"))
        .cloned()
        .collect();
    assert_eq!(moved.len(), 1, "{:?}", lines.lock().unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

/// Through a real Envoy: the live set is enforced (`/a` passes, `/b` is denied), the shadow,
/// deciding in the idle time of the one I/O thread, disagrees on every request, and each
/// event carries its verdict.
#[test]
fn through_envoy_the_idle_time_shadow_is_never_enforced() {
    use arbiter_conformance::envoy::{Envoy, EnvoyOptions, request};
    let dir = common::tmp("shadow", "envoy");
    let log = dir.join("decisions.log");
    let (child, grpc, addr, lines) = serve(&dir, SHADOW);
    assert!(said(&lines, "in the I/O thread's idle time"), "{lines:?}");
    let envoy = Envoy::start(&EnvoyOptions::new(
        grpc.parse().unwrap(),
        common::upstream(),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let n = 30;
    for i in 0..n {
        let (path, status) = if i % 2 == 0 { ("/a", 200) } else { ("/b", 403) };
        let r = request(envoy.port, "GET", path, &[], b"")
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", envoy.log_text()));
        assert_eq!(r.status, status, "GET {path}: the live set decides");
    }
    let written = wait_for_events(&log, n, Duration::from_secs(30));
    assert_eq!(written.len(), n);
    every_check_disagrees(&written, &addr);
    drop(envoy);
    stop(child);
    let _ = std::fs::remove_dir_all(dir);
}
