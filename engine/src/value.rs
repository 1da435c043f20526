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

/// An object as a value, frozen: an exact-size sorted slice instead of B-tree nodes with room
/// for eleven entries each (a three-key object takes about a quarter of the memory; a million
/// identities' data 374 MiB instead of 938). Lookups are binary searches; a later change thaws
/// it. Keeping the large maps as B-trees measured no faster and 57 MiB larger at a million.
fn object_value(obj: regorus::value::Object) -> Value {
    obj.into_value()
}

/// A JSON number's text as a Rego number: `-0` keeps its sign as OPA keeps it (the text), other
/// integers that fit 64 bits are plain, and anything else goes through the decimal text so that
/// regorus keeps as much precision as it can.
fn number(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>()
        && (i != 0 || text != "-0")
    {
        Value::from(i)
    } else if let Ok(u) = text.parse::<u64>() {
        Value::from(u)
    } else {
        Value::from_numeric_string(text)
            .unwrap_or_else(|_| Value::from(text.parse::<f64>().unwrap_or(f64::NAN)))
    }
}

/// Parse JSON text straight into a Rego value, the short strings shared through `interner`:
/// the same value as `from_json_shared(&serde_json::from_str(text)?)`, without building the
/// JSON tree first (a data document for a million identities is a gigabyte as that tree).
/// The parser's limits and errors (with line and column) are serde_json's. Not regorus's
/// `Value::from_json_str`: that reads numbers its own way (`Number::from_str`), where every
/// JSON conversion here goes through [`number`], and it shares only object keys.
pub fn parse_json_shared(text: &str, interner: &mut Interner) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = serde::de::DeserializeSeed::deserialize(Seed(interner), &mut de)?;
    de.end()?;
    Ok(v)
}

/// serde_json's name for a number kept as text (the `arbitrary_precision` feature).
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

struct Seed<'a>(&'a mut Interner);

impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::from(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(Value::from(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::from(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(self.0.get(s))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Seed(&mut *self.0))? {
            items.push(v);
        }
        // The parser does not know the length ahead: no spare capacity kept in the data.
        items.shrink_to_fit();
        Ok(Value::from(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = regorus::value::Object::new();
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed(&mut *self.0))? {
            let k = match key {
                // serde_json hands a number over as a one-entry map holding its text.
                Key::Number if first => return map.next_value_seed(NumberSeed),
                Key::Number => self.0.get(NUMBER_TOKEN),
                Key::Str(k) => k,
            };
            first = false;
            let v = map.next_value_seed(Seed(&mut *self.0))?;
            obj.insert(k, v);
        }
        Ok(object_value(obj))
    }
}

enum Key {
    Number,
    Str(Value),
}

/// An object key, read without copying it unless the interner keeps it.
struct KeySeed<'a>(&'a mut Interner);

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, s: &str) -> Result<Key, E> {
        Ok(if s == NUMBER_TOKEN {
            Key::Number
        } else {
            Key::Str(self.0.get(s))
        })
    }
}

/// A number's text, as serde_json hands it over.
struct NumberSeed;

impl<'de> serde::de::DeserializeSeed<'de> for NumberSeed {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NumberSeed {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number's text")
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(number(s))
    }
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
        Json::Number(n) => number(n.as_str()),
        Json::String(s) => string(s.as_str()),
        Json::Array(items) => Value::from(
            items
                .iter()
                .map(|i| from_json_with(i, string))
                .collect::<Vec<_>>(),
        ),
        Json::Object(map) => {
            let mut obj = regorus::value::Object::new();
            for (k, v) in map {
                let v = from_json_with(v, string);
                obj.insert(string(k.as_str()), v);
            }
            object_value(obj)
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

    /// Parsing straight into a Rego value gives what parsing into JSON and converting gives:
    /// numbers by their text (`-0`, `1.0`, past 64 bits, past f64), escapes, nesting, repeated
    /// keys (the last wins), and serde_json's errors.
    #[test]
    fn parsing_straight_into_a_value_is_parsing_then_converting() {
        for text in [
            r#"{"a": -0, "b": 1.0, "c": 1e3, "d": 12345678901234567890, "e": 123456789012345678901234567890}"#,
            r#"{"f": 1e400, "g": -1.5e-7, "h": 0.1, "i": -9223372036854775808, "j": 18446744073709551615}"#,
            r#"{"s": "tab\there \u00e9 \ud83d\ude00", "\u0041key": [true, false, null, [], {}]}"#,
            r#"{"dup": 1, "dup": 2, "nested": {"x": {"y": [1, [2, [3, {"z": "roles"}]]]}}}"#,
            r#"[1, "two", 3.5, {"roles": ["reader", "reader"]}]"#,
            r#""just a string""#,
            "-0",
            "1E+2",
        ] {
            let want = from_json(&serde_json::from_str(text).unwrap());
            let got = parse_json_shared(text, &mut Interner::default()).unwrap();
            assert_eq!(got, want, "{text}");
            // Also as texts: -0 and 1.0 keep theirs.
            assert_eq!(
                to_json(&got).to_string(),
                to_json(&want).to_string(),
                "{text}"
            );
        }
        for bad in ["{\"a\": }", "[1, 2", "{} {}", "tru"] {
            let want = serde_json::from_str::<Json>(bad).unwrap_err();
            let got = parse_json_shared(bad, &mut Interner::default()).unwrap_err();
            assert_eq!(
                (got.line(), got.column(), got.classify()),
                (want.line(), want.column(), want.classify()),
                "{bad}"
            );
        }
        // Deep nesting stops at serde_json's limit, as before.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_json_shared(&deep, &mut Interner::default()).is_err());
        // Repeated short strings are one allocation.
        let v =
            parse_json_shared(r#"[{"roles": 1}, {"roles": 2}]"#, &mut Interner::default()).unwrap();
        let keys: Vec<&Value> = (0..2)
            .map(|i| v[i].as_object().unwrap().keys().next().unwrap())
            .collect();
        match (keys[0], keys[1]) {
            (Value::String(a), Value::String(b)) => assert!(regorus::Rc::ptr_eq(a, b)),
            _ => panic!("keys are strings"),
        }
    }

    #[test]
    fn round_trip() {
        let j = serde_json::json!({
            "a": [1, -2, 3.5, "x", null, true],
            "b": {"c": 18446744073709551615u64}
        });
        assert_eq!(to_json(&from_json(&j)), j);
    }

    /// Decimals keep their text (`2.50`, `0.10`) and `-0` its sign, as OPA keeps them.
    #[test]
    fn number_texts_pass_through_as_opa_keeps_them() {
        let j: Json = serde_json::from_str("[2.50, -0, 0.10, 7, 0]").unwrap();
        let back = to_json(&from_json(&j));
        assert_eq!(back.to_string(), "[2.50,-0,0.10,7,0]");
    }

    /// Integers beyond 64 bits keep every digit both ways, as OPA prints them (issue 17); they
    /// were floats (`3.70370367037037e+19`).
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
