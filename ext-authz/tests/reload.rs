//! Hot reload under load: 10,000 concurrent checks while the policy flips between two
//! revisions and a broken one. Zero errors, and every decision matches the revision recorded
//! with it in the decision log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use arbiter_ext_authz::reload::{Build, reload};
use arbiter_ext_authz::{ListenAddr, ServeOptions, ServerConfig};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};

fn build(rego: &'static str) -> Build {
    Arc::new(move || {
        let mut s = PolicySources::default();
        s.add_rego("policy.rego", rego);
        let set =
            PolicySet::from_sources(&s, &LoadOptions::default()).map_err(|e| e.to_string())?;
        Ok(Authorizer::new(
            Arc::new(set),
            DataRef::parse("envoy/authz/allow").unwrap(),
            InputOptions::default(),
        ))
    })
}

const A: &str =
    "package envoy.authz\ndefault allow := false\nallow if input.parsed_path[0] == \"a\"\n";
const B: &str =
    "package envoy.authz\ndefault allow := false\nallow if input.parsed_path[0] == \"b\"\n";
const BROKEN: &str = "package envoy.authz\nallow if {\n";

/// A gRPC server on loopback deciding with `authorizer`, logging every decision to `log`.
async fn start_logged(
    id: &str,
    log: &std::path::Path,
    authorizer: Authorizer,
) -> arbiter_ext_authz::RunningServer {
    arbiter_ext_authz::start(
        ServerConfig {
            grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
            http: None,
            options: ServeOptions {
                dry_run: false,
                deadline: Duration::from_secs(5),
                labels: InstanceLabels {
                    id: id.into(),
                    version: "0".into(),
                    extra: Default::default(),
                },
                api: Default::default(),
                grpc_duration_buckets: Vec::new(),
                active_config: serde_json::Value::Null,
            },
            workers: 0,
            queue: 20_000,
            decision_log: Some(DecisionLogConfig {
                queue: 20_000,
                ..DecisionLogConfig::to(LogTarget::File(log.to_path_buf()))
            }),
            tls: None,
            limits: Default::default(),
            ui: None,
            diagnostic: None,
            http_authz: None,
            otlp: None,
        },
        authorizer,
    )
    .await
    .unwrap()
}

/// The decision log's events by decision id.
fn events_by_id(log: &std::path::Path) -> HashMap<String, serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            (e["decision_id"].as_str().unwrap().to_string(), e)
        })
        .collect()
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

fn meta(r: &CheckResponse, key: &str) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    match r
        .dynamic_metadata
        .as_ref()?
        .fields
        .get(key)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_checks_through_flipping_revisions() {
    let dir = std::env::temp_dir().join(format!("arbiter-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("d.log");
    let (build_a, build_b, broken) = (build(A), build(B), build(BROKEN));
    let rev_a = build_a().unwrap().policies().revision().to_string();
    let rev_b = build_b().unwrap().policies().revision().to_string();
    assert_ne!(rev_a, rev_b);
    let s = start_logged("reload", &log, build_a().unwrap()).await;

    // Flip A → broken → B → broken → … until the checks are done.
    let done = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicUsize::new(0));
    let flipper = {
        let (state, done, flips) = (s.state.clone(), done.clone(), flips.clone());
        std::thread::spawn(move || {
            let cycle = [&build_b, &broken, &build_a, &broken];
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let r = reload(&state, cycle[i % 4]);
                assert_eq!(
                    r.is_ok(),
                    i % 2 == 0,
                    "broken sets are refused, good ones load"
                );
                flips.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };

    let addr = s.grpc_addr.unwrap();
    let mut tasks = Vec::new();
    for t in 0..50 {
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut out = Vec::new();
            for i in 0..200 {
                let path = if (t + i) % 2 == 0 { "/a" } else { "/b" };
                let r = client
                    .check(check(path))
                    .await
                    .expect("never a gRPC error")
                    .into_inner();
                out.push((path, r));
            }
            out
        }));
    }
    let mut responses = Vec::new();
    for t in tasks {
        responses.extend(t.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    let state = s.state.clone();
    s.shutdown().await.unwrap();
    assert_eq!(responses.len(), 10_000);
    assert!(
        flips.load(Ordering::Relaxed) > 20,
        "the policy flipped during the run"
    );
    assert!(state.reload_status.load().failures > 0);

    let events = events_by_id(&log);
    assert_eq!(events.len(), 10_000, "one event per check");
    let mut by_revision = HashMap::new();
    for (path, r) in &responses {
        let reason = meta(r, "arbiter_reason");
        assert!(
            reason.is_none() || reason.as_deref() == Some("policy_denied"),
            "an error: {reason:?}"
        );
        let id = meta(r, "decision_id").unwrap();
        let e = &events[&id];
        let rev = e["revision"].as_str().unwrap();
        let allowed = r.status.as_ref().unwrap().code == 0;
        let expected = (rev == rev_a && *path == "/a") || (rev == rev_b && *path == "/b");
        assert!(rev == rev_a || rev == rev_b, "unknown revision {rev}");
        assert_eq!(allowed, expected, "{path} under {rev}");
        assert_eq!(e["allowed"], allowed);
        *by_revision.entry(rev.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        by_revision.len(),
        2,
        "both revisions decided: {by_revision:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

const OPEN: &str =
    "package envoy.authz\ndefault allow := false\nallow if data.open[input.parsed_path[0]]\n";

fn build_open() -> Build {
    Arc::new(|| {
        let mut s = PolicySources::default();
        s.add_rego("policy.rego", OPEN);
        s.add_data("data.json", serde_json::json!({"open": {"z": true}}));
        let set =
            PolicySet::from_sources(&s, &LoadOptions::default()).map_err(|e| e.to_string())?;
        Ok(Authorizer::new(
            Arc::new(set),
            DataRef::parse("envoy/authz/allow").unwrap(),
            InputOptions::default(),
        ))
    })
}

/// Issue 18 item 6: Data API writes while checks run. Each write is one atomic swap with its
/// own revision: every decision matches the data of the revision its event names; a reload
/// keeps what was written (replayed over the new set), and a write waits for the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_writes_under_checks_and_across_a_reload() {
    use arbiter_engine::data_write::{DataWrite, WriteOp};
    use arbiter_ext_authz::state::Written;
    let dir = std::env::temp_dir().join(format!("arbiter-writes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("d.log");
    let build = build_open();
    let s = start_logged("writes", &log, build().unwrap()).await;
    let base = s.state.authorizer.load().policies().revision().to_string();
    let open_a = |open: bool| DataWrite {
        op: if open {
            WriteOp::Upsert
        } else {
            WriteOp::Remove
        },
        path: vec!["open".into(), "a".into()],
        value: arbiter_engine::regorus::Value::Bool(true),
    };
    // The writer: open and close `/a`, noting which revisions had it open.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (state, done) = (s.state.clone(), done.clone());
        std::thread::spawn(move || {
            let mut open_at = HashMap::new();
            open_at.insert(
                state.authorizer.load().policies().revision().to_string(),
                false,
            );
            let mut open = false;
            while !done.load(Ordering::Relaxed) {
                open = !open;
                match state.write_data(&[open_a(open)], false) {
                    Ok(Written::Applied(rev)) => {
                        assert!(open_at.insert(rev, open).is_none(), "a revision repeated");
                    }
                    other => panic!("the write failed: {other:?}"),
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            open_at
        })
    };
    let addr = s.grpc_addr.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut out = Vec::new();
            for _ in 0..100 {
                out.push(client.check(check("/a")).await.unwrap().into_inner());
            }
            out
        }));
    }
    let mut responses = Vec::new();
    for t in tasks {
        responses.extend(t.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    let open_at = writer.join().unwrap();
    assert!(
        open_at.len() > 10,
        "the data changed during the run: {}",
        open_at.len()
    );

    // A reload keeps the writes: `/b` opened by the Data API stays open under the rebuilt set.
    let state = s.state.clone();
    state
        .write_data(
            &[DataWrite {
                op: WriteOp::Upsert,
                path: vec!["open".into(), "b".into()],
                value: arbiter_engine::regorus::Value::Bool(true),
            }],
            false,
        )
        .unwrap();
    let rev = reload(&state, &build).unwrap();
    assert!(rev.starts_with(&format!("{base}+")), "{rev}");
    let data = state.authorizer.load().policies().data();
    assert_eq!(
        arbiter_engine::value::to_json(&data)["open"]["b"],
        serde_json::json!(true)
    );
    s.shutdown().await.unwrap();

    let events = events_by_id(&log);
    let mut seen = HashMap::new();
    for r in &responses {
        let e = &events[&meta(r, "decision_id").unwrap()];
        let rev = e["revision"].as_str().unwrap();
        let open = open_at
            .get(rev)
            .unwrap_or_else(|| panic!("a revision no write made: {rev}"));
        let allowed = r.status.as_ref().unwrap().code == 0;
        assert_eq!(allowed, *open, "under {rev}");
        *seen.entry(*open).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "decisions under open and closed data: {seen:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
