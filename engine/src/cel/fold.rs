//! `data`'s selections read once per data document, not once per request.
//!
//! `data` is bound when the policies are compiled and again at each data write
//! ([`super::CelPolicies::with_data`]), never per request: `data.authz.principals` has the same
//! value on every evaluation until the next write. The reference policy reads
//! `data.authz.principals` four times and `data.authz.roles` twice per grant, each read a
//! variable look-up and two hash look-ups. Folding replaces each selection of `data` by
//! constant field names with a variable of the root context bound to the value the data has
//! there, found once, when the data is bound.
//!
//! Only what the data has is folded: the longest prefix of a selection whose every field is a
//! key of a map (`data.authz.missing.x` becomes `@dataN.missing.x`, which fails as the
//! selection did). A `data` bound by a comprehension (`m.exists(data, data.x)`, `cel.bind`) is
//! not the document and is left alone. `has(data.a.b)` tests `b` on the folded `data.a`. The
//! folded value is the same value (maps and lists share their entries with `data`'s), so every
//! operation on it answers as before; an evaluation takes fewer steps against its cost limit.
//!
//! A map literal of constants (`{"secret": data.authz.jwt.secret, "aud": "shop"}`) is made
//! once the same way: evaluated when the data is bound, as it would be on each request; one
//! whose evaluation fails (a key the data lacks, a duplicate key) is left to fail there, and
//! one holding a map or list of the document's (a copy of that part) is not made.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::common::traits::Indexer;
use cel::common::types::{CelList, CelMap, CelString};
use cel::common::value::Val;
use cel::{Context, Value as CelValue};

/// The variables folding introduced: each one's selection of `data` (none for a map literal
/// made once), name, and the value it is bound to.
#[derive(Default)]
pub(super) struct Folds {
    variables: Vec<Folded>,
}

struct Folded {
    path: Option<Vec<String>>,
    name: String,
    value: Box<dyn Val>,
}

impl Folds {
    /// The variable for the selection `path` of `data`, introduced if new.
    fn name_for(&mut self, path: &[&str], value: Box<dyn Val>) -> String {
        let same = |p: &Vec<String>| p.iter().map(String::as_str).eq(path.iter().copied());
        match self
            .variables
            .iter()
            .find(|v| v.path.as_ref().is_some_and(same))
        {
            Some(v) => v.name.clone(),
            None => self.add(Some(path.iter().map(|s| (*s).to_string()).collect()), value),
        }
    }

    /// A variable for a map literal made once (each literal its own).
    fn name_for_literal(&mut self, value: Box<dyn Val>) -> String {
        self.add(None, value)
    }

    fn add(&mut self, path: Option<Vec<String>>, value: Box<dyn Val>) -> String {
        // `@` starts no identifier a policy can write (cel.block's slots are `@index…`).
        let name = format!("@data{}", self.variables.len());
        self.variables.push(Folded {
            path,
            name: name.clone(),
            value,
        });
        name
    }

    /// The variables to bind in the root context, beside `data`.
    pub(super) fn into_variables(self) -> impl Iterator<Item = (String, Box<dyn Val>)> {
        self.variables.into_iter().map(|v| (v.name, v.value))
    }
}

/// What folding reads: the bound document, and the root context it is bound in (which
/// evaluates a literal of constants, [`is_constant`]).
pub(super) struct Bound<'r> {
    pub data: &'r (dyn Val + 'static),
    pub root: &'r Context<'static, 'static>,
}

/// `e` with its selections of `data`, and its map literals of constants, folded against the
/// bound document.
pub(super) fn fold(e: &IdedExpr, bound: &Bound<'_>, folds: &mut Folds) -> IdedExpr {
    let mut e = e.clone();
    walk(&mut e, bound, false, folds);
    e
}

/// Whether `e` has the same value on every evaluation against `data`, and is small to make
/// once: a literal, a selection of `data` by field names that reaches a value other than a
/// map or a list (a map literal holding `data.authz.principals` would be a copy of the whole
/// document's part), or a map or list literal of such (no optional entries). No call is: a
/// function may read the clock or the request.
fn is_constant(e: &IdedExpr, data: &(dyn Val + 'static)) -> bool {
    match &e.expr {
        Expr::Literal(_) => true,
        Expr::Select(_) => data_path(e).is_some_and(|path| {
            resolve(data, &path).is_some_and(|(depth, value)| {
                depth == path.len()
                    && value.downcast_ref::<CelMap>().is_none()
                    && value.downcast_ref::<CelList>().is_none()
            })
        }),
        Expr::List(l) => {
            l.optional_indices.is_empty() && l.elements.iter().all(|x| is_constant(x, data))
        }
        Expr::Map(m) => m.entries.iter().all(|en| match &en.expr {
            EntryExpr::MapEntry(me) => {
                !me.optional && is_constant(&me.key, data) && is_constant(&me.value, data)
            }
            EntryExpr::StructField(_) => false,
        }),
        _ => false,
    }
}

/// The fields of `e` when it is a selection chain on the identifier `data` (`data.a.b`:
/// `["a", "b"]`), outermost last; `None` for anything else, `data` alone included.
fn data_path(e: &IdedExpr) -> Option<Vec<&str>> {
    let mut fields = Vec::new();
    let mut at = e;
    loop {
        match &at.expr {
            Expr::Select(s) if !s.test => {
                fields.push(s.field.as_str());
                at = &s.operand;
            }
            Expr::Ident(name) if name == "data" && !fields.is_empty() => {
                fields.reverse();
                return Some(fields);
            }
            _ => return None,
        }
    }
}

/// The value at the longest prefix of `path` that `data` has, with that prefix's length.
fn resolve(data: &(dyn Val + 'static), path: &[&str]) -> Option<(usize, Box<dyn Val>)> {
    let mut found: Option<Box<dyn Val>> = None;
    let mut depth = 0;
    for field in path {
        let here: &(dyn Val + 'static) = found.as_deref().unwrap_or(data);
        // Only a map's key: a message's field, a list or a scalar is left to the interpreter.
        let Some(map) = here.downcast_ref::<CelMap>() else {
            break;
        };
        let key = CelString::from((*field).to_string());
        let Ok(value) = map.get(&key) else {
            break;
        };
        found = Some(value.into_owned());
        depth += 1;
    }
    found.map(|v| (depth, v))
}

fn walk(e: &mut IdedExpr, bound: &Bound<'_>, shadowed: bool, folds: &mut Folds) {
    let data = bound.data;
    // A map literal of constants (`{"secret": data.jwt.secret, "aud": "shop"}`) is made once:
    // evaluated here, as it would be on each request; one that fails is left to fail there.
    if !shadowed
        && matches!(e.expr, Expr::Map(_))
        && is_constant(e, data)
        && let Some(value) = CelValue::resolve(e, bound.root)
            .ok()
            .and_then(|v| Box::<dyn Val>::try_from(v).ok())
    {
        e.expr = Expr::Ident(folds.name_for_literal(value));
        return;
    }
    let chain = data_path(e).map(|path| {
        let folded = (!shadowed)
            .then(|| resolve(data, &path))
            .flatten()
            .map(|(depth, value)| (depth, folds.name_for(&path[..depth], value)));
        (path.len(), folded)
    });
    if let Some((len, folded)) = chain {
        let Some((depth, name)) = folded else {
            return;
        };
        // The node of the folded prefix: `len - depth` selections below `e`.
        let mut at = e;
        for _ in depth..len {
            let Expr::Select(s) = &mut at.expr else {
                return;
            };
            at = &mut s.operand;
        }
        at.expr = Expr::Ident(name);
        return;
    }
    match &mut e.expr {
        Expr::Call(c) => {
            if let Some(t) = c.target.as_deref_mut() {
                walk(t, bound, shadowed, folds);
            }
            for a in &mut c.args {
                walk(a, bound, shadowed, folds);
            }
        }
        Expr::Comprehension(c) => {
            // The range and the accumulator's start are read outside the loop's variables.
            walk(&mut c.iter_range, bound, shadowed, folds);
            walk(&mut c.accu_init, bound, shadowed, folds);
            let inner = shadowed
                || c.iter_var == "data"
                || c.iter_var2.as_deref() == Some("data")
                || c.accu_var == "data";
            walk(&mut c.loop_cond, bound, inner, folds);
            walk(&mut c.loop_step, bound, inner, folds);
            walk(&mut c.result, bound, inner, folds);
        }
        Expr::List(l) => {
            for x in &mut l.elements {
                walk(x, bound, shadowed, folds);
            }
        }
        Expr::Map(m) => {
            for en in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut en.expr {
                    walk(&mut me.key, bound, shadowed, folds);
                    walk(&mut me.value, bound, shadowed, folds);
                }
            }
        }
        Expr::Struct(s) => {
            for en in &mut s.entries {
                match &mut en.expr {
                    EntryExpr::StructField(f) => walk(&mut f.value, bound, shadowed, folds),
                    EntryExpr::MapEntry(me) => {
                        walk(&mut me.key, bound, shadowed, folds);
                        walk(&mut me.value, bound, shadowed, folds);
                    }
                }
            }
        }
        Expr::Select(s) => walk(&mut s.operand, bound, shadowed, folds),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}
