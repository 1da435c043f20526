//! Request bodies as OPA-Envoy parses them into `parsed_body`, with arbiter's strictness.
//!
//! By `content-type` (the media type compared case-insensitively):
//! - `application/json`: strict JSON. A duplicate key is an error (parsers disagree on whether
//!   the first or the last one wins, so the policy and the backend could see different values),
//!   nesting is limited (64 levels by default), and no lenient fallback parser is ever tried;
//! - `application/x-www-form-urlencoded`: `{key: [values]}`;
//! - `multipart/form-data`: `{field: [values]}`, JSON parts decoded;
//! - `application/grpc*`: with a descriptor set, the call's messages (see [`grpc`]);
//! - anything else: no parsed body (`null`).
//!
//! A body Envoy truncated (`x-envoy-auth-partial-body: true`, or a `content-length` larger than
//! what arrived) is not parsed: `truncated_body` is true and `parsed_body` null.

pub mod grpc;

pub use grpc::GrpcBodies;

use regorus::Value;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Default JSON nesting limit for bodies.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// What the body parser found.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedBody {
    pub value: Value,
    pub truncated: bool,
}

/// A body that did not arrive whole: not parsed.
const TRUNCATED: ParsedBody = ParsedBody {
    value: Value::Null,
    truncated: true,
};

/// A body that could not be parsed as its content type says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// The media type of a `content-type` value, lower-cased, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Parse `body` according to the request's headers (names lower-case).
pub fn parse_body(
    content_type: Option<&str>,
    content_length: Option<&str>,
    partial_header: Option<&str>,
    body: &[u8],
    max_depth: usize,
) -> Result<ParsedBody, BodyError> {
    let none = ParsedBody {
        value: Value::Null,
        truncated: false,
    };
    let Some(ct) = content_type else {
        return Ok(none);
    };
    let media = media_type(ct);
    let kind = if media.contains("application/json") || media.ends_with("+json") {
        Kind::Json
    } else if media == "application/x-www-form-urlencoded" {
        Kind::Form
    } else if media == "multipart/form-data" {
        Kind::Multipart
    } else {
        return Ok(none);
    };
    if body.is_empty() {
        return Ok(none);
    }
    let truncated = partial_header.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || content_length
            .and_then(|cl| cl.trim().parse::<u64>().ok())
            .is_some_and(|cl| cl > body.len() as u64);
    if truncated {
        return Ok(TRUNCATED);
    }
    let value = match kind {
        Kind::Json => parse_json_strict(body, max_depth)?,
        Kind::Form => {
            let text = std::str::from_utf8(body)
                .map_err(|_| BodyError("form body is not valid UTF-8".into()))?;
            let pairs = crate::path::parse_query(text).map_err(BodyError)?;
            multimap(pairs)
        }
        Kind::Multipart => parse_multipart(ct, body, max_depth)?,
    };
    Ok(ParsedBody {
        value,
        truncated: false,
    })
}

enum Kind {
    Json,
    Form,
    Multipart,
}

fn multimap(pairs: Vec<(String, Vec<String>)>) -> Value {
    let mut obj = Value::new_object();
    if let Ok(m) = obj.as_object_mut() {
        for (k, vs) in pairs {
            m.insert(
                Value::from(k),
                Value::from(vs.into_iter().map(Value::from).collect::<Vec<_>>()),
            );
        }
    }
    obj
}

/// Strict JSON into a Rego value: duplicate keys and nesting deeper than `max_depth` are
/// errors.
pub fn parse_json_strict(bytes: &[u8], max_depth: usize) -> Result<Value, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict {
        depth: 0,
        max_depth,
    }
    .deserialize(&mut de)
    .map_err(|e| BodyError(format!("invalid JSON body: {e}")))?;
    de.end()
        .map_err(|e| BodyError(format!("invalid JSON body: {e}")))?;
    Ok(v)
}

struct Strict {
    depth: usize,
    max_depth: usize,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if v.is_finite() {
            Ok(Value::from(v))
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(de::Error::custom(format!(
                "nesting deeper than {} levels",
                self.max_depth
            )));
        }
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict {
            depth: self.depth + 1,
            max_depth: self.max_depth,
        })? {
            items.push(v);
        }
        Ok(Value::from(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= self.max_depth {
            return Err(de::Error::custom(format!(
                "nesting deeper than {} levels",
                self.max_depth
            )));
        }
        let mut obj = Value::new_object();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(Strict {
                depth: self.depth + 1,
                max_depth: self.max_depth,
            })?;
            let key = Value::from(k.as_str());
            if let Ok(m) = obj.as_object_mut() {
                if m.contains_key(&key) {
                    return Err(de::Error::custom(format!("duplicate key `{k}`")));
                }
                m.insert(key, v);
            }
        }
        Ok(obj)
    }
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn parse_multipart(content_type: &str, body: &[u8], max_depth: usize) -> Result<Value, BodyError> {
    let b = boundary(content_type)
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| BodyError("multipart body without a boundary".into()))?;
    let delim = format!("--{b}");
    let mut fields: Vec<(String, Vec<Value>)> = Vec::new();
    let mut pos = find(body, delim.as_bytes(), 0)
        .ok_or_else(|| BodyError("multipart body without its boundary".into()))?;
    loop {
        pos += delim.len();
        if body[pos..].starts_with(b"--") {
            break;
        }
        // Skip the line end after the delimiter.
        if body[pos..].starts_with(b"\r\n") {
            pos += 2;
        } else if body[pos..].starts_with(b"\n") {
            pos += 1;
        }
        let next = find(body, delim.as_bytes(), pos)
            .ok_or_else(|| BodyError("multipart body is not terminated".into()))?;
        let mut part = &body[pos..next];
        // The line break before the next delimiter belongs to the delimiter.
        if part.ends_with(b"\r\n") {
            part = &part[..part.len() - 2];
        } else if part.ends_with(b"\n") {
            part = &part[..part.len() - 1];
        }
        let (head, content) = match find(part, b"\r\n\r\n", 0) {
            Some(i) => (&part[..i], &part[i + 4..]),
            None => match find(part, b"\n\n", 0) {
                Some(i) => (&part[..i], &part[i + 2..]),
                None => return Err(BodyError("multipart part without headers".into())),
            },
        };
        let head = std::str::from_utf8(head)
            .map_err(|_| BodyError("multipart headers are not valid UTF-8".into()))?;
        let mut name = None;
        let mut part_type = String::new();
        for line in head.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                name = v.split(';').skip(1).find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
                });
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                part_type = media_type(v);
            }
        }
        let Some(name) = name else {
            pos = next;
            continue;
        };
        let value = if part_type.contains("application/json") {
            parse_json_strict(content, max_depth)?
        } else {
            Value::from(String::from_utf8_lossy(content).into_owned())
        };
        match fields.iter_mut().find(|(k, _)| *k == name) {
            Some((_, vs)) => vs.push(value),
            None => fields.push((name, vec![value])),
        }
        pos = next;
    }
    let mut obj = Value::new_object();
    if let Ok(m) = obj.as_object_mut() {
        for (k, vs) in fields {
            m.insert(Value::from(k), Value::from(vs));
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::to_json;
    use serde_json::json;

    fn parse(ct: &str, body: &str) -> Result<ParsedBody, BodyError> {
        parse_body(Some(ct), None, None, body.as_bytes(), DEFAULT_MAX_DEPTH)
    }

    #[test]
    fn json_bodies() {
        let p = parse("application/json", r#"{"a": [1, {"b": null}], "c": "\/x"}"#).unwrap();
        assert_eq!(to_json(&p.value), json!({"a": [1, {"b": null}], "c": "/x"}));
        // Media types are case-insensitive (B11).
        let p = parse("APPLICATION/JSON; charset=UTF-8", r#"{"x": 1}"#).unwrap();
        assert_eq!(to_json(&p.value), json!({"x": 1}));
        // Invalid JSON, YAML and duplicates are errors (B12, E5).
        assert!(parse("application/json", "a: b").is_err());
        assert!(
            parse("application/json", r#"{"role":"user","role":"admin"}"#)
                .unwrap_err()
                .0
                .contains("duplicate key")
        );
        assert!(parse("application/json", r#"{"a": 1} trailing"#).is_err());
    }

    #[test]
    fn deep_json_is_refused_without_overflow() {
        let deep = "[".repeat(100_000);
        assert!(parse("application/json", &deep).is_err());
        let ok = format!("{}{}", "[".repeat(60), "]".repeat(60));
        assert!(parse("application/json", &ok).is_ok());
        let too_deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(
            parse("application/json", &too_deep)
                .unwrap_err()
                .0
                .contains("nesting")
        );
    }

    #[test]
    fn truncation() {
        let p = parse_body(
            Some("application/json"),
            Some("100"),
            None,
            br#"{"a":"#,
            DEFAULT_MAX_DEPTH,
        )
        .unwrap();
        assert!(p.truncated);
        assert_eq!(p.value, Value::Null);
        let p = parse_body(
            Some("application/json"),
            None,
            Some("true"),
            br#"{"a": 1}"#,
            DEFAULT_MAX_DEPTH,
        )
        .unwrap();
        assert!(p.truncated);
    }

    #[test]
    fn form_and_other_types() {
        let p = parse("application/x-www-form-urlencoded", "a=1&a=2&b=x+y").unwrap();
        assert_eq!(to_json(&p.value), json!({"a": ["1", "2"], "b": ["x y"]}));
        let p = parse("text/plain", "hello").unwrap();
        assert_eq!(p.value, Value::Null);
        assert_eq!(
            parse_body(None, None, None, b"{}", DEFAULT_MAX_DEPTH)
                .unwrap()
                .value,
            Value::Null
        );
    }

    #[test]
    fn multipart_form() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nalice\r\n--XyZ\r\nContent-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nbob\r\n--XyZ--\r\n";
        let p = parse("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(
            to_json(&p.value),
            json!({"user": ["alice", "bob"], "meta": [{"a": 1}]})
        );
        assert!(parse("multipart/form-data", body).is_err());
    }
}
