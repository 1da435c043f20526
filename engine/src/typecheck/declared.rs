//! OPA's check that a declared variable is used (`declared var x unused`).
//!
//! OPA's compiler (`rewriteDeclaredVarsInBody` and `checkUnusedDeclaredVars`, `ast/compile.go`)
//! refuses a body that declares a variable with `some x` and never mentions it again, and an
//! `every k, v in xs { … }` whose body never mentions `k` or `v`: such a variable is almost
//! always a mistake (`every i, role in roles { role != "admin" }` where `i` was meant, a
//! condition that names another variable). regorus loads such a policy; arbiter refuses it
//! as OPA does, with OPA's words, at the statement that declares the variable.
//!
//! A variable counts as used when it appears anywhere else in its body, in a nested
//! comprehension or `every` that does not declare a variable of the same name, in a `with`,
//! or in the rule's head (its reference, key, value, arguments). The check never refuses what
//! OPA loads; it may load a few policies OPA refuses (OPA also counts as unused a variable
//! whose only other mentions are in a scope that rebinds it with `=` in ways this check does
//! not follow).

use std::collections::BTreeSet;

use regorus::unstable::{AssignOp, Expr, Literal, Module, Query, Ref, Rule, RuleHead, Span};

use super::subexprs;
use crate::diagnostic::Diagnostic;

/// One diagnostic per declared variable OPA refuses as unused, in source order.
pub fn unused_declarations(modules: &[Ref<Module>]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for m in modules {
        let file = m.package.span.source.file().to_string();
        for rule in &m.policy {
            let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
                continue;
            };
            let mut head_vars = BTreeSet::new();
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    expr_vars(refr, &mut head_vars);
                    if let Some(a) = assign {
                        expr_vars(&a.value, &mut head_vars);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    expr_vars(refr, &mut head_vars);
                    if let Some(k) = key {
                        expr_vars(k, &mut head_vars);
                    }
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    expr_vars(refr, &mut head_vars);
                    for a in args {
                        expr_vars(a, &mut head_vars);
                    }
                    if let Some(a) = assign {
                        expr_vars(&a.value, &mut head_vars);
                    }
                }
            }
            for body in bodies {
                let mut used = head_vars.clone();
                if let Some(a) = &body.assign {
                    expr_vars(&a.value, &mut used);
                }
                check_query(&body.query, &used, &file, &mut out);
            }
        }
    }
    out
}

/// Checks the declarations of `q` (and of the queries nested in it); `used` holds the names
/// its enclosing construct mentions (a rule's head, a comprehension's term).
fn check_query(q: &Query, used: &BTreeSet<String>, file: &str, out: &mut Vec<Diagnostic>) {
    for (i, stmt) in q.stmts.iter().enumerate() {
        if let Literal::SomeVars { vars, .. } = &stmt.literal {
            for v in vars {
                let name = v.text();
                if name == "_" || used.contains(name) {
                    continue;
                }
                let elsewhere = q
                    .stmts
                    .iter()
                    .enumerate()
                    .any(|(j, s)| j != i && stmt_mentions(s, name));
                if !elsewhere {
                    out.push(unused(file, &stmt.span, name));
                }
            }
        }
    }
    // The nested scopes.
    for stmt in &q.stmts {
        for e in stmt_exprs(stmt) {
            nested_in_expr(e, file, out);
        }
        if let Literal::Every {
            key, value, query, ..
        } = &stmt.literal
        {
            for v in key.iter().chain([value]) {
                let name = v.text();
                if name != "_" && !query_mentions(query, name) {
                    out.push(unused(file, &stmt.span, name));
                }
            }
            check_query(query, &BTreeSet::new(), file, out);
        }
    }
}

/// Checks the comprehensions inside `e`.
fn nested_in_expr(e: &Expr, file: &str, out: &mut Vec<Diagnostic>) {
    match e {
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            let mut used = BTreeSet::new();
            expr_vars(term, &mut used);
            nested_in_expr(term, file, out);
            check_query(query, &used, file, out);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            let mut used = BTreeSet::new();
            expr_vars(key, &mut used);
            expr_vars(value, &mut used);
            nested_in_expr(key, file, out);
            nested_in_expr(value, file, out);
            check_query(query, &used, file, out);
        }
        _ => {
            for c in subexprs(e) {
                nested_in_expr(c, file, out);
            }
        }
    }
}

fn unused(file: &str, at: &Span, name: &str) -> Diagnostic {
    Diagnostic::at(file, at.line, at.col, format!("declared var {name} unused"))
        .with_code("rego_compile_error")
}

/// The expressions of a statement outside its nested queries: its literal's and its `with`s'.
fn stmt_exprs(stmt: &regorus::unstable::LiteralStmt) -> Vec<&Expr> {
    let mut out: Vec<&Expr> = match &stmt.literal {
        Literal::SomeVars { .. } => Vec::new(),
        Literal::SomeIn {
            key,
            value,
            collection,
            ..
        } => key
            .iter()
            .chain([value, collection])
            .map(|e| &**e)
            .collect(),
        Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => vec![expr],
        Literal::Every { domain, .. } => vec![domain],
    };
    for w in &stmt.with_mods {
        out.push(&w.refr);
        out.push(&w.r#as);
    }
    out
}

/// Whether `stmt` mentions `name` (in a `some` list, its expressions, or the nested scopes
/// that do not declare their own `name`).
fn stmt_mentions(stmt: &regorus::unstable::LiteralStmt, name: &str) -> bool {
    let in_scope = match &stmt.literal {
        Literal::SomeVars { vars, .. } => vars.iter().any(|v| v.text() == name),
        Literal::Every {
            key, value, query, ..
        } => {
            let rebinds = key.iter().chain([value]).any(|v| v.text() == name);
            !rebinds && query_mentions(query, name)
        }
        _ => false,
    };
    in_scope || stmt_exprs(stmt).into_iter().any(|e| expr_mentions(e, name))
}

fn query_mentions(q: &Query, name: &str) -> bool {
    q.stmts.iter().any(|s| stmt_mentions(s, name))
}

fn expr_mentions(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Var { span, .. } => span.text() == name,
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            !declares(query, name) && (expr_mentions(term, name) || query_mentions(query, name))
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            !declares(query, name)
                && (expr_mentions(key, name)
                    || expr_mentions(value, name)
                    || query_mentions(query, name))
        }
        _ => subexprs(e).into_iter().any(|c| expr_mentions(c, name)),
    }
}

/// Whether the query declares its own `name` (`some name`, `some … name … in`, `name := …`),
/// which hides an outer `name` from the whole query and its term.
fn declares(q: &Query, name: &str) -> bool {
    q.stmts.iter().any(|s| match &s.literal {
        Literal::SomeVars { vars, .. } => vars.iter().any(|v| v.text() == name),
        Literal::SomeIn { key, value, .. } => {
            let mut vars = BTreeSet::new();
            for e in key.iter().chain([value]) {
                expr_vars(e, &mut vars);
            }
            vars.contains(name)
        }
        Literal::Expr { expr, .. } => match expr.as_ref() {
            Expr::AssignExpr {
                op: AssignOp::ColEq,
                lhs,
                ..
            } => {
                let mut vars = BTreeSet::new();
                expr_vars(lhs, &mut vars);
                vars.contains(name)
            }
            _ => false,
        },
        _ => false,
    })
}

/// Every variable name in `e`, comprehensions included.
fn expr_vars(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::Var { span, .. } => {
            out.insert(span.text().to_string());
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            expr_vars(term, out);
            query_vars(query, out);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            expr_vars(key, out);
            expr_vars(value, out);
            query_vars(query, out);
        }
        _ => {
            for c in subexprs(e) {
                expr_vars(c, out);
            }
        }
    }
}

fn query_vars(q: &Query, out: &mut BTreeSet<String>) {
    for s in &q.stmts {
        match &s.literal {
            Literal::SomeVars { vars, .. } => {
                out.extend(vars.iter().map(|v| v.text().to_string()));
            }
            Literal::Every {
                key, value, query, ..
            } => {
                out.extend(key.iter().chain([value]).map(|v| v.text().to_string()));
                query_vars(query, out);
            }
            _ => {}
        }
        for e in stmt_exprs(s) {
            expr_vars(e, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load_rules as load;

    /// Each answer recorded from OPA 1.7.1 (`opa check` of the same module): the refused ones
    /// with OPA's message and line (the `some` or `every` statement, line 4); the loaded
    /// ones use their variable in a nested scope that does not rebind it, or not at all (`_`).
    #[test]
    fn a_declared_variable_never_used_is_refused_as_in_opa() {
        for (body, var) in [
            ("every v in input.a { true }", "v"),
            ("every p, q in input.a { q > 1 }", "p"),
            ("some x\n  y := [x | x := input.a[_]]", "x"),
            ("some x\n  y := [1 | some x; input.a[x]]", "x"),
            ("some x\n  y := [1 | some x in input.a]", "x"),
            ("some x, y\n  input.a[x] == 1", "y"),
            ("some x\n  every x in input.a { x > 1 }", "x"),
        ] {
            let got = load(&format!("r if {{\n  {body}\n}}"));
            assert_eq!(
                got,
                Err(format!("t.rego:4:3: declared var {var} unused")),
                "{body}"
            );
        }
        for body in [
            "every _, v in input.a { v > 1 }",
            "some x\n  y := [1 | input.a[x]]",
            "some x\n  y := {x: 1 | input.a[x]}",
            "some x\n  every v in input.a { input.b[x] == v }",
            "every k, v in input.a { [1 | input.b[k] == v] }",
        ] {
            assert_eq!(load(&format!("r if {{\n  {body}\n}}")), Ok(()), "{body}");
        }
        // Used in the head (a key, a value, an `else`'s value) counts; an `else` body is a
        // scope of its own.
        let heads = "r[x] := 1 if {\n  some x\n  input.a[x]\n}
s contains y if {\n  some y\n  input.b[y]\n}
f(a) := z if {\n  some z\n  z = a\n}
q := w if {\n  some w\n  w = 1\n} else := v if {\n  some v\n  v = 2\n}";
        assert_eq!(load(heads), Ok(()));
        let in_else =
            "t := k if {\n  some k\n  input.c[k]\n} else := 3 if {\n  some j\n  input.n == 1\n}";
        assert_eq!(
            load(in_else),
            Err("t.rego:7:3: declared var j unused".to_string())
        );
    }
}
