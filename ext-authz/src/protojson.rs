//! A `CheckRequest` written in protobuf JSON (Envoy's docs, OPA-Envoy's fixtures, decision
//! tests' `attributes:` requests) decoded into Envoy's protobuf message, field for field. It is
//! a thin step in front of the server's one converter ([`crate::convert::authz_request`]): a
//! JSON request and the same request off the wire become the same [`AuthzRequest`].
//!
//! Field names are protojson's lowerCamelCase; unknown fields are ignored, wrong types are
//! errors; 64-bit integers may be strings, bytes are base64, timestamps RFC 3339 strings (or
//! `{seconds, nanos}`), as protojson writes them.

use std::collections::HashMap;

use arbiter_engine::request::AuthzRequest;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3 as auth;
use envoy_types::pb::google::protobuf as pbuf;
use serde_json::{Map, Value as Json};

type Object = Map<String, Json>;

/// The engine's request for a `CheckRequest` in protobuf JSON: decoded into the protobuf
/// message, then converted as the server converts every check.
pub fn authz_request(json: &Json) -> Result<AuthzRequest, String> {
    crate::convert::authz_request(&check_request(json)?).map_err(|e| e.to_string())
}

fn obj<'a>(v: &'a Json, what: &str) -> Result<Option<&'a Object>, String> {
    match v {
        Json::Null => Ok(None),
        Json::Object(m) => Ok(Some(m)),
        _ => Err(format!("`{what}` must be an object")),
    }
}

fn field<'a>(m: &'a Object, k: &str) -> Result<Option<&'a Object>, String> {
    m.get(k).map(|v| obj(v, k)).transpose().map(Option::flatten)
}

fn string(m: &Object, k: &str) -> Result<String, String> {
    match m.get(k) {
        None | Some(Json::Null) => Ok(String::new()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("`{k}` must be a string")),
    }
}

fn number(m: &Object, k: &str) -> Result<i64, String> {
    match m.get(k) {
        None | Some(Json::Null) => Ok(0),
        Some(Json::Number(n)) => n
            .as_i64()
            .ok_or_else(|| format!("`{k}` must be an integer")),
        // protojson writes 64-bit integers as strings
        Some(Json::String(s)) => s.parse().map_err(|_| format!("`{k}` must be an integer")),
        Some(_) => Err(format!("`{k}` must be a number")),
    }
}

fn small<T: TryFrom<i64>>(m: &Object, k: &str) -> Result<T, String> {
    T::try_from(number(m, k)?).map_err(|_| format!("`{k}` out of range"))
}

fn string_map(m: &Object, k: &str) -> Result<HashMap<String, String>, String> {
    match m.get(k) {
        None | Some(Json::Null) => Ok(HashMap::new()),
        Some(Json::Object(o)) => o
            .iter()
            .map(|(k, v)| match v {
                Json::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(format!("`{k}` must map to strings")),
            })
            .collect(),
        Some(_) => Err(format!("`{k}` must be an object")),
    }
}

fn bytes(m: &Object, k: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let s = string(m, k)?;
    if s.is_empty() {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("`{k}`: invalid base64: {e}"))
}

/// Decode a `CheckRequest` from protobuf JSON.
pub fn check_request(json: &Json) -> Result<auth::CheckRequest, String> {
    let Some(root) = obj(json, "CheckRequest")? else {
        return Ok(auth::CheckRequest::default());
    };
    let Some(a) = field(root, "attributes")? else {
        return Ok(auth::CheckRequest::default());
    };
    let request = match field(a, "request")? {
        None => None,
        Some(r) => Some(auth::attribute_context::Request {
            time: r.get("time").map(timestamp).transpose()?,
            http: field(r, "http")?.map(http).transpose()?,
        }),
    };
    let attributes = auth::AttributeContext {
        source: field(a, "source")?.map(peer).transpose()?,
        destination: field(a, "destination")?.map(peer).transpose()?,
        request,
        context_extensions: string_map(a, "contextExtensions")?,
        metadata_context: a.get("metadataContext").map(metadata).transpose()?,
        route_metadata_context: a.get("routeMetadataContext").map(metadata).transpose()?,
        tls_session: field(a, "tlsSession")?
            .map(|t| {
                Ok::<_, String>(auth::attribute_context::TlsSession {
                    sni: string(t, "sni")?,
                })
            })
            .transpose()?,
    };
    Ok(auth::CheckRequest {
        attributes: Some(attributes),
    })
}

fn timestamp(t: &Json) -> Result<pbuf::Timestamp, String> {
    match t {
        Json::Object(tm) => Ok(pbuf::Timestamp {
            seconds: number(tm, "seconds")?,
            nanos: small(tm, "nanos")?,
        }),
        Json::String(s) => {
            let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("`time`: {e}"))?;
            Ok(pbuf::Timestamp {
                seconds: dt.unix_timestamp(),
                nanos: i32::try_from(dt.nanosecond()).unwrap_or(0),
            })
        }
        _ => Err("`time` must be a timestamp".into()),
    }
}

fn http(h: &Object) -> Result<auth::attribute_context::HttpRequest, String> {
    let header_map = match field(h, "headerMap")? {
        None => None,
        Some(m) => {
            let mut headers = Vec::new();
            if let Some(Json::Array(items)) = m.get("headers") {
                for item in items {
                    let Json::Object(hv) = item else {
                        return Err("`headerMap.headers` must hold objects".into());
                    };
                    headers.push(core::HeaderValue {
                        key: string(hv, "key")?,
                        value: string(hv, "value")?,
                        raw_value: bytes(hv, "rawValue")?,
                    });
                }
            }
            Some(core::HeaderMap { headers })
        }
    };
    Ok(auth::attribute_context::HttpRequest {
        id: string(h, "id")?,
        method: string(h, "method")?,
        headers: string_map(h, "headers")?,
        header_map,
        path: string(h, "path")?,
        host: string(h, "host")?,
        scheme: string(h, "scheme")?,
        query: string(h, "query")?,
        fragment: string(h, "fragment")?,
        size: number(h, "size")?,
        protocol: string(h, "protocol")?,
        body: string(h, "body")?,
        raw_body: bytes(h, "rawBody")?,
    })
}

fn peer(p: &Object) -> Result<auth::attribute_context::Peer, String> {
    use core::address::Address as A;
    let address = match field(p, "address")? {
        None => None,
        Some(a) => {
            let inner = if let Some(s) = field(a, "socketAddress")? {
                let protocol = string(s, "protocol")?;
                let port = if s.contains_key("namedPort") {
                    core::socket_address::PortSpecifier::NamedPort(string(s, "namedPort")?)
                } else {
                    core::socket_address::PortSpecifier::PortValue(small(s, "portValue")?)
                };
                Some(A::SocketAddress(core::SocketAddress {
                    protocol: i32::from(protocol == "UDP"),
                    address: string(s, "address")?,
                    port_specifier: Some(port),
                    resolver_name: string(s, "resolverName")?,
                    ipv4_compat: matches!(s.get("ipv4Compat"), Some(Json::Bool(true))),
                    ..core::SocketAddress::default()
                }))
            } else if let Some(pipe) = field(a, "pipe")? {
                Some(A::Pipe(core::Pipe {
                    path: string(pipe, "path")?,
                    mode: small(pipe, "mode")?,
                }))
            } else if let Some(e) = field(a, "envoyInternalAddress")? {
                use core::envoy_internal_address::AddressNameSpecifier;
                Some(A::EnvoyInternalAddress(core::EnvoyInternalAddress {
                    address_name_specifier: Some(AddressNameSpecifier::ServerListenerName(string(
                        e,
                        "serverListenerName",
                    )?)),
                    endpoint_id: string(e, "endpointId")?,
                }))
            } else {
                None
            };
            Some(core::Address { address: inner })
        }
    };
    Ok(auth::attribute_context::Peer {
        address,
        service: string(p, "service")?,
        labels: string_map(p, "labels")?,
        principal: string(p, "principal")?,
        certificate: string(p, "certificate")?,
    })
}

fn metadata(v: &Json) -> Result<core::Metadata, String> {
    let Some(m) = obj(v, "metadata")? else {
        return Ok(core::Metadata::default());
    };
    let filter_metadata = match m.get("filterMetadata") {
        None | Some(Json::Null) => HashMap::new(),
        Some(Json::Object(f)) => f
            .iter()
            .map(|(k, v)| match v {
                Json::Object(o) => Ok((k.clone(), crate::convert::json_to_struct(o))),
                _ => Err(format!("`filterMetadata.{k}` must be an object")),
            })
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("`filterMetadata` must be an object".into()),
    };
    let typed_filter_metadata = match m.get("typedFilterMetadata") {
        None | Some(Json::Null) => HashMap::new(),
        Some(Json::Object(f)) => f
            .iter()
            .map(|(k, v)| {
                let type_url = v
                    .get("@type")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_string();
                (
                    k.clone(),
                    pbuf::Any {
                        type_url,
                        value: Vec::new(),
                    },
                )
            })
            .collect(),
        Some(_) => return Err("`typedFilterMetadata` must be an object".into()),
    };
    Ok(core::Metadata {
        filter_metadata,
        typed_filter_metadata,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use arbiter_engine::input::{InputOptions, build_input};
    use arbiter_engine::value::to_json;
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_protojson_check_requests() {
        let j = json!({"attributes": {
            "source": {"address": {"socketAddress": {"address": "1.2.3.4", "portValue": 5}}, "principal": "spiffe://a/b"},
            "request": {"time": "2026-01-02T03:04:05.5Z", "http": {"method": "POST", "path": "/p", "headers": {"a": "b"}, "size": "12"}},
            "contextExtensions": {"k": "v"},
            "metadataContext": {}
        }});
        let r = authz_request(&j).unwrap();
        assert_eq!(r.time.unwrap().nanos, 500_000_000);
        let v = to_json(&build_input(&r, &InputOptions::default()).unwrap().value);
        assert_eq!(v["attributes"]["metadataContext"], json!({}));
        assert_eq!(v["attributes"]["contextExtensions"], json!({"k": "v"}));
        assert_eq!(v["attributes"]["request"]["http"]["size"], 12);
        assert_eq!(
            v["attributes"]["source"]["address"]["socketAddress"]["portValue"],
            5
        );
        assert!(authz_request(&json!({"attributes": {"request": {"http": {"path": 1}}}})).is_err());
    }

    /// The JSON step and the wire agree: a request encoded as protobuf bytes, decoded as the
    /// server decodes it, gives the same engine request as its JSON.
    #[test]
    fn json_and_wire_give_the_same_request() {
        use prost::Message;
        let j = json!({"attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 40000}},
                       "principal": "spiffe://cluster.local/ns/a/sa/b", "labels": {"app": "x"}},
            "destination": {"address": {"pipe": {"path": "/run/s.sock", "mode": 384}}},
            "request": {"time": {"seconds": "1767323045", "nanos": 7},
                        "http": {"id": "1", "method": "GET", "path": "/a?b=c", "host": "h:8080",
                                 "scheme": "https", "protocol": "HTTP/2", "size": 3, "body": "abc",
                                 "rawBody": "YWJj",
                                 "headerMap": {"headers": [{"key": "x-a", "value": "1"},
                                                           {"key": "x-a", "rawValue": "Mg=="}]}}},
            "metadataContext": {"filterMetadata": {"envoy.filters.http.jwt_authn": {"p": {"iss": "i", "n": 2}}}},
            "tlsSession": {"sni": "h"}
        }});
        let decoded = check_request(&j).unwrap();
        let wire = auth::CheckRequest::decode(decoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            crate::convert::authz_request(&wire).unwrap(),
            authz_request(&j).unwrap()
        );
        let r = authz_request(&j).unwrap();
        let http = r.http.unwrap();
        assert_eq!(http.raw_body, b"abc");
        assert_eq!(http.header_map.unwrap()[1].raw_value, b"2");
        assert_eq!(r.tls_session.unwrap().sni, "h");
    }
}
