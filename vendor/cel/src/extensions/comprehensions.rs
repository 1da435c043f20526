//! arbiter patch 2: `cel.bind` (cel-go's `ext.Bindings()`) and the two-variable
//! comprehensions (cel-go's `ext.TwoVarComprehensions()`): `all`, `exists` and
//! `existsOne` with an index (or key) and a value, `transformList`,
//! `transformMap` and `transformMapEntry`. The macros expand, as cel-go's do,
//! into comprehensions whose `iter_var2` the interpreter binds: over a list,
//! the first variable is the index and the second the element; over a map,
//! the key and its value.

use crate::common::ast::operators;
use crate::common::ast::{
    CallExpr, ComprehensionExpr, Expr, IdedExpr, ListExpr, LiteralValue, MapExpr,
};
use crate::common::types::{CelMap, CelMapKey, Kind, DYN_TYPE, MAP_TYPE};
use crate::common::value::{Builtin, CowVal, Val};
use crate::parser::{Macro, MacroExprHelper, ParseError};
use crate::{DeclarationError, Env, ExecutionError};

/// The accumulator of the macros here, as cel-go names it.
const RESULT: &str = "@result";

/// The internal function `transformMap` and `transformMapEntry` build their
/// result with: named so that CEL can't call it.
const MAP_INSERT: &str = "cel.@mapInsert";

/// Registers `cel.bind`.
pub fn bindings(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_macro(Macro::receiver("bind", 3, bind))
}

// arbiter patch 7
/// Registers `cel.block` (cel-go's `ext.Bindings(ext.BindingsVersion(1))` block, the form
/// cel-go's common-subexpression optimizer writes): `cel.block([e0, e1, …], result)`
/// evaluates `result` with `cel.index(i)` bound to `ei`, where `ei` may read the slots
/// before it; `cel.iterVar(i, j)` and `cel.accuVar(i, j)` name the variables of the
/// optimizer's comprehensions. All four expand when parsed: the slots to nested `cel.bind`s
/// of the names `@index0`, `@index1`, …, the variables to `@it:i:j` and `@ac:i:j`, which no
/// expression can write. A slot is evaluated once, before the slots after it (cel-go
/// evaluates a slot lazily, on its first use: a slot that fails and is never used fails
/// here).
pub fn block(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_macro(Macro::receiver("block", 2, block_macro))?;
    env.add_macro(Macro::receiver("index", 1, |h, t, a| {
        block_name(h, t, a, "@index")
    }))?;
    env.add_macro(Macro::receiver("iterVar", 2, |h, t, a| {
        block_name(h, t, a, "@it")
    }))?;
    env.add_macro(Macro::receiver("accuVar", 2, |h, t, a| {
        block_name(h, t, a, "@ac")
    }))?;
    Ok(())
}

fn is_cel(target: &Option<IdedExpr>) -> bool {
    matches!(target.as_ref().map(|t| &t.expr), Some(Expr::Ident(ns)) if ns == "cel")
}

/// `cel.index(i)` as `@index<i>`, `cel.iterVar(i, j)` as `@it:i:j`, `cel.accuVar(i, j)` as
/// `@ac:i:j`: the arguments must be non-negative int literals.
fn block_name(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
    prefix: &str,
) -> Result<Option<IdedExpr>, ParseError> {
    if !is_cel(target) {
        return Ok(None);
    }
    let mut numbers = Vec::with_capacity(args.len());
    for arg in args.iter() {
        match &arg.expr {
            Expr::Literal(LiteralValue::Int(i)) if *i.inner() >= 0 => numbers.push(*i.inner()),
            _ => {
                return Err(helper.new_error(
                    arg.id,
                    format!("cel.{} takes non-negative int literals", &prefix[1..]),
                ))
            }
        }
    }
    let name = match numbers.as_slice() {
        [i] => format!("{prefix}{i}"),
        [i, j] => format!("{prefix}:{i}:{j}"),
        _ => return Err(helper.new_error(0, "wrong number of arguments")),
    };
    Ok(Some(helper.next_expr(Expr::Ident(name))))
}

/// `cel.block([e0, …, en], result)` as `cel.bind(@index0, e0, … cel.bind(@indexn, en,
/// result))`.
fn block_macro(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, ParseError> {
    if !is_cel(target) {
        return Ok(None);
    }
    let [slots, result]: [IdedExpr; 2] = std::mem::take(args)
        .try_into()
        .map_err(|_| helper.new_error(0, "cel.block takes two arguments"))?;
    let Expr::List(list) = slots.expr else {
        return Err(helper.new_error(slots.id, "cel.block requires a list of expressions"));
    };
    let mut body = result;
    for (i, slot) in list.elements.into_iter().enumerate().rev() {
        let name = format!("@index{i}");
        let bind = ComprehensionExpr {
            iter_range: helper.next_expr(Expr::List(ListExpr::new(Vec::new()))),
            iter_var: "#unused".to_owned(),
            iter_var2: None,
            accu_var: name.clone(),
            accu_init: slot,
            loop_cond: literal(helper, LiteralValue::Boolean(false.into())),
            loop_step: helper.next_expr(Expr::Ident(name)),
            result: body,
        };
        body = helper.next_expr(Expr::Comprehension(Box::new(bind)));
    }
    Ok(Some(body))
}

/// Registers the two-variable comprehensions and the function they use.
pub fn two_var_comprehensions(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_macro(Macro::receiver("all", 3, |h, t, a| {
        quantifier(h, t, a, Quantifier::All)
    }))?;
    env.add_macro(Macro::receiver("exists", 3, |h, t, a| {
        quantifier(h, t, a, Quantifier::Exists)
    }))?;
    env.add_macro(Macro::receiver("existsOne", 3, |h, t, a| {
        quantifier(h, t, a, Quantifier::ExistsOne)
    }))?;
    env.add_macro(Macro::receiver("exists_one", 3, |h, t, a| {
        quantifier(h, t, a, Quantifier::ExistsOne)
    }))?;
    for (name, kind) in [
        ("transformList", Transform::List),
        ("transformMap", Transform::Map),
        ("transformMapEntry", Transform::MapEntry),
    ] {
        for count in [3, 4] {
            env.add_macro(Macro::receiver(name, count, move |h, t, a| {
                transform(h, t, a, kind)
            }))?;
        }
    }
    env.add_overload(
        MAP_INSERT,
        "cel_@mapInsert_map_key_value",
        vec![MAP_TYPE, DYN_TYPE, DYN_TYPE],
        map_insert,
    )?;
    env.add_overload(
        MAP_INSERT,
        "cel_@mapInsert_map_map",
        vec![MAP_TYPE, MAP_TYPE],
        map_insert,
    )?;
    Ok(())
}

fn ident(helper: &mut MacroExprHelper<'_>, expr: &IdedExpr) -> Result<String, ParseError> {
    match &expr.expr {
        Expr::Ident(name) => Ok(name.clone()),
        _ => Err(helper.new_error(expr.id, "argument must be a simple name")),
    }
}

fn call(helper: &mut MacroExprHelper<'_>, func: &str, args: Vec<IdedExpr>) -> IdedExpr {
    helper.next_expr(Expr::Call(CallExpr {
        func_name: func.to_owned(),
        target: None,
        args,
    }))
}

fn result(helper: &mut MacroExprHelper<'_>) -> IdedExpr {
    helper.next_expr(Expr::Ident(RESULT.to_owned()))
}

fn literal(helper: &mut MacroExprHelper<'_>, value: LiteralValue) -> IdedExpr {
    helper.next_expr(Expr::Literal(value))
}

/// `cel.bind(name, init, expr)`: `expr` with `name` bound to `init`, evaluated
/// once. A comprehension over nothing whose accumulator is `name`. Declines
/// any target but `cel`.
fn bind(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, ParseError> {
    if !matches!(target.as_ref().map(|t| &t.expr), Some(Expr::Ident(ns)) if ns == "cel") {
        return Ok(None);
    }
    let [var, init, expr]: [IdedExpr; 3] = std::mem::take(args)
        .try_into()
        .map_err(|_| helper.new_error(0, "cel.bind takes three arguments"))?;
    let name = ident(helper, &var)?;
    let bind = ComprehensionExpr {
        iter_range: helper.next_expr(Expr::List(ListExpr::new(Vec::new()))),
        iter_var: "#unused".to_owned(),
        iter_var2: None,
        accu_var: name.clone(),
        accu_init: init,
        loop_cond: literal(helper, LiteralValue::Boolean(false.into())),
        loop_step: helper.next_expr(Expr::Ident(name)),
        result: expr,
    };
    Ok(Some(helper.next_expr(Expr::Comprehension(Box::new(bind)))))
}

/// The two iteration variables of a two-variable macro, checked as cel-go
/// checks them.
fn two_vars(
    helper: &mut MacroExprHelper<'_>,
    first: &IdedExpr,
    second: &IdedExpr,
) -> Result<(String, String), ParseError> {
    let (a, b) = (ident(helper, first)?, ident(helper, second)?);
    if a == b {
        return Err(helper.new_error(second.id, &format!("duplicate variable name: {b}")));
    }
    for (name, at) in [(&a, first.id), (&b, second.id)] {
        if name == RESULT {
            return Err(helper.new_error(
                at,
                &format!("iteration variable overwrites accumulator variable: {name}"),
            ));
        }
    }
    Ok((a, b))
}

#[derive(Clone, Copy)]
enum Quantifier {
    All,
    Exists,
    ExistsOne,
}

fn quantifier(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
    kind: Quantifier,
) -> Result<Option<IdedExpr>, ParseError> {
    let Some(range) = target.take() else {
        return Ok(None);
    };
    let [first, second, predicate]: [IdedExpr; 3] = std::mem::take(args)
        .try_into()
        .map_err(|_| helper.new_error(range.id, "expected three arguments"))?;
    let (iter_var, iter_var2) = two_vars(helper, &first, &second)?;
    let (init, cond, step, result_expr) = match kind {
        Quantifier::All => {
            let init = literal(helper, LiteralValue::Boolean(true.into()));
            let accu = result(helper);
            let cond = call(helper, operators::NOT_STRICTLY_FALSE, vec![accu]);
            let accu = result(helper);
            let step = call(helper, operators::LOGICAL_AND, vec![accu, predicate]);
            (init, cond, step, result(helper))
        }
        Quantifier::Exists => {
            let init = literal(helper, LiteralValue::Boolean(false.into()));
            let accu = result(helper);
            let not = call(helper, operators::LOGICAL_NOT, vec![accu]);
            let cond = call(helper, operators::NOT_STRICTLY_FALSE, vec![not]);
            let accu = result(helper);
            let step = call(helper, operators::LOGICAL_OR, vec![accu, predicate]);
            (init, cond, step, result(helper))
        }
        Quantifier::ExistsOne => {
            let init = literal(helper, LiteralValue::Int(0.into()));
            let cond = literal(helper, LiteralValue::Boolean(true.into()));
            let (accu, one) = (result(helper), literal(helper, LiteralValue::Int(1.into())));
            let plus = call(helper, operators::ADD, vec![accu, one]);
            let accu = result(helper);
            let step = call(helper, operators::CONDITIONAL, vec![predicate, plus, accu]);
            let (accu, one) = (result(helper), literal(helper, LiteralValue::Int(1.into())));
            let result_expr = call(helper, operators::EQUALS, vec![accu, one]);
            (init, cond, step, result_expr)
        }
    };
    Ok(Some(helper.next_expr(Expr::Comprehension(Box::new(
        ComprehensionExpr {
            iter_range: range,
            iter_var,
            iter_var2: Some(iter_var2),
            accu_var: RESULT.to_owned(),
            accu_init: init,
            loop_cond: cond,
            loop_step: step,
            result: result_expr,
        },
    )))))
}

#[derive(Clone, Copy)]
enum Transform {
    List,
    Map,
    MapEntry,
}

/// `transformList(i, v, [filter,] expr)`, `transformMap(k, v, [filter,] expr)`
/// and `transformMapEntry(k, v, [filter,] entry)`.
fn transform(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
    kind: Transform,
) -> Result<Option<IdedExpr>, ParseError> {
    let Some(range) = target.take() else {
        return Ok(None);
    };
    let mut args = std::mem::take(args);
    let Some(expr) = args.pop() else {
        return Err(helper.new_error(range.id, "expected arguments"));
    };
    let filter = (args.len() == 3).then(|| args.pop()).flatten();
    let [first, second]: [IdedExpr; 2] = args
        .try_into()
        .map_err(|_| helper.new_error(range.id, "expected three or four arguments"))?;
    let (iter_var, iter_var2) = two_vars(helper, &first, &second)?;
    let (init, step) = match kind {
        Transform::List => {
            let init = helper.next_expr(Expr::List(ListExpr::new(Vec::new())));
            let accu = result(helper);
            let item = helper.next_expr(Expr::List(ListExpr::new(vec![expr])));
            (init, call(helper, operators::ADD, vec![accu, item]))
        }
        Transform::Map => {
            let init = helper.next_expr(Expr::Map(MapExpr {
                entries: Vec::new(),
            }));
            let accu = result(helper);
            let key = helper.next_expr(Expr::Ident(iter_var.clone()));
            (init, call(helper, MAP_INSERT, vec![accu, key, expr]))
        }
        Transform::MapEntry => {
            let init = helper.next_expr(Expr::Map(MapExpr {
                entries: Vec::new(),
            }));
            let accu = result(helper);
            (init, call(helper, MAP_INSERT, vec![accu, expr]))
        }
    };
    let step = match filter {
        Some(filter) => {
            let accu = result(helper);
            call(helper, operators::CONDITIONAL, vec![filter, step, accu])
        }
        None => step,
    };
    let cond = literal(helper, LiteralValue::Boolean(true.into()));
    let result_expr = result(helper);
    Ok(Some(helper.next_expr(Expr::Comprehension(Box::new(
        ComprehensionExpr {
            iter_range: range,
            iter_var,
            iter_var2: Some(iter_var2),
            accu_var: RESULT.to_owned(),
            accu_init: init,
            loop_cond: cond,
            loop_step: step,
            result: result_expr,
        },
    )))))
}

/// `cel.@mapInsert(map, key, value)`: `map` with `key` set to `value`; and
/// `cel.@mapInsert(map, entries)`: `map` with the entries of the map
/// `entries`. A key already in `map` is an error, as in cel-go.
fn map_insert<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut args = args.into_iter();
    let Some(map) = args.next() else {
        return Err(ExecutionError::invalid_argument_count(2, 0));
    };
    let mut entries = entries_of(map)?;
    let mut insert = |key: CelMapKey<'v>, value: Box<dyn Val + 'v>| {
        if entries.contains_key(&key) {
            return Err(ExecutionError::function_error(
                "transformMap",
                format!("insert failed: key {:?} already exists", key),
            ));
        }
        entries.insert(key, value);
        Ok(())
    };
    match (args.next(), args.next()) {
        (Some(key), Some(value)) => insert(key.try_into()?, value.into_owned())?,
        (Some(more), None) => {
            for (key, value) in entries_of(more)? {
                insert(key, value)?;
            }
        }
        _ => return Err(ExecutionError::invalid_argument_count(3, 1)),
    }
    Ok(CowVal::owned(CelMap::from(entries)))
}

/// The entries of a map: moved out of an owned `CelMap`, copied otherwise.
fn entries_of<'v>(
    map: CowVal<'_, 'v>,
) -> Result<crate::common::types::CelMapEntries<'v>, ExecutionError> {
    let not_a_map = |got: &dyn Val| ExecutionError::UnexpectedType {
        got: got.get_type().name().to_owned(),
        want: "map".to_owned(),
    };
    let map = match map {
        CowVal::Owned(owned) => match crate::common::types::into_builtin(owned) {
            Ok(Builtin::Map(map)) => return Ok(map.into_inner()),
            Ok(other) => CowVal::Owned(other.into_boxed()),
            Err(other) => CowVal::Owned(other),
        },
        borrowed => borrowed,
    };
    let map = map.as_ref();
    if map.get_type().kind() != Kind::Map {
        return Err(not_a_map(map));
    }
    let (Some(keys), Some(indexer)) = (map.as_iterable(), map.as_indexer()) else {
        return Err(not_a_map(map));
    };
    let mut entries = crate::common::types::cel_map_entries(0);
    let mut keys = keys.iter();
    while let Some(key) = keys.next() {
        let value = indexer.get(key)?.into_owned();
        let key: CelMapKey<'v> = CowVal::Owned(key.clone_as_boxed()).try_into()?;
        entries.insert(key, value);
    }
    Ok(entries)
}
