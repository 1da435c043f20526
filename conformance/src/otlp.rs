//! An OpenTelemetry collector's receiving end for tests: OTLP/gRPC (`TraceService/Export`)
//! and OTLP/HTTP (`POST /v1/traces`, protobuf), decoding what arrives with OpenTelemetry's own
//! protobuf definitions and keeping every span with the resource it came with.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// A span as received, with its resource's attributes.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<KeyValue>,
    /// The `x-*` headers or metadata of the export that carried it.
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    pub fn parent_span_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
    /// A string, boolean or integer attribute of the span, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attr(&self.resource, key)
    }
}

fn attr(list: &[KeyValue], key: &str) -> Option<String> {
    let v = list
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

/// What a receiver has been sent.
#[derive(Debug, Default)]
pub struct Spans {
    spans: Mutex<Vec<Received>>,
    /// Exports received (requests), accepted or not.
    pub exports: AtomicUsize,
    /// Answer every export with an error (HTTP 503, gRPC UNAVAILABLE) while set.
    pub failing: AtomicBool,
}

impl Spans {
    fn take(&self, request: ExportTraceServiceRequest, headers: Vec<(String, String)>) -> bool {
        self.exports.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return false;
        }
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        span,
                        resource: resource.clone(),
                        headers: headers.clone(),
                    });
                }
            }
        }
        true
    }

    /// Every span received so far.
    pub fn all(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Wait until `ready` holds for the spans received, or `timeout` passes; the spans then.
    pub fn wait_for(
        &self,
        timeout: Duration,
        ready: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let until = Instant::now() + timeout;
        loop {
            let all = self.all();
            if ready(&all) || Instant::now() > until {
                return all;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn x_headers(map: &axum::http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .filter(|(k, _)| k.as_str().starts_with("x-"))
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

#[derive(Debug, Clone)]
struct Grpc(Arc<Spans>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = x_headers(&request.metadata().clone().into_headers());
        if self.0.take(request.into_inner(), headers) {
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        } else {
            Err(tonic::Status::unavailable("failing on purpose"))
        }
    }
}

/// A receiver on 127.0.0.1, serving until the runtime it was started on ends.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub spans: Arc<Spans>,
}

impl Receiver {
    /// OTLP/gRPC on an ephemeral port. Call within a Tokio runtime.
    pub async fn grpc() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Spans::default());
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Ok(Receiver { addr, spans })
    }

    /// OTLP/HTTP (protobuf) on an ephemeral port, at `path` (`/v1/traces` for the default).
    pub async fn http(path: &str) -> std::io::Result<Self> {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode, header};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(Spans::default());
        let s = spans.clone();
        let app = axum::Router::new().route(
            path,
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    let protobuf = headers
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v == "application/x-protobuf");
                    if !protobuf {
                        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                    }
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    if s.take(request, x_headers(&headers)) {
                        (
                            StatusCode::OK,
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, Vec::new())
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Receiver { addr, spans })
    }
}
