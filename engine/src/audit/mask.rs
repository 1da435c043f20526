//! Masking decision events before they leave the process, as OPA does.
//!
//! - Headers that carry credentials (by default `authorization`, `proxy-authorization`,
//!   `cookie`, `x-api-key`) are erased from the input, in `headers` and in `headerMap`.
//! - OPA's `system.log.mask` policy, when the policy set defines it, gets the event as `input`
//!   and returns JSON pointers to erase (`"/input/password"`) or operations
//!   (`{"op": "upsert", "path": "/input/ssn", "value": "***"}`, `{"op": "remove", …}`). Only
//!   paths under `/input`, `/result` and `/nd_builtin_cache` may be touched.
//!
//! What was removed is listed in the event's `erased`, what was replaced in `masked`.

use serde_json::{Map, Value as Json};

/// The headers erased when nothing else is configured.
pub const DEFAULT_MASKED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

/// One masking operation.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskOp {
    Remove(String),
    Upsert(String, Json),
}

/// Read a mask policy's result: a set or array of pointers and operation objects.
pub fn parse_ops(result: &Json) -> Result<Vec<MaskOp>, String> {
    let items: Vec<&Json> = match result {
        Json::Null => return Ok(Vec::new()),
        Json::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut ops = Vec::new();
    for item in items {
        match item {
            Json::String(p) => ops.push(MaskOp::Remove(p.clone())),
            Json::Object(o) => {
                let path = o
                    .get("path")
                    .and_then(Json::as_str)
                    .ok_or("a mask operation needs a string `path`")?
                    .to_string();
                match o.get("op").and_then(Json::as_str).unwrap_or("remove") {
                    "remove" => ops.push(MaskOp::Remove(path)),
                    "upsert" => ops.push(MaskOp::Upsert(
                        path,
                        o.get("value").cloned().unwrap_or(Json::Null),
                    )),
                    other => return Err(format!("unknown mask operation `{other}`")),
                }
            }
            other => {
                return Err(format!(
                    "a mask entry must be a pointer or an object, not {other}"
                ));
            }
        }
    }
    Ok(ops)
}

/// `/a/b~1c/0` → `["a", "b/c", "0"]` (RFC 6901).
fn pointer_segments(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

fn allowed_root(segments: &[String]) -> bool {
    matches!(
        segments.first().map(String::as_str),
        Some("input" | "result" | "nd_builtin_cache")
    )
}

/// The parent container of the pointed-to value, and the last segment.
fn parent_mut<'a>(root: &'a mut Json, segments: &[String]) -> Option<&'a mut Json> {
    let (_, parents) = segments.split_last()?;
    let mut v = root;
    for s in parents {
        v = match v {
            Json::Object(m) => m.get_mut(s)?,
            Json::Array(a) => a.get_mut(s.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Apply operations to an event; returns whether anything changed. Pointers that do not
/// exist are skipped, as OPA skips them.
pub fn apply(event: &mut Map<String, Json>, ops: &[MaskOp]) -> bool {
    let mut erased: Vec<Json> = Vec::new();
    let mut masked: Vec<Json> = Vec::new();
    let mut root = Json::Object(std::mem::take(event));
    for op in ops {
        let (pointer, upsert) = match op {
            MaskOp::Remove(p) => (p, None),
            MaskOp::Upsert(p, v) => (p, Some(v)),
        };
        let Some(segments) = pointer_segments(pointer).filter(|s| allowed_root(s)) else {
            continue;
        };
        let Some(last) = segments.last().cloned() else {
            continue;
        };
        let Some(parent) = parent_mut(&mut root, &segments) else {
            continue;
        };
        match (parent, upsert) {
            (Json::Object(m), None) => {
                let removed = m.shift_remove(&last).is_some();
                if removed {
                    erased.push(Json::String(pointer.clone()));
                }
            }
            (Json::Object(m), Some(v)) => {
                m.insert(last, v.clone());
                masked.push(Json::String(pointer.clone()));
            }
            (Json::Array(a), None) => {
                if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < a.len()) {
                    a.remove(i);
                    erased.push(Json::String(pointer.clone()));
                }
            }
            (Json::Array(a), Some(v)) => {
                if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    *slot = v.clone();
                    masked.push(Json::String(pointer.clone()));
                }
            }
            _ => {}
        }
    }
    if let Json::Object(m) = root {
        *event = m;
    }
    let changed = !(erased.is_empty() && masked.is_empty());
    for (key, list) in [("erased", erased), ("masked", masked)] {
        if list.is_empty() {
            continue;
        }
        match event.get_mut(key) {
            Some(Json::Array(existing)) => existing.extend(list),
            _ => {
                event.insert(key.into(), Json::Array(list));
            }
        }
    }
    changed
}

/// Whether header `name` is one of `headers` (the credential headers): by name, ignoring
/// case. The one reading of "a masked header" for the JSON event ([`header_ops`]) and the
/// input value ([`header_mask`]).
pub(crate) fn is_masked_header(headers: &[String], name: &str) -> bool {
    headers.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The pointer of `headers[name]` in an event's OPA-Envoy input.
fn header_pointer(name: &str) -> String {
    format!(
        "/input/attributes/request/http/headers/{}",
        name.replace('~', "~0").replace('/', "~1")
    )
}

/// The pointer of `headerMap.headers[i]` in an event's OPA-Envoy input.
fn header_map_pointer(i: usize) -> String {
    format!("/input/attributes/request/http/headerMap/headers/{i}")
}

/// Operations erasing `headers` (lower-case names) from an OPA-Envoy input in `event`:
/// the `headers` map entries and the `headerMap` entries with those keys.
pub fn header_ops(event: &Map<String, Json>, headers: &[String]) -> Vec<MaskOp> {
    let mut ops = Vec::new();
    let Some(http) = event
        .get("input")
        .and_then(|i| i.get("attributes"))
        .and_then(|a| a.get("request"))
        .and_then(|r| r.get("http"))
    else {
        return ops;
    };
    if let Some(Json::Object(h)) = http.get("headers") {
        for k in h.keys() {
            if is_masked_header(headers, k) {
                ops.push(MaskOp::Remove(header_pointer(k)));
            }
        }
    }
    if let Some(Json::Array(list)) = http.get("headerMap").and_then(|m| m.get("headers")) {
        // From the end, so earlier indices stay valid while removing.
        for (i, entry) in list.iter().enumerate().rev() {
            let key = entry.get("key").and_then(Json::as_str).unwrap_or("");
            if is_masked_header(headers, key) {
                ops.push(MaskOp::Remove(header_map_pointer(i)));
            }
        }
    }
    ops
}

/// The credential headers of an OPA-Envoy input, found without copying it: what
/// [`mask_input_headers`] would take out, for a writer that leaves them out while serializing
/// ([`Masked`]) instead of copying the objects on the way and removing them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderMask {
    /// Keys of `attributes.request.http.headers` to leave out.
    keys: Vec<String>,
    /// Indices of `attributes.request.http.headerMap.headers` to leave out.
    map_indices: Vec<usize>,
    /// The pointers erased, as [`mask_input_headers`] returns them (in its order).
    pub erased: Vec<String>,
}

impl HeaderMask {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.map_indices.is_empty()
    }
}

fn http_of(input: &regorus::Value) -> Option<&regorus::Value> {
    let key = |s: &str| regorus::Value::from(s);
    input
        .as_object()
        .ok()?
        .get(&key("attributes"))?
        .as_object()
        .ok()?
        .get(&key("request"))?
        .as_object()
        .ok()?
        .get(&key("http"))
}

/// What [`mask_input_headers`] would erase from `input`, found by reading it.
pub fn header_mask(input: &regorus::Value, headers: &[String]) -> HeaderMask {
    use regorus::Value;
    let mut mask = HeaderMask::default();
    if headers.is_empty() {
        return mask;
    }
    let hit = |k: &str| is_masked_header(headers, k);
    let Some(http) = http_of(input).and_then(|h| h.as_object().ok()) else {
        return mask;
    };
    if let Some(Value::Object(h)) = http.get(&Value::from("headers")) {
        for k in h.keys() {
            if let Value::String(s) = k
                && hit(s)
            {
                mask.erased.push(header_pointer(s));
                mask.keys.push(s.to_string());
            }
        }
    }
    if let Some(Value::Array(list)) = http
        .get(&Value::from("headerMap"))
        .and_then(|m| m.as_object().ok())
        .and_then(|m| m.get(&Value::from("headers")))
    {
        for (i, e) in list.iter().enumerate() {
            let is_hit = e
                .as_object()
                .ok()
                .and_then(|o| o.get(&Value::from("key")))
                .is_some_and(|k| matches!(k, Value::String(s) if hit(s)));
            if is_hit {
                mask.map_indices.push(i);
            }
        }
        // Named from the last, as the copying version removes them.
        for &i in mask.map_indices.iter().rev() {
            mask.erased.push(header_map_pointer(i));
        }
    }
    mask
}

/// The pointers [`header_mask`] names in the document of a request read as `headers` (its
/// effective headers) and `header_map` (Envoy's `headerMap`, when sent), found without the
/// document: for a writer that writes the document from the request
/// ([`crate::input::Reading::write_document`]). Header names in order (as the document's
/// `headers` object holds them), then the `headerMap` entries from the last.
pub fn request_header_pointers(
    headers: &[(String, String)],
    header_map: Option<&[crate::request::RawHeader]>,
    masked: &[String],
) -> Vec<String> {
    let mut names: Vec<&str> = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| is_masked_header(masked, n))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut erased: Vec<String> = names.into_iter().map(header_pointer).collect();
    if let Some(map) = header_map {
        for (i, r) in map.iter().enumerate().rev() {
            if is_masked_header(masked, &r.key) {
                erased.push(header_map_pointer(i));
            }
        }
    }
    erased
}

/// An input serialized without the headers its [`HeaderMask`] names: the same bytes as
/// [`mask_input_headers`] on a copy, then serializing the copy — without the copy.
#[derive(Debug, Clone, Copy)]
pub struct Masked<'a> {
    pub input: &'a regorus::Value,
    pub mask: &'a HeaderMask,
}

/// Where a value sits on the way to the masked headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spine {
    Root,
    Attributes,
    Request,
    Http,
    Headers,
    HeaderMap,
    HeaderMapHeaders,
}

impl Spine {
    fn child(self, key: &str) -> Option<Spine> {
        match (self, key) {
            (Spine::Root, "attributes") => Some(Spine::Attributes),
            (Spine::Attributes, "request") => Some(Spine::Request),
            (Spine::Request, "http") => Some(Spine::Http),
            (Spine::Http, "headers") => Some(Spine::Headers),
            (Spine::Http, "headerMap") => Some(Spine::HeaderMap),
            (Spine::HeaderMap, "headers") => Some(Spine::HeaderMapHeaders),
            _ => None,
        }
    }
}

struct Node<'a> {
    value: &'a regorus::Value,
    at: Spine,
    mask: &'a HeaderMask,
}

impl serde::Serialize for Masked<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.mask.is_empty() {
            return self.input.serialize(serializer);
        }
        Node {
            value: self.input,
            at: Spine::Root,
            mask: self.mask,
        }
        .serialize(serializer)
    }
}

impl serde::Serialize for Node<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use regorus::Value;
        use serde::ser::{Error, SerializeMap, SerializeSeq};
        match (self.value, self.at) {
            (Value::Array(list), Spine::HeaderMapHeaders) => {
                // (A mask made for another input cannot underflow the length hint.)
                let kept = list.len().saturating_sub(self.mask.map_indices.len());
                let mut seq = serializer.serialize_seq(Some(kept))?;
                for (i, e) in list.iter().enumerate() {
                    if !self.mask.map_indices.contains(&i) {
                        seq.serialize_element(e)?;
                    }
                }
                seq.end()
            }
            (Value::Object(o), at) if at != Spine::HeaderMapHeaders => {
                let skip = |k: &Value| {
                    at == Spine::Headers
                        && matches!(k, Value::String(s) if self.mask.keys.iter().any(|m| **m == **s))
                };
                let kept = o.len() - o.keys().filter(|k| skip(k)).count();
                let mut map = serializer.serialize_map(Some(kept))?;
                // As regorus serializes an object: sorted keys, a key that is not a string
                // written as its JSON text.
                for (k, v) in o.iter_sorted() {
                    if skip(k) {
                        continue;
                    }
                    let child = match k {
                        Value::String(s) => at.child(s),
                        _ => None,
                    };
                    match (k, child) {
                        (Value::String(_), Some(at)) => {
                            let node = Node {
                                value: v,
                                at,
                                mask: self.mask,
                            };
                            map.serialize_entry(k, &node)?;
                        }
                        (Value::String(_), None) => map.serialize_entry(k, v)?,
                        _ => {
                            let key = serde_json::to_string(k).map_err(S::Error::custom)?;
                            map.serialize_entry(&key, v)?;
                        }
                    }
                }
                map.end()
            }
            (v, _) => v.serialize(serializer),
        }
    }
}

/// Erase `headers` (lower-case names) from an OPA-Envoy input held as a Rego value, in
/// `headers` and in `headerMap`; returns the pointers erased, as [`header_ops`] names them.
/// Which headers: [`header_mask`]. Only the objects on the way are copied: the rest stays
/// shared with the decision's input.
pub fn mask_input_headers(input: &mut regorus::Value, headers: &[String]) -> Vec<String> {
    use regorus::Value;
    let mask = header_mask(input, headers);
    if mask.is_empty() {
        return mask.erased;
    }
    let Some(http) = input
        .as_object_mut()
        .ok()
        .and_then(|o| o.get_mut(&Value::from("attributes")))
        .and_then(|a| a.as_object_mut().ok())
        .and_then(|a| a.get_mut(&Value::from("request")))
        .and_then(|r| r.as_object_mut().ok())
        .and_then(|r| r.get_mut(&Value::from("http")))
        .and_then(|h| h.as_object_mut().ok())
    else {
        return Vec::new();
    };
    if !mask.keys.is_empty()
        && let Some(h) = http
            .get_mut(&Value::from("headers"))
            .and_then(|h| h.as_object_mut().ok())
    {
        for k in &mask.keys {
            h.remove(&Value::from(k.as_str()));
        }
    }
    if !mask.map_indices.is_empty()
        && let Some(list) = http
            .get_mut(&Value::from("headerMap"))
            .and_then(|m| m.as_object_mut().ok())
            .and_then(|m| m.get_mut(&Value::from("headers")))
            .and_then(|l| l.as_array_mut().ok())
    {
        let mut n = 0usize;
        list.retain(|_| {
            let keep = !mask.map_indices.contains(&n);
            n += 1;
            keep
        });
    }
    mask.erased
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Map<String, Json> {
        match json!({
            "decision_id": "d",
            "input": {
                "attributes": {"request": {"http": {
                    "headers": {"authorization": "Bearer secret", "cookie": "s=1", "x-ok": "1"},
                    "headerMap": {"headers": [
                        {"key": "authorization", "value": "Bearer secret"},
                        {"key": "x-ok", "value": "1"},
                        {"key": "Cookie", "value": "s=1"}
                    ]}
                }}},
                "password": "hunter2",
                "user": {"ssn": "123"}
            },
            "result": {"allowed": true, "list": [1, 2, 3]}
        }) {
            Json::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn default_headers_are_erased_everywhere() {
        let mut e = event();
        let names: Vec<String> = DEFAULT_MASKED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ops = header_ops(&e, &names);
        assert!(apply(&mut e, &ops));
        let http = &e["input"]["attributes"]["request"]["http"];
        assert_eq!(http["headers"], json!({"x-ok": "1"}));
        assert_eq!(
            http["headerMap"]["headers"],
            json!([{"key": "x-ok", "value": "1"}])
        );
        assert_eq!(
            e["erased"],
            json!([
                "/input/attributes/request/http/headers/authorization",
                "/input/attributes/request/http/headers/cookie",
                "/input/attributes/request/http/headerMap/headers/2",
                "/input/attributes/request/http/headerMap/headers/0"
            ])
        );
        assert!(!e.to_string_for_test().contains("secret"));
    }

    #[test]
    fn masking_the_rego_value_matches_masking_the_json() {
        let e = event();
        let names: Vec<String> = DEFAULT_MASKED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut json_event = e.clone();
        apply(&mut json_event, &header_ops(&e, &names));
        let original = crate::value::from_json(&e["input"]);
        let mut v = original.clone();
        let erased = mask_input_headers(&mut v, &names);
        assert_eq!(crate::value::to_json(&v), json_event["input"]);
        assert_eq!(Json::from(erased), json_event["erased"]);
        // The decision's own input is untouched.
        assert_eq!(crate::value::to_json(&original), e["input"]);
        // Nothing to mask: nothing copied, nothing listed.
        let mut plain = crate::value::from_json(
            &json!({"attributes": {"request": {"http": {"headers": {"x": "1"}}}}}),
        );
        assert!(mask_input_headers(&mut plain, &names).is_empty());
    }

    /// Leaving the headers out while serializing writes the same bytes, and names the same
    /// pointers, as copying the input, erasing them and serializing the copy — over inputs
    /// that hit every branch: headers in any case, several `headerMap` entries, keys that need
    /// escaping in a pointer, a non-string key, shapes that are not objects on the way.
    #[test]
    fn leaving_headers_out_while_serializing_matches_erasing_a_copy() {
        let names: Vec<String> = DEFAULT_MASKED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let inputs = [
            event()["input"].clone(),
            json!({"attributes": {"request": {"http": {"headers": {"x": "1"}}}}}),
            json!({"attributes": {"request": {"http": {
                "headers": {"Authorization": "a", "COOKIE": "c", "x-api-key": "k", "a/b~c": "1", "z": "2"},
                "headerMap": {"headers": [
                    {"key": "cookie", "value": "1"}, {"key": "x", "value": "2"},
                    {"key": "Proxy-Authorization", "value": "3"}, {"nokey": true},
                    {"key": "authorization", "value": "4"}
                ], "other": 1},
                "method": "GET"
            }, "time": "t"}, "source": {"address": "a"}}, "parsed_path": ["a"], "version": {}}),
            json!({"attributes": {"request": {"http": {"headers": ["authorization"], "headerMap": {"headers": {"authorization": 1}}}}}}),
            json!({"attributes": {"request": {"http": "authorization"}}}),
            json!({"attributes": {"request": 1}}),
            json!(["authorization"]),
            json!("plain"),
            json!({}),
        ];
        let mut values: Vec<regorus::Value> = inputs.iter().map(crate::value::from_json).collect();
        // A key that is not a string, beside the headers.
        let mut odd = values[2].clone();
        if let Ok(o) = odd.as_object_mut() {
            o.insert(regorus::Value::from(7u64), regorus::Value::from("seven"));
        }
        values.push(odd);
        for v in &values {
            let mut copy = v.clone();
            let erased = mask_input_headers(&mut copy, &names);
            let mask = header_mask(v, &names);
            assert_eq!(mask.erased, erased, "{v:?}");
            let by_copy = serde_json::to_string(&copy).unwrap();
            let by_skipping = serde_json::to_string(&Masked {
                input: v,
                mask: &mask,
            })
            .unwrap();
            assert_eq!(by_skipping, by_copy);
        }
        // The credentials are gone from what is written.
        let written = serde_json::to_string(&Masked {
            input: &values[2],
            mask: &header_mask(&values[2], &names),
        })
        .unwrap();
        assert!(
            !written.contains("authorization") && !written.contains("COOKIE"),
            "{written}"
        );
        assert!(
            written.contains("a/b~c") && written.contains("\"z\""),
            "{written}"
        );
    }

    trait Dump {
        fn to_string_for_test(&self) -> String;
    }
    impl Dump for Map<String, Json> {
        fn to_string_for_test(&self) -> String {
            Json::Object(self.clone()).to_string()
        }
    }

    #[test]
    fn mask_policy_results_as_opa_defines_them() {
        let result = json!([
            "/input/password",
            {"op": "upsert", "path": "/input/user/ssn", "value": "***"},
            {"op": "upsert", "path": "/result/list/1", "value": 0},
            "/input/absent",
            "/decision_id",
            "/result/list/0"
        ]);
        let ops = parse_ops(&result).unwrap();
        let mut e = event();
        apply(&mut e, &ops);
        assert!(e["input"].get("password").is_none());
        assert_eq!(e["input"]["user"]["ssn"], "***");
        assert_eq!(e["result"]["list"], json!([0, 3]));
        // Outside /input, /result and /nd_builtin_cache nothing is touched.
        assert_eq!(e["decision_id"], "d");
        assert_eq!(e["erased"], json!(["/input/password", "/result/list/0"]));
        assert_eq!(e["masked"], json!(["/input/user/ssn", "/result/list/1"]));
        assert!(parse_ops(&json!([{"op": "explode", "path": "/input"}])).is_err());
        assert!(parse_ops(&json!([7])).is_err());
    }
}
