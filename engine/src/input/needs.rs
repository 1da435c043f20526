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
//! from that point. A `with input…`
//! target is not a read: the rules evaluated under it read what their own references say,
//! from the replaced document. The walk matches every expression and statement kind of the
//! syntax tree without a catch-all arm, so a kind added to regorus does not compile until
//! it is handled here.
//!
//! OPA-Envoy policies begin with an alias, `http := input.attributes.request.http`: a read
//! through it (`http.method`, `data.envoy.authz.http.headers["x"]`) reads that part of
//! `input`, so it is followed ([`RegoReads`]). An alias is a complete rule with no body whose
//! value is a constant reference into `input`, the only rule of its name in its package, with
//! no package below it. Whatever could observe it whole takes its part whole: the name alone
//! or with a key that is not constant, a reference to `data` that stops short of it or leaves
//! it by a key that is not constant (`data.envoy.authz[k]`, `walk(data)`), an import of it or
//! of its package, and evaluating it or its package ([`RegoReads::at`]). Any variable of the
//! alias's name in its package counts as the alias (a local of that name only adds reads).
//!
//! An import of a part of `input` (`import input.attributes.request.http as http_request`,
//! the form of OPA-Envoy's own examples) is followed the same way: `http_request.headers.x`
//! reads `input.attributes.request.http.headers.x`, and the name alone or with a key that is
//! not constant reads the part whole. regorus resolves an import's name in every module of the
//! import's package (after local variables and rules), so any variable of that name in the
//! package counts as the import; an import is not a rule, so `data` never reaches it.

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

    /// What `modules` read of `input`, whatever is evaluated (see [`RegoReads::anywhere`]).
    pub fn of_rego(modules: &[Ref<Module>]) -> Self {
        RegoReads::of(modules).anywhere()
    }
}

/// A rule that is a name for a part of `input`, as OPA-Envoy policies begin:
/// `http := input.attributes.request.http`. A read through it (`http.method`,
/// `data.envoy.authz.http.headers["x"]`) is a read of that part of `input`, not of the whole
/// part the rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alias {
    /// The rule's path below `data`: its package's keys, then its name.
    path: Vec<String>,
    /// The part of `input` it names.
    input: Vec<String>,
}

impl Alias {
    /// Whether `data.<path>` holds the alias or lies within it: what is read there can show
    /// the alias's value whole.
    fn overlaps(&self, path: &[String]) -> bool {
        self.path.starts_with(path) || path.starts_with(&self.path)
    }

    /// Whether the alias is `name` in `package`.
    fn is(&self, package: &[String], name: &str) -> bool {
        matches!(self.path.split_last(), Some((last, rest)) if last == name && rest == package)
    }
}

/// A module's package as keys below `data`, and whether every key is a constant.
fn package_of(m: &Module) -> Option<(Vec<String>, bool)> {
    ref_keys(&m.package.refr).map(|(root, mut keys, constant)| {
        keys.insert(0, root);
        (keys, constant)
    })
}

/// What a set of Rego modules reads of `input`, with reads through aliases followed, and the
/// aliases themselves: what is read then depends on what is evaluated ([`RegoReads::at`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegoReads {
    /// Every read, those through aliases followed to the parts they read.
    followed: Needs,
    aliases: Vec<Alias>,
}

/// `import input.<keys> [as name]` with constant keys: the part of `input` it names and the
/// name it binds (the alias, else the last key); `None` for any other import.
fn input_import(i: &regorus::unstable::Import) -> Option<(String, Vec<String>)> {
    let (root, keys, constant) = ref_keys(&i.refr)?;
    if root != "input" || !constant {
        return None;
    }
    let name = match &i.r#as {
        Some(a) => a.text().to_string(),
        None => keys.last()?.clone(),
    };
    Some((name, keys))
}

/// The imports of parts of `input`, each as an [`Alias`] in its module's package (where
/// regorus resolves its name).
fn find_input_imports(modules: &[Ref<Module>]) -> Vec<Alias> {
    let mut out = Vec::new();
    for m in modules {
        let Some((package, true)) = package_of(m) else {
            continue;
        };
        for i in &m.imports {
            if let Some((name, input)) = input_import(i) {
                let mut path = package.clone();
                path.push(name);
                out.push(Alias { path, input });
            }
        }
    }
    out
}

impl RegoReads {
    /// Read `modules`.
    pub fn of(modules: &[Ref<Module>]) -> Self {
        let aliases = find_aliases(modules);
        let imports = find_input_imports(modules);
        let mut w = Walk {
            n: Needs::nothing(),
            aliases: &aliases,
            imports: &imports,
            package: Vec::new(),
        };
        for m in modules {
            let package = package_of(m).filter(|(_, constant)| *constant);
            let known = package.is_some();
            w.package = package.map(|(keys, _)| keys).unwrap_or_default();
            for i in &m.imports {
                if known && input_import(i).is_some() {
                    // Followed through the reads of its name.
                    continue;
                }
                w.import(&i.refr);
            }
            for r in &m.policy {
                w.rule(r);
            }
        }
        let followed = w.n;
        RegoReads { followed, aliases }
    }

    /// What evaluating `data.<entry>` reads: the reads followed, and the whole part each alias
    /// names when `entry` holds or is below the alias (its value is then part of the result).
    pub fn at(&self, entry: &[String]) -> Needs {
        let mut n = self.followed.clone();
        for a in self.aliases.iter().filter(|a| a.overlaps(entry)) {
            n.add(&a.input);
        }
        n
    }

    /// What evaluating anything reads: every alias's part whole (as evaluating `data` does).
    pub fn anywhere(&self) -> Needs {
        self.at(&[])
    }
}

/// `e` as a reference from a variable: the variable, its keys up to the first that is not a
/// constant string, and whether every key is constant.
fn ref_keys(e: &Expr) -> Option<(String, Vec<String>, bool)> {
    let mut chain: Vec<&Expr> = Vec::new();
    let mut at = e;
    let root = loop {
        match at {
            Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => {
                chain.push(at);
                at = refr;
            }
            Expr::Var { value, .. } => break value.as_string().ok()?.to_string(),
            _ => return None,
        }
    };
    let mut keys = Vec::new();
    for link in chain.iter().rev() {
        match constant_key(link) {
            Some(k) => keys.push(k),
            None => return Some((root, keys, false)),
        }
    }
    Some((root, keys, true))
}

/// The key a selection names when it is a constant string.
fn constant_key(link: &Expr) -> Option<String> {
    match link {
        Expr::RefDot { field, .. } => field.1.as_string().ok().map(|s| s.to_string()),
        Expr::RefBrack { index, .. } => match &**index {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                value.as_string().ok().map(|s| s.to_string())
            }
            _ => None,
        },
        _ => None,
    }
}

/// The rules that name a part of `input` and nothing else: a complete rule with no body whose
/// value is a reference into `input` with constant keys, the only rule of its name in its
/// package (no `default`, no other definition).
fn find_aliases(modules: &[Ref<Module>]) -> Vec<Alias> {
    let mut found: BTreeMap<Vec<String>, Option<Vec<String>>> = BTreeMap::new();
    for m in modules {
        let Some((package, true)) = package_of(m) else {
            continue;
        };
        for r in &m.policy {
            let (refr, alias) = match &**r {
                Rule::Spec { head, bodies, .. } => match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        let input = assign
                            .as_ref()
                            .filter(|_| bodies.is_empty())
                            .and_then(|a| ref_keys(&a.value))
                            .filter(|(root, _, constant)| root == "input" && *constant)
                            .map(|(_, keys, _)| keys);
                        (refr, input)
                    }
                    RuleHead::Set { refr, .. } | RuleHead::Func { refr, .. } => (refr, None),
                },
                Rule::Default { refr, .. } => (refr, None),
            };
            // The rule's path: its package, then its head's keys.
            let Some((name, keys, _)) = ref_keys(refr) else {
                continue;
            };
            // Only a rule named by one key (`http`, not `a.b := …` or `a[x] := …`).
            let alias = alias.filter(|_| keys.is_empty());
            let mut path = package.clone();
            path.push(name);
            path.extend(keys);
            match found.get_mut(&path) {
                // A second rule of the name: not an alias.
                Some(seen) => *seen = None,
                None => {
                    found.insert(path, alias);
                }
            }
        }
    }
    // Not where a package lies at or below the rule's path (`package envoy.authz.http`): what
    // `data.envoy.authz.http` is is then not the rule's value alone.
    let packages: Vec<Vec<String>> = modules
        .iter()
        .filter_map(|m| package_of(m))
        .map(|(keys, _)| keys)
        .collect();
    found
        .into_iter()
        .filter_map(|(path, input)| {
            Some(Alias {
                path,
                input: input?,
            })
        })
        .filter(|a| !packages.iter().any(|p| p.starts_with(&a.path)))
        .collect()
}

/// The walk of the syntax tree: what is read, the aliases, and the package of the module
/// walked.
struct Walk<'a> {
    n: Needs,
    aliases: &'a [Alias],
    /// The imports of parts of `input`, in their packages.
    imports: &'a [Alias],
    /// The keys of the walked module's package (none when a key is not constant: then no
    /// alias or import is its).
    package: Vec<String>,
}

impl Walk<'_> {
    /// The alias named `name` in the walked module's package, if any.
    fn local_alias(&self, name: &str) -> Option<&Alias> {
        self.aliases.iter().find(|a| a.is(&self.package, name))
    }

    /// An import: of `input` or a part, that part whole; of `data` at or around an alias, the
    /// alias's part whole (its name then reads anything of it).
    fn import(&mut self, refr: &Expr) {
        self.expr(refr);
        if let Some((root, keys, _)) = ref_keys(refr)
            && root == "data"
        {
            for a in self.aliases.iter().filter(|a| a.overlaps(&keys)) {
                self.n.add(&a.input);
            }
        }
    }

    /// A read through an alias: `name…` in the alias's package, or `data.<path>…` anywhere.
    /// `true` when `e` was one (and is accounted for).
    fn through_alias(&mut self, e: &Expr) -> bool {
        let Some((root, keys, _)) = ref_keys(e) else {
            return false;
        };
        // Each alias the reference reads through, with how many of its keys lie below it.
        let aliases = self.aliases;
        let through: Vec<(&Alias, usize)> = if root == "data" {
            // `data.<path>…`, taken whole here (its prefixes are not references of their own):
            // the alias at the path's start; a reference that stops short of an alias, or
            // leaves it by a key that is not constant, takes it whole.
            let mut matched = Vec::new();
            for a in aliases {
                if keys.starts_with(&a.path) {
                    matched.push((a, keys.len() - a.path.len()));
                } else if a.path.starts_with(&keys) {
                    self.n.add(&a.input);
                }
            }
            matched
        } else {
            // A name in the module's package: a rule alias, an import of a part of `input`, or
            // both (each is read through).
            let named: Vec<(&Alias, usize)> = aliases
                .iter()
                .chain(self.imports)
                .filter(|a| a.is(&self.package, &root))
                .map(|a| (a, keys.len()))
                .collect();
            if named.is_empty() {
                return false;
            }
            named
        };
        for (alias, below) in through {
            let mut read = alias.input.clone();
            read.extend_from_slice(&keys[keys.len() - below..]);
            self.n.add(&read);
        }
        self.indexes(e);
        true
    }

    /// The indexes of a reference, each read on its own.
    fn indexes(&mut self, e: &Expr) {
        let mut at = e;
        while let Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } = at {
            if let Expr::RefBrack { index, .. } = at {
                self.expr(index);
            }
            at = refr;
        }
    }
    fn rule(&mut self, r: &Rule) {
        // An alias is not a read of what it names: the reads through it are.
        if let Rule::Spec {
            head: RuleHead::Compr { refr, .. },
            ..
        } = r
            && let Some((name, keys, _)) = ref_keys(refr)
            && keys.is_empty()
            && self.local_alias(&name).is_some()
        {
            return;
        }
        match r {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.head(refr, &[], assign.as_ref().map(|a| &*a.value));
                    }
                    RuleHead::Set { refr, key, .. } => self.head(refr, &[], key.as_deref()),
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => self.head(refr, args, assign.as_ref().map(|a| &*a.value)),
                }
                for b in bodies {
                    if let Some(a) = &b.assign {
                        self.expr(&a.value);
                    }
                    self.query(&b.query);
                }
            }
            Rule::Default {
                refr, args, value, ..
            } => self.head(refr, args, Some(value)),
        }
    }

    /// A rule's head: its reference, a function's arguments, its value or key.
    fn head(&mut self, refr: &Expr, args: &[Ref<Expr>], value: Option<&Expr>) {
        self.expr(refr);
        for a in args {
            self.expr(a);
        }
        if let Some(v) = value {
            self.expr(v);
        }
    }

    fn query(&mut self, q: &Query) {
        for s in &q.stmts {
            match &s.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => self.membership(key.as_deref(), value, collection),
                Literal::Expr { expr: e, .. } | Literal::NotExpr { expr: e, .. } => self.expr(e),
                Literal::Every {
                    domain, query: q, ..
                } => {
                    self.expr(domain);
                    self.query(q);
                }
            }
            for w in &s.with_mods {
                // The target is written, not read; the indexes in it are read.
                if input_keys(&w.refr).is_some() {
                    self.indexes(&w.refr);
                } else {
                    self.expr(&w.refr);
                }
                self.expr(&w.r#as);
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        if self.through_alias(e) {
            return;
        }
        if let Some(keys) = input_keys(e) {
            self.n.add(&keys);
            self.indexes(e);
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
                items.iter().for_each(|i| self.expr(i));
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k);
                    self.expr(v);
                }
            }
            Expr::ArrayCompr { term, query: q, .. } | Expr::SetCompr { term, query: q, .. } => {
                self.expr(term);
                self.query(q);
            }
            Expr::ObjectCompr {
                key,
                value,
                query: q,
                ..
            } => {
                self.expr(key);
                self.expr(value);
                self.query(q);
            }
            Expr::Call { fcn, params, .. } => {
                self.expr(fcn);
                params.iter().for_each(|p| self.expr(p));
            }
            Expr::UnaryExpr { expr: inner, .. } => self.expr(inner),
            Expr::RefDot { refr, .. } => self.expr(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.expr(refr);
                self.expr(index);
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => self.membership(key.as_deref(), value, collection),
        }
    }

    /// `key, value in collection` (a `some … in` or a membership test).
    fn membership(&mut self, key: Option<&Expr>, value: &Expr, collection: &Expr) {
        if let Some(k) = key {
            self.expr(k);
        }
        self.expr(value);
        self.expr(collection);
    }
}

/// `e` as a reference into `input`: the keys up to the first one that is not a constant
/// string (the reference's indexes are read on their own: [`Walk::indexes`]).
fn input_keys(e: &Expr) -> Option<Vec<String>> {
    ref_keys(e)
        .filter(|(root, _, _)| root == "input")
        .map(|(_, keys, _)| keys)
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
        // An import of a part, followed: reads through its name are reads of that part
        // (OPA-Envoy's examples: `import input.attributes.request.http as http_request`).
        assert_eq!(
            reads(
                "package p\nimport input.attributes.request.http as h\nallow if h.method == \"GET\""
            ),
            tree(&["attributes.request.http.method"])
        );
        assert_eq!(
            reads(
                "package p\nimport input.attributes.request.http\nallow if { http.headers[\"x-a\"] == \"1\"; input.parsed_path[0] == \"api\" }"
            ),
            tree(&["attributes.request.http.headers.x-a", "parsed_path"])
        );
        // Its name alone, by a key that is not constant, passed on, iterated, a local of the
        // same name: the part whole (from where the constant keys stop).
        for (rego, part) in [
            ("allow if count(h) > 1", "attributes.request.http"),
            ("allow if walk(h, [p, v])", "attributes.request.http"),
            (
                "allow if { some k; h.headers[k] == \"x\" }",
                "attributes.request.http.headers",
            ),
            (
                "allow if { some x in h.headers; x }",
                "attributes.request.http.headers",
            ),
            ("x := h\nallow if x.method", "attributes.request.http"),
            (
                "f(h) := h.method\nallow if f({})",
                "attributes.request.http",
            ),
            (
                "allow if { h := {\"method\": 1}; h.method }",
                "attributes.request.http",
            ),
        ] {
            let n = reads(&format!(
                "package p\nimport input.attributes.request.http as h\n{rego}"
            ));
            assert!(
                n.get("attributes")
                    .and_then(|n| n.get("request"))
                    .and_then(|n| n.get("http"))
                    .is_some(),
                "{rego}: {n:?}"
            );
            let mut want = tree(&[part]);
            want.merge(&n);
            assert_eq!(want, n, "{rego}: {part} whole, in {n:?}");
        }
        // regorus resolves an import's name in every module of its package: a read there is
        // followed too; in another package the name is not the import.
        let mut engine = regorus::Engine::new();
        for (file, rego) in [
            (
                "a.rego",
                "package p\nimport input.attributes.request.http as h\nallow if true",
            ),
            ("b.rego", "package p\nok if h.method == \"GET\""),
            ("c.rego", "package q\nh := {\"path\": 1}\nok if h.path"),
        ] {
            engine.add_policy(file.into(), rego.into()).unwrap();
        }
        assert_eq!(
            Needs::of_rego(engine.get_modules()),
            tree(&["attributes.request.http.method"])
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

    /// What `modules` read when `entry` (a dotted path below `data`) is evaluated.
    fn reads_at(modules: &[&str], entry: &str) -> Needs {
        let mut engine = regorus::Engine::new();
        for (i, m) in modules.iter().enumerate() {
            engine
                .add_policy(format!("m{i}.rego"), (*m).into())
                .expect("the test policy parses");
        }
        let entry: Vec<String> = entry.split('.').map(str::to_string).collect();
        RegoReads::of(engine.get_modules()).at(&entry)
    }

    #[test]
    fn reads_through_an_alias_of_an_input_part_are_reads_of_that_part() {
        let p = "package p\nhttp := input.attributes.request.http\n";
        // By its name in its package, or by its path from anywhere: what is read below it.
        assert_eq!(
            reads_at(
                &[
                    &format!("{p}allow if http.method == \"GET\"\nallow if http.headers[\"x-a\"]"),
                    "package q\nok if data.p.http.headers.authorization\nok if data.p.allow",
                ],
                "p.allow"
            ),
            tree(&[
                "attributes.request.http.method",
                "attributes.request.http.headers.x-a",
                "attributes.request.http.headers.authorization",
            ])
        );
        // Nothing read through it: nothing of it built.
        assert_eq!(
            reads_at(&[&format!("{p}allow := true")], "p.allow"),
            Needs::nothing()
        );
        // Whatever takes the alias whole, or could, reads its part whole.
        for whole in [
            // The alias itself, a key that is not constant, an argument, an iteration.
            "allow if count(http) > 1",
            "allow if http[k] == 1",
            "allow if object.get(http, \"method\", \"\") == \"GET\"",
            "allow if { some k, v in http; v == k }",
            // The package or `data` read whole or with a key that is not constant.
            "allow if count(data.p) > 1",
            "allow if data.p[k] == 1",
            "allow if walk(data, [_, _])",
            "allow if data[k]",
        ] {
            let n = reads_at(&[&format!("{p}{whole}")], "p.allow");
            assert_eq!(n, tree(&["attributes.request.http"]), "{whole}");
        }
        // Evaluating the package (or the alias) returns the alias's value: its part whole.
        for entry in ["p", "p.http", "p.http.method"] {
            assert_eq!(
                reads_at(&[&format!("{p}allow if http.method")], entry),
                tree(&["attributes.request.http"]),
                "{entry}"
            );
        }
        // An import of the package or the alias: its name reads anything of it.
        for import in ["import data.p", "import data.p.http", "import data.p as pp"] {
            assert_eq!(
                reads_at(
                    &[
                        &format!("{p}allow if http.method"),
                        &format!("package q\n{import}\nok if true"),
                    ],
                    "p.allow"
                ),
                tree(&["attributes.request.http"]),
                "{import}"
            );
        }
        // Not an alias: a rule with a body, a default, two definitions, a part under it
        // declared as a package, a value that is not only a constant reference into `input`.
        for not_alias in [
            "package p\nhttp := input.attributes.request.http if true\nallow if http.method",
            "package p\ndefault http := {}\nhttp := input.attributes.request.http\nallow if http.method",
            "package p\nhttp := input.attributes.request.http\nhttp := input.x\nallow if http.method",
            "package p\nhttp := input.attributes.request[k]\nallow if http.method",
        ] {
            let n = reads_at(&[not_alias], "p.allow");
            assert!(
                n.get("attributes")
                    .and_then(|a| a.get("request"))
                    .is_some_and(|r| r.get("http").is_some_and(Needs::is_whole) || r.is_whole()),
                "{not_alias}: {n:?}"
            );
        }
        let n = reads_at(
            &[
                &format!("{p}allow if http.method"),
                "package p.http\nx := 1",
            ],
            "p.allow",
        );
        assert_eq!(n, tree(&["attributes.request.http"]));
        // The same name in another package is its own.
        assert_eq!(
            reads_at(
                &[
                    &format!("{p}allow if http.method"),
                    "package q\nhttp := {\"a\": 1}\nok if http.a",
                ],
                "p.allow"
            ),
            tree(&["attributes.request.http.method"])
        );
    }

    #[test]
    fn the_reference_policy_reads_a_few_fields_through_its_alias() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/envoy/authz.rego"
        ))
        .unwrap();
        assert_eq!(
            reads_at(&[&text], "envoy.authz.allow"),
            tree(&[
                "attributes.request.http.method",
                "attributes.request.http.headers.x-tenant-id",
                "attributes.request.http.headers.authorization",
                "attributes.source.principal",
                "parsed_path"
            ])
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
