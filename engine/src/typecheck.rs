//! OPA's type check of built-in calls, on the argument types the source fixes.
//!
//! OPA refuses `abs("1")`, `union([1])` or `1 + "a"` before evaluating anything: its compiler
//! unifies each argument with the type the built-in declares and reports `rego_type_error`
//! (`abs: invalid argument(s)`) at the call. regorus has no such pass; without this one arbiter
//! answers (undefined) where OPA refuses the policy or the query.
//!
//! This pass follows OPA's `unify1` and `unifies` (`ast/check.go`) for the arguments whose type
//! the source fixes: literals, composite literals, comprehensions, variables assigned with `:=`
//! from those, and the results of other built-in calls and operators. Anything else (refs into
//! `input` or `data`, rules, function arguments) is treated as OPA treats an unconstrained
//! term, `any`, so the check never refuses what OPA accepts; it may accept a few programs OPA
//! refuses (where OPA infers a rule's type). The declarations are OPA 1.7.1's, recorded in
//! `typecheck/opa-builtin-types.json` by `conformance/opa-diff/builtin-types.py`.
//!
//! Calls are not checked when the name may not be the built-in: a rule or import of the package
//! with that first name, or a `with` that replaces it in the same statement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use regorus::unstable::{
    ArithOp, AssignOp, BinOp, Expr, Literal, LiteralStmt, Module, Query, Ref, Rule, RuleHead,
};
use serde_json::Value as Json;

use crate::diagnostic::Diagnostic;

mod declared;
mod safety;
pub use declared::unused_declarations;
pub use safety::unsafe_rule_vars;

/// A type as OPA's `types` package models it.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    /// `any<...>`; with no members, the top type.
    Any(Vec<Ty>),
    Null,
    Boolean,
    Number,
    String,
    Array {
        fixed: Vec<Ty>,
        rest: Option<Box<Ty>>,
    },
    Object {
        fixed: Vec<(Json, Ty)>,
        rest: Option<(Box<Ty>, Box<Ty>)>,
    },
    Set(Box<Ty>),
    Function,
}

const TOP: Ty = Ty::Any(Vec::new());

impl Ty {
    fn from_decl(j: &Json) -> Ty {
        let of = |j: &Json| j.get("of").map_or(TOP, Ty::from_decl);
        match j.get("type").and_then(Json::as_str).unwrap_or("any") {
            "null" => Ty::Null,
            "boolean" => Ty::Boolean,
            "number" => Ty::Number,
            "string" => Ty::String,
            "array" => Ty::Array {
                fixed: j
                    .get("static")
                    .and_then(Json::as_array)
                    .map(|a| a.iter().map(Ty::from_decl).collect())
                    .unwrap_or_default(),
                rest: j.get("dynamic").map(|d| Box::new(Ty::from_decl(d))),
            },
            "object" => Ty::Object {
                fixed: j
                    .get("static")
                    .and_then(Json::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|p| (p["key"].clone(), Ty::from_decl(&p["value"])))
                            .collect()
                    })
                    .unwrap_or_default(),
                rest: j.get("dynamic").map(|d| {
                    (
                        Box::new(Ty::from_decl(&d["key"])),
                        Box::new(Ty::from_decl(&d["value"])),
                    )
                }),
            },
            "set" => Ty::Set(Box::new(of(j))),
            "function" => Ty::Function,
            _ => Ty::Any(
                j.get("of")
                    .and_then(Json::as_array)
                    .map(|a| a.iter().map(Ty::from_decl).collect())
                    .unwrap_or_default(),
            ),
        }
    }

    /// The type of a JSON value (OPA's `types.TypeOf`).
    fn of_json(j: &Json) -> Ty {
        match j {
            Json::Null => Ty::Null,
            Json::Bool(_) => Ty::Boolean,
            Json::Number(_) => Ty::Number,
            Json::String(_) => Ty::String,
            Json::Array(a) => Ty::Array {
                fixed: a.iter().map(Ty::of_json).collect(),
                rest: None,
            },
            Json::Object(o) => Ty::Object {
                fixed: o
                    .iter()
                    .map(|(k, v)| (Json::String(k.clone()), Ty::of_json(v)))
                    .collect(),
                rest: None,
            },
        }
    }

    /// `types.Contains`: `self` is a superset of or equal to `other`.
    fn contains(&self, other: &Ty) -> bool {
        match self {
            Ty::Any(members) => {
                !matches!(other, Ty::Function)
                    && (members.is_empty() || members.iter().any(|m| m == other))
            }
            t => t == other,
        }
    }

    /// `types.Or`.
    fn or(a: Option<Ty>, b: Ty) -> Ty {
        let Some(a) = a else { return b };
        match (a, b) {
            (Ty::Any(x), _) if x.is_empty() => TOP,
            (_, Ty::Any(y)) if y.is_empty() => TOP,
            (Ty::Any(mut x), Ty::Any(y)) => {
                for t in y {
                    if !x.contains(&t) {
                        x.push(t);
                    }
                }
                Ty::Any(x)
            }
            (Ty::Any(mut x), b) | (b, Ty::Any(mut x)) => {
                if !x.contains(&b) {
                    x.push(b);
                }
                Ty::Any(x)
            }
            (a, b) if a == b => a,
            (a, b) => Ty::Any(vec![a, b]),
        }
    }

    /// `Array.Select`.
    fn select_index(fixed: &[Ty], rest: Option<&Ty>, i: usize) -> Option<Ty> {
        fixed.get(i).cloned().or_else(|| rest.cloned())
    }

    /// `Object.Select`.
    fn select_key(
        fixed: &[(Json, Ty)],
        rest: Option<&(Box<Ty>, Box<Ty>)>,
        key: &Json,
    ) -> Option<Ty> {
        if let Some((_, t)) = fixed.iter().find(|(k, _)| k == key) {
            return Some(t.clone());
        }
        rest.filter(|(k, _)| k.contains(&Ty::of_json(key)))
            .map(|(_, v)| (**v).clone())
    }

    /// `types.Values` of a set's member type: the member type itself.
    fn values(&self) -> Option<Ty> {
        match self {
            Ty::Set(of) => Some((**of).clone()),
            _ => None,
        }
    }
}

/// `unifies` of OPA's `ast/check.go`; `None` is OPA's nil type, which unifies with nothing.
fn unifies(a: Option<&Ty>, b: Option<&Ty>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    let any_a = matches!(a, Ty::Any(_));
    let any_b = matches!(b, Ty::Any(_));
    if let Ty::Any(members) = a
        && unifies_any(members, b)
    {
        return true;
    }
    if let Ty::Any(members) = b
        && unifies_any(members, a)
    {
        return true;
    }
    if any_a || any_b {
        return false;
    }
    match (a, b) {
        (Ty::Null, Ty::Null)
        | (Ty::Boolean, Ty::Boolean)
        | (Ty::Number, Ty::Number)
        | (Ty::String, Ty::String)
        | (Ty::Function, Ty::Function) => true,
        (
            Ty::Array {
                fixed: fa,
                rest: ra,
            },
            Ty::Array {
                fixed: fb,
                rest: rb,
            },
        ) => {
            let stat = |fx: &[Ty], rx: Option<&Ty>, fy: &[Ty], ry: Option<&Ty>| {
                (0..fx.len()).all(|i| {
                    unifies(
                        Ty::select_index(fx, rx, i).as_ref(),
                        Ty::select_index(fy, ry, i).as_ref(),
                    )
                })
            };
            let (ra, rb) = (ra.as_deref(), rb.as_deref());
            stat(fa, ra, fb, rb)
                && stat(fb, rb, fa, ra)
                && (ra.is_none() || rb.is_none() || unifies(ra, rb))
        }
        (
            Ty::Object {
                fixed: fa,
                rest: ra,
            },
            Ty::Object {
                fixed: fb,
                rest: rb,
            },
        ) => {
            let stat = |fx: &[(Json, Ty)],
                        rx: Option<&(Box<Ty>, Box<Ty>)>,
                        fy: &[(Json, Ty)],
                        ry: Option<&(Box<Ty>, Box<Ty>)>| {
                fx.iter().all(|(k, _)| {
                    unifies(
                        Ty::select_key(fx, rx, k).as_ref(),
                        Ty::select_key(fy, ry, k).as_ref(),
                    )
                })
            };
            stat(fa, ra.as_ref(), fb, rb.as_ref())
                && stat(fb, rb.as_ref(), fa, ra.as_ref())
                && match (ra, rb) {
                    (Some((_, va)), Some((_, vb))) => unifies(Some(va), Some(vb)),
                    _ => true,
                }
        }
        (Ty::Set(a), Ty::Set(b)) => unifies(Some(a), Some(b)),
        _ => false,
    }
}

fn unifies_any(members: &[Ty], b: &Ty) -> bool {
    if matches!(b, Ty::Function) {
        return false;
    }
    members.is_empty() || members.iter().any(|m| unifies(Some(m), Some(b)))
}

/// One built-in's declaration.
struct Decl {
    args: Vec<Ty>,
    result: Ty,
    variadic: bool,
}

static DECLS: LazyLock<HashMap<String, Decl>> = LazyLock::new(|| {
    let doc: Json = serde_json::from_str(include_str!("typecheck/opa-builtin-types.json"))
        .unwrap_or(Json::Null);
    let mut out = HashMap::new();
    if let Some(b) = doc.get("builtins").and_then(Json::as_object) {
        for (name, d) in b {
            out.insert(
                name.clone(),
                Decl {
                    args: d["args"]
                        .as_array()
                        .map(|a| a.iter().map(Ty::from_decl).collect())
                        .unwrap_or_default(),
                    result: Ty::from_decl(&d["result"]),
                    variadic: d.get("variadic").is_some(),
                },
            );
        }
    }
    out
});

/// The number of built-in declarations known (a test checks that the table loaded).
pub fn declared_builtins() -> usize {
    DECLS.len()
}

fn arith_name(op: &ArithOp) -> &'static str {
    match op {
        ArithOp::Add => "plus",
        ArithOp::Sub => "minus",
        ArithOp::Mul => "mul",
        ArithOp::Div => "div",
        ArithOp::Mod => "rem",
    }
}

fn bin_name(op: &BinOp) -> &'static str {
    match op {
        BinOp::Union => "or",
        BinOp::Intersection => "and",
    }
}

/// The dotted name of a called function (`abs`, `time.parse_ns`), when it is one.
fn call_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        Expr::RefDot { refr, field, .. } => {
            let head = call_name(refr)?;
            Some(format!("{head}.{}", field.1.as_string().ok()?))
        }
        _ => None,
    }
}

/// Where an expression starts, as OPA locates it: regorus spans `a.b` at its `.`, a call at
/// its `(` and `x + y` at its `+`.
fn leftmost(e: &Expr) -> &regorus::unstable::Span {
    match e {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => leftmost(refr),
        Expr::Call { fcn, .. } => leftmost(fcn),
        Expr::ArithExpr { lhs, .. } | Expr::BinExpr { lhs, .. } => leftmost(lhs),
        _ => e.span(),
    }
}

fn var_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.as_ref()),
        _ => None,
    }
}

/// A constant scalar key of an object literal, as JSON.
fn constant_key(e: &Expr) -> Option<Json> {
    match e {
        Expr::String { value, .. }
        | Expr::RawString { value, .. }
        | Expr::Number { value, .. }
        | Expr::Bool { value, .. }
        | Expr::Null { value, .. } => Some(crate::value::to_json(value)),
        _ => None,
    }
}

#[derive(Clone, Default)]
struct Env {
    vars: HashMap<String, Ty>,
}

struct Checker<'a> {
    /// Names that are not the built-in in this package (rules, imports).
    shadowed: &'a BTreeSet<String>,
    file: String,
    errors: Vec<Diagnostic>,
    /// When set, only report calls of these functions (no type check).
    find: Option<&'a [&'a str]>,
    /// How this module's calls resolve to user functions; `None` skips the check.
    scope: Option<Resolve<'a>>,
}

/// What a call's name can refer to besides a built-in: the rules of every module, reached
/// through the module's package and imports.
struct Resolve<'a> {
    /// `data.<package>` of the module (or of the query's package).
    package: Option<String>,
    /// Import aliases and what they name (`lib` → `data.lib`).
    imports: BTreeMap<String, String>,
    /// Every rule's path (`data.p.f`), in every module.
    rules: &'a BTreeSet<String>,
}

impl Resolve<'_> {
    fn knows(&self, name: &str) -> bool {
        if name == "print"
            || name.starts_with("internal.")
            || matches!(
                name,
                "plus" | "minus" | "mul" | "div" | "rem" | "or" | "and"
            )
            || regorus::unstable::BUILTINS.contains_key(name)
            || crate::builtins::is_added(name)
        {
            return true;
        }
        let path = if name.starts_with("data.") {
            name.to_string()
        } else {
            let (first, rest) = name.split_once('.').map_or((name, ""), |(f, r)| (f, r));
            match (self.imports.get(first), &self.package) {
                (Some(target), _) if rest.is_empty() => target.clone(),
                (Some(target), _) => format!("{target}.{rest}"),
                (None, Some(p)) => format!("{p}.{name}"),
                (None, None) => return false,
            }
        };
        self.rules.contains(&path)
    }
}

/// The reference a rule's head names (`p`, `a.b.f`, `q[x]`), whatever its kind.
pub(crate) fn rule_head_ref(rule: &Rule) -> &Ref<Expr> {
    match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
        Rule::Default { refr, .. } => refr,
    }
}

/// Every rule's path (`data.p.f`, `data.p.a.b`) across the modules.
fn rule_paths(modules: &[Ref<Module>]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in modules {
        let package = format!("data.{}", package_of(m));
        for rule in &m.policy {
            let refr = rule_head_ref(rule);
            // regorus's reading of a rule's path (`foo["bar"]` is `foo.bar`).
            if let Ok(path) = regorus::utils::get_path_string(refr, Some(&package)) {
                out.insert(path);
            }
        }
    }
    out
}

/// A module's import aliases and the paths they name.
fn import_aliases(m: &Module) -> BTreeMap<String, String> {
    m.imports
        .iter()
        .map(|i| {
            let path = i.refr.span().text().to_string();
            let alias = match &i.r#as {
                Some(a) => a.text().to_string(),
                None => path.rsplit('.').next().unwrap_or("").to_string(),
            };
            (alias, path)
        })
        .collect()
}

impl Checker<'_> {
    fn is_builtin<'d>(&self, name: &str, mocked: &BTreeSet<String>) -> Option<&'d Decl> {
        let first = name.split('.').next().unwrap_or(name);
        if self.shadowed.contains(first) || mocked.contains(name) {
            return None;
        }
        DECLS.get(name)
    }

    /// The type OPA's `TypeEnv.Get` gives a term; `any` where this pass cannot know it.
    fn type_of(&self, e: &Expr, env: &Env, mocked: &BTreeSet<String>) -> Ty {
        match e {
            Expr::String { .. } | Expr::RawString { .. } => Ty::String,
            Expr::Number { .. } => Ty::Number,
            Expr::Bool { .. } => Ty::Boolean,
            Expr::Null { .. } => Ty::Null,
            Expr::Var { value, .. } => value
                .as_string()
                .ok()
                .and_then(|n| env.vars.get(n.as_ref()).cloned())
                .unwrap_or(TOP),
            Expr::Array { items, .. } => Ty::Array {
                fixed: items.iter().map(|i| self.type_of(i, env, mocked)).collect(),
                rest: items.is_empty().then(|| Box::new(TOP)),
            },
            Expr::Set { items, .. } => {
                let mut of = None;
                for i in items {
                    of = Some(Ty::or(of, self.type_of(i, env, mocked)));
                }
                Ty::Set(Box::new(of.unwrap_or(TOP)))
            }
            Expr::Object { fields, .. } => {
                let mut fixed = Vec::new();
                let mut rest = None;
                for (_, k, v) in fields {
                    match constant_key(k) {
                        Some(key) => fixed.push((key, self.type_of(v, env, mocked))),
                        None => {
                            rest = Some((
                                Box::new(self.type_of(k, env, mocked)),
                                Box::new(self.type_of(v, env, mocked)),
                            ));
                        }
                    }
                }
                if fixed.is_empty() && rest.is_none() {
                    rest = Some((Box::new(TOP), Box::new(TOP)));
                }
                Ty::Object { fixed, rest }
            }
            Expr::ArrayCompr { .. } => Ty::Array {
                fixed: Vec::new(),
                rest: Some(Box::new(TOP)),
            },
            Expr::SetCompr { .. } => Ty::Set(Box::new(TOP)),
            Expr::ObjectCompr { .. } => Ty::Object {
                fixed: Vec::new(),
                rest: Some((Box::new(TOP), Box::new(TOP))),
            },
            Expr::Call { fcn, .. } => call_name(fcn)
                .and_then(|n| self.is_builtin(&n, mocked))
                .map_or(TOP, |d| d.result.clone()),
            Expr::ArithExpr { op, .. } => self
                .is_builtin(arith_name(op), mocked)
                .map_or(TOP, |d| d.result.clone()),
            Expr::BinExpr { op, .. } => self
                .is_builtin(bin_name(op), mocked)
                .map_or(TOP, |d| d.result.clone()),
            _ => TOP,
        }
    }

    /// `unify1` of OPA's `ast/check.go`: does the term `e` fit the declared type `want`?
    fn unify_term(
        &self,
        e: &Expr,
        want: Option<&Ty>,
        union: bool,
        env: &Env,
        mocked: &BTreeSet<String>,
    ) -> bool {
        let alternatives = |want: &[Ty]| {
            want.is_empty()
                || want
                    .iter()
                    .any(|w| self.unify_term(e, Some(w), true, env, mocked))
        };
        match e {
            Expr::Array { items, .. } => match want {
                Some(Ty::Array { fixed, rest }) => {
                    (items.len() == fixed.len() || rest.is_some())
                        && items.iter().enumerate().all(|(i, item)| {
                            let w = Ty::select_index(fixed, rest.as_deref(), i);
                            self.unify_term(item, w.as_ref(), union, env, mocked)
                        })
                }
                Some(Ty::Any(w)) => alternatives(w),
                _ => false,
            },
            Expr::Object { fields, .. } => match want {
                Some(Ty::Object { fixed, rest }) => {
                    (fields.len() == fixed.len() || rest.is_some())
                        && fields.iter().all(|(_, k, v)| match constant_key(k) {
                            Some(key) => Ty::select_key(fixed, rest.as_ref(), &key)
                                .is_some_and(|w| self.unify_term(v, Some(&w), union, env, mocked)),
                            None => true,
                        })
                }
                Some(Ty::Any(w)) => alternatives(w),
                _ => false,
            },
            Expr::Set { items, .. } => match want {
                Some(set @ Ty::Set(_)) => {
                    let of = set.values();
                    items
                        .iter()
                        .all(|i| self.unify_term(i, of.as_ref(), union, env, mocked))
                }
                Some(Ty::Any(w)) => alternatives(w),
                _ => false,
            },
            // OPA gives these a type from the environment: known for variables assigned
            // here and for calls (their output variable); unknown variables take the type.
            Expr::Var { .. }
            | Expr::Call { .. }
            | Expr::ArithExpr { .. }
            | Expr::BinExpr { .. } => {
                if union {
                    return true;
                }
                let have = self.type_of(e, env, mocked);
                match (&have, e) {
                    // An unbound variable: OPA binds it to the wanted type.
                    (Ty::Any(m), Expr::Var { .. }) if m.is_empty() => true,
                    _ => unifies(Some(&have), want),
                }
            }
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::ArrayCompr { .. }
            | Expr::SetCompr { .. }
            | Expr::ObjectCompr { .. } => unifies(Some(&self.type_of(e, env, mocked)), want),
            // Refs and everything else: `any`, unless the wanted type is nil.
            _ => want.is_some(),
        }
    }

    fn check_call(
        &mut self,
        at: &regorus::unstable::Span,
        name: &str,
        params: &[&Expr],
        env: &Env,
        mocked: &BTreeSet<String>,
    ) {
        if let Some(scope) = &self.scope
            && !scope.knows(name)
        {
            self.errors.push(
                Diagnostic::at(
                    self.file.clone(),
                    at.line,
                    at.col,
                    format!("undefined function {name}"),
                )
                .with_code("rego_type_error"),
            );
            return;
        }
        if let Some(names) = self.find {
            if names.contains(&name) {
                self.errors.push(Diagnostic::at(
                    self.file.clone(),
                    at.line,
                    at.col,
                    name.to_string(),
                ));
            }
            return;
        }
        let Some(decl) = self.is_builtin(name, mocked) else {
            return;
        };
        if decl.variadic {
            return;
        }
        let n = decl.args.len();
        // With one argument more, the last is the output (`abs(-1, x)`).
        if params.len() != n && params.len() != n + 1 {
            return;
        }
        let ok = params.iter().enumerate().all(|(i, p)| {
            let want = decl.args.get(i).unwrap_or(&decl.result);
            self.unify_term(p, Some(want), false, env, mocked)
        });
        if !ok {
            self.errors.push(
                Diagnostic::at(
                    self.file.clone(),
                    at.line,
                    at.col,
                    format!("{name}: invalid argument(s)"),
                )
                .with_code("rego_type_error"),
            );
        }
    }

    fn expr(&mut self, e: &Expr, env: &Env, mocked: &BTreeSet<String>) {
        match e {
            Expr::Call { fcn, params, .. } => {
                if let Some(name) = call_name(fcn) {
                    let ps: Vec<&Expr> = params.iter().map(|p| &**p).collect();
                    self.check_call(leftmost(e), &name, &ps, env, mocked);
                }
                for p in params {
                    self.expr(p, env, mocked);
                }
            }
            Expr::ArithExpr { op, lhs, rhs, .. } => {
                self.check_call(leftmost(e), arith_name(op), &[lhs, rhs], env, mocked);
                self.expr(lhs, env, mocked);
                self.expr(rhs, env, mocked);
            }
            Expr::BinExpr { op, lhs, rhs, .. } => {
                self.check_call(leftmost(e), bin_name(op), &[lhs, rhs], env, mocked);
                self.expr(lhs, env, mocked);
                self.expr(rhs, env, mocked);
            }
            Expr::BoolExpr { lhs, rhs, .. } | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs, env, mocked);
                self.expr(rhs, env, mocked);
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.expr(i, env, mocked);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k, env, mocked);
                    self.expr(v, env, mocked);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                let inner = self.query(query, env, mocked);
                self.expr(term, &inner, mocked);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                let inner = self.query(query, env, mocked);
                self.expr(key, &inner, mocked);
                self.expr(value, &inner, mocked);
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr, env, mocked),
            Expr::RefDot { refr, .. } => {
                self.check_ref(e, refr, None);
                self.expr(refr, env, mocked);
            }
            Expr::RefBrack { refr, index, .. } => {
                self.check_ref(e, refr, Some(index));
                self.expr(refr, env, mocked);
                self.expr(index, env, mocked);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k, env, mocked);
                }
                self.expr(value, env, mocked);
                self.expr(collection, env, mocked);
            }
            _ => {}
        }
    }

    /// What OPA's parser and type checker refuse in a reference on a literal: a scalar head
    /// (`"abc"[0]`, `rego_parse_error`) and an index past a literal array's end (`[1, 2][5]`,
    /// `rego_type_error`).
    fn check_ref(&mut self, whole: &Expr, head: &Expr, index: Option<&Expr>) {
        if self.find.is_some() {
            return;
        }
        let at = leftmost(whole);
        let scalar = match head {
            Expr::String { .. } | Expr::RawString { .. } => Some("string"),
            Expr::Number { .. } => Some("number"),
            Expr::Bool { .. } => Some("boolean"),
            Expr::Null { .. } => Some("null"),
            _ => None,
        };
        if let Some(kind) = scalar {
            // A string's span starts after its quote.
            let quoted = matches!(head, Expr::String { .. } | Expr::RawString { .. });
            self.errors.push(
                Diagnostic::at(
                    self.file.clone(),
                    at.line,
                    at.col.saturating_sub(u32::from(quoted)),
                    format!("illegal ref (head cannot be {kind})"),
                )
                .with_code("rego_parse_error"),
            );
            return;
        }
        if let (Expr::Array { items, .. }, Some(Expr::Number { value, .. })) = (head, index)
            && let Ok(n) = value.as_number()
            && n.as_u64()
                .is_some_and(|i| usize::try_from(i).map_or(true, |i| i >= items.len()))
        {
            self.errors.push(
                Diagnostic::at(
                    self.file.clone(),
                    at.line,
                    at.col,
                    format!("undefined ref: {}", whole.span().text()),
                )
                .with_code("rego_type_error"),
            );
        }
    }

    /// Check a query; returns its environment (the outer one with this query's `:=`
    /// variables), which a comprehension's head and a rule's head see.
    fn query(&mut self, q: &Query, outer: &Env, mocked: &BTreeSet<String>) -> Env {
        let mut env = outer.clone();
        // Declarations first: the compiler reorders statements, and a variable declared with
        // `:=` has one type wherever it is used in the query.
        for stmt in &q.stmts {
            match &stmt.literal {
                Literal::SomeVars { vars, .. } => {
                    for v in vars {
                        env.vars.remove(v.text());
                    }
                }
                Literal::SomeIn { key, value, .. } => {
                    for pattern in key.iter().chain(std::iter::once(value)) {
                        forget_vars(pattern, &mut env);
                    }
                }
                Literal::Every { key, value, .. } => {
                    for v in key.iter().chain(std::iter::once(value)) {
                        env.vars.remove(v.text());
                    }
                }
                Literal::Expr { .. } | Literal::NotExpr { .. } => {}
            }
        }
        for stmt in &q.stmts {
            if let Literal::Expr { expr, .. } = &stmt.literal
                && let Expr::AssignExpr {
                    op: AssignOp::ColEq,
                    lhs,
                    rhs,
                    ..
                } = &**expr
                && let Some(name) = var_name(lhs)
            {
                let mocked = stmt_mocks(stmt, mocked);
                let t = self.type_of(rhs, &env, &mocked);
                env.vars.insert(name.to_string(), t);
            }
        }
        for stmt in &q.stmts {
            let mocked = stmt_mocks(stmt, mocked);
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        self.expr(k, &env, &mocked);
                    }
                    self.expr(value, &env, &mocked);
                    self.expr(collection, &env, &mocked);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                    self.expr(expr, &env, &mocked);
                }
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    self.expr(domain, &env, &mocked);
                    let mut inner = env.clone();
                    for v in key.iter().chain(std::iter::once(value)) {
                        inner.vars.remove(v.text());
                    }
                    self.query(query, &inner, &mocked);
                }
            }
            for w in &stmt.with_mods {
                self.expr(&w.r#as, &env, &mocked);
            }
        }
        env
    }

    fn rule(&mut self, rule: &Rule) {
        let none = BTreeSet::new();
        let empty = Env::default();
        match rule {
            Rule::Default { value, .. } => self.expr(value, &empty, &none),
            Rule::Spec { head, bodies, .. } => {
                let head_value = match head {
                    RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                        assign.as_ref().map(|a| &a.value)
                    }
                    RuleHead::Set { key, .. } => key.as_ref(),
                };
                let mut args_env = Env::default();
                if let RuleHead::Func { args, .. } = head {
                    for a in args {
                        forget_vars(a, &mut args_env);
                    }
                }
                if bodies.is_empty()
                    && let Some(v) = head_value
                {
                    self.expr(v, &args_env, &none);
                }
                for body in bodies {
                    let env = self.query(&body.query, &args_env, &none);
                    let value = body.assign.as_ref().map(|a| &a.value).or(head_value);
                    if let Some(v) = value {
                        self.expr(v, &env, &none);
                    }
                }
            }
        }
    }
}

/// Remove every variable of a pattern (`x`, `[k, v]`) from the environment.
fn forget_vars(pattern: &Expr, env: &mut Env) {
    match pattern {
        Expr::Var { value, .. } => {
            if let Ok(n) = value.as_string() {
                env.vars.remove(n.as_ref());
            }
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                forget_vars(i, env);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, _, v) in fields {
                forget_vars(v, env);
            }
        }
        _ => {}
    }
}

/// The functions a statement's `with` modifiers replace, added to the outer ones.
fn stmt_mocks(stmt: &LiteralStmt, outer: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = outer.clone();
    for w in &stmt.with_mods {
        if let Some(n) = call_name(&w.refr) {
            out.insert(n);
        }
    }
    out
}

/// The package of a module as OPA names it (`data.a.b`).
fn package_of(m: &Module) -> String {
    m.package.refr.span().text().to_string()
}

/// Names that are not built-ins inside each package: its rules' first names and its imports.
fn shadowed_names(modules: &[Ref<Module>]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in modules {
        let names = out.entry(package_of(m)).or_default();
        for rule in &m.policy {
            let text = rule_head_ref(rule).span().text();
            let first = text
                .split(['.', '[', '(', ' '])
                .next()
                .unwrap_or(text)
                .trim();
            names.insert(first.to_string());
        }
        names.extend(import_aliases(m).into_keys());
    }
    out
}

/// Type-check the built-in calls of every module; one diagnostic per call OPA refuses.
pub fn check_modules(modules: &[Ref<Module>]) -> Vec<Diagnostic> {
    let shadowed = shadowed_names(modules);
    let rules = rule_paths(modules);
    let none = BTreeSet::new();
    let mut out = Vec::new();
    for m in modules {
        let mut c = Checker {
            shadowed: shadowed.get(&package_of(m)).unwrap_or(&none),
            file: m.package.span.source.file().clone(),
            errors: Vec::new(),
            find: None,
            scope: Some(Resolve {
                package: Some(format!("data.{}", package_of(m))),
                imports: import_aliases(m),
                rules: &rules,
            }),
        };
        for rule in &m.policy {
            c.rule(rule);
        }
        out.append(&mut c.errors);
    }
    out
}

/// Every call of one of `names` in the modules, as a diagnostic whose message is the name and
/// whose position is the call's: what the source text cannot show (calls inside template
/// strings).
pub fn find_calls(modules: &[Ref<Module>], names: &[&str]) -> Vec<Diagnostic> {
    let none = BTreeSet::new();
    let mut out = Vec::new();
    for m in modules {
        let mut c = Checker {
            shadowed: &none,
            file: m.package.span.source.file().clone(),
            errors: Vec::new(),
            find: Some(names),
            scope: None,
        };
        for rule in &m.policy {
            c.rule(rule);
        }
        out.append(&mut c.errors);
    }
    out
}

/// Type-check an ad-hoc query's built-in calls (`arbiter eval`), in `package` when given.
pub fn check_query(
    query: &Query,
    modules: &[Ref<Module>],
    package: Option<&str>,
    file: &str,
) -> Vec<Diagnostic> {
    let shadowed = shadowed_names(modules);
    let none = BTreeSet::new();
    let names = package
        .and_then(|p| shadowed.get(p.strip_prefix("data.").unwrap_or(p)))
        .unwrap_or(&none);
    let rules = rule_paths(modules);
    let mut c = Checker {
        shadowed: names,
        file: file.to_string(),
        errors: Vec::new(),
        find: None,
        scope: Some(Resolve {
            package: package.map(|p| format!("data.{}", p.strip_prefix("data.").unwrap_or(p))),
            imports: BTreeMap::new(),
            rules: &rules,
        }),
    };
    c.query(query, &Env::default(), &BTreeSet::new());
    let mut errors = c.errors;
    errors.extend(unsafe_query_vars(query, names, file));
    errors
}

/// Variables of a query that nothing can bind (OPA's `rego_unsafe_var_error`, `var y is
/// unsafe`): used, but never assigned (`:=`), unified outside `not` (`=`), declared (`some`),
/// iterated (`xs[i]`), or passed to a function that may bind its last argument. regorus reads
/// such a query as undefined (`x := y` was `{}`), or, under `not`, binds the variable anyway.
/// Only what cannot be bound is reported, so no query OPA accepts is refused.
fn unsafe_query_vars(query: &Query, shadowed: &BTreeSet<String>, file: &str) -> Vec<Diagnostic> {
    let mut bound = BTreeSet::new();
    for stmt in &query.stmts {
        match &stmt.literal {
            Literal::SomeVars { vars, .. } => {
                bound.extend(vars.iter().map(|v| v.text().to_string()));
            }
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                for p in key.iter().chain(std::iter::once(value)) {
                    pattern_vars(p, &mut bound);
                }
                binding_sites(collection, &mut bound);
            }
            Literal::Every { domain, .. } => binding_sites(domain, &mut bound),
            Literal::Expr { expr, .. } => binding_sites(expr, &mut bound),
            Literal::NotExpr { .. } => {}
        }
    }
    let mut out = Vec::new();
    for stmt in &query.stmts {
        let (reads, _) = stmt_reads(stmt);
        let mut used = reads.into_iter().flat_map(var_spans).map(|(v, _)| v);
        if let Some(v) = used.find(|&v| {
            !bound.contains(v)
                && !shadowed.contains(v)
                && !matches!(v, "input" | "data" | "_")
                && !v.starts_with("__")
        }) {
            out.push(
                Diagnostic::at(
                    file.to_string(),
                    stmt.span.line,
                    stmt.span.col,
                    format!("var {v} is unsafe"),
                )
                .with_code("rego_unsafe_var_error"),
            );
            break;
        }
    }
    out
}

/// The variables of a pattern (`x`, `[k, v]`, `{"a": x}`).
fn pattern_vars(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::Var { value, .. } => {
            if let Ok(n) = value.as_string() {
                out.insert(n.to_string());
            }
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                pattern_vars(i, out);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                pattern_vars(k, out);
                pattern_vars(v, out);
            }
        }
        _ => {}
    }
}

/// An expression's direct subexpressions, leaving out comprehensions (their own scopes) and
/// the names of called functions.
fn subexprs(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::RefDot { refr, .. } | Expr::UnaryExpr { expr: refr, .. } => vec![refr],
        Expr::RefBrack { refr, index, .. } => vec![refr, index],
        Expr::Call { params, .. }
        | Expr::Array { items: params, .. }
        | Expr::Set { items: params, .. } => params.iter().map(|p| &**p).collect(),
        Expr::AssignExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::BinExpr { lhs, rhs, .. } => vec![lhs, rhs],
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => key
            .iter()
            .chain([value, collection])
            .map(|x| &**x)
            .collect(),
        Expr::Object { fields, .. } => fields.iter().flat_map(|(_, k, v)| [&**k, &**v]).collect(),
        _ => Vec::new(),
    }
}

/// Variables an expression may bind: `:=` and `=` patterns, iterated ref indexes, and the
/// arguments of calls (a call's last argument may be its output).
fn binding_sites(e: &Expr, out: &mut BTreeSet<String>) {
    match e {
        Expr::AssignExpr { lhs, rhs, op, .. } => {
            pattern_vars(lhs, out);
            if *op == AssignOp::Eq {
                pattern_vars(rhs, out);
            }
        }
        Expr::RefBrack { index, .. } => pattern_vars(index, out),
        Expr::Call { params, .. } => {
            for p in params {
                pattern_vars(p, out);
            }
        }
        _ => {}
    }
    for s in subexprs(e) {
        binding_sites(s, out);
    }
}

/// The variables `e` reads, with their positions, outside comprehensions (their own scopes)
/// and the names of called functions.
fn var_spans(e: &Expr) -> Vec<(&str, &regorus::unstable::Span)> {
    fn walk<'e>(e: &'e Expr, out: &mut Vec<(&'e str, &'e regorus::unstable::Span)>) {
        if let Expr::Var { span, .. } = e {
            out.push((span.text(), span));
        }
        for s in subexprs(e) {
            walk(s, out);
        }
    }
    let mut out = Vec::new();
    walk(e, &mut out);
    out
}

/// The expressions a statement reads outside its nested queries (a `some … in`'s collection,
/// an `every`'s domain, an expression, its `with`s' values), and whether it is negated.
fn stmt_reads(stmt: &LiteralStmt) -> (Vec<&Expr>, bool) {
    let (mut reads, negated): (Vec<&Expr>, bool) = match &stmt.literal {
        Literal::Expr { expr, .. } => (vec![expr], false),
        Literal::NotExpr { expr, .. } => (vec![expr], true),
        Literal::SomeIn { collection, .. } => (vec![collection], false),
        Literal::Every { domain, .. } => (vec![domain], false),
        Literal::SomeVars { .. } => (Vec::new(), false),
    };
    reads.extend(stmt.with_mods.iter().map(|w| &*w.r#as));
    (reads, negated)
}

/// What OPA's compiler checks in a query before evaluating it, on `engine`'s modules: that the
/// query parses (`rego_parse_error` otherwise) and that its built-in calls take arguments of
/// the declared types (`rego_type_error`).
pub fn check_query_text(
    engine: &mut regorus::Engine,
    query: &str,
    package: Option<&str>,
    rego_v1: bool,
) -> Result<(), crate::rego::EvalError> {
    use regorus::unstable::{Parser, Source};
    let compile_error = |d: Diagnostic| crate::rego::EvalError {
        kind: crate::rego::EvalErrorKind::Compile(d.code),
        message: d.to_string(),
        location: Some(d),
    };
    let parsed = Source::from_contents("query".to_string(), query.to_string()).and_then(|src| {
        let mut parser = Parser::new(&src)?;
        if rego_v1 {
            parser.enable_rego_v1()?;
        }
        parser.parse_user_query()
    });
    let parsed = parsed.map_err(|e| {
        compile_error(Diagnostic::from_regorus(&e, "query").with_code("rego_parse_error"))
    })?;
    match check_query(&parsed, engine.get_modules(), package, "query")
        .into_iter()
        .next()
    {
        Some(d) => Err(compile_error(d)),
        None => Ok(()),
    }
}

/// A built-in's failure with OPA's code (`eval_type_error` or `eval_builtin_error`) and its
/// message worded as OPA's (`abs: operand 1 must be number but got string`). Its text keeps
/// regorus's location excerpt, so diagnostics find the position as for any other error.
#[derive(Debug)]
pub struct BuiltinFailure {
    pub code: &'static str,
    text: String,
}

impl std::fmt::Display for BuiltinFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for BuiltinFailure {}

/// Whether a value has the type's top-level kind.
fn kind_fits(v: &regorus::Value, t: &Ty) -> bool {
    use regorus::Value as V;
    match t {
        Ty::Any(m) => m.is_empty() || m.iter().any(|t| kind_fits(v, t)),
        Ty::Null => matches!(v, V::Null),
        Ty::Boolean => matches!(v, V::Bool(_)),
        Ty::Number => matches!(v, V::Number(_)),
        Ty::String => matches!(v, V::String(_)),
        Ty::Array { .. } => matches!(v, V::Array(_)),
        Ty::Object { .. } => matches!(v, V::Object(_)),
        Ty::Set(_) => matches!(v, V::Set(_)),
        Ty::Function => false,
    }
}

/// The kinds a type admits, as OPA's messages name them.
fn kind_names(t: &Ty, out: &mut Vec<&'static str>) {
    let name = match t {
        Ty::Any(m) => {
            for t in m {
                kind_names(t, out);
            }
            return;
        }
        Ty::Null => "null",
        Ty::Boolean => "boolean",
        Ty::Number => "number",
        Ty::String => "string",
        Ty::Array { .. } => "array",
        Ty::Object { .. } => "object",
        Ty::Set(_) => "set",
        Ty::Function => "function",
    };
    if !out.contains(&name) {
        out.push(name);
    }
}

/// The order in which OPA's built-ins list the kinds they accept, where it is not the
/// declaration's (from `NewOperandTypeErr` calls in OPA 1.7.1's `topdown`).
fn named_order(name: &str, operand: usize) -> Option<&'static [&'static str]> {
    Some(match (name, operand) {
        ("count", 1) => &["array", "object", "set", "string"],
        ("sum" | "product" | "max" | "min" | "sort", 1) => &["set", "array"],
        ("all" | "any" | "to_array" | "to_set", 1) => &["array", "set"],
        ("minus", 1) => &["number", "set"],
        ("to_number", 1) => &["null", "boolean", "number", "string"],
        ("concat" | "json.filter" | "json.remove", 2) => &["set", "array"],
        ("object.remove" | "object.filter", 2) => &["object", "set", "array"],
        ("strings.any_prefix_match" | "strings.any_suffix_match", 1 | 2) => {
            &["string", "set", "array"]
        }
        ("glob.match", 2) => &["array", "null"],
        _ => return None,
    })
}

/// OPA's operand error for arguments that do not have the declared kinds
/// (`operand 2 must be array but got object`), or for elements of the declared kind
/// (`operand 2 must be array of strings but got array containing number`).
fn operand_error(name: &str, args: &[regorus::Value]) -> Option<String> {
    use regorus::Value as V;
    let decl = DECLS.get(name)?;
    if name == "minus" {
        // OPA's `minus` names what the other operand asks for.
        return match (args.first()?, args.get(1)?) {
            (V::Number(_), V::Number(_)) | (V::Set(_), V::Set(_)) => None,
            (a, _) if !matches!(a, V::Number(_) | V::Set(_)) => Some(format!(
                "operand 1 must be one of {{number, set}} but got {}",
                crate::decision::type_name(a)
            )),
            (V::Set(_), b) => Some(format!(
                "operand 2 must be set but got {}",
                crate::decision::type_name(b)
            )),
            (_, b) => Some(format!(
                "operand 2 must be number but got {}",
                crate::decision::type_name(b)
            )),
        };
    }
    for (i, (v, t)) in args.iter().zip(&decl.args).enumerate() {
        let pos = i + 1;
        if !kind_fits(v, t) {
            let mut names = Vec::new();
            kind_names(t, &mut names);
            let names: Vec<&str> = named_order(name, pos).map_or(names, <[&str]>::to_vec);
            return Some(match names.as_slice() {
                [one] => format!(
                    "operand {pos} must be {one} but got {}",
                    crate::decision::type_name(v)
                ),
                many => format!(
                    "operand {pos} must be one of {{{}}} but got {}",
                    many.join(", "),
                    crate::decision::type_name(v)
                ),
            });
        }
        // Elements of an array or set whose declared member type is one scalar kind.
        if let Some(m @ (Ty::String | Ty::Number | Ty::Boolean | Ty::Null)) = member_type(v, t) {
            let items: Vec<&V> = match v {
                V::Array(a) => a.iter().collect(),
                V::Set(s) => s.iter().collect(),
                _ => Vec::new(),
            };
            if let Some(bad) = items.into_iter().find(|x| !kind_fits(x, m)) {
                let mut names = Vec::new();
                kind_names(m, &mut names);
                let container = crate::decision::type_name(v);
                return Some(format!(
                    "operand {pos} must be {container} of {}s but got {container} containing {}",
                    names.first().copied().unwrap_or("any"),
                    crate::decision::type_name(bad)
                ));
            }
        }
    }
    None
}

/// The declared member type of a collection value's kind (`array[string]` for an array where
/// `any<array[string], set[string]>` is declared).
fn member_type<'t>(v: &regorus::Value, t: &'t Ty) -> Option<&'t Ty> {
    use regorus::Value as V;
    match (v, t) {
        (V::Array(_), Ty::Array { rest: Some(m), .. }) | (V::Set(_), Ty::Set(m)) => Some(m),
        (_, Ty::Any(members)) => members.iter().find_map(|m| member_type(v, m)),
        _ => None,
    }
}

/// OPA's wording where regorus says a built-in wants integers (`bits.*`, `numbers.range`):
/// the first operand that is not one, named.
fn integer_error(bare: &str, args: &[regorus::Value]) -> Option<String> {
    use regorus::Value as V;
    let numbers = || {
        args.iter().enumerate().filter_map(|(i, a)| match a {
            V::Number(n) => Some((i + 1, n)),
            _ => None,
        })
    };
    if bare.contains("expects integer arguments") || bare.contains("operand must be integer") {
        let (pos, _) = numbers().find(|(_, n)| !n.is_integer())?;
        return Some(format!(
            "operand {pos} must be integer number but got floating-point number"
        ));
    }
    if bare.contains("expects non-negative integer arguments") {
        let (pos, _) = numbers().find(|(_, n)| n.as_f64().is_some_and(|f| f < 0.0))?;
        return Some(format!(
            "operand {pos} must be an unsigned integer number but got a negative integer"
        ));
    }
    None
}

/// The built-in error hook arbiter installs in regorus (see
/// `regorus::unstable::set_builtin_error_hook`): words a failing built-in's error as OPA does
/// and gives it OPA's code. Runs only when a call fails with strict built-in errors.
pub fn builtin_error_hook(
    span: &regorus::unstable::Span,
    name: &str,
    args: &[regorus::Value],
    err: anyhow::Error,
) -> anyhow::Error {
    if err.chain().any(|e| e.is::<BuiltinFailure>()) {
        return err;
    }
    let bare = Diagnostic::from_regorus(&err, "").message;
    let (code, message) = match operand_error(name, args).or_else(|| integer_error(&bare, args)) {
        Some(m) => ("eval_type_error", format!("{name}: {m}")),
        None => {
            let code = if crate::rego::reads_as_type_error(&bare) {
                "eval_type_error"
            } else {
                "eval_builtin_error"
            };
            let named = bare.starts_with(name) || bare.starts_with(&format!("`{name}`"));
            let message = if named {
                bare
            } else {
                format!("{name}: {bare}")
            };
            (code, message)
        }
    };
    anyhow::Error::new(BuiltinFailure {
        code,
        text: span.message("error", &message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What loading `rules` as module `t.rego` (package `t`, Rego v1) reports, in
    /// `file:line:col: message` form.
    pub(super) fn load_rules(rules: &str) -> Result<(), String> {
        let mut sources = crate::PolicySources::default();
        sources.add_rego("t.rego", format!("package t\nimport rego.v1\n{rules}\n"));
        crate::PolicySet::from_sources(&sources, &crate::LoadOptions::default())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn query_errors(q: &str) -> Vec<String> {
        let source = regorus::unstable::Source::from_contents("query".into(), q.into()).unwrap();
        let mut parser = regorus::unstable::Parser::new(&source).unwrap();
        parser.enable_rego_v1().unwrap();
        let query = parser.parse_user_query().unwrap();
        check_query(&query, &[], None, "query")
            .into_iter()
            .map(|d| format!("{}:{} {} {}", d.line, d.col, d.code, d.message))
            .collect()
    }

    #[test]
    fn the_table_of_declarations_loads() {
        assert_eq!(declared_builtins(), 200);
    }

    #[test]
    fn literal_arguments_of_the_wrong_type_are_refused_where_opa_refuses_them() {
        // Each answer was recorded from OPA 1.7.1 (conformance/cases/opa-diff/corpus.jsonl).
        assert_eq!(
            query_errors(r#"x := abs("1")"#),
            ["1:6 rego_type_error abs: invalid argument(s)"]
        );
        assert_eq!(
            query_errors(r#"x := union({"a", "b"})"#),
            ["1:6 rego_type_error union: invalid argument(s)"]
        );
        assert_eq!(
            query_errors(r#"x := object.union_n([{"a": 1}, true])"#),
            ["1:6 rego_type_error object.union_n: invalid argument(s)"]
        );
        assert_eq!(
            query_errors(r#"x := 1 + "a""#),
            ["1:6 rego_type_error plus: invalid argument(s)"]
        );
        assert_eq!(
            query_errors("y := 1; x := lower(y)"),
            ["1:14 rego_type_error lower: invalid argument(s)"]
        );
        assert_eq!(
            query_errors("x := lower(count([1]))"),
            ["1:6 rego_type_error lower: invalid argument(s)"]
        );
    }

    #[test]
    fn refs_on_literals_that_opa_refuses() {
        // Recorded from OPA 1.7.1 (differential corpus, lang/33 and lang/35).
        assert_eq!(
            query_errors("x := [1, 2, 3][5]"),
            ["1:6 rego_type_error undefined ref: [1, 2, 3][5]"]
        );
        assert_eq!(
            query_errors(r#"x := "abc"[0]"#),
            ["1:6 rego_parse_error illegal ref (head cannot be string)"]
        );
        assert_eq!(query_errors("x := [1, 2, 3][2]"), Vec::<String>::new());
    }

    #[test]
    fn query_variables_nothing_binds_are_unsafe_as_in_opa() {
        // Recorded from OPA 1.7.1: `var y is unsafe` (rego_unsafe_var_error).
        assert_eq!(
            query_errors("x := y"),
            ["1:1 rego_unsafe_var_error var y is unsafe"]
        );
        assert_eq!(
            query_errors("not 1 = x"),
            ["1:1 rego_unsafe_var_error var x is unsafe"]
        );
        for q in [
            "x = 1",
            "input.a[i] == 1",
            "some i; input.a[i]",
            "[a, b] = [1, 2]",
            "some x in [1]; x > 0",
            "abs(-1, y)",
            "y := 1; not y == 2",
            "every x in [1] { x > 0 }",
        ] {
            assert_eq!(query_errors(q), Vec::<String>::new(), "{q}");
        }
    }

    #[test]
    fn calls_of_functions_nothing_defines_are_refused_at_load() {
        // OPA: `rego_type_error: undefined function foo.bar`.
        let src = "package p\n\nimport data.lib\n\nf(x) := x\n\n\
                   allow if { f(1); lib.g(2); data.lib.g(3); startswith(\"a\", \"b\") }\n\
                   deny if { foo.bar(1) }\n";
        let lib = "package lib\n\ng(x) := x\n";
        let modules: Vec<Ref<Module>> = [("p.rego", src), ("lib.rego", lib)]
            .into_iter()
            .map(|(name, text)| {
                let source =
                    regorus::unstable::Source::from_contents(name.into(), text.into()).unwrap();
                let mut parser = regorus::unstable::Parser::new(&source).unwrap();
                parser.enable_rego_v1().unwrap();
                Ref::new(parser.parse().unwrap())
            })
            .collect();
        let errors: Vec<String> = check_modules(&modules)
            .into_iter()
            .map(|d| format!("{d} {}", d.code))
            .collect();
        assert_eq!(
            errors,
            ["p.rego:8:11: undefined function foo.bar rego_type_error"]
        );
    }

    #[test]
    fn what_opa_accepts_passes() {
        for q in [
            "x := abs(1)",
            "x := count({1, 2})",
            "x := union({{1}, {2}})",
            "x := object.union_n([{}, {\"a\": 1}])",
            "x := json.remove({\"a\": 1}, [\"a\"])",
            "x := sprintf(\"%d\", [1])",
            "x := lower(input.name)",
            "x := concat(\",\", [y | y := \"a\"])",
            "x := {1} - {2}",
            "x := 3 - 1",
            "x := object.get({}, [\"a\", 1], null)",
            "x := lower(y); y := \"A\"",
            "x := [lower(y) | some y in [\"A\"]]",
            "abs(-1, x)",
        ] {
            assert_eq!(query_errors(q), Vec::<String>::new(), "{q}");
        }
    }

    fn strict_error(query: &str, input: &str) -> (String, String) {
        let mut engine = crate::rego::new_engine(&crate::rego::EngineOptions {
            strict_builtin_errors: true,
            ..crate::rego::EngineOptions::default()
        });
        engine.set_input(regorus::Value::from_json_str(input).unwrap());
        let err = engine.eval_query(query.to_string(), false).unwrap_err();
        let e = crate::rego::EvalError::from_regorus(&err);
        let message = e.location.map_or(e.message, |d| d.message);
        (e.kind.opa_code().to_string(), message)
    }

    #[test]
    fn failing_built_ins_are_worded_and_coded_as_opa_words_them() {
        // Messages from OPA's suite (array/concat: err, hexbuiltins, aggregates/count).
        assert_eq!(
            strict_error("x := array.concat(input.a, [])", r#"{"a": {"k": 1}}"#),
            (
                "eval_type_error".into(),
                "array.concat: operand 1 must be array but got object".into()
            )
        );
        assert_eq!(
            strict_error("x := count(input.a)", r#"{"a": 1}"#),
            (
                "eval_type_error".into(),
                "count: operand 1 must be one of {array, object, set, string} but got number"
                    .into()
            )
        );
        assert_eq!(
            strict_error("x := concat(\",\", input.a)", r#"{"a": ["a", 1]}"#),
            (
                "eval_type_error".into(),
                "concat: operand 2 must be array of strings but got array containing number".into()
            )
        );
        let (code, message) = strict_error("x := hex.decode(input.a)", r#"{"a": "gg"}"#);
        assert_eq!(code, "eval_builtin_error");
        assert!(message.starts_with("hex.decode: "), "{message}");
        // A built-in's message that says "conflict" is still a built-in error (OPA's code), not
        // a rule conflict.
        let (code, message) = strict_error(
            "x := graphql.parse(\"{ a: a a: b }\", \"type Query { a: Int, b: Int }\")",
            "{}",
        );
        assert_eq!(code, "eval_builtin_error");
        assert!(message.contains("conflict because"), "{message}");
    }

    #[test]
    fn names_the_package_defines_are_not_checked() {
        let src = "package p\n\nabs(x) := x\n\ny := abs(\"1\")\nz := lower(1)\n";
        let source = regorus::unstable::Source::from_contents("p.rego".into(), src.into()).unwrap();
        let mut parser = regorus::unstable::Parser::new(&source).unwrap();
        parser.enable_rego_v1().unwrap();
        let module = Ref::new(parser.parse().unwrap());
        let errors: Vec<String> = check_modules(&[module])
            .into_iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(errors, ["p.rego:6:6: lower: invalid argument(s)"]);
    }
}
