//! Which parts of the input document a set of Rego modules can read.
//!
//! A Rego policy reads `input` through references: `input.attributes.source.principal`,
//! `input.parsed_path[0]`, `input.attributes.request.http.headers[name]`. Each reference's
//! leading constant keys name a subtree; the policy can observe nothing of the document
//! outside the union of those subtrees. So the document built for a check needs only them:
//! every other key (the peers' addresses, the metadata, the version, the parsed query…) is
//! left out, and where nothing reads `input` at all, only an empty object is built.
//!
//! The analysis is conservative: any use of `input` that is not a reference with constant
//! keys — `input` alone, `input[k]`, `walk(input)`, `import input` — needs the whole document
//! from that point; an import of a part of `input` needs that part whole. A `with input…`
//! target is not a read: the rules evaluated under it read what their own references say,
//! from the replaced document. The walk matches every expression and statement kind of the
//! syntax tree without a catch-all arm, so a kind added to regorus does not compile until
//! it is handled here.

use std::collections::BTreeMap;

use regorus::unstable::{Expr, Literal, Module, Query, Ref, Rule, RuleHead};

/// The parts of a document that are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    /// Everything below this point.
    Whole,
    /// Only these keys (each with what is read below it); none: nothing is read.
    Keys(BTreeMap<String, Needs>),
}

impl Default for Needs {
    /// The whole document: what is safe without an analysis.
    fn default() -> Self {
        Needs::Whole
    }
}

static WHOLE: Needs = Needs::Whole;

impl Needs {
    /// Nothing read.
    pub fn nothing() -> Self {
        Needs::Keys(BTreeMap::new())
    }

    /// What is read below `key`: `None` when nothing is.
    pub fn get(&self, key: &str) -> Option<&Needs> {
        match self {
            Needs::Whole => Some(&WHOLE),
            Needs::Keys(m) => m.get(key),
        }
    }

    pub fn is_whole(&self) -> bool {
        matches!(self, Needs::Whole)
    }

    /// Mark the subtree at `path` as read, whole.
    pub fn add(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else {
            *self = Needs::Whole;
            return;
        };
        if let Needs::Keys(m) = self {
            m.entry(first.clone())
                .or_insert_with(Needs::nothing)
                .add(rest);
        }
    }

    /// Everything `other` reads, added to `self`.
    pub fn merge(&mut self, other: &Needs) {
        match (&mut *self, other) {
            (Needs::Whole, _) => {}
            (_, Needs::Whole) => *self = Needs::Whole,
            (Needs::Keys(a), Needs::Keys(b)) => {
                for (k, n) in b {
                    a.entry(k.clone()).or_insert_with(Needs::nothing).merge(n);
                }
            }
        }
    }

    /// What `modules` read of `input`.
    pub fn of_rego(modules: &[Ref<Module>]) -> Self {
        let mut n = Needs::nothing();
        for m in modules {
            for i in &m.imports {
                expr(&i.refr, &mut n);
            }
            for r in &m.policy {
                rule(r, &mut n);
            }
        }
        n
    }
}

fn rule(r: &Rule, n: &mut Needs) {
    match r {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { refr, assign, .. } => {
                    expr(refr, n);
                    if let Some(a) = assign {
                        expr(&a.value, n);
                    }
                }
                RuleHead::Set { refr, key, .. } => {
                    expr(refr, n);
                    if let Some(k) = key {
                        expr(k, n);
                    }
                }
                RuleHead::Func {
                    refr, args, assign, ..
                } => {
                    expr(refr, n);
                    for a in args {
                        expr(a, n);
                    }
                    if let Some(a) = assign {
                        expr(&a.value, n);
                    }
                }
            }
            for b in bodies {
                if let Some(a) = &b.assign {
                    expr(&a.value, n);
                }
                query(&b.query, n);
            }
        }
        Rule::Default {
            refr, args, value, ..
        } => {
            expr(refr, n);
            for a in args {
                expr(a, n);
            }
            expr(value, n);
        }
    }
}

fn query(q: &Query, n: &mut Needs) {
    for s in &q.stmts {
        match &s.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => membership(key.as_deref(), value, collection, n),
            Literal::Expr { expr: e, .. } | Literal::NotExpr { expr: e, .. } => expr(e, n),
            Literal::Every {
                domain, query: q, ..
            } => {
                expr(domain, n);
                query(q, n);
            }
        }
        for w in &s.with_mods {
            // The target is written, not read; the indexes in it are read.
            match input_ref(&w.refr) {
                Some((_, indexes)) => indexes.into_iter().for_each(|i| expr(i, n)),
                None => expr(&w.refr, n),
            }
            expr(&w.r#as, n);
        }
    }
}

/// `e` as a reference into `input`: the keys up to the first one that is not a constant
/// string, and every index expression in it (to be walked for their own reads).
fn input_ref(e: &Expr) -> Option<(Vec<String>, Vec<&Expr>)> {
    // The chain from the outermost selection down to its base.
    let mut chain: Vec<&Expr> = Vec::new();
    let mut at = e;
    loop {
        match at {
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => {
                chain.push(at);
                at = refr;
            }
            Expr::Var { value, .. } if value.as_string().is_ok_and(|s| &**s == "input") => break,
            _ => return None,
        }
    }
    let mut keys = Vec::new();
    let mut indexes = Vec::new();
    let mut constant = true;
    for link in chain.iter().rev() {
        let key = match link {
            Expr::RefDot { field, .. } => field.1.as_string().ok().map(|s| s.to_string()),
            Expr::RefBrack { index, .. } => {
                indexes.push(&**index);
                match &**index {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        value.as_string().ok().map(|s| s.to_string())
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match key {
            Some(k) if constant => keys.push(k),
            _ => constant = false,
        }
    }
    Some((keys, indexes))
}

fn expr(e: &Expr, n: &mut Needs) {
    if let Some((keys, indexes)) = input_ref(e) {
        n.add(&keys);
        for i in indexes {
            expr(i, n);
        }
        return;
    }
    match e {
        Expr::String { .. }
        | Expr::RawString { .. }
        | Expr::Number { .. }
        | Expr::Bool { .. }
        | Expr::Null { .. } => {}
        // `input` alone was matched above; any other variable reads nothing of it.
        Expr::Var { .. } => {}
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| expr(i, n));
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                expr(k, n);
                expr(v, n);
            }
        }
        Expr::ArrayCompr { term, query: q, .. } | Expr::SetCompr { term, query: q, .. } => {
            expr(term, n);
            query(q, n);
        }
        Expr::ObjectCompr {
            key,
            value,
            query: q,
            ..
        } => {
            expr(key, n);
            expr(value, n);
            query(q, n);
        }
        Expr::Call { fcn, params, .. } => {
            expr(fcn, n);
            params.iter().for_each(|p| expr(p, n));
        }
        Expr::UnaryExpr { expr: inner, .. } => expr(inner, n),
        Expr::RefDot { refr, .. } => expr(refr, n),
        Expr::RefBrack { refr, index, .. } => {
            expr(refr, n);
            expr(index, n);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            expr(lhs, n);
            expr(rhs, n);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => membership(key.as_deref(), value, collection, n),
    }
}

/// `key, value in collection` (a `some … in` or a membership test).
fn membership(key: Option<&Expr>, value: &Expr, collection: &Expr, n: &mut Needs) {
    if let Some(k) = key {
        expr(k, n);
    }
    expr(value, n);
    expr(collection, n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(rego: &str) -> Needs {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy("p.rego".into(), rego.into())
            .expect("the test policy parses");
        Needs::of_rego(engine.get_modules())
    }

    /// `{"a": {"b": Whole}}` from `["a.b"]`.
    fn tree(paths: &[&str]) -> Needs {
        let mut n = Needs::nothing();
        for p in paths {
            let keys: Vec<String> = if p.is_empty() {
                Vec::new()
            } else {
                p.split('.').map(str::to_string).collect()
            };
            n.add(&keys);
        }
        n
    }

    #[test]
    fn constant_references_name_their_subtrees() {
        let n = reads(
            r#"package p
allow if {
    input.attributes.source.principal == "x"
    input.attributes.request.http.headers["x-tenant"] == "acme"
    input.parsed_path[0] == "api"
    input.attributes.request.http.headers.authorization
}"#,
        );
        assert_eq!(
            n,
            tree(&[
                "attributes.source.principal",
                "attributes.request.http.headers.x-tenant",
                "attributes.request.http.headers.authorization",
                "parsed_path",
            ])
        );
        // What a document builder asks.
        let http = n
            .get("attributes")
            .and_then(|a| a.get("request"))
            .and_then(|r| r.get("http"))
            .unwrap();
        assert!(http.get("method").is_none());
        assert!(
            http.get("headers")
                .unwrap()
                .get("x-tenant")
                .unwrap()
                .is_whole()
        );
        assert!(n.get("version").is_none());
    }

    #[test]
    fn what_is_not_a_constant_reference_reads_the_whole_from_there() {
        // A variable index: the whole object it indexes.
        assert_eq!(
            reads("package p\nallow if input.attributes.request.http.headers[k] == \"x\""),
            tree(&["attributes.request.http.headers"])
        );
        // `input` alone, as an argument, in a comparison, iterated, in a comprehension.
        for whole in [
            "package p\nallow if walk(input, [p, v])",
            "package p\nallow if input == {}",
            "package p\nallow if { some k, _ in input; k == \"a\" }",
            "package p\nallow if count([x | x := input[_]]) > 0",
            "package p\nx := input",
            "package p\nimport input\nallow if input.a",
            "package p\nallow if object.get(input, [\"a\"], 1) == 1",
            "package p\nf(x) := input\nallow if f(1)",
        ] {
            assert!(reads(whole).is_whole(), "{whole}");
        }
        // An import of a part: that part whole (its alias reads anything below it).
        assert_eq!(
            reads(
                "package p\nimport input.attributes.request.http as h\nallow if h.method == \"GET\""
            ),
            tree(&["attributes.request.http"])
        );
        // References inside indexes, comprehensions, `every`, `else`, function bodies, rule
        // heads, defaults and `some … in` are all found.
        assert_eq!(
            reads(
                r#"package p
default d := input.d0
allow if data.x[input.i] == 1
allow if count([1 | input.c == 1]) == 1
allow if every x in input.e { x == input.f }
g(y) := input.g if y == 1 else := input.h
s contains input.s
o[input.k] := 1
allow if { some x in input.q; x }
allow if not input.n
allow if input.m in {1}
"#
            ),
            tree(&["d0", "i", "c", "e", "f", "g", "h", "s", "k", "q", "n", "m"])
        );
        // Nothing read: nothing built.
        assert_eq!(reads("package p\nallow := true"), Needs::nothing());
    }

    #[test]
    fn a_with_target_is_not_a_read() {
        assert_eq!(
            reads(
                "package p\nallow if input.a == 1\nt if allow with input as {\"a\": 1}\nu if allow with input.b as input.c"
            ),
            tree(&["a", "c"])
        );
    }

    #[test]
    fn the_reference_policy_reads_little_of_the_document() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/envoy/authz.rego"
        ))
        .unwrap();
        assert_eq!(
            reads(&text),
            tree(&[
                "attributes.request.http",
                "attributes.source.principal",
                "parsed_path"
            ])
        );
    }
}
