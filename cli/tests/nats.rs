//! Shipping decision events to a real NATS JetStream (`nats-server -js` on 127.0.0.1): every
//! event of the decision-log file reaches the stream exactly once per decision id — through a
//! SIGKILL of arbiter mid-run and its restart, and through the NATS server being down while
//! decisions go on, the log rotating every few events — and the instance keeps one id across
//! restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use arbiter_conformance::nats::{NatsServer, Stored};
use arbiter_engine::audit::index::with_rotated;
use common::{decide, file_ids, serve, serve_shipping, stop, stream_messages, tmp};

const STREAM: &str = "DECISIONS";

fn start(dir: &Path, url: &str) -> (common::Server, String) {
    let mut cmd = serve_shipping(dir, url, STREAM);
    // Small files: the shipper follows the spool across many rotations.
    cmd.args([
        "--decision-log-max-size",
        "8KiB",
        "--decision-log-max-files",
        "200",
    ]);
    let (child, _grpc, http) = serve(cmd);
    (child, http)
}

fn stream(url: &str) -> Vec<Stored> {
    stream_messages(url, STREAM).unwrap_or_default()
}

/// Wait until the stream holds as many messages as the file holds events; both, then.
fn settle(url: &str, log: &Path) -> (Vec<String>, Vec<Stored>) {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = file_ids(log);
        let stored = stream(url);
        if (stored.len() >= ids.len() && !ids.is_empty()) || Instant::now() > until {
            return (ids, stored);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every event of the file is in the stream once, under its decision id, and nothing else is.
fn assert_exactly_once(ids: &[String], stored: &[Stored], when: &str) {
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for s in stored {
        let payload: serde_json::Value = serde_json::from_slice(&s.payload).unwrap();
        let id = payload["decision_id"].as_str().unwrap().to_string();
        assert_eq!(
            s.msg_id.as_deref(),
            Some(id.as_str()),
            "{when}: Nats-Msg-Id"
        );
        *by_id.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = by_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{when}: in the stream twice: {twice:?}");
    let file: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(file.len(), ids.len(), "{when}: the file repeats an id");
    let in_stream: BTreeSet<&str> = by_id.keys().map(String::as_str).collect();
    let missing: Vec<_> = file.difference(&in_stream).collect();
    let extra: Vec<_> = in_stream.difference(&file).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{when}: {} events in the file, {} in the stream; missing from the stream: {missing:?}; not in the file: {extra:?}",
        file.len(),
        in_stream.len()
    );
}

#[test]
fn every_event_reaches_the_stream_once_through_a_sigkill_and_an_outage() {
    let dir = tmp("nats", "ship");
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(
        dir.join("policy/authz.rego"),
        "package envoy.authz\n\nallow if input.n >= 0\n",
    )
    .unwrap();
    let log = dir.join("decisions.log");
    let mut nats = NatsServer::start(&dir.join("jetstream")).unwrap();
    let url = nats.url();

    // 1. Shipping as decisions are made.
    let (mut first, http_addr) = start(&dir, &url);
    decide(&http_addr, 0..40);
    let (ids, stored) = settle(&url, &log);
    assert_eq!(ids.len(), 40);
    assert_exactly_once(&ids, &stored, "while serving");
    assert!(
        stored
            .iter()
            .all(|s| s.subject.starts_with("arbiter.decisions."))
    );

    // 2. SIGKILL in the middle of a burst: what reached the file is shipped by the next run,
    //    once (what was shipped but not yet recorded as shipped is sent again and dropped by
    //    the stream's duplicate window).
    decide(&http_addr, 0..60);
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = file_ids(&log).len();
    let (second, http_addr) = start(&dir, &url);
    decide(&http_addr, 0..20);
    let (ids, stored) = settle(&url, &log);
    assert_eq!(ids.len(), killed_at + 20);
    assert_exactly_once(&ids, &stored, "after the SIGKILL and the restart");

    // 3. NATS down while decisions go on; back up: the spool is caught up.
    nats.kill();
    decide(&http_addr, 0..30);
    std::thread::sleep(Duration::from_millis(500));
    nats.restart().unwrap();
    decide(&http_addr, 0..10);
    let (ids, stored) = settle(&url, &log);
    assert_eq!(ids.len(), killed_at + 60);
    assert_exactly_once(&ids, &stored, "after the outage");
    stop(second);

    // One instance: one id across the restart, kept beside the log, in every event and in
    // the subject.
    let instance = std::fs::read_to_string(dir.join("decisions.log.instance-id")).unwrap();
    let instance = instance.trim();
    for s in &stored {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).unwrap();
        assert_eq!(v["labels"]["id"], instance);
        assert_eq!(s.subject, format!("arbiter.decisions.{instance}"));
    }
    // The stream verifies each instance's chain, and matches the file.
    let verify = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["audit", "verify", "--nats", &url, "--stream", STREAM])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let files: Vec<String> = with_rotated(&[log.to_path_buf()])
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(files.len() > 6, "the log rotated: {} files", files.len());
    let file_args: Vec<&str> = files.iter().map(String::as_str).collect();
    let (code, text) = verify(&file_args);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "OK: instance {instance}: {} events, chain intact, from the start",
            ids.len()
        )),
        "{text}"
    );
    assert!(
        text.contains("the files end where the stream does"),
        "{text}"
    );
    // Deleting the newest events of the file is no longer invisible.
    // (The newest file that has events loses its last ones.)
    let newest = files
        .iter()
        .rev()
        .find(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
        .unwrap()
        .clone();
    let whole = std::fs::read_to_string(&newest).unwrap();
    let kept: Vec<&str> = whole.split_inclusive('\n').collect();
    let cut = kept.len().min(3);
    std::fs::write(&newest, kept[..kept.len() - cut].concat()).unwrap();
    let (code, text) = verify(&file_args);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "the stream has {cut} events after the files' last one"
        )),
        "{text}"
    );
    // An event forged into the stream (a changed decision, its hash kept) fails the chain.
    let first = std::fs::read_to_string(&files[0]).unwrap();
    let original = first.lines().next().unwrap();
    let forged = original.replace("\"allowed\":true", "\"allowed\":false");
    assert_ne!(forged, original);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
            js.publish(format!("arbiter.decisions.{instance}"), forged.into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    let (code, text) = verify(&["--instance", instance]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not match its hash"), "{text}");
    eprintln!(
        "nats: {} events in the file and in the stream, once each ({} decided before the SIGKILL reached the file)",
        ids.len(),
        killed_at
    );
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}
