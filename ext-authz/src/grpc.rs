//! `envoy.service.auth.v3.Authorization/Check`.
//!
//! The service tonic would generate, with one difference: the request is read off the wire
//! by [`crate::wire`] straight into the engine's [`AuthzRequest`] instead of being decoded by
//! prost into a `CheckRequest` and then copied; the response is written by
//! [`crate::response`] straight from the decision instead of being built as prost's
//! `CheckResponse` and encoded.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use arbiter_engine::DenyReason;
use arbiter_engine::request::AuthzRequest;
use arbiter_engine::trace_context::TraceContext;
use bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Service};
use tonic::{Request, Response, Status};

use crate::metrics::Origin;
use crate::response::{self, ResponseContext};
use crate::state::State;

/// The gRPC service's name, as Envoy and gRPC health know it.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";
pub(crate) const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The ext_authz service. Every request it can decode gets a `CheckResponse`: errors are
/// denials with a reason, never gRPC errors, so Envoy's `failure_mode_allow` never decides.
#[derive(Debug, Clone)]
pub struct AuthzService {
    state: Arc<State>,
    max_decoding_message_size: Option<usize>,
    max_encoding_message_size: Option<usize>,
}

impl AuthzService {
    pub fn new(state: Arc<State>) -> Self {
        Self {
            state,
            max_decoding_message_size: None,
            max_encoding_message_size: None,
        }
    }

    /// The largest request message accepted (tonic's default: 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }

    /// The largest response message sent.
    #[must_use]
    pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
        self.max_encoding_message_size = Some(limit);
        self
    }
}

impl<B> Service<http::Request<B>> for AuthzService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let check = Check(self.state.clone());
        let mut grpc = tonic::server::Grpc::new(CheckCodec).apply_max_message_size_config(
            self.max_decoding_message_size,
            self.max_encoding_message_size,
        );
        Box::pin(async move {
            let mut response = grpc.unary(check, request).await;
            too_large_as_resource_exhausted(&mut response);
            Ok(response)
        })
    }
}

/// One `Check` call.
struct Check(Arc<State>);

impl tonic::server::UnaryService<Box<AuthzRequest>> for Check {
    type Response = Encoded;
    type Future = BoxFuture<Response<Encoded>, Status>;

    fn call(&mut self, request: Request<Box<AuthzRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let requested_by = request.remote_addr();
            // Envoy's span for this call (its ext_authz client injects it into the call's
            // metadata), before the checked request's own `traceparent`: read when a span or
            // an event uses it.
            let meta = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok());
            let trace = if state.traces() {
                TraceContext::from_headers(meta("traceparent"), meta("tracestate"))
            } else {
                None
            };
            let authz_request = request.into_inner();
            let (outcome, decision_id) = state
                .check_as(Origin::Grpc, authz_request, requested_by, trace)
                .await;
            Ok(Response::new(Encoded(response::check_response(
                &outcome.decision,
                ResponseContext {
                    decision_id: &decision_id,
                    // An unaudited request is denied even in dry-run mode.
                    dry_run: state.options.dry_run
                        && !matches!(outcome.decision.reason, Some(DenyReason::AuditUnavailable)),
                },
            ))))
        })
    }
}

/// The gRPC status-code guide (`doc/statuscodes.md`) answers a request message larger than the
/// server's maximum receive size with RESOURCE_EXHAUSTED, as grpc-go (and so OPA-Envoy) do;
/// tonic's decoder says OUT_OF_RANGE. This gives clients the documented code.
fn too_large_as_resource_exhausted(response: &mut http::Response<tonic::body::Body>) {
    let headers = response.headers_mut();
    if headers.get("grpc-status").is_none_or(|s| s != "11") {
        return;
    }
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        // Percent-encoded, as gRPC sends messages.
        .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if too_large {
        let code = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&code) {
            headers.insert("grpc-status", v);
        }
    }
}

/// An encoded `CheckResponse` ([`response::check_response`]).
#[derive(Debug)]
struct Encoded(Vec<u8>);

/// Requests read by [`crate::wire`], responses written by [`crate::response`].
#[derive(Debug, Clone, Copy, Default)]
struct CheckCodec;

impl Codec for CheckCodec {
    type Encode = Encoded;
    type Decode = Box<AuthzRequest>;
    type Encoder = CheckCodec;
    type Decoder = CheckCodec;

    fn encoder(&mut self) -> Self::Encoder {
        CheckCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckCodec
    }
}

impl Encoder for CheckCodec {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // `EncodeBuf` grows as it is written.
        bytes::BufMut::put_slice(buf, &item.0);
        Ok(())
    }
}

/// The request is boxed where it is read: the futures that carry it to the engine (tonic's
/// and [`State::check_as`]'s) then move a pointer, not its 864 bytes, at each step.
impl Decoder for CheckCodec {
    type Item = Box<AuthzRequest>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Box<AuthzRequest>>, Status> {
        let len = buf.remaining();
        // A gRPC message is one contiguous buffer; copy it only if it is not.
        let request = if buf.chunk().len() == len {
            crate::wire::authz_request(buf.chunk())
        } else {
            crate::wire::authz_request(&buf.copy_to_bytes(len))
        };
        buf.advance(buf.remaining());
        // As prost's codec answers a message it cannot decode.
        request
            .map(|r| Some(Box::new(r)))
            .map_err(|e| Status::internal(e.to_string()))
    }
}
