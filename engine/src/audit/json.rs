//! A Rego value written as JSON straight into a decision log's line: the same bytes as
//! `serde_json::to_writer` of the value (regorus's `Serialize`: objects and sets in sorted
//! order, a key that is not a string written as its JSON text), with less work per value.
//!
//! Issue 20: serializing the event's input was a third of the log writer's time, most of it
//! serde_json escaping strings a byte at a time and small writes. Here a string with nothing
//! to escape, as nearly every string of a request is, is copied whole after one pass that
//! tests sixteen bytes at a time; one that has something to escape goes through serde_json's
//! own escaping, and every number through serde_json. The module's tests compare the bytes with
//! serde_json's on values built to differ.

use regorus::Value;

/// The value could not be written as JSON (a number serde_json refuses, such as NaN): the
/// caller leaves the value out, as it did when serde_json failed.
#[derive(Debug, PartialEq, Eq)]
pub struct NotJson;

/// A value a decision log's line holds, written as JSON.
pub trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), NotJson>;
}

impl WriteJson for Value {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), NotJson> {
        write_value(out, self)
    }
}

/// Writes `v` as JSON.
pub fn write_value(out: &mut Vec<u8>, v: &Value) -> Result<(), NotJson> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::String(s) => write_str(out, s),
        // (regorus's own number text, as serde_json checks it: not worth repeating here)
        Value::Number(_) => serde_json::to_writer(&mut *out, v).map_err(|_| NotJson)?,
        Value::Array(items) => write_seq(out, items.iter())?,
        Value::Set(items) => write_seq(out, items.iter_sorted())?,
        Value::Object(fields) => {
            out.push(b'{');
            let mut first = true;
            for (k, v) in fields.iter_sorted() {
                if !first {
                    out.push(b',');
                }
                first = false;
                write_key(out, k)?;
                out.push(b':');
                write_value(out, v)?;
            }
            out.push(b'}');
        }
        Value::Undefined => out.extend_from_slice(b"\"<undefined>\""),
    }
    Ok(())
}

/// Writes an object's key: a string as itself, any other value as the string of its JSON
/// text (as regorus serializes an object).
pub fn write_key(out: &mut Vec<u8>, k: &Value) -> Result<(), NotJson> {
    match k {
        Value::String(s) => write_str(out, s),
        other => {
            let mut text = Vec::new();
            write_value(&mut text, other)?;
            write_str(out, std::str::from_utf8(&text).map_err(|_| NotJson)?);
        }
    }
    Ok(())
}

fn write_seq<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a Value>) -> Result<(), NotJson> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_value(out, item)?;
    }
    out.push(b']');
    Ok(())
}

/// Writes a string as a JSON string, escaped as serde_json escapes it.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // serde_json never fails to write a string into a vector
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON needs an escape in `bytes`: a control character, `"` or `\`. Sixteen bytes
/// at a time without an early exit, which the compiler turns into vector compares.
fn needs_escape(bytes: &[u8]) -> bool {
    let special = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_serde(v: &Value) {
        let mut ours = Vec::new();
        let result = write_value(&mut ours, v);
        match serde_json::to_vec(v) {
            Ok(theirs) => {
                assert_eq!(result, Ok(()), "{v:?}");
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&theirs),
                    "{v:?}"
                );
            }
            Err(_) => assert_eq!(result, Err(NotJson), "{v:?}"),
        }
    }

    #[test]
    fn the_same_bytes_as_serde_json() {
        let strings = [
            "",
            "plain",
            "exactly sixteen!",
            "a string longer than sixteen bytes with nothing to escape",
            "quote \" inside",
            "back\\slash",
            "tab\tnew\nline\rbell\u{7}nul\u{0}",
            "\u{1f} at the end of a long string of more than sixteen bytes\u{1f}",
            "sixteen bytes...\"",
            "unicode: é 中文 🎉, and U+2028 \u{2028}",
            "del \u{7f} stays",
        ];
        for s in strings {
            same_as_serde(&Value::from(s));
        }
        for n in [0_i64, 7, -1, -10, 1234567890, i64::MIN, i64::MAX] {
            same_as_serde(&Value::from(n));
        }
        for n in [0_u64, 9, 10, 99, 100, u64::MAX] {
            same_as_serde(&Value::from(n));
        }
        for n in [0.5_f64, -2.25, 1e300, 3.0, f64::NAN, f64::INFINITY] {
            same_as_serde(&Value::from(n));
        }
        for json in [
            "1.50",
            "1e3",
            "-0",
            "123456789012345678901234567890",
            "0.33333333333333333334",
            r#"{"b": [1, "x\"y", null, true, false, {"z": {}}], "a": {"\n": []}}"#,
            r#"[[], {}, [[]], "", -3]"#,
        ] {
            same_as_serde(&Value::from_json_str(json).unwrap());
        }
        // Sets, non-string keys, undefined.
        let set: Value = [Value::from("b"), Value::from("a"), Value::from(1)]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into();
        same_as_serde(&set);
        let mut o = Value::new_object();
        let fields = o.as_object_mut().unwrap();
        fields.insert(Value::from(2), Value::from("two"));
        fields.insert(Value::from("k\"ey"), set.clone());
        fields.insert(Value::from_json_str(r#"["a", 1]"#).unwrap(), Value::Null);
        fields.insert(set, Value::Bool(true));
        fields.insert(Value::from("u"), Value::Undefined);
        same_as_serde(&o);
    }
}
