//! CEL's sets extension, as cel-go names it (`ext.Sets()`): `sets.contains(list, sublist)`,
//! `sets.equivalent(a, b)` and `sets.intersects(a, b)`, over lists as sets, with CEL's
//! equality (`1`, `1u` and `1.0` are one element). Kyverno's and Kubernetes' CEL users write
//! them for role and group checks: `sets.intersects(identity.groups, ["admins", "oncall"])`.

use cel::common::types::{CelBool, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

/// Registers the three functions on `env`.
pub fn extension(env: &mut Env) -> Result<(), DeclarationError> {
    let lists = || vec![LIST_TYPE, LIST_TYPE];
    env.add_overload(
        "sets.contains",
        "list_sets_contains_list",
        lists(),
        contains,
    )?;
    env.add_overload(
        "sets.equivalent",
        "list_sets_equivalent_list",
        lists(),
        equivalent,
    )?;
    env.add_overload(
        "sets.intersects",
        "list_sets_intersects_list",
        lists(),
        intersects,
    )?;
    Ok(())
}

/// The elements of a list argument, borrowed.
fn elements<'b, 'v>(list: &'b (dyn Val + 'v)) -> Result<Vec<&'b (dyn Val + 'v)>, ExecutionError> {
    let iterable = list
        .as_iterable()
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: list.get_type().name().to_owned(),
            want: "list".to_owned(),
        })?;
    let mut items = iterable.iter();
    let mut out = Vec::new();
    while let Some(item) = items.next() {
        out.push(item);
    }
    Ok(out)
}

fn two<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<[CowVal<'b, 'v>; 2], ExecutionError> {
    args.try_into()
        .map_err(|args: Vec<_>| ExecutionError::invalid_argument_count(2, args.len()))
}

/// Whether every element of `sub` equals some element of `of`.
fn all_in(sub: &[&dyn Val], of: &[&dyn Val]) -> bool {
    sub.iter().all(|x| of.iter().any(|y| x.equals(*y)))
}

fn boolean<'b, 'v>(b: bool) -> CowVal<'b, 'v> {
    CowVal::Borrowed(CelBool::of(b))
}

fn contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list, sub] = two(args)?;
    let (list, sub) = (elements(list.as_ref())?, elements(sub.as_ref())?);
    Ok(boolean(all_in(&sub, &list)))
}

fn equivalent<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [a, b] = two(args)?;
    let (a, b) = (elements(a.as_ref())?, elements(b.as_ref())?);
    Ok(boolean(all_in(&a, &b) && all_in(&b, &a)))
}

fn intersects<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [a, b] = two(args)?;
    let (a, b) = (elements(a.as_ref())?, elements(b.as_ref())?);
    Ok(boolean(a.iter().any(|x| b.iter().any(|y| x.equals(*y)))))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    fn eval(expr: &str) -> cel::Value {
        let env = crate::cel::env();
        let program = env.compile(expr).unwrap();
        let ctx = cel::Context::with_env(Arc::new(env));
        program.execute(&ctx).unwrap()
    }

    /// cel-go's own examples (ext/sets.go), and CEL's equality across numeric types.
    #[test]
    fn sets_as_cel_go_answers() {
        for (expr, want) in [
            ("sets.contains([], [])", true),
            ("sets.contains([1, 2, 3, 4], [2, 3])", true),
            ("sets.contains([1, 2, 3], [3, 4])", false),
            ("sets.contains([1, 2u, 3.0], [1u, 2.0, 3])", true),
            ("sets.contains([[1], [2, 3]], [[2, 3.0]])", true),
            ("sets.contains([], [1])", false),
            ("sets.equivalent([], [])", true),
            ("sets.equivalent([1], [1, 1])", true),
            ("sets.equivalent([1], [1u, 1.0])", true),
            ("sets.equivalent([1, 2, 3], [3u, 2.0, 1])", true),
            ("sets.equivalent([2, 1], [1])", false),
            ("sets.intersects([1], [1])", true),
            ("sets.intersects([1], [1.0, 2])", true),
            ("sets.intersects([[1], [2, 3]], [[1, 2], [2, 3.0]])", true),
            ("sets.intersects([], [])", false),
            ("sets.intersects([1], [2])", false),
            ("sets.intersects(['a', 'b'], ['c', 'b'])", true),
        ] {
            assert_eq!(eval(expr), cel::Value::Bool(want), "{expr}");
        }
    }
}
