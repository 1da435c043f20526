//! Decision throughput with the decision log off and on (a file, with each fsync policy).
//!
//! Checks go through the server's decision path in-process (`State::check`: the evaluation
//! pool, the deadline, metrics and the log queue), 8 at a time, without gRPC, so the log's
//! share is measured against the decision alone — the least favourable comparison.
#![expect(clippy::panic, reason = "a benchmark without its fixture must stop")]

/// The allocator the `arbiter` binary uses, so these figures are the product's.
#[global_allocator]
static ALLOCATOR: arbiter_alloc_counter::Counting = arbiter_alloc_counter::Counting;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter_benches::{policies_dir, reference_input};
use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, Fsync, LogTarget};
use arbiter_ext_authz::{ListenAddr, RunningServer, ServeOptions, ServerConfig};
use criterion::{Criterion, criterion_group, criterion_main};

const CONCURRENCY: u64 = 8;

fn start(rt: &tokio::runtime::Runtime, log: Option<DecisionLogConfig>) -> RunningServer {
    let set = PolicySet::load(&[policies_dir()], &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let authorizer = Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap_or_else(|e| panic!("{e}")),
        InputOptions::default(),
    );
    let config = ServerConfig {
        grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
        http: None,
        options: ServeOptions {
            dry_run: false,
            deadline: Duration::from_secs(1),
            labels: InstanceLabels {
                id: "bench".into(),
                version: "0".into(),
                extra: Default::default(),
            },
            api: Default::default(),
            grpc_duration_buckets: Vec::new(),
            active_config: serde_json::Value::Null,
        },
        workers: 2,
        queue: 1024,
        decision_log: log,
        tls: None,
        limits: Default::default(),
        ui: None,
        diagnostic: None,
        http_authz: None,
        otlp: None,
    };
    rt.block_on(arbiter_ext_authz::start(config, authorizer))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn bench_logging(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let request = arbiter_ext_authz::protojson::authz_request(&reference_input())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("arbiter-bench-log-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let file = |name: &str, fsync: Fsync| {
        let mut c = DecisionLogConfig::to(LogTarget::File(dir.join(name)));
        if let Some(f) = c.file.as_mut() {
            f.fsync = fsync;
        }
        Some(c)
    };
    let setups = [
        ("off", None),
        ("file_fsync_never", file("never.log", Fsync::Never)),
        ("file_fsync_batch", file("batch.log", Fsync::Batch)),
    ];
    let mut g = c.benchmark_group("decision_log");
    for (name, log) in setups {
        let server = start(&rt, log);
        let state = server.state.clone();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(CONCURRENCY);
                rt.block_on(async {
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for _ in 0..CONCURRENCY {
                        let (state, request) = (state.clone(), request.clone());
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..per_task {
                                let (o, _) = state.check(request.clone(), None).await;
                                assert!(o.decision.allowed);
                            }
                        }));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    // Time per check, as criterion expects for `iters` iterations.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * CONCURRENCY) as f64)
                })
            })
        });
        drop(state);
        let _ = rt.block_on(server.shutdown());
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_logging);

fn bench_event_encoding(c: &mut Criterion) {
    use arbiter_engine::audit::{chain, mask};
    let set = Arc::new(
        PolicySet::load(&[policies_dir()], &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let authorizer = Authorizer::new(
        set.clone(),
        DataRef::parse("envoy/authz/allow").unwrap_or_else(|e| panic!("{e}")),
        InputOptions::default(),
    );
    let request = arbiter_ext_authz::protojson::authz_request(&reference_input())
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = authorizer.check(&request);
    let record = arbiter_engine::record::DecisionRecord {
        decision_id: "0b2f5c1e-8a43-4c59-9a57-2a0d3f1c9e11".into(),
        timestamp_ns: 1_795_690_800_000_000_000,
        path: "envoy/authz/allow".into(),
        input: outcome.input,
        decision: outcome.decision,
        timings: outcome.timings,
        server_ns: 1000,
        requested_by: "127.0.0.1:1".into(),
        revision: set.revision().to_string(),
        dry_run: false,
        trace_id: None,
        span_id: None,
        identity: outcome.identity,
        policies: Some(set),
        origin: Default::default(),
        request: None,
        shadow: None,
    };
    let labels = InstanceLabels {
        id: "bench".into(),
        version: "0".into(),
        extra: Default::default(),
    };
    let headers: Vec<String> = mask::DEFAULT_MASKED_HEADERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut g = c.benchmark_group("decision_event");
    // What the log writer does per event when no mask or drop policy is loaded: the record
    // written straight to bytes, the credential headers masked, the chain.
    g.bench_function("record_seal", |b| {
        b.iter(|| record.seal(&labels, &headers, false, chain::GENESIS))
    });
    // The same into the last line's buffer, as the writer does; and for a check's record as
    // the server keeps it: the request as read, the document written from it (no value built,
    // serialized and dropped).
    let from_request = arbiter_engine::record::DecisionRecord {
        input: authorizer.check_for_record(request.clone()).input,
        ..record.clone()
    };
    assert!(
        from_request.seal(&labels, &headers, false, chain::GENESIS)
            == record.seal(&labels, &headers, false, chain::GENESIS),
        "the same event either way"
    );
    for (name, r) in [
        ("record_seal_into", &record),
        ("record_seal_into_from_request", &from_request),
    ] {
        g.bench_function(name, |b| {
            let mut line = Vec::new();
            b.iter(|| {
                let (l, hash) = r.seal_into(
                    std::mem::take(&mut line),
                    &labels,
                    &headers,
                    false,
                    chain::GENESIS,
                );
                line = l;
                hash
            })
        });
    }
    // The writer's path before `DecisionRecord::seal`: the fields as a JSON tree (now read
    // back from the bytes `write_fields` writes), serialized with the input.
    g.bench_function("fields_mask_seal_from_rego_value", |b| {
        b.iter(|| {
            let fields = record.event_fields(&labels);
            let mut input = record
                .input
                .as_ref()
                .and_then(arbiter_engine::record::RecordInput::document)
                .cloned();
            if let Some(i) = input.as_mut() {
                std::hint::black_box(mask::mask_input_headers(i, &headers));
            }
            chain::seal_with_input(fields, input.as_ref(), chain::GENESIS)
        })
    });
    // The same through a JSON tree (the path taken when a mask or drop policy is loaded).
    g.bench_function("to_json_event_mask_seal", |b| {
        b.iter(|| {
            let serde_json::Value::Object(mut e) = record.to_event(&labels) else {
                panic!("an event is an object")
            };
            let ops = mask::header_ops(&e, &headers);
            mask::apply(&mut e, &ops);
            chain::seal(e, chain::GENESIS)
        })
    });
    g.finish();
}

criterion_group!(encoding, bench_event_encoding);
criterion_main!(benches, encoding);
