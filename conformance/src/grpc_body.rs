//! gRPC calls through a real Envoy whose ext_authz filter sends the body packed as bytes: the
//! service (`fixtures/grpc-body/greeter.proto`, compiled with protox), a real gRPC upstream
//! (tonic) that echoes the request, and the calls a real gRPC client (tonic) makes. Shared by
//! the end-to-end test (`tests/grpc_body_e2e.rs`) and the OPA-Envoy recording
//! (`examples/record_grpc_body.rs`), so both send the same calls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value as Json, json};
use tonic::codegen::http;

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/grpc-body")
}

/// Compile `greeter.proto` (with its imports) into a descriptor set at `out`, as
/// `protoc --include_imports --descriptor_set_out=out` would.
pub fn write_descriptor_set(out: &Path) -> Result<DescriptorPool, String> {
    use prost::Message as _;
    let dir = fixtures();
    let set = protox::compile(["greeter.proto"], [&dir]).map_err(|e| e.to_string())?;
    let bytes = set.encode_to_vec();
    std::fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    DescriptorPool::decode(bytes.as_slice()).map_err(|e| e.to_string())
}

/// The Envoy ext_authz settings: the body buffered whole (up to 64 KiB) and packed as bytes.
pub const WITH_BODY: &str = "with_request_body: {max_request_bytes: 65536, allow_partial_message: true, pack_as_bytes: true}";

/// One call: its name (sent as `x-call`), the method, the messages (protobuf JSON mapping) and
/// whether they are sent gzip-compressed.
#[derive(Debug, Clone)]
pub struct Call {
    pub name: &'static str,
    pub method: &'static str,
    pub messages: Vec<Json>,
    pub gzip: bool,
}

pub fn calls() -> Vec<Call> {
    let hello = |name, m: Json| Call {
        name,
        method: "Hello",
        messages: vec![m],
        gzip: false,
    };
    vec![
        hello(
            "every-type",
            json!({
                "userName": "ann", "count": "7", "kind": "USER", "tags": ["a", "b"],
                "at": "2026-12-04T10:00:00.5Z", "blob": "AAEC/w==", "labels": {"team": "blue"},
                "inner": {"level": 3, "ratio": 0.25}, "nickname": "annie",
                "big": "18446744073709551615", "flag": true, "maybe": 0
            }),
        ),
        hello("admin", json!({"userName": "ann", "kind": "ADMIN"})),
        hello("all-defaults", json!({})),
        hello("other-user", json!({"userName": "bob", "kind": "USER"})),
        Call {
            name: "compressed",
            method: "Hello",
            messages: vec![json!({"userName": "ann", "kind": "USER"})],
            gzip: true,
        },
        Call {
            name: "client-stream",
            method: "Upload",
            messages: vec![
                json!({"userName": "ann"}),
                json!({"userName": "ann", "count": "2"}),
            ],
            gzip: false,
        },
    ]
}

/// Passes encoded messages through unchanged, both ways.
#[derive(Debug, Clone, Default)]
pub struct BytesCodec;

#[derive(Debug)]
pub struct BytesEncoder;
#[derive(Debug)]
pub struct BytesDecoder;

impl tonic::codec::Encoder for BytesEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl tonic::codec::Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// The upstream's methods: `Hello` echoes its message, `Upload` answers with the last one.
#[derive(Debug, Clone)]
struct Echo;

impl tonic::server::UnaryService<Vec<u8>> for Echo {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<tonic::Response<Vec<u8>>, tonic::Status>>;
    fn call(&mut self, request: tonic::Request<Vec<u8>>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(request.into_inner())))
    }
}

impl tonic::server::ClientStreamingService<Vec<u8>> for Echo {
    type Response = Vec<u8>;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<tonic::Response<Vec<u8>>, tonic::Status>> + Send>,
    >;
    fn call(&mut self, request: tonic::Request<tonic::Streaming<Vec<u8>>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut last = Vec::new();
            while let Some(m) = stream.message().await? {
                last = m;
            }
            Ok(tonic::Response::new(last))
        })
    }
}

/// The upstream as a tonic service.
#[derive(Debug, Clone)]
pub struct Greeter;

impl tonic::server::NamedService for Greeter {
    const NAME: &'static str = "arbiter.test.Greeter";
}

impl tower::Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
            Ok(match path.as_str() {
                "/arbiter.test.Greeter/Hello" => grpc.unary(Echo, req).await,
                "/arbiter.test.Greeter/Upload" => grpc.client_streaming(Echo, req).await,
                _ => tonic::Status::unimplemented(path).into_http(),
            })
        })
    }
}

/// Start the upstream on loopback; it runs until the runtime stops.
pub async fn start_upstream() -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(Greeter)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok(addr)
}

/// The routes for a gRPC upstream: HTTP/2 to the cluster (`upstream_http2`).
pub const UPSTREAM_HTTP2: &str = "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}";

/// What the call got: the gRPC status code and, when OK, the reply decoded to JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: tonic::Code,
    pub message: String,
    pub reply: Option<Json>,
}

/// Make `call` through Envoy (listening on `port`) with a real tonic client.
pub async fn make_call(port: u16, pool: &DescriptorPool, call: &Call) -> Result<Answer, String> {
    let service = pool
        .get_service_by_name("arbiter.test.Greeter")
        .ok_or("no Greeter in the set")?;
    let method = service
        .methods()
        .find(|m| m.name() == call.method)
        .ok_or("no such method")?;
    let mut encoded = Vec::new();
    for m in &call.messages {
        let msg = DynamicMessage::deserialize(method.input(), m).map_err(|e| e.to_string())?;
        encoded.push(prost::Message::encode_to_vec(&msg));
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut grpc = tonic::client::Grpc::new(channel);
    if call.gzip {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path: http::uri::PathAndQuery = format!("/arbiter.test.Greeter/{}", call.method)
        .parse()
        .map_err(|e| format!("{e}"))?;
    fn with_name<T>(name: &str, mut r: tonic::Request<T>) -> tonic::Request<T> {
        if let Ok(v) = name.parse() {
            r.metadata_mut().insert("x-call", v);
        }
        r
    }
    let result = if method.is_client_streaming() {
        let stream = tokio_stream::iter(encoded);
        grpc.client_streaming(
            with_name(call.name, tonic::Request::new(stream)),
            path,
            BytesCodec,
        )
        .await
    } else {
        let first = encoded.into_iter().next().unwrap_or_default();
        grpc.unary(
            with_name(call.name, tonic::Request::new(first)),
            path,
            BytesCodec,
        )
        .await
    };
    Ok(match result {
        Ok(r) => {
            let reply = DynamicMessage::decode(method.output(), r.into_inner().as_slice())
                .map_err(|e| e.to_string())?;
            Answer {
                code: tonic::Code::Ok,
                message: String::new(),
                reply: Some(serde_json::to_value(&reply).map_err(|e| e.to_string())?),
            }
        }
        Err(s) => Answer {
            code: s.code(),
            message: s.message().to_string(),
            reply: None,
        },
    })
}
