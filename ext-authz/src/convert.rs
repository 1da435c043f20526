//! Envoy's protobuf types in and out: `CheckRequest` → the engine's request model, and a
//! `Decision` → `CheckResponse` exactly as OPA-Envoy maps results.

use arbiter_engine::request::{Address, AuthzRequest, Metadata, RawHeader, SocketAddress};
use arbiter_engine::{Decision, Header};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3 as auth;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{self as pbuf, value::Kind};
use envoy_types::pb::google::rpc;
use serde_json::Value as Json;

/// gRPC status codes used in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

pub(crate) fn address(a: &core::address::Address) -> Address {
    match a {
        core::address::Address::SocketAddress(s) => {
            use core::socket_address::PortSpecifier;
            let (port_value, named_port) = match &s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => (*p, String::new()),
                Some(PortSpecifier::NamedPort(n)) => (0, n.clone()),
                None => (0, String::new()),
            };
            Address::Socket(SocketAddress {
                protocol: (s.protocol != 0).then(|| "UDP".to_string()),
                address: s.address.clone(),
                port_value,
                named_port,
                resolver_name: s.resolver_name.clone(),
                ipv4_compat: s.ipv4_compat,
            })
        }
        core::address::Address::Pipe(p) => Address::Pipe {
            path: p.path.clone(),
            mode: p.mode,
        },
        core::address::Address::EnvoyInternalAddress(e) => Address::EnvoyInternal {
            server_listener_name: match &e.address_name_specifier {
                Some(core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(n)) => {
                    n.clone()
                }
                None => String::new(),
            },
            endpoint_id: e.endpoint_id.clone(),
        },
    }
}

/// A protobuf `Value` as JSON.
pub fn value_to_json(v: &pbuf::Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(Json::Null, |n| {
            // Integral values print as integers, as protojson consumers expect.
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                    #[expect(
                        clippy::cast_possible_truncation,
                        reason = "checked integral and in range"
                    )]
                    let i = f as i64;
                    Json::from(i)
                }
                _ => Json::Number(n),
            }
        }),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

pub fn struct_to_json(s: &pbuf::Struct) -> Json {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    Json::Object(
        keys.into_iter()
            .map(|k| (k.clone(), value_to_json(&s.fields[k])))
            .collect(),
    )
}

pub(crate) fn metadata(m: &core::Metadata) -> Metadata {
    let mut filter_metadata: Vec<(String, Json)> = m
        .filter_metadata
        .iter()
        .map(|(k, v)| (k.clone(), struct_to_json(v)))
        .collect();
    filter_metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut typed_filter_metadata: Vec<(String, String)> = m
        .typed_filter_metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.type_url.clone()))
        .collect();
    typed_filter_metadata.sort();
    Metadata {
        filter_metadata,
        typed_filter_metadata,
    }
}

/// The engine's view of a `CheckRequest` already in memory (protobuf JSON, tests): encoded and
/// read back by [`crate::wire::authz_request`], the one converter, as the server reads every
/// check off the wire. It fails only where decoding the encoding fails: a metadata `Struct`
/// nested deeper than protobuf's limit of 100.
pub fn authz_request(req: &auth::CheckRequest) -> Result<AuthzRequest, crate::wire::WireError> {
    use prost::Message;
    crate::wire::authz_request(&req.encode_to_vec())
}

/// `HttpRequest.header_map`'s headers.
pub(crate) fn header_map(m: &core::HeaderMap) -> Vec<RawHeader> {
    m.headers
        .iter()
        .map(|hv| RawHeader {
            key: hv.key.clone(),
            value: hv.value.clone(),
            raw_value: hv.raw_value.clone(),
        })
        .collect()
}

/// JSON as a protobuf `Value`.
pub fn json_to_value(j: &Json) -> pbuf::Value {
    let kind = match j {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(pbuf::ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    pbuf::Value { kind: Some(kind) }
}

pub fn json_to_struct(o: &serde_json::Map<String, Json>) -> pbuf::Struct {
    pbuf::Struct {
        fields: o
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// Headers as `HeaderValueOption`s. The first value of a name is set as OPA-Envoy sets it
/// (Envoy overwrites an existing header); further values of the same name are appended, so a
/// policy that returns `{"x": ["a", "b"]}` gets both values through, where OPA-Envoy keeps only
/// the last.
#[expect(
    deprecated,
    reason = "ext_authz reads the deprecated `append` to tell append from set; `append_action`'s default is indistinguishable from unset"
)]
fn header_options(headers: &[Header]) -> Vec<core::HeaderValueOption> {
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

/// What the server adds to every response besides the policy's own fields.
#[derive(Debug, Clone, Copy)]
pub struct ResponseContext<'a> {
    pub decision_id: &'a str,
    /// OPA-Envoy's `dry-run`: always answer OK.
    pub dry_run: bool,
}

/// Map a decision to a `CheckResponse` the way OPA-Envoy does, with `decision_id` in the
/// dynamic metadata. Errors are denials too, carrying the reason code in the gRPC status message
/// and the dynamic metadata, so the outcome never depends on Envoy's `failure_mode_allow`.
pub fn check_response(decision: &Decision, ctx: ResponseContext<'_>) -> auth::CheckResponse {
    let mut metadata = decision.dynamic_metadata.clone().unwrap_or_default();
    metadata.insert("decision_id".into(), Json::String(ctx.decision_id.into()));
    if let Some(reason) = &decision.reason
        && reason.is_error()
    {
        metadata.insert("arbiter_reason".into(), Json::String(reason.code().into()));
    }
    let dynamic_metadata = Some(json_to_struct(&metadata));
    if ctx.dry_run {
        return auth::CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                ..rpc::Status::default()
            }),
            dynamic_metadata,
            http_response: Some(auth::check_response::HttpResponse::OkResponse(
                auth::OkHttpResponse::default(),
            )),
        };
    }
    if decision.allowed {
        return auth::CheckResponse {
            status: Some(rpc::Status {
                code: OK,
                ..rpc::Status::default()
            }),
            dynamic_metadata,
            http_response: Some(auth::check_response::HttpResponse::OkResponse(
                auth::OkHttpResponse {
                    headers: header_options(&decision.headers),
                    headers_to_remove: decision.request_headers_to_remove.clone(),
                    response_headers_to_add: header_options(&decision.response_headers_to_add),
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
                },
            )),
        };
    }
    let reason = decision.reason.as_ref();
    let message = reason.map_or_else(|| "denied".to_string(), ToString::to_string);
    // A policy's own denial carries the policy's body; an error carries its reason code so the
    // client learns what kind of problem it was, not the internals.
    let body = match (&decision.body, reason) {
        (Some(b), _) => b.clone(),
        (None, Some(r)) if r.is_error() => r.code().to_string(),
        _ => String::new(),
    };
    auth::CheckResponse {
        status: Some(rpc::Status {
            code: PERMISSION_DENIED,
            message,
            details: Vec::new(),
        }),
        dynamic_metadata,
        http_response: Some(auth::check_response::HttpResponse::DeniedResponse(
            auth::DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(decision.http_status),
                }),
                headers: header_options(&decision.headers),
                body,
            },
        )),
    }
}
