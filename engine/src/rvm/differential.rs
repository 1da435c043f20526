//! Generated policies decided on the bytecode VM and on the interpreter (the reference: it
//! passes OPA's conformance suite). The VM decides every served request whose path it
//! compiles; where it answers, its answer must be the interpreter's. Each policy is put
//! together from rule heads and body literals that bind, iterate, quantify and compare the
//! way access policies do (an `every` over a grant's segments indexing the request's path, a
//! role looked up per caller, a comprehension counted), over small random inputs.

use std::sync::Arc;

use proptest::prelude::*;
use regorus::Value;

use super::RvmDecider;
use crate::data_ref::DataRef;
use crate::loader::PolicySources;
use crate::policy_set::{LoadOptions, PolicySet};

/// The pieces policies are put together from (`policy-pieces.json`, which
/// `conformance/opa-diff/record-generated.py` reads too): literals that bind `i` and `v` (an
/// index or key and its value), conditions over the input alone, conditions that read the
/// bound `i` and `v`, what a rule with and without them may produce, and helper rules every
/// policy has (a function with a default and two definitions that conflict when both apply,
/// partial sets and objects read back).
#[derive(Debug, serde::Deserialize)]
struct Pieces {
    binders: Vec<String>,
    conditions: Vec<String>,
    bound_conditions: Vec<String>,
    bound_values: Vec<String>,
    values: Vec<String>,
    helpers: String,
}

fn pieces() -> &'static Pieces {
    static PIECES: std::sync::OnceLock<Pieces> = std::sync::OnceLock::new();
    PIECES.get_or_init(|| {
        serde_json::from_str(include_str!("policy-pieces.json")).expect("policy-pieces.json")
    })
}

#[derive(Debug, Clone)]
struct Definition {
    binder: Option<usize>,
    conditions: Vec<usize>,
    bound_conditions: Vec<usize>,
    value: usize,
}

fn definition() -> impl Strategy<Value = Definition> {
    (
        prop::option::of(0..pieces().binders.len()),
        prop::collection::vec(0..pieces().conditions.len(), 0..3),
        prop::collection::vec(0..pieces().bound_conditions.len(), 0..2),
        0..8usize,
    )
        .prop_map(|(binder, conditions, bound_conditions, value)| Definition {
            binder,
            conditions,
            bound_conditions,
            value,
        })
}

/// The rule `r` for `head` kind (the same for every definition: one rule, one kind).
fn render(kind: usize, d: &Definition) -> String {
    let p = pieces();
    let mut body: Vec<&str> = Vec::new();
    if let Some(b) = d.binder {
        body.push(&p.binders[b]);
        body.extend(
            d.bound_conditions
                .iter()
                .map(|&c| p.bound_conditions[c].as_str()),
        );
    }
    body.extend(d.conditions.iter().map(|&c| p.conditions[c].as_str()));
    if body.is_empty() {
        body.push("true");
    }
    let bound = d.binder.is_some();
    let value = if bound {
        &p.bound_values[d.value % p.bound_values.len()]
    } else {
        &p.values[d.value % p.values.len()]
    };
    let body = body.join("\n  ");
    match kind {
        // A complete rule (two definitions with different values conflict, as in OPA).
        0 => format!("r := {value} if {{\n  {body}\n}}\n"),
        // A partial set.
        1 => format!("r contains {value} if {{\n  {body}\n}}\n"),
        // A partial object keyed by the bound key (or a constant one).
        2 if bound => format!("r[i] := {value} if {{\n  {body}\n}}\n"),
        2 => format!("r[\"k\"] := {value} if {{\n  {body}\n}}\n"),
        // A value with an `else`.
        3 => format!("r := {value} if {{\n  {body}\n}} else := 7 if {{\n  input.n > 0\n}}\n"),
        // A boolean rule, as `allow` is.
        _ => format!("r if {{\n  {body}\n}}\n"),
    }
}

fn small_input() -> impl Strategy<Value = serde_json::Value> {
    let ints = || prop::collection::vec(0..4i64, 0..4);
    let object =
        || prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c"]), 0..4i64, 0..3);
    let text = || prop::sample::select(vec!["admin", "bob", "ad-min", "", "Admin"]);
    let path = prop::sample::select(vec![vec!["a", "b"], vec!["a"], vec![], vec!["b", "a"]]);
    let strings = prop::collection::btree_map(
        prop::sample::select(vec!["admin", "bob"]),
        prop::sample::select(vec!["x", "admin", "y"]),
        0..3,
    );
    let ip = prop::sample::select(vec!["10.1.2.3", "192.168.0.1", "bad"]);
    (
        (ints(), ints(), object(), object(), 0..4i64),
        (text(), path, strings, ip),
    )
        .prop_map(|((a, b, o, o2, n), (s, p, u, ip))| {
            serde_json::json!({"a": a, "b": b, "o": o, "o2": o2, "n": n, "s": s, "p": p, "u": u, "ip": ip})
        })
}

/// One input's answers: the VM's and the interpreter's.
type Answers = (Result<Value, String>, Result<Value, String>);

fn decide_both(policy: &str, inputs: &[serde_json::Value]) -> Option<Vec<Answers>> {
    let helpers = &pieces().helpers;
    let mut sources = PolicySources::default();
    sources.add_rego(
        "gen.rego",
        format!("package gen\nimport rego.v1\n{helpers}{policy}"),
    );
    // No deadline: a debug build on a loaded machine is slow, and a timeout on one side only
    // is not a disagreement.
    let options = LoadOptions {
        eval_timeout: None,
        ..LoadOptions::default()
    };
    // A combination OPA would refuse (an unsafe variable, a type error) is not a case.
    let set = Arc::new(PolicySet::from_sources(&sources, &options).ok()?);
    let path = DataRef::parse("gen/r").ok()?;
    // What the VM does not compile, the interpreter decides: nothing to compare.
    let vm = RvmDecider::compile(&set, &path).ok()?;
    Some(
        inputs
            .iter()
            .map(|i| {
                let input = crate::value::from_json(i);
                let on_vm = vm.evaluate(input.clone()).map_err(|e| format!("{e:#}"));
                let reference = set.evaluate(&path, input).map_err(|e| e.message);
                (on_vm, reference)
            })
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Where the VM answers, it answers as the interpreter does; where the interpreter
    /// fails (a conflict), the VM does not answer (its error hands the request over).
    #[test]
    fn the_vm_decides_generated_policies_as_the_interpreter(
        kind in 0..5usize,
        definitions in prop::collection::vec(definition(), 1..4),
        inputs in prop::collection::vec(small_input(), 4),
    ) {
        let policy: String = definitions.iter().map(|d| render(kind, d)).collect();
        if let Some(answers) = decide_both(&policy, &inputs) {
            for ((on_vm, reference), input) in answers.into_iter().zip(&inputs) {
                if let Ok(v) = on_vm {
                    prop_assert_eq!(
                        Ok(v),
                        reference,
                        "policy:\n{}\ninput: {}",
                        policy,
                        input
                    );
                }
            }
        }
    }
}

/// The generator's pieces make policies the VM runs, not only ones it leaves to the
/// interpreter (a test that compiled nothing would agree with everything).
#[test]
fn the_generated_policies_run_on_the_vm() {
    let input =
        serde_json::json!({"a": [1, 2], "b": [1, 2], "o": {"a": 1}, "o2": {"a": 1}, "n": 1});
    let mut answered = 0;
    for kind in 0..5 {
        for binder in [None, Some(0), Some(1), Some(2)] {
            let d = Definition {
                binder,
                conditions: vec![4, 8],
                bound_conditions: vec![1],
                value: 0,
            };
            if let Some(answers) = decide_both(&render(kind, &d), std::slice::from_ref(&input))
                && let (Ok(v), reference) = &answers[0]
            {
                answered += 1;
                assert_eq!(Ok(v), reference.as_ref(), "{}", render(kind, &d));
            }
        }
    }
    assert!(
        answered >= 15,
        "the VM answered {answered} of 20 generated policies"
    );
}
