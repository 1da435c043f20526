//! Engine-only decision costs, and what a regorus `Engine::clone` costs next to them.
#![expect(clippy::panic, reason = "a benchmark without its fixture must stop")]

/// The allocator the `arbiter` binary uses, so these figures are the product's.
#[global_allocator]
static ALLOCATOR: arbiter_alloc_counter::Counting = arbiter_alloc_counter::Counting;

use std::hint::black_box;

use arbiter_benches::{reference_input, reference_policies};
use arbiter_engine::DataRef;
use arbiter_engine::value::from_json;
use criterion::{Criterion, criterion_group, criterion_main};

fn clone_vs_reuse(c: &mut Criterion) {
    let set = reference_policies();
    let input = from_json(&reference_input());
    let path = DataRef::parse("envoy/authz/allow").unwrap_or_else(|e| panic!("{e}"));
    let rule = path.as_rego().to_string();

    let mut g = c.benchmark_group("regorus_engine");
    let proto = set.engine();
    g.bench_function("clone_prepared_engine", |b| {
        b.iter(|| black_box(proto.clone()))
    });
    g.bench_function("reused_engine_set_input_eval_rule", |b| {
        let mut engine = set.engine();
        b.iter(|| {
            engine.set_input(input.clone());
            black_box(engine.eval_rule(rule.clone()))
        })
    });
    g.bench_function("clone_per_call_set_input_eval_rule", |b| {
        b.iter(|| {
            let mut engine = proto.clone();
            engine.set_input(input.clone());
            black_box(engine.eval_rule(rule.clone()))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("decision");
    g.bench_function("policy_set_decide_reference_rego", |b| {
        b.iter(|| black_box(set.decide(&path, input.clone())))
    });
    g.bench_function("json_to_input_value", |b| {
        let json = reference_input();
        b.iter(|| black_box(from_json(&json)))
    });
    g.finish();
}

criterion_group!(benches, clone_vs_reuse);
criterion_main!(benches);
