//! The fleet dashboard (`arbiter audit serve --nats URL --stream S --state FILE`) over a real
//! NATS JetStream (`nats-server -js` on 127.0.0.1) fed by two real `arbiter serve` instances:
//! it counts every instance's events once, checks each instance's chain, filters by instance,
//! shows an event whole from the stream, follows the stream live, and — SIGKILLed and started
//! again — resumes from its durable consumer and saved index without counting anything twice
//! or missing anything; a stream deleted and created again starts a new index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use std::time::{Duration, Instant};

use arbiter_conformance::nats::NatsServer;
use common::{
    audit_serve, block_on, decide, file_ids, http, serve, serve_shipping, stop, stream_messages,
    tmp,
};
use serde_json::Value as Json;

const STREAM: &str = "DECISIONS";

/// A process killed when the test ends, whatever the outcome (`common::Server`), or stopped
/// or killed before.
struct Guard(Option<common::Server>);

impl Guard {
    /// SIGTERM, and wait for it to stop.
    fn stop(mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }

    fn kill(mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

fn start_instance(dir: &Path, url: &str) -> (Guard, String) {
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(
        dir.join("policy/authz.rego"),
        "package envoy.authz\n\nallow if input.n % 3 != 0\n",
    )
    .unwrap();
    let (child, _grpc, http) = serve(serve_shipping(dir, url, STREAM));
    (Guard(Some(child)), http)
}

/// The dashboard, its address, and what it said when it started.
struct Dashboard {
    child: Guard,
    addr: String,
    announced: String,
}

fn start_dashboard(url: &str, state: &Path) -> Dashboard {
    let (child, addr, announced) = audit_serve(&[
        "--nats".as_ref(),
        url.as_ref(),
        "--stream".as_ref(),
        STREAM.as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
        "--save-every".as_ref(),
        "200ms".as_ref(),
        "--window".as_ref(),
        "50".as_ref(),
    ]);
    Dashboard {
        child: Guard(Some(child)),
        addr,
        announced,
    }
}

fn get(addr: &str, target: &str) -> Json {
    let (status, body) = http(addr, "GET", target, "");
    assert_eq!(status, 200, "{target}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn last_sequence(url: &str) -> u64 {
    stream_messages(url, STREAM)
        .unwrap()
        .iter()
        .map(|s| s.sequence)
        .max()
        .unwrap_or(0)
}

/// Wait until every event of both files is in the stream and the dashboard has read up to the
/// stream's end; then its `/api/events` answer.
fn caught_up(d: &Dashboard, url: &str, logs: &[&Path]) -> Json {
    let want: usize = logs.iter().map(|l| file_ids(l).len()).sum();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let last = last_sequence(url);
        let v = get(&d.addr, "/api/events");
        if last as usize >= want && v["stream"]["last_sequence"].as_u64() == Some(last) {
            return v;
        }
        assert!(
            Instant::now() < until,
            "not caught up: {want} events in the files, stream at {last}, dashboard at {}",
            v["stream"]["last_sequence"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each instance's event count, by its id.
fn per_instance(v: &Json) -> Vec<(String, u64, bool)> {
    v["chain"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["events"].as_u64().unwrap(),
                i["ok"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_fleet_dashboard_counts_every_instance_once_live_and_across_a_sigkill() {
    let dir = tmp("fleet-dashboard", "two");
    let mut nats = NatsServer::start(&dir.join("jetstream")).unwrap();
    let url = nats.url();
    let (a, a_http) = start_instance(&dir.join("a"), &url);
    let (b, b_http) = start_instance(&dir.join("b"), &url);
    let (a_log, b_log) = (dir.join("a/decisions.log"), dir.join("b/decisions.log"));
    let logs = [a_log.as_path(), b_log.as_path()];
    decide(&a_http, 0..30);
    decide(&b_http, 0..45);

    let state = dir.join("dashboard.state");
    let d = start_dashboard(&url, &state);
    assert!(
        d.announced.contains("(0 events in the saved index)"),
        "{}",
        d.announced
    );
    let v = caught_up(&d, &url, &logs);
    let summary = get(&d.addr, "/api/summary");
    assert_eq!(summary["events"], 75);
    // n % 3 == 0 is denied: 10 of a's 30, 15 of b's 45.
    assert_eq!(summary["denied"], 25);
    let instances = per_instance(&v);
    assert_eq!(instances.len(), 2, "{instances:?}");
    let mut counts: Vec<u64> = instances.iter().map(|i| i.1).collect();
    counts.sort_unstable();
    assert_eq!(counts, [30, 45]);
    assert!(instances.iter().all(|i| i.2), "every chain verifies: {v}");
    assert_eq!(v["chain"]["ok"], true);
    // The window keeps the newest 50 events; the totals keep all 75.
    assert_eq!(v["stream"]["in_window"], 50);
    assert_eq!(v["stream"]["folded"], 25);

    // Filter by instance: b's events only, the instance named in every row.
    let b_id = instances.iter().find(|i| i.1 == 45).unwrap().0.clone();
    let only_b = get(
        &d.addr,
        &format!("/api/events?instance={b_id}&decision=denied"),
    );
    let rows = only_b["events"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|r| r["instance"] == b_id.as_str() && r["decision"] == "denied")
    );
    // An event opens whole, read back from the stream by its sequence.
    let seq = rows[0]["id"].as_u64().unwrap();
    let (status, page) = http(&d.addr, "GET", &format!("/event/{seq}"), "");
    assert_eq!(status, 200);
    assert!(page.contains(&format!("{STREAM}, message {seq}")), "{page}");
    assert!(page.contains(&b_id), "the event is b's");
    let (status, _) = http(&d.addr, "GET", "/event/999999", "");
    assert_eq!(status, 404);
    // The page shows the instances' table.
    let (status, page) = http(&d.addr, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(page.contains("data-k=\"instances\"") && page.contains(&b_id));

    // Live: new events appear without a restart.
    decide(&a_http, 30..42);
    caught_up(&d, &url, &logs);
    assert_eq!(get(&d.addr, "/api/summary")["events"], 87);

    // SIGKILL after a save (every 200 ms); more decisions while it is down.
    std::thread::sleep(Duration::from_millis(600));
    d.child.kill();
    assert!(state.is_file(), "the index was saved");
    decide(&a_http, 42..50);
    decide(&b_http, 45..54);
    let d = start_dashboard(&url, &state);
    // Resumed from the saved index, not read again from the start.
    let saved: u64 = d
        .announced
        .split(" (")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(saved >= 75, "{}", d.announced);
    let v = caught_up(&d, &url, &logs);
    assert_eq!(
        get(&d.addr, "/api/summary")["events"],
        104,
        "every event once after the restart"
    );
    let mut counts: Vec<u64> = per_instance(&v).iter().map(|i| i.1).collect();
    counts.sort_unstable();
    assert_eq!(counts, [50, 54]);
    assert_eq!(v["chain"]["ok"], true, "{v}");
    // The durable consumer is there, acknowledged up to a saved position.
    let acked = block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let s = js.get_stream(STREAM).await.unwrap();
        // Saved every 200 ms: wait for one.
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.consumer_info("arbiter-dashboard")
            .await
            .unwrap()
            .ack_floor
            .stream_sequence
    });
    assert_eq!(acked, last_sequence(&url), "acknowledged = saved = read");

    // A clean stop saves; the next start resumes with everything.
    d.child.stop();
    let d = start_dashboard(&url, &state);
    assert!(
        d.announced.contains("(104 events in the saved index)"),
        "{}",
        d.announced
    );
    d.child.stop();

    // While it is stopped, the stream is deleted and created again with more messages than
    // the saved index read: its sequences start over, so the index (read to message 104)
    // would skip the new stream's first 104 messages. The dashboard tells the streams apart
    // (by creation time) and starts a new index.
    block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        js.delete_stream(STREAM).await.unwrap();
        js.create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["arbiter.decisions.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut prev = arbiter_engine::audit::chain::GENESIS.to_string();
        for i in 0..110 {
            let e = serde_json::json!({"decision_id": format!("fresh-{i}"), "labels": {"id": "fresh"},
                    "timestamp": "2026-12-04T10:00:00Z", "allowed": true, "reason": "allowed"});
            let (mut line, hash) =
                arbiter_engine::audit::chain::seal(e.as_object().unwrap().clone(), &prev);
            line.pop();
            prev = hash;
            js.publish("arbiter.decisions.fresh", line.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    let d = start_dashboard(&url, &state);
    assert!(
        d.announced.contains("(104 events in the saved index)"),
        "{}",
        d.announced
    );
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(&d.addr, "/api/events");
        if v["stream"]["last_sequence"] == 110 && v["stream"]["messages"] == 110 {
            assert_eq!(per_instance(&v), [("fresh".to_string(), 110, true)]);
            break;
        }
        assert!(Instant::now() < until, "no new index: {}", v["stream"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&d.addr, "/api/summary")["events"], 110);
    d.child.stop();
    a.stop();
    b.stop();
    nats.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
