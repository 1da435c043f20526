//! gRPC request bodies into `parsed_body`, from a protobuf descriptor set, as OPA-Envoy's
//! `proto-descriptor` option decodes them — with arbiter's strictness where OPA-Envoy lets a
//! body go unread.
//!
//! A gRPC call of method `M` on service `pkg.S` is a `POST /pkg.S/M` whose body is a sequence of
//! length-prefixed messages (a flag byte, 0 for plain and 1 for compressed, then a 4-byte
//! big-endian length). The method's input type comes from the descriptor set; each message is
//! decoded with it and written in the protobuf JSON mapping (`protojson`, as OPA-Envoy does:
//! `lowerCamelCase` names, 64-bit integers as strings, enums by name, fields at their default
//! omitted, well-known types in their JSON forms), then read back by the strict JSON reader
//! (its nesting limit applies).
//!
//! | case | OPA-Envoy | arbiter |
//! |---|---|---|
//! | no descriptor set configured, or no body sent | `parsed_body` null | the same |
//! | service or method not in the set | null | the same |
//! | `x-envoy-auth-partial-body: true`, or a frame longer than what arrived | `truncated_body` | the same |
//! | a path that is not `/service/method` | error (deny) | `body_parse_error` |
//! | fewer than 5 bytes, or bytes that are not a message of the input type | error (deny) | `body_parse_error` |
//! | a compressed message (flag 1) | null: **the policy sees no body** | `body_parse_error`, naming `grpc-encoding` |
//! | several messages for a unary method | the first one: **the rest go unread** | `body_parse_error` |
//! | a client-streaming method | null | an array of the messages that arrived whole |
//! | the body sent as text (Envoy without `pack_as_bytes`) | null | `body_parse_error` (text loses bytes) |
//! | a codec other than protobuf (`application/grpc+json`, gRPC-Web text) | decoded as protobuf (fails) | `body_parse_error`, naming the codec |
//!
//! Where OPA-Envoy leaves `parsed_body` null, a policy that denies on a field of the body
//! (`deny if input.parsed_body.admin`) is bypassed by compressing the message or by sending the
//! field in a second one; arbiter refuses such bodies instead.

use std::path::Path;

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use regorus::Value;

use super::{BodyError, ParsedBody, TRUNCATED, parse_json_strict};

/// The services and messages of a protobuf descriptor set (`protoc --descriptor_set_out`,
/// `buf build -o`), for decoding gRPC request bodies. Cheap to clone.
#[derive(Clone)]
pub struct GrpcBodies {
    pool: DescriptorPool,
}

impl std::fmt::Debug for GrpcBodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcBodies")
            .field("services", &self.pool.services().len())
            .finish()
    }
}

impl PartialEq for GrpcBodies {
    fn eq(&self, other: &Self) -> bool {
        self.pool == other.pool
    }
}

impl GrpcBodies {
    /// A serialized `google.protobuf.FileDescriptorSet`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let pool = DescriptorPool::decode(bytes)
            .map_err(|e| format!("not a protobuf FileDescriptorSet: {e}"))?;
        Ok(Self { pool })
    }

    /// Read a descriptor set file; the error names the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The method `service`/`method` name, when the set has it.
    fn method(&self, service: &str, method: &str) -> Option<MethodDescriptor> {
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }

    /// The body of a unary call to `path` (`/pkg.Service/Method`) carrying `message`, given in
    /// the protobuf JSON mapping: one plain length-prefixed frame, as a gRPC client sends it
    /// (decision tests' `grpc` field).
    pub fn encode_call(&self, path: &str, message: &serde_json::Value) -> Result<Vec<u8>, String> {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (Some(service), Some(method)) = (parts.next(), parts.next()) else {
            return Err(format!(
                "`{path}` is not a gRPC path (/package.Service/Method)"
            ));
        };
        let method = self
            .method(service, method)
            .ok_or_else(|| format!("no method `{service}/{method}` in the descriptor set"))?;
        let msg = DynamicMessage::deserialize(method.input(), message)
            .map_err(|e| format!("not a valid {}: {e}", method.input().full_name()))?;
        let bytes = prost_reflect::prost::Message::encode_to_vec(&msg);
        let len = u32::try_from(bytes.len()).map_err(|_| "message too large".to_string())?;
        let mut frame = Vec::with_capacity(5 + bytes.len());
        frame.push(0);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&bytes);
        Ok(frame)
    }

    /// Decode the messages of `call`.
    pub fn parse(&self, call: &GrpcCall<'_>, max_depth: usize) -> Result<ParsedBody, BodyError> {
        let GrpcCall {
            media,
            encoding,
            partial,
            body,
            packed,
            segments,
        } = *call;
        let none = ParsedBody {
            value: Value::Null,
            truncated: false,
        };
        if partial.is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(TRUNCATED);
        }
        if body.is_empty() {
            return Ok(none);
        }
        codec(media)?;
        if !packed {
            return Err(BodyError(
                "the gRPC body arrived as text, which loses bytes: set `pack_as_bytes: true` in \
                 Envoy's `with_request_body`"
                    .into(),
            ));
        }
        let [service, method] = segments else {
            return Err(BodyError(format!(
                "a gRPC request's path is /package.Service/Method; this one has {} segment{}",
                segments.len(),
                if segments.len() == 1 { "" } else { "s" }
            )));
        };
        let Some(method) = self.method(service, method) else {
            return Ok(none);
        };
        let input = method.input();
        let mut frames = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            if rest.len() < 5 {
                if frames.is_empty() {
                    return Err(BodyError(format!(
                        "a gRPC message starts with a 5-byte prefix; the body has {} byte{}",
                        rest.len(),
                        if rest.len() == 1 { "" } else { "s" }
                    )));
                }
                return Ok(TRUNCATED);
            }
            match rest[0] {
                0 => {}
                1 => {
                    return Err(BodyError(format!(
                        "compressed gRPC message (grpc-encoding: {}): compressed request bodies \
                         are not decoded",
                        encoding.unwrap_or("unknown")
                    )));
                }
                flag => {
                    return Err(BodyError(format!(
                        "invalid gRPC message prefix: flag byte {flag} (0 or 1 expected)"
                    )));
                }
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len > rest.len() - 5 {
                return Ok(TRUNCATED);
            }
            frames.push(&rest[5..5 + len]);
            rest = &rest[5 + len..];
        }
        if !method.is_client_streaming() && frames.len() > 1 {
            return Err(BodyError(format!(
                "{} messages for the unary method {}: a policy would read only the first",
                frames.len(),
                method.full_name()
            )));
        }
        let mut values = Vec::with_capacity(frames.len());
        for frame in frames {
            let msg = DynamicMessage::decode(input.clone(), frame).map_err(|e| {
                BodyError(format!(
                    "the gRPC message is not a valid {}: {e}",
                    input.full_name()
                ))
            })?;
            values.push(to_value(&msg, max_depth)?);
        }
        let value = if method.is_client_streaming() {
            Value::from(values)
        } else {
            values.pop().unwrap_or(Value::Null)
        };
        Ok(ParsedBody {
            value,
            truncated: false,
        })
    }
}

/// What a gRPC call's body is read from.
#[derive(Debug, Clone, Copy)]
pub struct GrpcCall<'a> {
    /// The `content-type`, lower-cased, without parameters (`application/grpc…`).
    pub media: &'a str,
    /// The `grpc-encoding` header.
    pub encoding: Option<&'a str>,
    /// Envoy's `x-envoy-auth-partial-body` header.
    pub partial: Option<&'a str>,
    pub body: &'a [u8],
    /// False when Envoy sent the body as text (`body`, not `raw_body`).
    pub packed: bool,
    /// The canonical path's segments: `[service, method]`.
    pub segments: &'a [&'a str],
}

/// Accept protobuf-coded gRPC and gRPC-Web; name any other codec.
fn codec(media: &str) -> Result<(), BodyError> {
    match media {
        "application/grpc"
        | "application/grpc+proto"
        | "application/grpc-web"
        | "application/grpc-web+proto" => Ok(()),
        m if m.starts_with("application/grpc-web-text") => Err(BodyError(
            "gRPC-Web text (base64) bodies are not decoded; use application/grpc-web".into(),
        )),
        m => Err(BodyError(format!(
            "gRPC messages in the `{}` codec are not decoded (only protobuf)",
            m.split_once('+').map_or(m, |(_, c)| c)
        ))),
    }
}

/// The message in the protobuf JSON mapping, read back strictly (nesting limit).
fn to_value(msg: &DynamicMessage, max_depth: usize) -> Result<Value, BodyError> {
    let mut json = serde_json::Serializer::new(Vec::new());
    msg.serialize_with_options(&mut json, &SerializeOptions::new())
        .map_err(|e| BodyError(format!("the gRPC message has no JSON form: {e}")))?;
    parse_json_strict(&json.into_inner(), max_depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::prost::Message;
    use prost_reflect::prost_types::{
        DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
        MethodDescriptorProto, ServiceDescriptorProto, field_descriptor_proto::Label,
        field_descriptor_proto::Type,
    };

    fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(ty as i32),
            type_name: type_name.map(Into::into),
            json_name: None,
            ..Default::default()
        }
    }

    /// `pkg.Greeter` with `Hello(Req)` (unary) and `Many(stream Req)`; `Req` has `user_name`
    /// (string), `count` (int64), `nested` (Req).
    fn bodies() -> GrpcBodies {
        let req = DescriptorProto {
            name: Some("Req".into()),
            field: vec![
                field("user_name", 1, Type::String, None),
                field("count", 2, Type::Int64, None),
                field("nested", 3, Type::Message, Some(".pkg.Req")),
            ],
            ..Default::default()
        };
        let method = |name: &str, stream: bool| MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(".pkg.Req".into()),
            output_type: Some(".pkg.Req".into()),
            client_streaming: Some(stream),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("pkg.proto".into()),
            package: Some("pkg".into()),
            syntax: Some("proto3".into()),
            message_type: vec![req],
            service: vec![ServiceDescriptorProto {
                name: Some("Greeter".into()),
                method: vec![method("Hello", false), method("Many", true)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let set = FileDescriptorSet { file: vec![file] };
        GrpcBodies::from_bytes(&set.encode_to_vec()).unwrap()
    }

    fn message(b: &GrpcBodies, name: &str, count: i64) -> Vec<u8> {
        let desc = b.pool.get_message_by_name("pkg.Req").unwrap();
        let mut m = DynamicMessage::new(desc);
        m.set_field_by_name("user_name", prost_reflect::Value::String(name.into()));
        m.set_field_by_name("count", prost_reflect::Value::I64(count));
        m.encode_to_vec()
    }

    fn frame(flag: u8, msg: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    fn segs(p: &str) -> Vec<&str> {
        p.split('/').filter(|s| !s.is_empty()).collect()
    }

    fn call<'a>(body: &'a [u8], segments: &'a [&'a str]) -> GrpcCall<'a> {
        GrpcCall {
            media: "application/grpc",
            encoding: None,
            partial: None,
            body,
            packed: true,
            segments,
        }
    }

    fn parse(b: &GrpcBodies, path: &str, body: &[u8]) -> Result<ParsedBody, BodyError> {
        b.parse(&call(body, &segs(path)), 64)
    }

    fn json(v: &Value) -> serde_json::Value {
        crate::value::to_json(v)
    }

    #[test]
    fn unary_message_in_protojson_names_and_forms() {
        let b = bodies();
        let p = parse(&b, "/pkg.Greeter/Hello", &frame(0, &message(&b, "ann", 7))).unwrap();
        assert!(!p.truncated);
        // json_name (lowerCamelCase), int64 as a string, the unset message omitted.
        assert_eq!(
            json(&p.value),
            serde_json::json!({"userName": "ann", "count": "7"})
        );
        // An empty message (all defaults) is an empty object, not null.
        let p = parse(&b, "/pkg.Greeter/Hello", &frame(0, &[])).unwrap();
        assert_eq!(json(&p.value), serde_json::json!({}));
    }

    #[test]
    fn unknown_service_or_method_or_no_body_is_null() {
        let b = bodies();
        let f = frame(0, &message(&b, "ann", 1));
        for path in ["/pkg.Other/Hello", "/pkg.Greeter/Bye"] {
            let p = parse(&b, path, &f).unwrap();
            assert_eq!((p.value, p.truncated), (Value::Null, false), "{path}");
        }
        let p = parse(&b, "/pkg.Greeter/Hello", b"").unwrap();
        assert_eq!(p.value, Value::Null);
    }

    #[test]
    fn truncation_by_header_or_short_frame() {
        let b = bodies();
        let f = frame(0, &message(&b, "ann", 1));
        let cut = &f[..f.len() - 1];
        let p = parse(&b, "/pkg.Greeter/Hello", cut).unwrap();
        assert_eq!((p.value, p.truncated), (Value::Null, true));
        let p = b
            .parse(
                &GrpcCall {
                    media: "application/grpc",
                    encoding: None,
                    partial: Some("true"),
                    packed: true,
                    ..call(&f, &segs("/pkg.Greeter/Hello"))
                },
                64,
            )
            .unwrap();
        assert!(p.truncated);
    }

    #[test]
    fn refused_bodies_say_why() {
        let b = bodies();
        let f = frame(0, &message(&b, "ann", 1));
        let err = |r: Result<ParsedBody, BodyError>| r.unwrap_err().0;
        let (x, hello) = (frame(1, b"x"), segs("/pkg.Greeter/Hello"));
        let compressed = b.parse(
            &GrpcCall {
                encoding: Some("gzip"),
                ..call(&x, &hello)
            },
            64,
        );
        assert!(err(compressed).contains("grpc-encoding: gzip"));
        let two = [f.clone(), f.clone()].concat();
        assert!(err(parse(&b, "/pkg.Greeter/Hello", &two)).contains("2 messages for the unary"));
        assert!(err(parse(&b, "/pkg.Greeter", &f)).contains("1 segment"));
        assert!(err(parse(&b, "/pkg.Greeter/Hello", &[0, 0])).contains("5-byte prefix"));
        assert!(err(parse(&b, "/pkg.Greeter/Hello", &frame(2, b""))).contains("flag byte 2"));
        // Field 1 with wire type 7 (invalid).
        assert!(
            err(parse(&b, "/pkg.Greeter/Hello", &frame(0, &[0x0f])))
                .contains("not a valid pkg.Req")
        );
        let text = b.parse(
            &GrpcCall {
                media: "application/grpc",
                encoding: None,
                partial: None,
                packed: false,
                ..call(&f, &segs("/pkg.Greeter/Hello"))
            },
            64,
        );
        assert!(err(text).contains("pack_as_bytes"));
        let json_codec = b.parse(
            &GrpcCall {
                media: "application/grpc+json",
                encoding: None,
                partial: None,
                packed: true,
                ..call(&f, &segs("/pkg.Greeter/Hello"))
            },
            64,
        );
        assert!(err(json_codec).contains("`json` codec"));
    }

    #[test]
    fn client_streaming_is_an_array_and_web_framing_is_accepted() {
        let b = bodies();
        let two = [
            frame(0, &message(&b, "a", 1)),
            frame(0, &message(&b, "b", 2)),
        ]
        .concat();
        let p = b
            .parse(
                &GrpcCall {
                    media: "application/grpc-web+proto",
                    encoding: None,
                    partial: None,
                    packed: true,
                    ..call(&two, &segs("/pkg.Greeter/Many"))
                },
                64,
            )
            .unwrap();
        assert_eq!(
            json(&p.value),
            serde_json::json!([{"userName": "a", "count": "1"}, {"userName": "b", "count": "2"}])
        );
    }

    #[test]
    fn nesting_limit_applies() {
        let b = bodies();
        let desc = b.pool.get_message_by_name("pkg.Req").unwrap();
        let mut m = DynamicMessage::new(desc.clone());
        m.set_field_by_name("count", prost_reflect::Value::I64(1));
        for _ in 0..10 {
            let mut outer = DynamicMessage::new(desc.clone());
            outer.set_field_by_name("nested", prost_reflect::Value::Message(m));
            m = outer;
        }
        let f = frame(0, &m.encode_to_vec());
        let segments = segs("/pkg.Greeter/Hello");
        assert!(
            b.parse(
                &GrpcCall {
                    media: "application/grpc",
                    encoding: None,
                    partial: None,
                    packed: true,
                    ..call(&f, &segments)
                },
                64,
            )
            .is_ok()
        );
        let e = b
            .parse(
                &GrpcCall {
                    media: "application/grpc",
                    encoding: None,
                    partial: None,
                    packed: true,
                    ..call(&f, &segments)
                },
                5,
            )
            .unwrap_err();
        assert!(e.0.contains("nesting deeper than 5"), "{}", e.0);
    }
}
