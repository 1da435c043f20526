//! OPA's safety check of rule heads and negations (`var x is unsafe`).
//!
//! OPA refuses a rule whose head uses a variable its body never binds (`r := x if { some x;
//! true }`, `f(x) := y if { true }`, `r := x if { x != 1 }`) and a negation that reads a
//! variable nothing else in the body binds (`not input.denied[x]`, `not input.a[_]`):
//! `rego_unsafe_var_error: var x is unsafe` (`ast/compile.go`, `checkSafetyRuleHeads` and
//! `checkSafetyRuleBodies`). regorus's scheduler catches some such bodies; it loaded these,
//! and then answered an evaluation error (`r := x if { true }`) or decided with the variable
//! unbound (`not input.denied[x]` as "no element at all"), where OPA refuses the policy.
//!
//! A variable counts as bound when the body may bind it outside negations, comprehensions and
//! `every` bodies: by `:=` or `=` (either side, as a pattern or a reference's index), as a
//! reference's index, as a call's argument (a built-in's output), or as a `some … in` key or
//! value; a function's arguments are bound, and the package's rules and imports, `input` and
//! `data` are no variables. This is more lenient than OPA's (a call's input argument counts),
//! so the check never refuses what OPA loads.

use std::collections::BTreeSet;

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead, Span};

use super::{binding_sites, package_of, pattern_vars, shadowed_names, stmt_reads, var_spans};
use crate::diagnostic::Diagnostic;

/// One diagnostic per unsafe variable of each rule body, in source order.
pub fn unsafe_rule_vars(modules: &[Ref<Module>]) -> Vec<Diagnostic> {
    let globals = shadowed_names(modules);
    let none = BTreeSet::new();
    let mut out = Vec::new();
    for m in modules {
        let file = m.package.span.source.file().to_string();
        let globals = globals.get(&package_of(m)).unwrap_or(&none);
        for rule in &m.policy {
            let Rule::Spec { head, bodies, span } = rule.as_ref() else {
                continue;
            };
            // The head's reference and key, and its value (an `else` has its own).
            let mut args = BTreeSet::new();
            let mut head_refs: Vec<&Expr> = Vec::new();
            let mut head_value: Option<&Expr> = None;
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    head_refs.push(refr);
                    head_value = assign.as_ref().map(|a| &*a.value);
                }
                RuleHead::Set { refr, key, .. } => {
                    head_refs.push(refr);
                    head_refs.extend(key.iter().map(|k| &**k));
                }
                RuleHead::Func {
                    assign, args: a, ..
                } => {
                    for p in a {
                        pattern_vars(p, &mut args);
                    }
                    head_value = assign.as_ref().map(|a| &*a.value);
                }
            }
            for body in bodies {
                let mut uses = head_refs.clone();
                match &body.assign {
                    Some(a) => uses.push(&a.value),
                    None if !body.is_else => uses.extend(head_value),
                    None => {}
                }
                let at = if body.is_else { &body.span } else { span };
                check_body(&body.query, &uses, at, &args, globals, &file, &mut out);
            }
        }
    }
    out
}

fn check_body(
    q: &Query,
    head: &[&Expr],
    rule: &Span,
    args: &BTreeSet<String>,
    globals: &BTreeSet<String>,
    file: &str,
    out: &mut Vec<Diagnostic>,
) {
    let mut bound = args.clone();
    for stmt in &q.stmts {
        match &stmt.literal {
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                for p in key.iter().chain([value]) {
                    pattern_vars(p, &mut bound);
                    binding_sites(p, &mut bound);
                }
                binding_sites(collection, &mut bound);
            }
            Literal::Every { domain, .. } => binding_sites(domain, &mut bound),
            Literal::Expr { expr, .. } => binding_sites(expr, &mut bound),
            Literal::NotExpr { .. } | Literal::SomeVars { .. } => {}
        }
    }
    let safe = |name: &str| {
        bound.contains(name)
            || globals.contains(name)
            || matches!(name, "input" | "data")
            || name.starts_with("__")
    };
    let mut reported = BTreeSet::new();
    let mut report = |name: &str, at: &Span, out: &mut Vec<Diagnostic>| {
        if reported.insert(name.to_string()) {
            out.push(
                Diagnostic::at(file, at.line, at.col, format!("var {name} is unsafe"))
                    .with_code("rego_unsafe_var_error"),
            );
        }
    };
    let first = out.len();
    // The body's, at their first use; a `_` under `not` is unsafe too (nothing binds it).
    for stmt in &q.stmts {
        let (reads, negated) = stmt_reads(stmt);
        for e in reads {
            for (name, span) in var_spans(e) {
                let unsafe_var = if name == "_" { negated } else { !safe(name) };
                if unsafe_var {
                    report(name, span, out);
                }
            }
        }
    }
    // The head's that the body does not mention, at the rule (OPA's positions).
    for e in head {
        for (name, _) in var_spans(e) {
            if name != "_" && !safe(name) {
                report(name, rule, out);
            }
        }
    }
    out[first..].sort_by_key(|d| (d.line, d.col));
}

#[cfg(test)]
mod tests {
    use super::super::tests::load_rules as load;

    /// Each answer recorded from OPA 1.7.1 (`opa check` of the same module, which names the
    /// line; the column here is the variable's, or the rule's for a head variable the body
    /// never mentions): OPA refuses the first list with `rego_unsafe_var_error` and loads the
    /// second. Before this check arbiter loaded all of the first list but the last (which
    /// regorus's scheduler refuses): `r := x if { true }` then failed every evaluation, and
    /// `not input.a[x]` was decided as "`input.a` has no element at all".
    #[test]
    fn unsafe_heads_and_negations_are_refused_as_in_opa() {
        for (rules, at, var) in [
            ("r[x] := 1 if {\n  some x\n  true\n}", "3:1", "x"),
            ("r := x if {\n  some x\n  true\n}", "3:1", "x"),
            ("r := x if {\n  true\n}", "3:1", "x"),
            ("f(x) := y if {\n  true\n}", "3:1", "y"),
            ("r := x if {\n  x != 1\n}", "4:3", "x"),
            ("r := x if {\n  x in [1, 2]\n}", "4:3", "x"),
            ("r := x if {\n  y := [x | x := 1]\n}", "3:1", "x"),
            (
                "r := x if {\n  every v in input.a { x := v }\n}",
                "3:1",
                "x",
            ),
            (
                "r := x if {\n  x := 1\n} else := y if {\n  true\n}",
                "5:3",
                "y",
            ),
            ("r if {\n  not input.a[x]\n}", "4:15", "x"),
            (
                "r if {\n  x := input.a[_]\n  not input.b[y]\n}",
                "5:15",
                "y",
            ),
            ("r if {\n  some x\n  not input.a[x]\n}", "5:15", "x"),
            ("r if {\n  not input.a[_]\n}", "4:15", "_"),
            ("r if {\n  not input.a[input.b[x]]\n}", "4:23", "x"),
            ("r if {\n  not f(x)\n}\nf(_) := true", "4:9", "x"),
        ] {
            assert_eq!(
                load(rules),
                Err(format!("t.rego:{at}: var {var} is unsafe")),
                "{rules}"
            );
        }
        for rules in [
            "r := x if {\n  count(input.a, x)\n}",
            "r := x if {\n  [x, 1] = [2, 1]\n}",
            "r := x if {\n  input.a[x] > 0\n}",
            "deny contains 1\nr if {\n  not deny\n}",
            "r := x if {\n  some x in input.a\n}",
            "r[x] if {\n  x := 1\n}",
            "r if {\n  y := 1\n  not input.a[y]\n}",
            "r if {\n  not [x | x := 1][0]\n}",
            "r := x if {\n  {\"a\": x} = input.o\n}",
            "f([a, b]) := a + b",
            "r contains x if {\n  some x in input.a\n}",
        ] {
            assert_eq!(load(rules), Ok(()), "{rules}");
        }
    }
}
