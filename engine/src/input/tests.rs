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
