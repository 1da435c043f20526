//! Engine-only costs: CheckRequest to input, the Rego decision (RVM and interpreter), CEL,
//! both together, the scale series, and pathological inputs.
#![expect(clippy::panic, reason = "a benchmark without its fixture must stop")]

/// The allocator the `arbiter` binary uses, so these figures are the product's.
#[global_allocator]
static ALLOCATOR: arbiter_alloc_counter::Counting = arbiter_alloc_counter::Counting;

use std::hint::black_box;
use std::sync::Arc;

use arbiter_benches::{reference_input, reference_sources, scale_data};
use arbiter_engine::authorizer::{Authorizer, RegoEngine};
use arbiter_engine::input::{InputOptions, build_input};
use arbiter_engine::request::AuthzRequest;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use criterion::{Criterion, criterion_group, criterion_main};

fn authorizer(sources: &PolicySources, engine: RegoEngine) -> Authorizer {
    let set =
        PolicySet::from_sources(sources, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap_or_else(|e| panic!("{e}")),
        InputOptions::default(),
    )
    .with_rego_engine(engine)
}

/// Allocations per call of `f` (the counting allocator over 1,000 calls), printed beside the
/// timings: the figure `arbiter bench` and the Envoy harness report per check.
fn print_allocations(name: &str, mut f: impl FnMut()) {
    f();
    arbiter_alloc_counter::start();
    for _ in 0..1_000 {
        f();
    }
    let (n, bytes) = arbiter_alloc_counter::stop();
    eprintln!(
        "engine/{name}: {:.1} allocations, {} bytes per call",
        n as f64 / 1_000.0,
        bytes / 1_000
    );
}

fn request() -> AuthzRequest {
    arbiter_ext_authz::protojson::authz_request(&reference_input())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn decisions(c: &mut Criterion) {
    let req = request();
    let mut g = c.benchmark_group("engine");
    g.bench_function("input_build", |b| {
        let opts = InputOptions::default();
        b.iter(|| black_box(build_input(&req, &opts)))
    });
    print_allocations("input_build", || {
        black_box(build_input(&req, &InputOptions::default()).is_ok());
    });
    let cases = [
        ("rego_rvm", reference_sources(true, false), RegoEngine::Rvm),
        (
            "rego_interpreter",
            reference_sources(true, false),
            RegoEngine::Interpreter,
        ),
        ("cel", reference_sources(false, true), RegoEngine::Rvm),
        (
            "rego_rvm_and_cel",
            reference_sources(true, true),
            RegoEngine::Rvm,
        ),
    ];
    for (name, sources, engine) in cases {
        let a = authorizer(&sources, engine);
        assert!(
            a.check(&req).decision.allowed,
            "{name}: the reference request is allowed"
        );
        if engine == RegoEngine::Rvm && !sources.rego.is_empty() {
            assert!(a.rego_engine().is_ok(), "{name}: runs on the RVM");
        }
        // CheckRequest (model) in, Decision out: input building, identity, evaluation.
        g.bench_function(format!("check_{name}"), |b| {
            b.iter(|| black_box(a.check(&req).decision.allowed))
        });
        print_allocations(&format!("check_{name}"), || {
            black_box(a.check(&req).decision.allowed);
        });
        // The server without a decision log: no input document unless a policy reads it.
        g.bench_function(format!("check_unlogged_{name}"), |b| {
            b.iter(|| black_box(a.check_with(&req, false).decision.allowed))
        });
        print_allocations(&format!("check_unlogged_{name}"), || {
            black_box(a.check_with(&req, false).decision.allowed);
        });
    }
    // The load harness's request: a customer's bearer token (JWT verification, token roles).
    let mut token = req.clone();
    if let Some(h) = token.http.as_mut() {
        h.path = "/api/v1/orders".into();
        h.headers
            .retain(|(k, _)| k != ":path" && k != "x-tenant-id");
        h.headers.push((":path".into(), "/api/v1/orders".into()));
        h.headers.push((
            "authorization".into(),
            format!("Bearer {}", arbiter_benches::CUSTOMER_TOKEN),
        ));
    }
    if let Some(s) = token.source.as_mut() {
        s.principal.clear();
    }
    for (name, sources, engine) in [
        ("rego_rvm", reference_sources(true, false), RegoEngine::Rvm),
        ("cel", reference_sources(false, true), RegoEngine::Rvm),
        (
            "rego_rvm_and_cel",
            reference_sources(true, true),
            RegoEngine::Rvm,
        ),
    ] {
        let a = authorizer(&sources, engine);
        assert!(
            a.check(&token).decision.allowed,
            "{name}: the token request is allowed"
        );
        g.bench_function(format!("check_token_{name}"), |b| {
            b.iter(|| black_box(a.check(&token).decision.allowed))
        });
        print_allocations(&format!("check_token_{name}"), || {
            black_box(a.check(&token).decision.allowed);
        });
    }
    // The same request denied (the frontend may not DELETE).
    let mut denied = req.clone();
    if let Some(h) = denied.http.as_mut() {
        h.method = "DELETE".into();
        for (k, v) in h.headers.iter_mut() {
            if k == ":method" {
                *v = "DELETE".into();
            }
        }
    }
    let a = authorizer(&reference_sources(true, false), RegoEngine::Rvm);
    assert!(!a.check(&denied).decision.allowed);
    g.bench_function("check_rego_rvm_denied", |b| {
        b.iter(|| black_box(a.check(&denied).decision.allowed))
    });
    g.finish();
}

fn scale(c: &mut Criterion) {
    let req = request();
    let mut g = c.benchmark_group("scale");
    for (principals, grants) in [(100, 10), (1_000, 100), (10_000, 1_000)] {
        let mut sources = reference_sources(true, false);
        sources.data.clear();
        sources.add_data("authz/data.json", scale_data(principals, grants));
        for (name, engine) in [
            ("rvm", RegoEngine::Rvm),
            ("interpreter", RegoEngine::Interpreter),
        ] {
            let a = authorizer(&sources, engine);
            assert!(
                a.check(&req).decision.allowed,
                "scale {principals}/{grants}"
            );
            g.bench_function(
                format!("{name}_{principals}_principals_{grants}_grants"),
                |b| b.iter(|| black_box(a.check(&req).decision.allowed)),
            );
        }
    }
    g.finish();
}

fn pathological(c: &mut Criterion) {
    let a = authorizer(&reference_sources(true, true), RegoEngine::Rvm);
    let base = request();
    let mut g = c.benchmark_group("pathological");
    // 200 headers.
    let mut many = base.clone();
    if let Some(h) = many.http.as_mut() {
        for i in 0..200 {
            h.headers.push((format!("x-h{i}"), "v".repeat(40)));
        }
    }
    g.bench_function("many_headers_200", |b| {
        b.iter(|| black_box(a.check(&many).decision.allowed))
    });
    // A JSON body nested 60 deep (the limit is 64).
    let mut deep = base.clone();
    if let Some(h) = deep.http.as_mut() {
        h.body = format!("{}1{}", "[".repeat(60), "]".repeat(60));
        h.headers
            .push(("content-type".into(), "application/json".into()));
    }
    g.bench_function("json_body_depth_60", |b| {
        b.iter(|| black_box(a.check(&deep).decision.allowed))
    });
    // A 1 MiB JSON body.
    let mut large = base.clone();
    if let Some(h) = large.http.as_mut() {
        let items: Vec<String> = (0..20_000)
            .map(|i| format!("{{\"k\":{i},\"v\":\"{}\"}}", "x".repeat(20)))
            .collect();
        h.body = format!("[{}]", items.join(","));
        h.headers
            .push(("content-type".into(), "application/json".into()));
    }
    g.bench_function("json_body_1mib", |b| {
        b.iter(|| black_box(a.check(&large).decision.allowed))
    });
    g.finish();
}

criterion_group!(benches, decisions, scale, pathological);
criterion_main!(benches);
