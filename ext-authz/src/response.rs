//! A decision as Envoy's `CheckResponse`, written as protobuf straight from the decision.
//!
//! The mapping is OPA-Envoy's: `decision_id` (and, for an error, `arbiter_reason`) in the
//! dynamic metadata beside the policy's own; an allow is `OK` with the policy's headers, the
//! headers to remove, the response headers to add and the query parameters; a denial is
//! `PERMISSION_DENIED` with its reason as the message, the policy's status, headers and body
//! (an error's body is its reason code); dry-run answers `OK` and keeps the metadata. Errors
//! are denials too, so the outcome never depends on Envoy's `failure_mode_allow`.
//!
//! It is written by hand, not built as prost's `CheckResponse` and encoded: that built a JSON
//! map, a protobuf `Struct` with a hash map and a copy of every string per check, to be
//! encoded once and dropped. The bytes decode (with prost, as Envoy's protobuf reads them) to
//! the message prost's structs would hold; the tests compare the two for every kind of
//! decision.

use arbiter_engine::{Decision, Header};
use serde_json::Value as Json;

/// gRPC status codes used in `CheckResponse.status`.
const OK: u64 = 0;
const PERMISSION_DENIED: u64 = 7;

/// What the server adds to every response besides the policy's own fields.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    pub decision_id: &'a str,
    /// OPA-Envoy's `dry-run`: always answer OK.
    pub dry_run: bool,
}

/// `decision` as an encoded `envoy.service.auth.v3.CheckResponse`.
pub fn check_response(decision: &Decision, ctx: ResponseContext<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let b = &mut out;
    let error = decision
        .reason
        .as_ref()
        .filter(|r| r.is_error())
        .map(|r| r.code());
    let ok = ctx.dry_run || decision.allowed;
    // CheckResponse.status (google.rpc.Status).
    message(b, 1, |b| {
        if ok {
            varint_field(b, 1, OK);
        } else {
            varint_field(b, 1, PERMISSION_DENIED);
            match &decision.reason {
                Some(r) => string_field(b, 2, &r.to_string()),
                None => string_field(b, 2, "denied"),
            }
        }
    });
    if ctx.dry_run {
        // ok_response, empty.
        message(b, 3, |_| {});
    } else if decision.allowed {
        message(b, 3, |b| {
            for h in header_options(&decision.headers) {
                message(b, 2, |b| h.write(b));
            }
            for name in &decision.request_headers_to_remove {
                string_field_always(b, 5, name);
            }
            for h in header_options(&decision.response_headers_to_add) {
                message(b, 6, |b| h.write(b));
            }
            for (k, v) in &decision.query_parameters_to_set {
                // envoy.config.core.v3.QueryParameter.
                message(b, 7, |b| {
                    string_field(b, 1, k);
                    string_field(b, 2, v);
                });
            }
            for name in &decision.query_parameters_to_remove {
                string_field_always(b, 8, name);
            }
        });
    } else {
        // denied_response.
        message(b, 2, |b| {
            // envoy.type.v3.HttpStatus.
            message(b, 1, |b| {
                varint_field(b, 1, u64::from(decision.http_status))
            });
            for h in header_options(&decision.headers) {
                message(b, 2, |b| h.write(b));
            }
            match (&decision.body, error) {
                (Some(body), _) => string_field(b, 3, body),
                (None, Some(code)) => string_field(b, 3, code),
                _ => {}
            }
        });
    }
    // dynamic_metadata (google.protobuf.Struct): the policy's fields, then the server's, which
    // take the place of a policy's field of the same name.
    message(b, 4, |b| {
        let ours = |k: &str| k == "decision_id" || (k == "arbiter_reason" && error.is_some());
        for (k, v) in decision.dynamic_metadata.iter().flatten() {
            if !ours(k) {
                struct_entry(b, k, |b| json_value(b, v));
            }
        }
        struct_entry(b, "decision_id", |b| {
            string_field_always(b, 3, ctx.decision_id)
        });
        if let Some(code) = error {
            struct_entry(b, "arbiter_reason", |b| string_field_always(b, 3, code));
        }
    });
    out
}

/// A header as a `HeaderValueOption`. The first value of a name is set as OPA-Envoy sets it
/// (Envoy overwrites an existing header); further values of the same name are appended, so a
/// policy that returns `{"x": ["a", "b"]}` gets both values through, where OPA-Envoy keeps only
/// the last. (ext_authz reads the deprecated `append` to tell append from set:
/// `append_action`'s default is indistinguishable from unset.)
struct HeaderOption<'a> {
    header: &'a Header,
    append: bool,
}

impl HeaderOption<'_> {
    fn write(&self, b: &mut Vec<u8>) {
        // header (envoy.config.core.v3.HeaderValue).
        message(b, 1, |b| {
            string_field(b, 1, &self.header.name);
            string_field(b, 2, &self.header.value);
        });
        if self.append {
            // append (google.protobuf.BoolValue).
            message(b, 2, |b| varint_field(b, 1, 1));
        }
    }
}

fn header_options(headers: &[Header]) -> impl Iterator<Item = HeaderOption<'_>> {
    headers.iter().enumerate().map(|(i, h)| HeaderOption {
        header: h,
        append: headers[..i]
            .iter()
            .any(|e| e.name.eq_ignore_ascii_case(&h.name)),
    })
}

/// One entry of `Struct.fields` (a `map<string, Value>`): the key, and the `Value` written by
/// `value`.
fn struct_entry(b: &mut Vec<u8>, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
    message(b, 1, |b| {
        string_field(b, 1, key);
        message(b, 2, value);
    });
}

/// The fields of a `google.protobuf.Value` for JSON (a oneof: written even when it is the
/// default, as prost writes a set oneof).
fn json_value(b: &mut Vec<u8>, j: &Json) {
    match j {
        Json::Null => varint_field_always(b, 1, 0),
        Json::Number(n) => {
            key(b, 2, FIXED64);
            b.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        Json::String(s) => string_field_always(b, 3, s),
        Json::Bool(v) => varint_field_always(b, 4, u64::from(*v)),
        Json::Object(o) => message(b, 5, |b| {
            for (k, v) in o {
                struct_entry(b, k, |b| json_value(b, v));
            }
        }),
        Json::Array(a) => message(b, 6, |b| {
            for v in a {
                message(b, 1, |b| json_value(b, v));
            }
        }),
    }
}

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

fn key(b: &mut Vec<u8>, tag: u32, wire_type: u32) {
    prost::encoding::encode_varint(u64::from(tag << 3 | wire_type), b);
}

/// A proto3 scalar: not written when it is zero, as prost does.
fn varint_field(b: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        varint_field_always(b, tag, v);
    }
}

fn varint_field_always(b: &mut Vec<u8>, tag: u32, v: u64) {
    key(b, tag, VARINT);
    prost::encoding::encode_varint(v, b);
}

/// A proto3 string: not written when it is empty, as prost does.
fn string_field(b: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        string_field_always(b, tag, s);
    }
}

/// A string in a oneof or a repeated field: written even when empty.
fn string_field_always(b: &mut Vec<u8>, tag: u32, s: &str) {
    key(b, tag, LEN);
    prost::encoding::encode_varint(s.len() as u64, b);
    b.extend_from_slice(s.as_bytes());
}

/// A sub-message: its key, its length and what `body` writes. The length is written as one
/// byte before the body and widened after it in the rare case it needs more (128 bytes or
/// longer), so nothing is measured twice.
fn message(b: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(b, tag, LEN);
    let at = b.len();
    b.push(0);
    body(b);
    let len = b.len() - at - 1;
    if let Ok(short) = u8::try_from(len)
        && short < 0x80
    {
        b[at] = short;
    } else {
        let mut wide = Vec::with_capacity(10);
        prost::encoding::encode_varint(len as u64, &mut wide);
        b.splice(at..=at, wide);
    }
}

#[cfg(test)]
mod tests {
    use arbiter_engine::DenyReason;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as auth;
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::protobuf as pbuf;
    use envoy_types::pb::google::rpc;
    use prost::Message;
    use serde_json::json;

    use super::*;

    /// The mapping as prost's structs: what the server built and encoded before the bytes
    /// were written by hand. The oracle the encoding is compared with.
    fn via_prost(decision: &Decision, ctx: ResponseContext<'_>) -> auth::CheckResponse {
        #[expect(deprecated, reason = "ext_authz reads the deprecated `append`")]
        fn options(headers: &[Header]) -> Vec<core::HeaderValueOption> {
            let mut seen: Vec<&str> = Vec::new();
            headers
                .iter()
                .map(|h| {
                    let repeated = seen.iter().any(|n| n.eq_ignore_ascii_case(&h.name));
                    seen.push(&h.name);
                    core::HeaderValueOption {
                        header: Some(core::HeaderValue {
                            key: h.name.clone(),
                            value: h.value.clone(),
                            raw_value: Vec::new(),
                        }),
                        append: repeated.then_some(pbuf::BoolValue { value: true }),
                        ..core::HeaderValueOption::default()
                    }
                })
                .collect()
        }
        let mut metadata = decision.dynamic_metadata.clone().unwrap_or_default();
        metadata.insert("decision_id".into(), Json::String(ctx.decision_id.into()));
        if let Some(reason) = &decision.reason
            && reason.is_error()
        {
            metadata.insert("arbiter_reason".into(), Json::String(reason.code().into()));
        }
        let dynamic_metadata = Some(crate::convert::json_to_struct(&metadata));
        let ok = |http_response| auth::CheckResponse {
            status: Some(rpc::Status::default()),
            dynamic_metadata: dynamic_metadata.clone(),
            http_response: Some(auth::check_response::HttpResponse::OkResponse(
                http_response,
            )),
        };
        if ctx.dry_run {
            return ok(auth::OkHttpResponse::default());
        }
        if decision.allowed {
            return ok(auth::OkHttpResponse {
                headers: options(&decision.headers),
                headers_to_remove: decision.request_headers_to_remove.clone(),
                response_headers_to_add: options(&decision.response_headers_to_add),
                query_parameters_to_set: decision
                    .query_parameters_to_set
                    .iter()
                    .map(|(k, v)| core::QueryParameter {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                query_parameters_to_remove: decision.query_parameters_to_remove.clone(),
                ..auth::OkHttpResponse::default()
            });
        }
        let reason = decision.reason.as_ref();
        let body = match (&decision.body, reason) {
            (Some(b), _) => b.clone(),
            (None, Some(r)) if r.is_error() => r.code().to_string(),
            _ => String::new(),
        };
        auth::CheckResponse {
            status: Some(rpc::Status {
                code: 7,
                message: reason.map_or_else(|| "denied".to_string(), ToString::to_string),
                details: Vec::new(),
            }),
            dynamic_metadata,
            http_response: Some(auth::check_response::HttpResponse::DeniedResponse(
                auth::DeniedHttpResponse {
                    status: Some(HttpStatus {
                        code: i32::from(decision.http_status),
                    }),
                    headers: options(&decision.headers),
                    body,
                },
            )),
        }
    }

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    fn metadata(j: Json) -> Option<serde_json::Map<String, Json>> {
        match j {
            Json::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Every kind of decision the mapping tells apart.
    fn decisions() -> Vec<Decision> {
        let long = "x".repeat(300);
        let mut allow_all_fields = Decision::allow();
        allow_all_fields.headers = vec![
            header("x-user", "alice"),
            header("X-User", "bob"),
            header("x-empty", ""),
        ];
        allow_all_fields.request_headers_to_remove = vec!["authorization".into(), String::new()];
        allow_all_fields.response_headers_to_add = vec![header("x-trace", &long)];
        allow_all_fields.query_parameters_to_set =
            vec![("a".into(), "1".into()), (String::new(), String::new())];
        allow_all_fields.query_parameters_to_remove = vec!["debug".into()];
        allow_all_fields.dynamic_metadata = metadata(json!({
            "tenant": "acme",
            "n": 3, "f": -0.5, "big": 1e300, "zero": 0, "t": true, "no": false, "nil": null,
            "list": [1, "two", [], {}, null, false],
            "nested": {"a": {"b": {"c": [long.clone()]}}},
            "": "empty key",
            "decision_id": "the policy's, replaced",
            "arbiter_reason": "kept: not an error",
        }));
        let mut denied_by_policy = Decision::deny(DenyReason::PolicyDenied);
        denied_by_policy.http_status = 401;
        denied_by_policy.body = Some(format!("go away {long}"));
        denied_by_policy.headers = vec![header("www-authenticate", "Bearer")];
        denied_by_policy.dynamic_metadata = metadata(json!({"arbiter_reason": "the policy's"}));
        let mut error = Decision::deny(DenyReason::EvalError("boom".into()));
        error.dynamic_metadata = metadata(json!({"arbiter_reason": "the policy's, replaced"}));
        let mut no_reason = Decision::deny(DenyReason::PolicyDenied);
        no_reason.reason = None;
        no_reason.http_status = 0;
        vec![
            Decision::allow(),
            allow_all_fields,
            Decision::deny(DenyReason::PolicyDenied),
            denied_by_policy,
            error,
            Decision::deny(DenyReason::Timeout),
            Decision::deny(DenyReason::AuditUnavailable),
            no_reason,
        ]
    }

    #[test]
    fn the_bytes_decode_to_the_message_prost_would_encode() {
        for decision in decisions() {
            for dry_run in [false, true] {
                for decision_id in ["", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"] {
                    let ctx = ResponseContext {
                        decision_id,
                        dry_run,
                    };
                    let bytes = check_response(&decision, ctx);
                    let got = auth::CheckResponse::decode(bytes.as_slice())
                        .unwrap_or_else(|e| panic!("{e}: {decision:?}"));
                    assert_eq!(got, via_prost(&decision, ctx), "{decision:?}, {ctx:?}");
                }
            }
        }
    }

    /// The length of a sub-message is one byte when it can be and widened when not: the
    /// boundary itself, at 127 and 128 bytes.
    #[test]
    fn a_sub_message_of_any_length_reads_back() {
        for n in [
            0, 1, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 16_383, 16_384, 70_000,
        ] {
            let mut d = Decision::allow();
            d.headers = vec![header("x", &"v".repeat(n))];
            let ctx = ResponseContext {
                decision_id: "id",
                dry_run: false,
            };
            let got = auth::CheckResponse::decode(check_response(&d, ctx).as_slice())
                .unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(got, via_prost(&d, ctx), "{n}");
        }
    }

    /// What prost writes for the common answers, byte for byte: the same bytes as before
    /// (fields in tag order, defaults left out), not only the same message.
    #[test]
    fn a_plain_allow_and_deny_are_prost_s_bytes() {
        for d in [Decision::allow(), Decision::deny(DenyReason::PolicyDenied)] {
            let ctx = ResponseContext {
                decision_id: "abc",
                dry_run: false,
            };
            assert_eq!(
                check_response(&d, ctx),
                via_prost(&d, ctx).encode_to_vec(),
                "{d:?}"
            );
        }
    }
}
