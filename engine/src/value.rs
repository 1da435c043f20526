//! Conversions between JSON (`serde_json::Value`) and Rego values (`regorus::Value`).
//!
//! regorus's own `From<serde_json::Value>` turns a failure into `Undefined` silently, which would
//! make an `allow` rule quietly false or, worse, a `deny` rule quietly not fire. These
//! conversions are total instead.

use regorus::Value;
use serde_json::Value as Json;

/// JSON → Rego value. Never fails: every JSON value has a Rego value.
pub fn from_json(json: &Json) -> Value {
    from_json_with(json, &mut |s| Value::from(s))
}

/// Short strings a data document repeats (object keys such as `roles`, values such as role
/// names), each kept once: a value converted through one `Interner` shares them. Data for a
/// million identities repeats a handful of keys a million times each.
#[derive(Debug, Default)]
pub struct Interner {
    strings: std::collections::HashMap<Box<str>, Value>,
}

impl Interner {
    /// Strings longer than this are not shared (identifiers, not names).
    const MAX_LEN: usize = 32;
    /// At most this many distinct strings are kept; later ones are not shared.
    const MAX_ENTRIES: usize = 1 << 16;

    fn get(&mut self, s: &str) -> Value {
        if s.len() > Self::MAX_LEN {
            return Value::from(s);
        }
        if let Some(v) = self.strings.get(s) {
            return v.clone();
        }
        let v = Value::from(s);
        if self.strings.len() < Self::MAX_ENTRIES {
            self.strings.insert(s.into(), v.clone());
        }
        v
    }
}

/// [`from_json`] with the short strings shared through `interner` (loading data documents).
pub fn from_json_shared(json: &Json, interner: &mut Interner) -> Value {
    from_json_with(json, &mut |s| interner.get(s))
}

fn from_json_with(json: &Json, string: &mut impl FnMut(&str) -> Value) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            // `-0` keeps its sign as OPA keeps it (the text); other integers are plain.
            if let Some(i) = n.as_i64().filter(|&i| i != 0 || n.as_str() != "-0") {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                // Not an integer that fits 64 bits: go through the decimal text so regorus keeps
                // as much precision as it can.
                Value::from_numeric_string(&n.to_string())
                    .unwrap_or_else(|_| Value::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        Json::String(s) => string(s.as_str()),
        Json::Array(items) => Value::from(
            items
                .iter()
                .map(|i| from_json_with(i, string))
                .collect::<Vec<_>>(),
        ),
        Json::Object(map) => {
            let mut obj = Value::new_object();
            if let Ok(o) = obj.as_object_mut() {
                for (k, v) in map {
                    let v = from_json_with(v, string);
                    o.insert(string(k.as_str()), v);
                }
            }
            obj
        }
    }
}

/// Rego value → JSON, as OPA writes values: sets become (sorted) arrays, non-string object
/// keys become their JSON text, numbers stay integers when they are integers.
/// `Undefined` (which cannot occur inside a value) becomes `null`.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null | Value::Undefined => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => {
            if let Some(text) = n.kept_text() {
                // As OPA wrote it (`2.50`, `-0`, `0.33333333333333333334`).
                if let Ok(t) = text.parse::<serde_json::Number>() {
                    return Json::Number(t);
                }
            }
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                let text = n.format_decimal();
                text.parse::<serde_json::Number>()
                    .map(Json::Number)
                    .unwrap_or_else(|_| {
                        n.as_f64()
                            .and_then(serde_json::Number::from_f64)
                            .map_or(Json::Null, Json::Number)
                    })
            }
        }
        Value::String(s) => Json::String(s.to_string()),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Set(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Object(obj) => {
            let mut map = serde_json::Map::with_capacity(obj.len());
            for (k, val) in obj.iter() {
                let key = match k {
                    Value::String(s) => s.to_string(),
                    other => to_json(other).to_string(),
                };
                map.insert(key, to_json(val));
            }
            Json::Object(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let j = serde_json::json!({
            "a": [1, -2, 3.5, "x", null, true],
            "b": {"c": 18446744073709551615u64}
        });
        assert_eq!(to_json(&from_json(&j)), j);
    }

    /// Integers beyond 64 bits keep every digit both ways, as OPA prints them (issue 17); they
    /// were floats (`3.70370367037037e+19`).
    #[test]
    fn number_texts_pass_through_as_opa_keeps_them() {
        let j: Json = serde_json::from_str("[2.50, -0, 0.10, 7, 0]").unwrap();
        let back = to_json(&from_json(&j));
        assert_eq!(back.to_string(), "[2.50,-0,0.10,7,0]");
    }

    #[test]
    fn big_integers_are_exact() {
        let text = r#"{"m":-123456789012345678901234567890,"n":37037036703703703670}"#;
        let j: Json = serde_json::from_str(text).unwrap_or_default();
        let v = from_json(&j);
        assert_eq!(to_json(&v).to_string(), text);
        let product = regorus::Value::from_numeric_string("37037036703703703670")
            .unwrap_or(regorus::Value::Null);
        assert_eq!(to_json(&product).to_string(), "37037036703703703670");
    }

    #[test]
    fn sets_become_arrays() {
        let mut s = Value::new_set();
        s.as_set_mut().unwrap().insert(Value::from(2));
        s.as_set_mut().unwrap().insert(Value::from(1));
        assert_eq!(to_json(&s), serde_json::json!([1, 2]));
    }
}
