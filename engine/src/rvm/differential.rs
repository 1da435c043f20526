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

/// Literals that bind `i` and `v` (an index or key and its value).
const BINDERS: &[&str] = &[
    "some i, v in input.a",
    "v := input.a[i]",
    "some i, v in input.o",
    "v := input.o[i]",
    "some v in input.a\n  i := v",
];

/// Conditions over the input alone.
const CONDITIONS: &[&str] = &[
    "input.n > 1",
    "count(input.a) >= 2",
    "input.a[0] == input.n",
    "not input.a[0] == 1",
    "every p, q in input.a { input.b[p] == q }",
    "every p, q in input.a { q >= input.n }",
    "every p, q in input.o { input.o2[p] == q }",
    "every q in input.a { q in {\"*\", input.n} }",
    "count([y | some y in input.a; y > input.n]) > 0",
    "{y | y := input.a[_]} == {1, 2}",
    "some q in input.b\n  q == input.n",
    "input.b[_] == 3",
    "not every q in input.b { q > 0 }",
    "f(input.n) == 1",
    "g(input.a) > 1",
    "some j\n  input.a[j] == input.b[j]",
    "input.a[j] == input.b[j]",
    "x := {k: q | some k, q in input.o}\n  x[\"a\"] == 1",
    "count({q: 1 | some q in input.a}) > 1",
    "count(h) > 0",
    "not input.n in h",
    "every k, q in input.o { every w in input.b { w <= q } }",
    "input.n in {input.a[0], 2}",
    "not input.n in [input.b[1], 3]",
    "input.n + 1 == count(input.a)",
    "input.n / 2 < 1",
    "input.n % 2 == 0",
    "sprintf(\"%d\", [input.n]) == \"1\"",
    "concat(\",\", [k | some k, _ in input.o]) == \"a,b\"",
    "object.get(input.o, \"a\", 0) > 1",
    "input.a[count(input.a) - 1] == 3",
    "not input.missing",
    "input.missing == 1",
    "s[_] == input.n",
    "t[input.n]",
    "some k in object.keys(input.o)\n  input.o2[k] > input.o[k]",
];

/// Conditions that read the bound `i` and `v`.
const BOUND_CONDITIONS: &[&str] = &[
    "v > input.n",
    "input.b[i] == v",
    "input.o2[i] == v",
    "every q in input.b { q != v }",
    "v in input.b",
    "not v == 2",
    "count([q | some q in input.b; q == v]) == 1",
    "f(v) == 1",
    "input.a[i] == v",
    "some w in input.b\n  w == v",
    "not input.o[i]",
];

/// What a rule with bound `i` and `v` may produce, and one without.
const BOUND_VALUES: &[&str] = &["v", "[i, v]", "true", "{\"at\": i}"];
const VALUES: &[&str] = &["true", "input.n", "count(input.a)", "[1, input.n]"];

/// Helpers every generated policy has: a function with a default and one with two
/// definitions (conflicting when both apply, as OPA says).
const HELPERS: &str = "default f(_) := 0
f(x) := 1 if x > 1
f(x) := 1 if x == 3
g(xs) := count(xs) if count(xs) > 0
h contains q if {
  some q in input.b
  q > 1
}
s := [q | some q in input.a; not q in h]
t[k] := true if {
  some k in input.b
  k > 0
}
";

#[derive(Debug, Clone)]
struct Definition {
    binder: Option<usize>,
    conditions: Vec<usize>,
    bound_conditions: Vec<usize>,
    value: usize,
}

fn definition() -> impl Strategy<Value = Definition> {
    (
        prop::option::of(0..BINDERS.len()),
        prop::collection::vec(0..CONDITIONS.len(), 0..3),
        prop::collection::vec(0..BOUND_CONDITIONS.len(), 0..2),
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
    let mut body: Vec<&str> = Vec::new();
    if let Some(b) = d.binder {
        body.push(BINDERS[b]);
        body.extend(d.bound_conditions.iter().map(|&c| BOUND_CONDITIONS[c]));
    }
    body.extend(d.conditions.iter().map(|&c| CONDITIONS[c]));
    if body.is_empty() {
        body.push("true");
    }
    let bound = d.binder.is_some();
    let value = if bound {
        BOUND_VALUES[d.value % BOUND_VALUES.len()]
    } else {
        VALUES[d.value % VALUES.len()]
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
    (ints(), ints(), object(), object(), 0..4i64)
        .prop_map(|(a, b, o, o2, n)| serde_json::json!({"a": a, "b": b, "o": o, "o2": o2, "n": n}))
}

/// One input's answers: the VM's and the interpreter's.
type Answers = (Result<Value, String>, Result<Value, String>);

fn decide_both(policy: &str, inputs: &[serde_json::Value]) -> Option<Vec<Answers>> {
    let mut sources = PolicySources::default();
    sources.add_rego(
        "gen.rego",
        format!("package gen\nimport rego.v1\n{HELPERS}{policy}"),
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
