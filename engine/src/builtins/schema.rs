//! `json.verify_schema` and `json.match_schema`, as OPA answers them (OPA wraps gojsonschema:
//! its result shapes, error types and descriptions are kept here for the common keywords).
//! Schemas never load references from files or the network: nothing does I/O while deciding.

use std::cell::RefCell;
use std::sync::Arc;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use regorus::Value;
use serde_json::Value as Json;

use super::Registrar;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("json.verify_schema", 1, |a| {
        Ok(match schema_arg(&a[0]).and_then(|s| compile(&s)) {
            Ok(_) => Value::from(vec![Value::Bool(true), Value::Null]),
            Err(e) => Value::from(vec![
                Value::Bool(false),
                Value::from(format!("jsonschema: {e}")),
            ]),
        })
    });
    r.add("json.match_schema", 2, |a| {
        let document = schema_arg(&a[0])?;
        let schema = compile(&schema_arg(&a[1])?)?;
        let errors: Vec<Value> = schema
            .iter_errors(&document)
            .map(|e| {
                let field = field_name(e.instance_path().as_str());
                let (kind, desc) = describe(e.kind(), e.instance(), &field);
                crate::value::from_json(&serde_json::json!({
                    "error": format!("{field}: {desc}"),
                    "type": kind,
                    "field": field,
                    "desc": desc,
                }))
            })
            .collect();
        Ok(Value::from(vec![
            Value::Bool(errors.is_empty()),
            Value::from(errors),
        ]))
    });
}

/// A document or schema: an object, or a string holding JSON (OPA's loader).
fn schema_arg(v: &Value) -> anyhow::Result<Json> {
    match v {
        Value::String(s) => {
            serde_json::from_str(s).map_err(|_| anyhow::anyhow!("invalid JSON string"))
        }
        Value::Object(_) => Ok(crate::value::to_json(v)),
        _ => anyhow::bail!("wrong type, expected string or object"),
    }
}

thread_local! {
    /// Compiled schemas by their text: a policy checks every request against the same few.
    static COMPILED: RefCell<Vec<(String, Arc<jsonschema::Validator>)>> = const { RefCell::new(Vec::new()) };
}

const CACHED: usize = 16;

fn compile(schema: &Json) -> anyhow::Result<Arc<jsonschema::Validator>> {
    let key = schema.to_string();
    if let Some(v) = COMPILED.with(|c| {
        c.borrow()
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    }) {
        return Ok(v);
    }
    if let Some(message) = invalid_type(schema) {
        anyhow::bail!("{message}");
    }
    let validator =
        Arc::new(jsonschema::validator_for(schema).map_err(|e| anyhow::anyhow!("{e}"))?);
    COMPILED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() == CACHED {
            c.remove(0);
        }
        c.push((key, validator.clone()));
    });
    Ok(validator)
}

/// The first `type` that is not a JSON Schema type name or a list of them: gojsonschema's own
/// checks, with its messages (a `type` that is not a string or a list of strings — its
/// "expected" and "given" as gojsonschema fills them in — or a name it does not know).
fn invalid_type(schema: &Json) -> Option<String> {
    const TYPES: [&str; 7] = [
        "array", "boolean", "integer", "number", "null", "object", "string",
    ];
    match schema {
        Json::Object(o) => {
            if let Some(t) = o.get("type") {
                let names: Vec<&Json> = match t {
                    Json::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                for n in names {
                    match n.as_str() {
                        None => {
                            return Some(
                                "Invalid type. Expected: type, given: string/Array Of Strings"
                                    .into(),
                            );
                        }
                        Some(s) if !TYPES.contains(&s) => {
                            return Some(format!(
                                "has a primitive type that is NOT VALID -- given: /{s}/ Expected valid values are:[array boolean integer number null object string]"
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
            o.iter()
                .filter(|(k, _)| k.as_str() != "enum" && k.as_str() != "const")
                .find_map(|(_, v)| invalid_type(v))
        }
        Json::Array(a) => a.iter().find_map(invalid_type),
        _ => None,
    }
}

/// gojsonschema's field name: `(Root)` (OPA's copy spells it so), or the path with dots (`a.b.0`).
fn field_name(pointer: &str) -> String {
    if pointer.is_empty() {
        return "(Root)".to_string();
    }
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

/// gojsonschema's name of a value's type.
fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Json::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// gojsonschema's error type and description for one failure.
fn describe(kind: &ValidationErrorKind, instance: &Json, field: &str) -> (&'static str, String) {
    use ValidationErrorKind as K;
    match kind {
        K::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => t.to_string(),
                TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            };
            (
                "invalid_type",
                format!(
                    "Invalid type. Expected: {expected}, given: {}",
                    json_type(instance)
                ),
            )
        }
        K::Required { property } => (
            "required",
            format!(
                "{} is required",
                property
                    .as_str()
                    .map_or_else(|| property.to_string(), str::to_string)
            ),
        ),
        K::Enum { options } => {
            let allowed: Vec<String> = options
                .as_array()
                .map(|a| a.iter().map(Json::to_string).collect())
                .unwrap_or_default();
            (
                "enum",
                format!(
                    "{field} must be one of the following: {}",
                    allowed.join(", ")
                ),
            )
        }
        K::Constant { expected_value } => {
            ("const", format!("{field} does not match: {expected_value}"))
        }
        K::Minimum { limit } => (
            "number_gte",
            format!("Must be greater than or equal to {limit}"),
        ),
        K::Maximum { limit } => (
            "number_lte",
            format!("Must be less than or equal to {limit}"),
        ),
        K::ExclusiveMinimum { limit } => ("number_gt", format!("Must be greater than {limit}")),
        K::ExclusiveMaximum { limit } => ("number_lt", format!("Must be less than {limit}")),
        K::MinLength { limit } => (
            "string_gte",
            format!("String length must be greater than or equal to {limit}"),
        ),
        K::MaxLength { limit } => (
            "string_lte",
            format!("String length must be less than or equal to {limit}"),
        ),
        K::Pattern { pattern } => ("pattern", format!("Does not match pattern '{pattern}'")),
        K::Format { format } => ("format", format!("Does not match format '{format}'")),
        K::MinItems { limit } => (
            "array_min_items",
            format!("Array must have at least {limit} items"),
        ),
        K::MaxItems { limit } => (
            "array_max_items",
            format!("Array must have at most {limit} items"),
        ),
        K::AdditionalProperties { unexpected } => (
            "additional_property_not_allowed",
            format!(
                "Additional property {} is not allowed",
                unexpected.join(", ")
            ),
        ),
        K::AnyOf { .. } => (
            "number_any_of",
            "Must validate at least one schema (anyOf)".into(),
        ),
        K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => (
            "number_one_of",
            "Must validate one and only one schema (oneOf)".into(),
        ),
        K::Not { .. } => ("number_not", "Must not validate the schema (not)".into()),
        K::FalseSchema => ("false", "False always fails validation".into()),
        other => ("invalid", format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    #[test]
    fn documents_match_schemas_as_in_opa() {
        // Answers from OPA's suite (jsonschema).
        let schema = r#"{"properties": {"id": {"type": "integer"}}, "required": ["id"]}"#;
        assert_eq!(
            eval(&format!(r#"json.match_schema({{"id": 5}}, {schema})"#)).unwrap(),
            json!([true, []])
        );
        assert_eq!(
            eval(&format!(r#"json.match_schema({{"id": "foo"}}, {schema})"#)).unwrap(),
            json!([false, [{
                "desc": "Invalid type. Expected: integer, given: string",
                "error": "id: Invalid type. Expected: integer, given: string",
                "field": "id",
                "type": "invalid_type"
            }]])
        );
        assert_eq!(
            eval(r#"json.verify_schema({"type": "unknown_type"})"#).unwrap(),
            json!([
                false,
                "jsonschema: has a primitive type that is NOT VALID -- given: /unknown_type/ Expected valid values are:[array boolean integer number null object string]"
            ])
        );
        assert_eq!(
            eval(r#"json.verify_schema(`{"type": "boolean"}`)"#).unwrap(),
            json!([true, null])
        );
    }
}
