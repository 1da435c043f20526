//! Generated access policies decided by arbiter's interpreter and by its bytecode VM, against
//! what real OPA 1.7.1 decided for each (`conformance/cases/opa-diff/generated.jsonl`,
//! recorded by `conformance/opa-diff/record-generated.py`, which says how the policies are
//! put together; re-record with the command in the file's first line).
//!
//! Every case must agree: the interpreter's answer (a value, undefined, or an error with
//! OPA's code; a policy that does not load is OPA's compile error, and where OPA refuses an
//! unused declared variable arbiter says so in OPA's words), and the VM's wherever it
//! answers (where it does not compile a policy or stops with an error, `arbiter serve` hands
//! the request to the interpreter, checked above).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use arbiter_conformance::opa::json_eq;
use arbiter_engine::rvm::RvmDecider;
use arbiter_engine::value::{from_json, to_json};
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use serde::Deserialize;
use serde_json::Value as Json;

#[derive(Debug, Deserialize)]
struct Policy {
    id: String,
    module: String,
    inputs: Vec<Json>,
    opa: Vec<Json>,
}

/// OPA's answer: `Ok(None)` undefined, `Ok(Some(v))` a value, `Err(code)` an error.
fn opa_answer(doc: &Json) -> Result<Option<Json>, String> {
    if let Some(e) = doc.get("errors").and_then(|e| e.get(0)) {
        return Err(e["code"].as_str().unwrap_or("").to_string());
    }
    Ok(doc
        .get("result")
        .and_then(|r| r.get(0))
        .map(|r| r["expressions"][0]["value"].clone()))
}

/// OPA's error message, if it answered with one.
fn opa_message(doc: &Json) -> &str {
    doc.get("errors")
        .and_then(|e| e.get(0))
        .and_then(|e| e["message"].as_str())
        .unwrap_or("")
}

fn same(got: &Result<Option<Json>, String>, want: &Result<Option<Json>, String>) -> bool {
    match (got, want) {
        (Ok(None), Ok(None)) => true,
        (Ok(Some(a)), Ok(Some(b))) => json_eq(a, b),
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

#[test]
fn generated_policies_are_decided_as_recorded_opa_on_both_engines() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(here.join("cases/opa-diff/generated.jsonl"))
        .expect("read the generated corpus");
    let mut lines = text.lines();
    let header: Json = serde_json::from_str(lines.next().expect("a header")).unwrap();
    let policies: Vec<Policy> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        policies.iter().map(|p| p.inputs.len()).sum::<usize>() as u64,
        header["cases"].as_u64().unwrap()
    );
    let path = DataRef::parse("gen/r").unwrap();
    let options = LoadOptions {
        // No deadline: a debug build on a loaded machine is slow, and a timeout is no answer.
        eval_timeout: None,
        // A built-in's error makes its expression undefined, as `opa eval` records it. (With
        // `--strict-builtin-errors` OPA's answer depends on the order its rule index visits
        // definitions; `arbiter serve`'s strict default, a failing decision denies, is tested
        // on its own.) The VM is always strict: where it stops with an error it is not compared.
        strict_builtin_errors: false,
        ..LoadOptions::default()
    };

    let (mut cases, mut on_vm, mut refused) = (0, 0, 0);
    let mut differences = Vec::new();
    // Policies OPA refuses for an unused declared variable (`every p, q in xs { q > 0 }`:
    // `declared var p unused`), which arbiter loaded until engine/src/typecheck/declared.rs.
    let mut unused_declared = 0;
    // And those OPA refuses for an unsafe variable (engine/src/typecheck/safety.rs).
    let mut unsafe_vars = 0;
    for p in &policies {
        let mut sources = PolicySources::default();
        sources.add_rego("gen.rego", p.module.clone());
        let set = PolicySet::from_sources(&sources, &options).map(Arc::new);
        let vm = set
            .as_ref()
            .ok()
            .and_then(|s| RvmDecider::compile(s, &path).ok());
        for (input, opa) in p.inputs.iter().zip(&p.opa) {
            cases += 1;
            let want = opa_answer(opa);
            let Ok(set) = &set else {
                // Refused when loading: OPA must refuse it too.
                refused += 1;
                if !want.as_ref().is_err_and(|code| code.starts_with("rego_")) {
                    differences.push(format!(
                        "{} {input}: arbiter refuses the policy, OPA answers {want:?}",
                        p.id
                    ));
                }
                let message = opa_message(opa);
                if want
                    .as_ref()
                    .is_err_and(|code| code == "rego_unsafe_var_error")
                {
                    unsafe_vars += 1;
                }
                if message.starts_with("declared var ") {
                    unused_declared += 1;
                    let said = set.as_ref().err().unwrap().to_string();
                    if !said.contains(message) {
                        differences.push(format!(
                            "{} {input}: OPA refuses with `{message}`, arbiter with `{said}`",
                            p.id
                        ));
                    }
                }
                continue;
            };
            let value = from_json(input);
            let interpreted = match set.evaluate(&path, value.clone()) {
                Ok(arbiter_engine::regorus::Value::Undefined) => Ok(None),
                Ok(v) => Ok(Some(to_json(&v))),
                Err(e) => Err(e.kind.opa_code().to_string()),
            };
            if !same(&interpreted, &want) {
                differences.push(format!(
                    "{} {input}: the interpreter answers {interpreted:?}, OPA {want:?}",
                    p.id
                ));
            }
            if let Some(vm) = &vm
                && let Ok(v) = vm.evaluate(value)
            {
                on_vm += 1;
                let answered = if v == arbiter_engine::regorus::Value::Undefined {
                    Ok(None)
                } else {
                    Ok(Some(to_json(&v)))
                };
                if !same(&answered, &want) {
                    differences.push(format!(
                        "{} {input}: the VM answers {answered:?}, OPA {want:?}",
                        p.id
                    ));
                }
            }
        }
    }
    println!(
        "generated policies: {cases} cases of {} policies, {refused} refused when loading (as by OPA), {on_vm} answered on the VM, {} differences; {unused_declared} refused for an unused declared variable, {unsafe_vars} for an unsafe one",
        policies.len(),
        differences.len()
    );
    assert!(
        differences.is_empty(),
        "{} cases differ from OPA:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // The corpus holds such policies, so the check above is exercised.
    assert!(
        unused_declared > 0,
        "no policy OPA refuses for an unused declared variable"
    );
    // The corpus exercises the VM, not only the interpreter.
    assert!(
        on_vm * 2 > cases,
        "only {on_vm} of {cases} cases ran on the VM"
    );
}
