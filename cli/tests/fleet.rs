//! The fleet audit path under faults, with real parts only: a three-node NATS JetStream cluster
//! on 127.0.0.1 (a stream with three replicas), three `arbiter serve` instances with
//! `--audit required` shipping their decision logs to it, and real Envoy in front of them
//! (one ext_authz cluster of the three, round robin, errors answered 503 so that they cannot
//! pass for a policy's denial). Clients send requests, each to its own path, for a few seconds;
//! meanwhile the stream's leader node is killed (SIGKILL, never restarted) and one arbiter is
//! SIGKILLed and restarted on its port. Afterwards:
//! - every decision Envoy answered (200: allowed, 403: denied — Envoy's own ext_authz counters
//!   agree with the clients' counts) is in the stream exactly once, under its decision id, with
//!   the decision the client saw;
//! - no decision id is in the stream twice, and the stream holds exactly the events of the
//!   three instances' files (rotated many times);
//! - `arbiter audit verify --nats` finds each instance's chain intact, and each instance's
//!   files end where the stream does;
//! - the fleet dashboard (`arbiter audit serve --nats --state`), reading the stream through the
//!   leader's death and SIGKILLed and started again mid-load, resumes from its saved index and
//!   durable consumer and ends up with every event of the stream once, per instance, each
//!   chain verified.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arbiter_conformance::envoy::{Envoy, EnvoyOptions, free_port, get};
use arbiter_conformance::nats::{NatsCluster, Stored};
use arbiter_engine::audit::index::with_rotated;
use common::{audit_serve, block_on, file_ids, http, serve, stream_messages, tmp};

const STREAM: &str = "FLEET";
const INSTANCES: usize = 3;
const CLIENTS: usize = 6;
const LOAD: Duration = Duration::from_secs(9);

/// An instance serving gRPC on `grpc_port` (0: one the kernel picks); the child and its port.
/// The first start takes the kernel's port: a port picked beforehand and bound later can be
/// taken meanwhile (the NATS nodes' route connections use ephemeral ports of the same range).
fn start_instance(dir: &Path, grpc_port: u16, urls: &str) -> (common::Server, u16) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arbiter"));
    cmd.arg("serve")
        .arg(dir.parent().unwrap().join("policy"))
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
        .args(["--http-addr", "127.0.0.1:0"])
        .arg("--decision-log")
        .arg(dir.join("decisions.log"))
        .args(["--decision-log-nats", urls])
        .args(["--decision-log-nats-stream", STREAM])
        .args(["--decision-log-nats-replicas", "3"])
        .args(["--audit", "required"])
        // Small files: each shipper follows its spool across many rotations.
        .args([
            "--decision-log-max-size",
            "256KiB",
            "--decision-log-max-files",
            "1000",
        ]);
    let (child, grpc, _http) = serve(cmd);
    let addr: std::net::SocketAddr = grpc
        .parse()
        .unwrap_or_else(|e| panic!("serve announced gRPC on {grpc}: {e}"));
    (child, addr.port())
}

/// Envoy with one ext_authz cluster of the three instances; the route answers 200 itself (no
/// upstream needed: what is measured is the check). An ext_authz failure (an instance down,
/// a timeout) answers 503.
fn envoy(ports: &[u16]) -> Envoy {
    let endpoints: String = ports
        .iter()
        .map(|p| {
            format!(
                "        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}\n"
            )
        })
        .collect();
    let mut o = EnvoyOptions::new(
        format!("127.0.0.1:{}", ports[0]).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    o.authz_filters = Some(
        r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: {code: ServiceUnavailable}
              grpc_service:
                envoy_grpc: {cluster_name: fleet}
                timeout: 2s
"#
        .into(),
    );
    o.routes = r#"              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "passed"}}
"#
    .into();
    o.extra_clusters = format!(
        r#"  - name: fleet
    type: STATIC
    connect_timeout: 0.25s
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: fleet
      endpoints:
      - lb_endpoints:
{endpoints}"#
    );
    Envoy::start(&o).unwrap()
}

/// The name of the node leading the stream, once it has one.
fn stream_leader(urls: &str) -> String {
    block_on(async {
        let servers: Vec<async_nats::ServerAddr> =
            urls.split(',').map(|u| u.parse().unwrap()).collect();
        let client = async_nats::connect(servers).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = js.get_stream(STREAM).await
                && let Ok(info) = s.info().await
                && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
            {
                return leader;
            }
            assert!(Instant::now() < until, "the stream never had a leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[derive(Debug, Default)]
struct Answers {
    /// Path → the status Envoy answered.
    by_path: BTreeMap<String, u16>,
    /// Requests that got no HTTP answer at all.
    failed: usize,
}

/// `CLIENTS` threads sending requests through Envoy until `stop`, each to a path of its own:
/// `/ok/…` (the policy allows) and `/no/…` (it denies) alternately.
fn load(port: u16, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Answers>> {
    (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut a = Answers::default();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let verdict = if n.is_multiple_of(2) { "ok" } else { "no" };
                    let path = format!("/{verdict}/c{c}/n{n}");
                    match get(port, &path) {
                        Ok(r) => {
                            a.by_path.insert(path, r.status);
                        }
                        Err(_) => a.failed += 1,
                    }
                    n += 1;
                }
                a
            })
        })
        .collect()
}

fn as_args(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(std::ffi::OsString::as_os_str).collect()
}

fn verify(urls: &str, extra: &[String]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["audit", "verify", "--nats", urls, "--stream", STREAM])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn a_fleet_behind_envoy_loses_no_decision_through_a_broker_and_an_instance_dying() {
    let dir = tmp("fleet", "faults");
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(
        dir.join("policy/authz.rego"),
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] == \"ok\"\n",
    )
    .unwrap();
    let mut cluster = NatsCluster::start(&dir.join("nats"), 3).unwrap();
    let urls = cluster.urls();

    let homes: Vec<PathBuf> = (0..INSTANCES)
        .map(|i| {
            let home = dir.join(format!("instance-{i}"));
            std::fs::create_dir_all(&home).unwrap();
            home
        })
        .collect();
    // Each instance is killed when the test ends, however it ends (`common::Server`).
    let (mut children, ports): (Vec<common::Server>, Vec<u16>) = homes
        .iter()
        .map(|home| start_instance(home, 0, &urls))
        .unzip();
    let envoy = envoy(&ports);
    // The stream exists (the instances create it) and has a leader before the load starts.
    let leader = stream_leader(&urls);

    // The fleet dashboard, reading as events arrive, saving its index every 300 ms.
    let state = dir.join("dashboard.state");
    let dashboard_args = |urls: &str| -> Vec<std::ffi::OsString> {
        vec![
            "--nats".into(),
            urls.into(),
            "--stream".into(),
            STREAM.into(),
            "--state".into(),
            state.clone().into(),
            "--save-every".into(),
            "300ms".into(),
        ]
    };
    let (child, _, _) = audit_serve(&as_args(&dashboard_args(&urls)));
    let mut dashboard = child;

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients = load(envoy.port, stop.clone());

    // The stream's leader dies and stays dead: the other two elect a new one.
    std::thread::sleep(Duration::from_secs(2));
    let killed_node: usize = leader
        .strip_prefix("node-")
        .and_then(|i| i.parse().ok())
        .unwrap();
    cluster.nodes[killed_node].kill();
    // An instance dies mid-load (SIGKILL: no shutdown, its writer and shipper cut off) and is
    // started again on its port with the same files.
    std::thread::sleep(Duration::from_secs(2));
    children[1].kill().unwrap();
    children[1].wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let live = cluster.urls();
    children[1] = start_instance(&homes[1], ports[1], &live).0;
    // The dashboard dies too, and comes back on its saved state.
    std::thread::sleep(Duration::from_millis(500));
    dashboard.kill().unwrap();
    dashboard.wait().unwrap();
    let (child, dashboard_addr, announced) = audit_serve(&as_args(&dashboard_args(&live)));
    dashboard = child;
    let resumed_at: u64 = announced
        .split(" (")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        resumed_at > 0,
        "the dashboard resumed from nothing: {announced}"
    );
    std::thread::sleep(LOAD.saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let mut answers = Answers::default();
    for c in clients {
        let a = c.join().unwrap();
        answers.by_path.extend(a.by_path);
        answers.failed += a.failed;
    }
    let count = |status: u16| answers.by_path.values().filter(|s| **s == status).count();
    let (allowed, denied, errors) = (count(200), count(403), count(503));
    let other: Vec<_> = answers
        .by_path
        .iter()
        .filter(|(_, s)| ![200, 403, 503].contains(*s))
        .take(5)
        .collect();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(
        allowed > 100 && denied > 100,
        "{allowed} allowed, {denied} denied"
    );
    assert!(
        errors > 0,
        "no check failed while an instance was down: the kill missed the load"
    );
    // Envoy's own counters say the same: what it saw decided is what the clients got.
    assert_eq!(
        envoy.stat("http.ingress.ext_authz.ok"),
        Some(allowed as u64),
        "Envoy's allowed checks"
    );
    assert_eq!(
        envoy.stat("http.ingress.ext_authz.denied"),
        Some(denied as u64),
        "Envoy's denied checks"
    );

    // Every instance's file, shipped: wait until the stream holds every event of the files.
    let files_ids: Vec<Vec<String>> = homes
        .iter()
        .map(|h| file_ids(&h.join("decisions.log")))
        .collect();
    let all_ids: BTreeSet<String> = files_ids.iter().flatten().cloned().collect();
    assert_eq!(
        all_ids.len(),
        files_ids.iter().map(Vec::len).sum::<usize>(),
        "an id in two events of the files"
    );
    let until = Instant::now() + Duration::from_secs(60);
    let stored: Vec<Stored> = loop {
        let s = stream_messages(&live, STREAM).unwrap_or_default();
        if s.len() >= all_ids.len() || Instant::now() > until {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    // Exactly once per decision id, and exactly the files' events.
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_path: BTreeMap<String, Vec<(bool, String)>> = BTreeMap::new();
    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    for s in &stored {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).unwrap();
        let id = v["decision_id"].as_str().unwrap().to_string();
        assert_eq!(s.msg_id.as_deref(), Some(id.as_str()), "Nats-Msg-Id");
        *by_id.entry(id.clone()).or_default() += 1;
        *per_instance
            .entry(v["labels"]["id"].as_str().unwrap().to_string())
            .or_default() += 1;
        let path = v["input"]["attributes"]["request"]["http"]["path"]
            .as_str()
            .unwrap()
            .to_string();
        let allowed = v["result"]["allowed"]
            .as_bool()
            .or_else(|| v["result"].as_bool())
            .unwrap_or(false);
        by_path.entry(path).or_default().push((allowed, id));
    }
    let twice: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "in the stream twice: {twice:?}");
    let in_stream: BTreeSet<String> = by_id.keys().cloned().collect();
    let missing: Vec<_> = all_ids.difference(&in_stream).take(5).collect();
    let extra: Vec<_> = in_stream.difference(&all_ids).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} events in the files, {} in the stream; missing from the stream: {missing:?}; not in the files: {extra:?}",
        all_ids.len(),
        in_stream.len()
    );
    assert_eq!(per_instance.len(), INSTANCES, "instances: {per_instance:?}");

    // Every answer Envoy gave from a decision has that decision's event, once.
    let mut decided_unanswered = 0;
    for (path, status) in &answers.by_path {
        let events = by_path.get(path).map_or(&[][..], Vec::as_slice);
        match status {
            200 | 403 => {
                assert_eq!(
                    events.len(),
                    1,
                    "{path} answered {status}: {} events in the stream",
                    events.len()
                );
                assert_eq!(events[0].0, *status == 200, "{path}: the event's decision");
            }
            _ => {
                assert!(events.len() <= 1, "{path}: {events:?}");
                decided_unanswered += events.len();
            }
        }
    }

    // The dashboard read the stream to its end: every event once, per instance, every chain
    // intact.
    let last = stored.iter().map(|s| s.sequence).max().unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let read = loop {
        let (status, body) = http(&dashboard_addr, "GET", "/api/events", "");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["stream"]["last_sequence"].as_u64() == Some(last) {
            break v;
        }
        assert!(
            Instant::now() < until,
            "the dashboard did not read to message {last}: {}",
            v["stream"]
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, summary) = http(&dashboard_addr, "GET", "/api/summary", "");
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["events"].as_u64(), Some(stored.len() as u64));
    let seen: BTreeMap<String, usize> = read["chain"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["events"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(seen, per_instance, "the dashboard's count per instance");
    assert_eq!(read["chain"]["ok"], true, "{}", read["chain"]);
    drop(dashboard);

    // Each instance's chain verifies from the stream; each instance's files end where the
    // stream does (the restarted instance kept its id: one chain across its two runs).
    let (code, text) = verify(&live, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        text.matches("chain intact").count(),
        INSTANCES,
        "one intact chain per instance: {text}"
    );
    let mut rotations = 0;
    for home in &homes {
        let instance = std::fs::read_to_string(home.join("decisions.log.instance-id")).unwrap();
        let files: Vec<String> = with_rotated(&[home.join("decisions.log")])
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        rotations += files.len() - 1;
        let mut args = vec!["--instance".to_string(), instance.trim().to_string()];
        args.extend(files);
        let (code, text) = verify(&live, &args);
        assert_eq!(code, Some(0), "{text}");
        assert!(
            text.contains("the files end where the stream does"),
            "{text}"
        );
    }
    assert!(rotations >= INSTANCES, "the logs rotated {rotations} times");

    drop(children);
    eprintln!(
        "fleet: {} answers through Envoy ({allowed} allowed, {denied} denied, {errors} failed checks, {} requests without an answer); {} events in the stream, once each ({per_instance:?}); {decided_unanswered} decided but answered 503; stream leader {leader} killed; {rotations} rotations; the dashboard resumed at {resumed_at} messages and read all",
        answers.by_path.len(),
        answers.failed,
        stored.len()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
