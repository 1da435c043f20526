//! `array.flatten` (OPA 1.x, newer than 1.7.1): one level of nested arrays spliced in place.

use regorus::Value;

use super::Registrar;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("array.flatten", 1, |a| match a.first() {
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items.iter() {
                match item {
                    Value::Array(inner) => out.extend(inner.iter().cloned()),
                    other => out.push(other.clone()),
                }
            }
            Ok(Value::from(out))
        }
        Some(other) => anyhow::bail!(
            "operand 1 must be array but got {}",
            crate::decision::type_name(other)
        ),
        None => anyhow::bail!("missing operand 1"),
    });
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    #[test]
    fn one_level_is_spliced() {
        // OPA's suite, array/flatten.
        assert_eq!(
            eval(r#"array.flatten([[1], [[2, 3], 4], "s", {"a": "b"}])"#).unwrap(),
            json!([1, [2, 3], 4, "s", {"a": "b"}])
        );
        assert_eq!(eval("array.flatten([])").unwrap(), json!([]));
        let e = eval("array.flatten(1)").unwrap_err().to_string();
        assert!(
            e.contains("array.flatten: operand 1 must be array but got number"),
            "{e}"
        );
    }
}
