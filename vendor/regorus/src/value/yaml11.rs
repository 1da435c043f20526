// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

//! arbiter patch: YAML as OPA reads it.
//!
//! OPA turns YAML into JSON with `sigs.k8s.io/yaml`, that is with go-yaml v2, whose plain
//! (unquoted) scalars follow YAML 1.1: `y`, `yes`, `on` (and `n`, `no`, `off`, in three cases)
//! are booleans, `010` is octal, `0b101` binary, `1_000` a thousand; map keys that resolve to
//! something else than a string become that value's JSON text (`y: 1` is `{"true": 1}`). The
//! YAML 1.2 reader underneath leaves those scalars as strings; this reader resolves the plain
//! ones as go-yaml v2 does. A scalar is plain when its text in the input is not enclosed in
//! quotes (the reader hands out the input's own bytes for it).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::value::Value;

/// Parse YAML text as OPA does (see the module's documentation).
pub fn from_str(text: &str) -> anyhow::Result<Value> {
    parse(text).map_err(|err| anyhow::anyhow!("Failed to parse YAML: {}", err))
}

/// [`from_str`], with the reader's error (and its location).
pub fn parse(text: &str) -> Result<Value, yaml_serde::Error> {
    Seed { input: text }.deserialize(yaml_serde::Deserializer::from_str(text))
}

#[derive(Clone, Copy)]
struct Seed<'a> {
    input: &'a str,
}

impl<'a> Seed<'a> {
    /// Whether `s`, a slice of the input, is written without quotes.
    fn plain(&self, s: &str) -> bool {
        let start = self.input.as_ptr() as usize;
        let at = s.as_ptr() as usize;
        if at < start || at + s.len() > start + self.input.len() {
            return false;
        }
        let bytes = self.input.as_bytes();
        let (off, end) = (at - start, at - start + s.len());
        match (off.checked_sub(1).map(|i| bytes[i]), bytes.get(end)) {
            (Some(q @ (b'\'' | b'"')), Some(e)) => *e != q,
            _ => true,
        }
    }
}

impl<'de, 'a> DeserializeSeed<'de> for Seed<'a> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'a> Visitor<'de> for Seed<'a> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML document")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        float(v)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value, E> {
        if self.plain(v) {
            resolve(v)
        } else {
            Ok(Value::from(v))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::from(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some(k) = map.next_key_seed(self)? {
            let v = map.next_value_seed(self)?;
            // sigs.k8s.io/yaml: a key that is not a string is its JSON text.
            let key = match k {
                Value::String(s) => s.to_string(),
                Value::Null => "null".to_string(),
                other => other.to_json_str().map_err(de::Error::custom)?,
            };
            entries.insert(Value::from(key), v);
        }
        Ok(Value::from(entries))
    }
}

/// JSON has no infinities or NaN: OPA's conversion refuses them.
fn float<E: de::Error>(v: f64) -> Result<Value, E> {
    if v.is_finite() {
        Ok(Value::from(v))
    } else {
        let shown = if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "+Inf"
        } else {
            "-Inf"
        };
        Err(E::custom(format!(
            "error converting YAML to JSON: json: unsupported value: {shown}"
        )))
    }
}

/// go-yaml v2's `resolve` for a plain scalar the YAML 1.2 reader left as a string.
fn resolve<E: de::Error>(s: &str) -> Result<Value, E> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => return Ok(Value::Bool(true)),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => return Ok(Value::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return float(f64::NAN),
        _ => {}
    }
    let first = s.as_bytes().first().copied().unwrap_or(b' ');
    if first == b'.' {
        if let Ok(f) = s.parse::<f64>() {
            return float(f);
        }
        return Ok(Value::from(s));
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Ok(Value::from(s));
    }
    let plain: String = s.chars().filter(|c| *c != '_').collect();
    if let Some(i) = go_parse_int(&plain) {
        return Ok(Value::from(i));
    }
    if yaml_style_float(&plain) {
        if let Ok(f) = plain.parse::<f64>() {
            return float(f);
        }
    }
    Ok(Value::from(s))
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint` (a sign, then `0x`, `0o`, `0b`, a
/// leading `0` for octal, or decimal), as one value.
fn go_parse_int(s: &str) -> Option<i128> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(d) = rest.strip_prefix("0x").or(rest.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = rest.strip_prefix("0o").or(rest.strip_prefix("0O")) {
        (8, d)
    } else if let Some(d) = rest.strip_prefix("0b").or(rest.strip_prefix("0B")) {
        (2, d)
    } else if rest.len() > 1 && rest.starts_with('0') {
        (8, &rest[1..])
    } else {
        (10, rest)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    let v = i128::from(magnitude);
    if negative {
        // ParseInt's range: down to -2^63.
        (v <= 1i128 << 63).then_some(-v)
    } else {
        Some(v)
    }
}

/// go-yaml v2's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    } else {
        if !digits(&mut i) {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}
