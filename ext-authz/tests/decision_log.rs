//! Decision logs: one valid JSON object per line whatever the request holds, masking, the hash
//! chain across restarts and rotation, a collector that fails, stalls and recovers, and
//! `audit: required`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use arbiter_engine::scratch::ScratchDir;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbiter_engine::audit::chain;
use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::record::{DecisionRecord, InstanceLabels};
use arbiter_engine::request::{AuthzRequest, HttpRequest, RawHeader};
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use arbiter_ext_authz::decision_log::{
    DecisionLog, DecisionLogConfig, FileSinkConfig, Fsync, LogTarget, UploadConfig,
};
use arbiter_ext_authz::metrics::{DropReason, Metrics};
use proptest::prelude::*;

const POLICY: &str = r#"
package envoy.authz
default allow := false
allow if input.parsed_path[0] == "ok"
"#;

fn tmp(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("arbiter-dl-{}-{name}", std::process::id()))
}

fn policies(extra: &str) -> Arc<PolicySet> {
    let mut s = PolicySources::default();
    s.add_rego("policy.rego", POLICY);
    if !extra.is_empty() {
        s.add_rego("log.rego", extra);
    }
    Arc::new(PolicySet::from_sources(&s, &LoadOptions::default()).unwrap())
}

fn labels() -> InstanceLabels {
    InstanceLabels {
        id: "test".into(),
        version: "0".into(),
        extra: Default::default(),
    }
}

/// Decide `request` and capture the record, as the server does: for odd `id`s holding the
/// request as read (a check's record), for even ones the document's value (a shadowed check's).
fn record(authorizer: &Authorizer, request: &AuthzRequest, id: usize) -> Box<DecisionRecord> {
    let outcome = if id % 2 == 1 {
        authorizer.check_for_record(request.clone())
    } else {
        authorizer.check(request)
    };
    Box::new(DecisionRecord {
        decision_id: format!("{id:08}"),
        timestamp_ns: 1_795_690_800_000_000_000 + i128::try_from(id).unwrap(),
        path: "envoy/authz/allow".into(),
        input: outcome.input,
        decision: outcome.decision,
        timings: outcome.timings,
        server_ns: 1000,
        requested_by: "127.0.0.1:1".into(),
        revision: authorizer.policies().revision().to_string(),
        dry_run: false,
        trace_id: None,
        span_id: None,
        identity: outcome.identity,
        policies: Some(authorizer.policies().clone()),
        origin: Default::default(),
        request: None,
        shadow: None,
    })
}

fn authorizer(p: Arc<PolicySet>) -> Authorizer {
    Authorizer::new(
        p,
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    )
}

fn request(
    path: &str,
    headers: Vec<(String, String)>,
    raw: Vec<(String, Vec<u8>)>,
) -> AuthzRequest {
    AuthzRequest {
        http: Some(HttpRequest {
            method: "GET".into(),
            path: path.into(),
            headers,
            header_map: (!raw.is_empty()).then(|| {
                raw.into_iter()
                    .map(|(key, raw_value)| RawHeader {
                        key,
                        value: String::new(),
                        raw_value,
                    })
                    .collect()
            }),
            ..HttpRequest::default()
        }),
        ..AuthzRequest::default()
    }
}

fn file_log(path: &Path) -> DecisionLogConfig {
    DecisionLogConfig {
        queue: 100_000,
        ..DecisionLogConfig::to(LogTarget::File(path.to_path_buf()))
    }
}

fn read_events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read(path)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

fn verify(files: &[PathBuf]) -> chain::VerifyReport {
    chain::verify(
        files
            .iter()
            .map(|p| {
                (
                    p.display().to_string(),
                    BufReader::new(std::fs::File::open(p).unwrap()),
                )
            })
            .collect(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever a request holds — control characters, quotes, a value that looks like the end
    /// of an event, bytes that are not UTF-8 — every line of the log is one JSON object, one
    /// per decision, and the chain verifies.
    #[test]
    fn every_line_is_one_json_object(
        values in prop::collection::vec(
            prop_oneof![
                any::<String>(),
                Just("\n{\"allowed\":true}".to_string()),
                Just("\"},\"allowed\":true,\"x\":{\"".to_string()),
                "[\\x00-\\x1f\\x7f\"\\\\]{0,12}",
            ],
            1..6,
        ),
        raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..3),
        path in prop_oneof![Just("/ok".to_string()), "/[ -~]{0,20}", any::<String>()],
    ) {
        let dir = tmp("prop");
        let file = dir.join("d.log");
        let m = Arc::new(Metrics::default());
        let a = authorizer(policies(""));
        let log = DecisionLog::start(&file_log(&file), labels(), m.clone()).unwrap();
        let n = values.len();
        for (i, v) in values.iter().enumerate() {
            let headers = vec![
                (format!("x-h{i}"), v.clone()),
                ("authorization".into(), v.clone()),
            ];
            let raw: Vec<(String, Vec<u8>)> =
                raw.iter().map(|b| ("x-raw".to_string(), b.clone())).collect();
            prop_assert!(log.submit(record(&a, &request(&path, headers, raw), i)));
        }
        log.close();
        let bytes = std::fs::read(&file).unwrap();
        prop_assert!(bytes.ends_with(b"\n"));
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        prop_assert_eq!(lines.len(), n);
        for l in &lines {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            prop_assert!(v.is_object());
            // The credential header never reaches the log.
            prop_assert!(v.pointer("/input/attributes/request/http/headers/authorization").is_none());
        }
        let r = verify(&[file]);
        prop_assert_eq!(r.failure, None);
        prop_assert_eq!(r.events, n);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn mask_and_drop_policies_as_in_opa() {
    let dir = tmp("mask");
    let file = dir.join("d.log");
    let p = policies(
        r#"
package system.log
mask contains "/input/attributes/request/http/headers/x-user"
mask contains {"op": "upsert", "path": "/input/parsed_query/card", "value": ["****"]}
drop if input.input.parsed_path[0] == "health"
"#,
    );
    let a = authorizer(p);
    let m = Arc::new(Metrics::default());
    let log = DecisionLog::start(&file_log(&file), labels(), m.clone()).unwrap();
    let headers = vec![
        ("x-user".to_string(), "ann".to_string()),
        ("cookie".to_string(), "session=1".to_string()),
        ("x-keep".to_string(), "1".to_string()),
    ];
    assert!(log.submit(record(&a, &request("/ok?card=4111", headers, vec![]), 1)));
    assert!(log.submit(record(&a, &request("/health", vec![], vec![]), 2)));
    log.close();
    let events = read_events(&file);
    assert_eq!(events.len(), 1, "the drop policy removed the health check");
    assert_eq!(m.dropped(DropReason::Policy), 1);
    let e = &events[0];
    let headers = &e["input"]["attributes"]["request"]["http"]["headers"];
    assert_eq!(headers, &serde_json::json!({"x-keep": "1"}));
    assert_eq!(
        e["input"]["parsed_query"]["card"],
        serde_json::json!(["****"])
    );
    assert_eq!(
        e["erased"],
        serde_json::json!([
            "/input/attributes/request/http/headers/cookie",
            "/input/attributes/request/http/headers/x-user"
        ])
    );
    assert_eq!(e["masked"], serde_json::json!(["/input/parsed_query/card"]));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_broken_mask_policy_hides_the_input() {
    let dir = tmp("mask-broken");
    let file = dir.join("d.log");
    let a = authorizer(policies(
        "package system.log\nmask contains x if { x := to_number(\"nope\") }\n",
    ));
    let log = DecisionLog::start(&file_log(&file), labels(), Arc::new(Metrics::default())).unwrap();
    log.submit(record(&a, &request("/ok", vec![], vec![]), 1));
    log.close();
    let e = &read_events(&file)[0];
    assert!(e.get("input").is_none());
    assert!(e["mask_error"].as_str().unwrap().contains("mask policy"));
    assert_eq!(e["allowed"], true, "the decision itself is still recorded");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_chain_survives_restarts_and_rotation_and_catches_tampering() {
    let dir = tmp("chain");
    let file = dir.join("decisions.log");
    let a = authorizer(policies(""));
    let config = DecisionLogConfig {
        file: Some(FileSinkConfig {
            path: file.clone(),
            max_bytes: 8 << 10,
            max_files: 50,
            fsync: Fsync::Batch,
        }),
        ..file_log(&file)
    };
    let mut id = 0;
    for _restart in 0..3 {
        let log = DecisionLog::start(&config, labels(), Arc::new(Metrics::default())).unwrap();
        for _ in 0..25 {
            id += 1;
            assert!(log.submit(record(&a, &request("/ok", vec![], vec![]), id)));
        }
        log.close();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() > 3, "rotated: {files:?}");
    files = arbiter_ext_authz::decision_log::file::chronological(&files);
    let r = verify(&files);
    assert_eq!(r.failure, None);
    assert_eq!(r.events, 75);
    assert_eq!(r.first_prev_hash.as_deref(), Some(chain::GENESIS));

    // Swap two lines of a middle file: caught at the first of them.
    let victim = &files[1];
    let text = std::fs::read_to_string(victim).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(1, 2);
    std::fs::write(victim, lines.join("\n") + "\n").unwrap();
    let f = verify(&files).failure.unwrap();
    assert_eq!((f.file.as_str(), f.line), (victim.to_str().unwrap(), 2));
    let _ = std::fs::remove_dir_all(dir);
}

/// A collector: records the decision ids of every accepted upload, in order; its mode decides
/// how it answers (0 accept, 1 fail with 500, 2 stall without answering).
struct Collector {
    addr: std::net::SocketAddr,
    mode: Arc<AtomicU8>,
    received: Arc<Mutex<Vec<String>>>,
}

fn collector() -> Collector {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mode = Arc::new(AtomicU8::new(0));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (m, r) = (mode.clone(), received.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (m, r) = (m.clone(), r.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0usize;
                let mut gzip = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if l == "content-encoding: gzip" {
                        gzip = true;
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                match m.load(Ordering::SeqCst) {
                    1 => {
                        let _ = conn.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
                        );
                    }
                    2 => {
                        // Hold the connection without answering.
                        std::thread::sleep(Duration::from_secs(5));
                    }
                    _ => {
                        assert!(gzip, "OPA's format is gzip-compressed");
                        let mut json = Vec::new();
                        flate2::read::GzDecoder::new(&body[..])
                            .read_to_end(&mut json)
                            .unwrap();
                        let events: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
                        let mut r = r.lock().unwrap();
                        for e in events {
                            r.push(e["decision_id"].as_str().unwrap().to_string());
                        }
                        drop(r);
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    }
                }
            });
        }
    });
    Collector {
        addr,
        mode,
        received,
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_collector_that_fails_stalls_and_recovers() {
    let c = collector();
    c.mode.store(1, Ordering::SeqCst); // failing
    let m = Arc::new(Metrics::default());
    let mut upload = UploadConfig::new(format!("http://{}/logs", c.addr));
    upload.buffer_events = 40;
    upload.batch_bytes = 4 << 10;
    upload.max_delay = Duration::from_millis(20);
    upload.timeout = Duration::from_millis(300);
    upload.max_backoff = Duration::from_millis(100);
    let config = DecisionLogConfig {
        upload: Some(upload),
        ..DecisionLogConfig::none()
    };
    let a = authorizer(policies(""));
    let log = DecisionLog::start(&config, labels(), m.clone()).unwrap();
    let mut accepted = Vec::new();
    let submit = |log: &DecisionLog, id: usize| {
        // Submitting never waits for the network: the writer queue takes it at once.
        assert!(log.submit(record(&a, &request("/ok", vec![], vec![]), id)));
        id
    };
    for id in 0..20 {
        accepted.push(submit(&log, id));
    }
    wait_until("failed uploads", Duration::from_secs(10), || {
        m.render("r", "p", true, true, &[]).lines().any(|l| {
            l.starts_with("arbiter_decision_logs_upload_failures_total ") && !l.ends_with(" 0")
        })
    });
    assert!(c.received.lock().unwrap().is_empty());

    // Stalled: uploads hang until their timeout; events keep queueing, the buffer fills, and
    // the overflow is dropped and counted, never more than the buffer held.
    c.mode.store(2, Ordering::SeqCst);
    for id in 20..100 {
        submit(&log, id);
        assert!(m.upload_buffered() <= 40, "memory stays bounded");
    }
    wait_until("overflow drops", Duration::from_secs(10), || {
        m.dropped(DropReason::UploadBufferFull) > 0
    });
    assert!(m.upload_buffered() <= 40);

    // Recovered: the backlog arrives, in order, once.
    c.mode.store(0, Ordering::SeqCst);
    wait_until("the backlog", Duration::from_secs(20), || {
        m.upload_buffered() == 0
    });
    for id in 100..110 {
        submit(&log, id);
    }
    log.close();
    let received = c.received.lock().unwrap().clone();
    let dropped = m.dropped(DropReason::UploadBufferFull);
    assert_eq!(
        received.len() as u64 + dropped,
        110,
        "delivered + dropped = submitted"
    );
    let mut sorted = received.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, received, "in order, no duplicates");
    // The first 20 (buffered while failing) all arrived; the newest, after recovery, too.
    assert_eq!(
        received[..20],
        (0..20).map(|i| format!("{i:08}")).collect::<Vec<_>>()[..]
    );
    assert_eq!(received.last().unwrap(), "00000109");
    // Each uploaded event is sealed: the uploaded stream is one chain.
    assert_eq!(m.uploaded_total(), received.len() as u64);
}

#[test]
fn shutdown_delivers_what_is_buffered() {
    let c = collector();
    let m = Arc::new(Metrics::default());
    let mut upload = UploadConfig::new(format!("http://{}/logs", c.addr));
    upload.max_delay = Duration::from_secs(3600); // only shutdown sends it
    let config = DecisionLogConfig {
        upload: Some(upload),
        ..DecisionLogConfig::none()
    };
    let a = authorizer(policies(""));
    let log = DecisionLog::start(&config, labels(), m.clone()).unwrap();
    for id in 0..50 {
        assert!(log.submit(record(&a, &request("/ok", vec![], vec![]), id)));
    }
    log.close();
    assert_eq!(c.received.lock().unwrap().len(), 50);
}

mod through_the_server {
    use super::*;
    use arbiter_ext_authz::{ListenAddr, ServeOptions, ServerConfig};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
    };

    fn server_config(log: DecisionLogConfig) -> ServerConfig {
        ServerConfig {
            grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
            http: None,
            options: ServeOptions {
                dry_run: false,
                deadline: Duration::from_millis(500),
                labels: labels(),
                api: Default::default(),
                grpc_duration_buckets: Vec::new(),
                active_config: serde_json::Value::Null,
            },
            workers: 2,
            queue: 256,
            decision_log: Some(log),
            tls: None,
            limits: Default::default(),
            ui: None,
            diagnostic: None,
            http_authz: None,
            otlp: None,
        }
    }

    fn check(path: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: path.into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
    }

    fn meta(r: &CheckResponse, key: &str) -> String {
        use envoy_types::pb::google::protobuf::value::Kind;
        match r
            .dynamic_metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .and_then(|v| v.kind.as_ref())
        {
            Some(Kind::StringValue(s)) => s.clone(),
            _ => String::new(),
        }
    }

    /// While the collector holds every upload open without answering, checks are answered
    /// as usual: logging is off the decision path.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_collector_does_not_hold_up_decisions() {
        let c = collector();
        c.mode.store(2, Ordering::SeqCst);
        let mut upload = UploadConfig::new(format!("http://{}/logs", c.addr));
        upload.max_delay = Duration::from_millis(5);
        upload.timeout = Duration::from_millis(300);
        upload.shutdown_grace = Duration::from_secs(2);
        upload.buffer_events = 20;
        let s = arbiter_ext_authz::start(
            server_config(DecisionLogConfig {
                upload: Some(upload),
                ..DecisionLogConfig::none()
            }),
            authorizer(policies("")),
        )
        .await
        .unwrap();
        let mut client = AuthorizationClient::connect(format!("http://{}", s.grpc_addr.unwrap()))
            .await
            .unwrap();
        for i in 0..200 {
            let path = if i % 2 == 0 { "/ok" } else { "/no" };
            let r = client.check(check(path)).await.unwrap().into_inner();
            let reason = meta(&r, "arbiter_reason");
            assert!(
                reason.is_empty() || reason == "policy_denied",
                "check {i} was not decided normally: {reason}"
            );
            assert_eq!(r.status.unwrap().code == 0, i % 2 == 0);
        }
        let m = s.state.metrics.clone();
        assert!(m.upload_buffered() <= 20);
        assert!(m.dropped(DropReason::UploadBufferFull) > 0);
        // Stop without waiting for the stalled collector's grace period to matter.
        c.mode.store(0, Ordering::SeqCst);
        s.shutdown().await.unwrap();
    }

    /// With `audit: required`, a request whose event cannot be queued is denied; every allowed
    /// request has its event in the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn audit_required_denies_what_cannot_be_logged() {
        let dir = tmp("audit-required");
        let file = dir.join("d.log");
        // A slow mask policy keeps the writer busy so that its one-slot queue fills.
        let slow_mask = r#"
package system.log
mask contains "/input/x" if {
    count([i | some i in numbers.range(1, 200000); i % 7 == 0]) > 0
}
"#;
        let config = DecisionLogConfig {
            queue: 1,
            audit_required: true,
            ..DecisionLogConfig::to(LogTarget::File(file.clone()))
        };
        let s = arbiter_ext_authz::start(server_config(config), authorizer(policies(slow_mask)))
            .await
            .unwrap();
        let addr = s.grpc_addr.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..24 {
            tasks.push(tokio::spawn(async move {
                let mut client = AuthorizationClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                client.check(check("/ok")).await.unwrap().into_inner()
            }));
        }
        let mut allowed = Vec::new();
        let mut unaudited = 0;
        for t in tasks {
            let r = t.await.unwrap();
            if r.status.as_ref().unwrap().code == 0 {
                allowed.push(meta(&r, "decision_id"));
            } else {
                assert_eq!(meta(&r, "arbiter_reason"), "audit_unavailable");
                unaudited += 1;
            }
        }
        s.shutdown().await.unwrap();
        assert!(unaudited > 0, "the queue never filled");
        let logged: Vec<String> = read_events(&file)
            .iter()
            .map(|e| e["decision_id"].as_str().unwrap().to_string())
            .collect();
        for id in &allowed {
            assert!(logged.contains(id), "allowed {id} has no event");
        }
        assert_eq!(logged.len(), allowed.len());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// With `audit: required` the answer waits for its event: when a check is answered, its
    /// event is already in the file (a crash right after cannot lose it). Without the wait the
    /// writer thread runs behind the answers and the file lacks the newest events.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn audit_required_answers_after_the_event_is_written() {
        let dir = tmp("audit-written");
        let file = dir.join("d.log");
        let (s, client) = audited_server(&file).await;
        let mut tasks = Vec::new();
        for t in 0..4 {
            let mut client = client.clone();
            let file = file.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let path = if (t + i) % 2 == 0 { "/ok" } else { "/no" };
                    let r = client.check(check(path)).await.unwrap().into_inner();
                    assert_ne!(meta(&r, "arbiter_reason"), "audit_unavailable");
                    let id = meta(&r, "decision_id");
                    let text = std::fs::read_to_string(&file).unwrap();
                    assert!(
                        text.contains(&format!("\"decision_id\":\"{id}\"")),
                        "check {t}/{i} was answered before its event {id} was written"
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        s.shutdown().await.unwrap();
        assert_eq!(read_events(&file).len(), 200);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// With `audit: required`, a check whose event is not written within the bound is denied
    /// `audit_unavailable` and counted; its event is still written afterwards — the log may
    /// hold a decision its caller was denied, never the reverse. The writer is slowed by a mask
    /// policy that runs into the evaluation deadline (50 ms) on every event: 40 checks at once
    /// queue 2 s of writing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_required_denies_a_check_whose_event_is_written_too_late() {
        let dir = tmp("audit-late");
        let file = dir.join("d.log");
        let slow_mask = r#"
package system.log
mask contains "/input/x" if {
    some i in numbers.range(1, 100000)
    some j in numbers.range(1, 100000)
    i + j < 0
}
"#;
        let config = DecisionLogConfig {
            audit_required: true,
            ..DecisionLogConfig::to(LogTarget::File(file.clone()))
        };
        let s = arbiter_ext_authz::start(server_config(config), authorizer(policies(slow_mask)))
            .await
            .unwrap();
        let client = AuthorizationClient::connect(format!("http://{}", s.grpc_addr.unwrap()))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let started = std::time::Instant::now();
                let r = client.check(check("/ok")).await.unwrap().into_inner();
                (r, started.elapsed())
            }));
        }
        let mut late = Vec::new();
        let mut answered = 0;
        for t in tasks {
            let (r, waited) = t.await.unwrap();
            if meta(&r, "arbiter_reason") == "audit_unavailable" {
                assert!(
                    waited >= arbiter_ext_authz::decision_log::AUDIT_WRITE_TIMEOUT,
                    "denied after {waited:?}"
                );
                late.push(meta(&r, "decision_id"));
            } else {
                assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
                answered += 1;
            }
        }
        assert!(
            !late.is_empty() && answered > 0,
            "{answered} answered, {} late",
            late.len()
        );
        assert_eq!(s.state.metrics.audit_write_timeouts(), late.len() as u64);
        s.shutdown().await.unwrap();
        let events = read_events(&file);
        assert_eq!(
            events.len(),
            40,
            "every event is written, the late ones too"
        );
        for id in &late {
            assert!(
                events.iter().any(|e| e["decision_id"] == id.as_str()),
                "the late event {id} was never written"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A small tmpfs, unmounted when dropped: a disk that really fills. Mounting needs root,
    /// which CI and the development machines have; without it the test fails, never skips.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: &Path, size: &str) -> Self {
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir)
                .status()
                .expect("run mount");
            assert!(
                status.success(),
                "cannot mount a tmpfs at {} (the full-disk test needs root)",
                dir.display()
            );
            Tmpfs(dir.to_path_buf())
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// A server logging to `file` with auditing required, and a client of it.
    async fn audited_server(
        file: &Path,
    ) -> (
        arbiter_ext_authz::RunningServer,
        AuthorizationClient<tonic::transport::Channel>,
    ) {
        let config = DecisionLogConfig {
            audit_required: true,
            ..DecisionLogConfig::to(LogTarget::File(file.to_path_buf()))
        };
        let s = arbiter_ext_authz::start(server_config(config), authorizer(policies("")))
            .await
            .unwrap();
        let client = AuthorizationClient::connect(format!("http://{}", s.grpc_addr.unwrap()))
            .await
            .unwrap();
        (s, client)
    }

    /// Wait (at most 5 s) until gRPC health for the authorization service says `serving`.
    async fn wait_for_grpc_health(s: &arbiter_ext_authz::RunningServer, serving: bool) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", s.grpc_addr.unwrap()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut health = HealthClient::new(channel);
        let want = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        } as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: "envoy.service.auth.v3.Authorization".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            if status == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gRPC health stayed {status}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_audit(s: &arbiter_ext_authz::RunningServer, available: bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.state.audit_available() != available {
            assert!(
                std::time::Instant::now() < deadline,
                "the decision log never became {}",
                if available {
                    "available"
                } else {
                    "unavailable"
                }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Issue 16, finding 3: with `--audit required` and the log on a disk that fills, checks
    /// are denied (`audit_unavailable`) once the file refuses events, no partial line is left,
    /// every allowed check has its event once space returns, and the chain is whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_required_on_a_full_disk_denies_and_loses_no_allowed_event() {
        let dir = tmp("full-disk");
        let _fs = Tmpfs::mount(&dir, "64k");
        let filler = dir.join("filler");
        std::fs::write(&filler, vec![b'x'; 56 << 10]).unwrap();
        let file = dir.join("d.log");
        let (s, mut client) = audited_server(&file).await;
        let mut allowed = Vec::new();
        let mut refused = 0;
        for _ in 0..400 {
            let r = client.check(check("/ok")).await.unwrap().into_inner();
            if r.status.as_ref().unwrap().code == 0 {
                allowed.push(meta(&r, "decision_id"));
            } else {
                assert_eq!(meta(&r, "arbiter_reason"), "audit_unavailable");
                refused += 1;
            }
            // Let the writer reach the disk between checks.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            refused > 0,
            "the disk never filled ({} allowed)",
            allowed.len()
        );
        assert!(!s.state.audit_available());
        // gRPC health says so too (as /health does), so Envoy's health checks see it.
        wait_for_grpc_health(&s, false).await;
        // No partial line while the disk is full.
        let text = std::fs::read(&file).unwrap();
        assert!(
            text.is_empty() || text.ends_with(b"\n"),
            "a partial line was left"
        );
        // Space returns: the waiting events are written and checks are allowed again.
        std::fs::remove_file(&filler).unwrap();
        wait_for_audit(&s, true).await;
        wait_for_grpc_health(&s, true).await;
        for _ in 0..5 {
            let r = client.check(check("/ok")).await.unwrap().into_inner();
            assert_eq!(r.status.as_ref().unwrap().code, 0);
            allowed.push(meta(&r, "decision_id"));
        }
        s.shutdown().await.unwrap();
        let logged: Vec<String> = read_events(&file)
            .iter()
            .map(|e| e["decision_id"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<&String> = allowed.iter().filter(|id| !logged.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "{} allowed checks have no event",
            missing.len()
        );
        let report = verify(std::slice::from_ref(&file));
        assert_eq!(report.failure, None, "the chain is whole");
    }

    /// Issue 16, finding 3: a log file deleted under the server is noticed; the events of
    /// checks allowed afterwards are in a new file at the path (not in the deleted inode), and
    /// that file continues the chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_log_file_is_noticed_and_replaced() {
        let dir = tmp("deleted-log");
        let file = dir.join("d.log");
        let (s, mut client) = audited_server(&file).await;
        for _ in 0..20 {
            client.check(check("/ok")).await.unwrap();
        }
        wait_until(
            "the first events are written",
            Duration::from_secs(5),
            || read_events(&file).len() == 20,
        );
        std::fs::remove_file(&file).unwrap();
        let mut allowed = Vec::new();
        for _ in 0..50 {
            let r = client.check(check("/ok")).await.unwrap().into_inner();
            if r.status.as_ref().unwrap().code == 0 {
                allowed.push(meta(&r, "decision_id"));
            } else {
                assert_eq!(meta(&r, "arbiter_reason"), "audit_unavailable");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        wait_for_audit(&s, true).await;
        s.shutdown().await.unwrap();
        assert!(file.exists(), "a new file at the path");
        let logged: Vec<String> = read_events(&file)
            .iter()
            .map(|e| e["decision_id"].as_str().unwrap().to_string())
            .collect();
        assert!(!allowed.is_empty());
        for id in &allowed {
            assert!(
                logged.contains(id),
                "allowed {id} has no event in the new file"
            );
        }
        // The new file starts where the deleted one ended: its chain verifies on its own.
        let report = verify(std::slice::from_ref(&file));
        assert_eq!(report.failure, None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
