use serde_json::json;

use super::*;
use crate::request::{Address, Metadata, Peer, RawHeader, SocketAddress, Timestamp, TlsSession};
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

/// Every field of the request model set (repeats, credential headers in any case, strings that
/// need escapes), for [`written_documents_are_the_values_bytes`].
fn every_field() -> AuthzRequest {
    let s = |v: &str| v.to_string();
    let peer = |addr: Address, principal: &str| Peer {
        address: Some(addr),
        service: s("svc \"quoted\""),
        labels: vec![(s("b"), s("2")), (s("a"), s("1")), (s("b"), s("3"))],
        principal: s(principal),
        certificate: s("-----BEGIN CERTIFICATE-----\nMIIB\n"),
    };
    AuthzRequest {
        source: Some(peer(
            Address::Socket(SocketAddress {
                protocol: Some(s("TCP")),
                address: s("10.0.0.1"),
                port_value: 4000,
                named_port: s("http"),
                resolver_name: s("dns"),
                ipv4_compat: true,
            }),
            "spiffe://example.org/ns/prod/sa/web",
        )),
        destination: Some(peer(
            Address::Pipe {
                path: s("/run/x.sock"),
                mode: 0o600,
            },
            "",
        )),
        time: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: -5,
        }),
        http: Some(HttpRequest {
            id: s("42"),
            method: s("POST"),
            headers: vec![
                (s("content-type"), s("application/json")),
                (s("Authorization"), s("Bearer x")),
                (s("x-b"), s("line\u{2028}sep \u{1}")),
                (s("x-a"), s("1")),
                (s("x-a"), s("2")),
                (s("cookie"), s("c=1")),
                (s("X-Api-Key"), s("k")),
            ],
            header_map: None,
            path: s("/api/v1/orders?a=1&b=x%20y&a=2"),
            host: s("Example.COM:443"),
            scheme: s("https"),
            query: s("a=1&b=x%20y&a=2"),
            fragment: s("frag"),
            size: 17,
            protocol: s("HTTP/1.1"),
            body: s(r#"{"amount": 10.5, "to": ["\u00e9", null, true]}"#),
            raw_body: vec![0, 1, 2, 255],
        }),
        context_extensions: vec![(s("z"), s("1")), (s("k\"ey"), s("v")), (s("z"), s("2"))],
        metadata_context: Some(Metadata {
            filter_metadata: vec![
                (
                    s("istio"),
                    json!({"n": 1.5, "big": 12345678901234567890u64, "s": "x"}),
                ),
                (s("envoy.filters"), json!([1, {"b": 2, "a": 1}])),
            ],
            typed_filter_metadata: vec![(s("t"), s("type.googleapis.com/x.Y"))],
        }),
        route_metadata_context: Some(Metadata {
            filter_metadata: vec![(s("r"), json!(null))],
            typed_filter_metadata: vec![],
        }),
        tls_session: Some(TlsSession {
            sni: s("example.com"),
        }),
    }
}

/// What a record held before: the document's value, its credential headers found in it and
/// left out while serializing.
fn value_bytes(
    reading: &Reading,
    r: &AuthzRequest,
    identity: Option<&Value>,
    masked: &[String],
) -> (Vec<u8>, Vec<String>) {
    use crate::audit::mask::{Masked, header_mask};
    let doc = reading.document(r, identity);
    let mask = header_mask(&doc, masked);
    let bytes = serde_json::to_vec(&Masked {
        input: &doc,
        mask: &mask,
    })
    .unwrap();
    (bytes, mask.erased)
}

/// Whether `r` was read (a request refused before any policy has no document) and its
/// document written as its value's bytes.
fn written_as_value(r: &AuthzRequest, opts: &InputOptions, identity: Option<&Value>) -> bool {
    let Ok(reading) = read_request(r, opts) else {
        return false;
    };
    let defaults: Vec<String> = crate::audit::mask::DEFAULT_MASKED_HEADERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    for masked in [&defaults[..], &[], &["X-A".to_string()]] {
        let (want, erased) = value_bytes(&reading, r, identity, masked);
        let mut got = b"prefix".to_vec();
        assert!(
            reading.write_document(r, identity, masked, &mut got),
            "written"
        );
        assert_eq!(
            String::from_utf8_lossy(&got[6..]),
            String::from_utf8_lossy(&want),
            "masked {masked:?}"
        );
        assert_eq!(
            reading.masked_pointers(r, masked),
            erased,
            "masked {masked:?}"
        );
    }
    true
}

fn assert_written_as_value(r: &AuthzRequest, opts: &InputOptions, identity: Option<&Value>) {
    assert!(
        written_as_value(r, opts, identity),
        "refused: {:?}",
        read_request(r, opts).err()
    );
}

#[test]
fn written_documents_are_the_values_bytes() {
    // The text a decision record writes from the request is byte for byte what serializing
    // the policies' value (with the same headers masked) writes: every field, repeated keys
    // (the last kept), the canonical host, escapes, numbers, metadata and the identity.
    let identity = Value::from_json_str(
        r#"{"spiffe_id": "spiffe://example.org/ns/prod/sa/web", "trust_domain": "example.org"}"#,
    )
    .unwrap();
    let lenient = InputOptions {
        path_policy: PathPolicy::Lenient,
        ..InputOptions::default()
    };
    let mut r = every_field();
    for opts in [&InputOptions::default(), &lenient] {
        assert_written_as_value(&r, opts, Some(&identity));
        assert_written_as_value(&r, opts, None);
    }
    // Envoy's raw header map (headers built from it), with a credential in it twice.
    if let Some(h) = r.http.as_mut() {
        h.headers.clear();
        h.header_map = Some(vec![
            RawHeader {
                key: "authorization".into(),
                value: "Bearer a".into(),
                raw_value: vec![],
            },
            RawHeader {
                key: "x-raw".into(),
                value: String::new(),
                raw_value: b"\xffbin".to_vec(),
            },
            RawHeader {
                key: "Authorization".into(),
                value: "Bearer b".into(),
                raw_value: vec![],
            },
            RawHeader {
                key: String::new(),
                value: "no name".into(),
                raw_value: vec![],
            },
        ]);
        h.body.clear();
    }
    assert_written_as_value(&r, &InputOptions::default(), Some(&identity));
    // The address kinds not above, and requests with little or nothing set.
    if let Some(src) = r.source.as_mut() {
        src.address = Some(Address::EnvoyInternal {
            server_listener_name: "l".into(),
            endpoint_id: "e\"1".into(),
        });
    }
    assert_written_as_value(&r, &InputOptions::default(), None);
    r.http = None;
    assert_written_as_value(&r, &InputOptions::default(), None);
    assert_written_as_value(&AuthzRequest::default(), &InputOptions::default(), None);
    assert_written_as_value(&req("/", &[]), &InputOptions::default(), None);
}

mod written {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-c]{1,2}",
            Just("Authorization".to_string()),
            Just("cookie".to_string()),
            "\\PC{0,6}",
        ]
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec((text(), text()), 0..5)
    }

    prop_compose! {
        fn request()(
            source in proptest::option::of((text(), text(), pairs(), any::<u32>())),
            headers in pairs(),
            raw in proptest::option::of(proptest::collection::vec((text(), text()), 0..4)),
            path in prop_oneof![Just("/a/b?x=1&x=2&y".to_string()), "/[a-c/]{0,6}"],
            host in text(),
            method in text(),
            extensions in pairs(),
            size in any::<i64>(),
            time in proptest::option::of((any::<i64>(), any::<i32>())),
            http in any::<bool>(),
        ) -> AuthzRequest {
            AuthzRequest {
                source: source.map(|(address, principal, labels, port)| Peer {
                    address: Some(Address::Socket(SocketAddress {
                        address,
                        port_value: port,
                        ..SocketAddress::default()
                    })),
                    principal,
                    labels,
                    ..Peer::default()
                }),
                time: time.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                http: http.then(|| HttpRequest {
                    method,
                    headers,
                    header_map: raw.map(|r| {
                        r.into_iter()
                            .map(|(key, value)| RawHeader {
                                key,
                                raw_value: value.as_bytes().to_vec(),
                                value,
                            })
                            .collect()
                    }),
                    path,
                    host,
                    size,
                    ..HttpRequest::default()
                }),
                context_extensions: extensions,
                ..AuthzRequest::default()
            }
        }
    }

    proptest! {
        #[test]
        fn any_request_is_written_as_its_value(r in request()) {
            // (A request refused before any policy, a bad header, has no document.)
            written_as_value(&r, &InputOptions::default(), None);
            written_as_value(
                &r,
                &InputOptions { path_policy: PathPolicy::Lenient, ..InputOptions::default() },
                None,
            );
        }
    }
}

/// Headers as Envoy sends them (lower case, each name once) are read from the request, not
/// copied; any other set is merged into a copy. Both are checked alike.
#[test]
fn headers_as_sent_are_read_in_place_and_others_merged() {
    let opts = InputOptions::default();
    let as_sent = req("/x", &[("x-a", "1"), ("x-b", "2")]);
    let reading = read_request(&as_sent, &opts).unwrap();
    let sent = &as_sent.http.as_ref().unwrap().headers;
    assert_eq!(reading.headers(&as_sent), sent.as_slice());
    assert!(
        std::ptr::eq(reading.headers(&as_sent).as_ptr(), sent.as_ptr()),
        "not copied"
    );
    for (headers, want) in [
        (vec![("X-A", "1")], vec![("x-a", "1")]),
        (vec![("x-a", "1"), ("x-a", "2")], vec![("x-a", "1,2")]),
        (
            vec![("x-a", "1"), ("x-b", "2"), ("X-A", "3")],
            vec![("x-a", "1,3"), ("x-b", "2")],
        ),
    ] {
        let r = req("/x", &headers);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let reading = read_request(&r, &opts).unwrap();
        assert_eq!(reading.headers(&r), want.as_slice(), "{headers:?}");
        let input = build_input(&r, &opts).unwrap();
        assert_eq!(input.headers, want, "{headers:?}");
    }
    // The checks of a merged set hold for one read in place.
    let refused = |headers: &[(&str, &str)], opts: &InputOptions| {
        read_request(&req("/x", headers), opts)
            .err()
            .map(|e| e.to_string())
    };
    let bad = refused(&[("x-a", "1"), ("x-b", "a\r\nb")], &opts).unwrap();
    assert!(bad.contains("x-b"), "{bad}");
    let small = InputOptions {
        max_header_bytes: 4,
        max_headers: 2,
        ..InputOptions::default()
    };
    let large = refused(&[("x-a", "12345")], &small).unwrap();
    assert!(
        large.contains("larger than the limit of 4 bytes"),
        "{large}"
    );
    let many = refused(&[("x-a", "1"), ("x-b", "2"), ("x-c", "3")], &small).unwrap();
    assert!(
        many.contains("3 headers, more than the limit of 2"),
        "{many}"
    );
    assert_eq!(refused(&[("x-a", "1234"), ("x-b", "2")], &small), None);
}
