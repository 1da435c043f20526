//! Envoy's protobuf types into the engine's request model: `CheckRequest` → [`AuthzRequest`]
//! (the answer, a `CheckResponse`, is written by [`crate::response`]).

use arbiter_engine::request::{Address, AuthzRequest, Metadata, RawHeader, SocketAddress};
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3 as auth;
use envoy_types::pb::google::protobuf::{self as pbuf, value::Kind};
use serde_json::Value as Json;

/// An address in Envoy's protobuf form as the model's (its strings moved, not copied).
pub(crate) fn address(a: core::address::Address) -> Address {
    match a {
        core::address::Address::SocketAddress(s) => {
            use core::socket_address::PortSpecifier;
            let (port_value, named_port) = match s.port_specifier {
                Some(PortSpecifier::PortValue(p)) => (p, String::new()),
                Some(PortSpecifier::NamedPort(n)) => (0, n),
                None => (0, String::new()),
            };
            Address::Socket(SocketAddress {
                protocol: (s.protocol != 0).then(|| "UDP".to_string()),
                address: s.address,
                port_value,
                named_port,
                resolver_name: s.resolver_name,
                ipv4_compat: s.ipv4_compat,
            })
        }
        core::address::Address::Pipe(p) => Address::Pipe {
            path: p.path,
            mode: p.mode,
        },
        core::address::Address::EnvoyInternalAddress(e) => Address::EnvoyInternal {
            server_listener_name: match e.address_name_specifier {
                Some(core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(n)) => {
                    n
                }
                None => String::new(),
            },
            endpoint_id: e.endpoint_id,
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
