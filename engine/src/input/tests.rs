use serde_json::json;

use super::*;
use crate::request::{RawHeader, SocketAddress};
use crate::value::to_json;

fn req(path: &str, headers: &[(&str, &str)]) -> AuthzRequest {
    AuthzRequest {
        source: Some(Peer {
            address: Some(Address::Socket(SocketAddress {
                address: "10.0.0.1".into(),
                port_value: 4000,
                ..SocketAddress::default()
            })),
            principal: "spiffe://example.org/ns/prod/sa/web".into(),
            ..Peer::default()
        }),
        http: Some(HttpRequest {
            method: "GET".into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..HttpRequest::default()
        }),
        ..AuthzRequest::default()
    }
}

#[test]
fn builds_opa_envoy_shape() {
    let i = build_input(
        &req("/api/v1/orders?a=1&a=2", &[("x-tenant", "acme")]),
        &InputOptions::default(),
    )
    .unwrap();
    let v = to_json(&i.value);
    assert_eq!(v["parsed_path"], json!(["api", "v1", "orders"]));
    assert_eq!(v["parsed_query"], json!({"a": ["1", "2"]}));
    assert_eq!(v["parsed_body"], json!(null));
    assert_eq!(v["truncated_body"], json!(false));
    assert_eq!(
        v["version"],
        json!({"encoding": "protojson", "ext_authz": "v3"})
    );
    assert_eq!(v["source_principal"], "spiffe://example.org/ns/prod/sa/web");
    assert_eq!(
        v["attributes"]["source"]["address"],
        json!({"socketAddress": {"address": "10.0.0.1", "portValue": 4000}})
    );
    assert_eq!(
        v["attributes"]["request"]["http"]["headers"],
        json!({"x-tenant": "acme"})
    );
    assert_eq!(
        v["attributes"]["request"]["http"]["path"],
        "/api/v1/orders?a=1&a=2"
    );
    assert!(v["attributes"]["request"]["http"].get("body").is_none());
}

#[test]
fn refuses_non_canonical_paths_and_bad_headers() {
    let e = build_input(&req("//admin/people", &[]), &InputOptions::default()).unwrap_err();
    assert_eq!(e.code(), "non_canonical_path");
    assert_eq!(e.default_http_status(), 400);
    let e = build_input(
        &req("/ok", &[("x-a", "v\r\nx-b: 1")]),
        &InputOptions::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), "bad_input");
    let e = build_input(
        &req("/admin", &[(":path", "/public")]),
        &InputOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("inconsistent_request"), "{e}");
    assert!(build_input(&req("/ok", &[(":path", "/ok")]), &InputOptions::default()).is_ok());
}

#[test]
fn header_map_fills_headers_without_dropping_values() {
    let mut r = req("/x", &[]);
    if let Some(h) = r.http.as_mut() {
        h.header_map = Some(vec![
            RawHeader {
                key: "x-role".into(),
                value: "user".into(),
                raw_value: vec![],
            },
            RawHeader {
                key: "X-Role".into(),
                value: String::new(),
                raw_value: b"admin".to_vec(),
            },
        ]);
    }
    let v = to_json(&build_input(&r, &InputOptions::default()).unwrap().value);
    assert_eq!(
        v["attributes"]["request"]["http"]["headers"]["x-role"],
        "user,admin"
    );
    assert_eq!(
        v["attributes"]["request"]["http"]["headerMap"]["headers"][1]["rawValue"],
        "YWRtaW4="
    );
}

#[test]
fn repeated_header_lines_join_alike_with_few_names_and_many() {
    // Up to INDEX_HEADERS_ABOVE lines a repeat is found by a scan, above it by a map: both
    // join a name's lines in arrival order, and keep the first arrival's place.
    for distinct in [2, INDEX_HEADERS_ABOVE + 8] {
        let mut lines: Vec<RawHeader> = (0..distinct)
            .map(|i| RawHeader {
                key: format!("x-h{i}"),
                value: format!("v{i}"),
                raw_value: vec![],
            })
            .collect();
        for (key, value) in [("X-H1", "again"), ("x-h0", "more"), ("x-h1", "third")] {
            lines.push(RawHeader {
                key: key.into(),
                value: value.into(),
                raw_value: vec![],
            });
        }
        let mut r = req("/x", &[]);
        if let Some(h) = r.http.as_mut() {
            h.header_map = Some(lines);
        }
        let input = build_input(&r, &InputOptions::default()).unwrap();
        assert_eq!(input.headers.len(), distinct, "{distinct} names");
        assert_eq!(input.headers[0], ("x-h0".into(), "v0,more".into()));
        assert_eq!(input.headers[1], ("x-h1".into(), "v1,again,third".into()));
        let v = to_json(&input.value);
        assert_eq!(
            v["attributes"]["request"]["http"]["headers"]["x-h1"],
            "v1,again,third"
        );
    }
}

#[test]
fn objects_built_from_entries_keep_the_last_value_of_a_key() {
    // The input's objects are built with `Object::from_entries` (regorus patch 31), which
    // must read as repeated inserts would.
    let entries = vec![
        (Value::from("b"), Value::from(1u64)),
        (Value::from("a"), Value::from(2u64)),
        (Value::from("b"), Value::from(3u64)),
        (Value::from("c"), Value::from(4u64)),
        (Value::from("b"), Value::from(5u64)),
    ];
    let mut inserted = regorus::value::Object::new();
    for (k, v) in entries.clone() {
        inserted.insert(k, v);
    }
    let built = Value::from(regorus::value::Object::from_entries(entries));
    assert_eq!(built, Value::from(inserted));
    assert_eq!(to_json(&built), json!({"a": 2, "b": 5, "c": 4}));
    assert_eq!(
        Value::from(regorus::value::Object::from_entries(vec![])),
        Value::new_object()
    );
    // Removing keys from such an object reads as removing them from a map built by inserts.
    let mut built = regorus::value::Object::from_entries(vec![
        (Value::from("a"), Value::from(1u64)),
        (Value::from("b"), Value::from(2u64)),
        (Value::from("c"), Value::from(3u64)),
    ]);
    assert_eq!(built.remove(&Value::from("b")), Some(Value::from(2u64)));
    assert_eq!(built.remove(&Value::from("x")), None);
    assert_eq!(
        to_json(&Value::from(built.clone())),
        json!({"a": 1, "c": 3})
    );
    assert_eq!(built.get(&Value::from("c")), Some(&Value::from(3u64)));
    built.remove(&Value::from("a"));
    built.remove(&Value::from("c"));
    assert!(built.is_empty());
    assert_eq!(Value::from(built), Value::new_object());
}

#[test]
fn bodies() {
    let mut r = req("/x", &[("content-type", "application/json")]);
    if let Some(h) = r.http.as_mut() {
        h.body = r#"{"amount": 10}"#.into();
    }
    let v = to_json(&build_input(&r, &InputOptions::default()).unwrap().value);
    assert_eq!(v["parsed_body"], json!({"amount": 10}));

    let skip = InputOptions {
        skip_body_parse: true,
        ..InputOptions::default()
    };
    let v = to_json(&build_input(&r, &skip).unwrap().value);
    assert!(v.get("parsed_body").is_none());
    assert!(v.get("truncated_body").is_none());

    if let Some(h) = r.http.as_mut() {
        h.body = "{not json".into();
    }
    let e = build_input(&r, &InputOptions::default()).unwrap_err();
    assert_eq!(e.code(), "body_parse_error");
}
