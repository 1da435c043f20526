//! OpenTelemetry traces: one server span per check (gRPC or Envoy's HTTP protocol) and per
//! Data API query, continuing the caller's W3C trace context, exported over OTLP (gRPC, or
//! HTTP with protobuf bodies) in batches.
//!
//! The decision path only fills a [`Finished`] span (ids, times, the decision's fields, no
//! attribute strings built) and `try_send`s it to a bounded queue; a task on the runtime turns
//! batches into OTLP messages (OpenTelemetry's own protobuf definitions, the
//! `opentelemetry-proto` crate) and sends them. A full queue drops the span, a failed export
//! drops its batch; both are counted (`arbiter_trace_spans_dropped_total`), neither waits. No
//! retries: the next batch is the retry, and a collector that is down costs a bounded queue.
//!
//! Sampling is OpenTelemetry's default, parent-based: a caller that sampled its span (flag
//! `01`) gets a child span, one that did not gets none; a request without a trace context
//! starts a trace with the configured probability (OPA's `sample_percentage`, by the trace
//! id as OpenTelemetry's `TraceIdRatioBased` does).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arbiter_engine::trace_context::TraceContext;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;
use tokio::sync::{mpsc, watch};

use crate::metrics::{Metrics, Origin, SpanDrop};

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`), port 4318.
    HttpProtobuf,
}

impl FromStr for Protocol {
    type Err = String;
    /// OpenTelemetry's names (`OTEL_EXPORTER_OTLP_PROTOCOL`), and OPA's `type` (`grpc`, `http`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err("`http/json`: not supported (use `grpc` or `http/protobuf`)".into()),
            _ => Err(format!(
                "`{s}` is not an OTLP protocol (`grpc` or `http/protobuf`)"
            )),
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// `http://host:port` for gRPC; for HTTP the same, `/v1/traces` appended when it has no
    /// path (as `OTEL_EXPORTER_OTLP_ENDPOINT`), or the full URL of the traces endpoint.
    pub endpoint: String,
    pub protocol: Protocol,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Probability of tracing a request that arrives without a trace context, 0 to 1.
    pub sample_ratio: f64,
    /// Sent with every export (a collector's credentials), as `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Vec<(String, String)>,
    /// Resource attributes set by the operator (`service.namespace`, …), over the defaults.
    pub resource: Vec<(String, String)>,
    /// Spans waiting for export; beyond it new spans are dropped.
    pub max_queue: usize,
    /// Spans per export.
    pub max_batch: usize,
    /// How long a span may wait for a batch to fill.
    pub delay: Duration,
    /// One export's time limit.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// OpenTelemetry's batch defaults (a queue of 2048, batches of 512, 5 s, 30 s), the
    /// endpoint's protocol, every request sampled.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            protocol,
            service_name: "arbiter".into(),
            sample_ratio: 1.0,
            headers: Vec::new(),
            resource: Vec::new(),
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }

    /// What is wrong with it, for the operator: the endpoint's scheme, the numbers, the
    /// header names and values.
    pub fn validate(&self) -> Result<(), String> {
        let uri: hyper::Uri = self
            .endpoint
            .parse()
            .map_err(|e| format!("OTLP endpoint `{}`: {e}", self.endpoint))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "OTLP endpoint `{}`: TLS to the collector is not supported; export to a local collector over http://",
                    self.endpoint
                ));
            }
            _ => {
                return Err(format!(
                    "OTLP endpoint `{}`: give http://host:port",
                    self.endpoint
                ));
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("OTLP endpoint `{}`: no host", self.endpoint));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "trace sampling: {} is not between 0 and 100 percent",
                self.sample_ratio * 100.0
            ));
        }
        if self.max_queue == 0 || self.max_batch == 0 {
            return Err("OTLP queue and batch sizes must be at least 1".into());
        }
        for (k, v) in &self.headers {
            tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                k.to_ascii_lowercase().as_bytes(),
            )
            .map_err(|_| format!("OTLP header `{k}`: not a valid header name"))?;
            tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(v.as_str())
                .map_err(|_| format!("OTLP header `{k}`: its value is not a valid header value"))?;
        }
        Ok(())
    }

    /// The URL HTTP exports go to.
    fn http_uri(&self) -> Result<hyper::Uri, String> {
        let e = self.endpoint.trim_end_matches('/');
        let has_path = e
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        let url = if has_path {
            e.to_string()
        } else {
            format!("{e}/v1/traces")
        };
        url.parse()
            .map_err(|err| format!("OTLP endpoint `{url}`: {err}"))
    }
}

/// Who exports spans: the resource they describe.
#[derive(Debug, Clone, Default)]
pub struct ResourceInfo {
    /// `service.instance.id` (the decision log's `labels.id`).
    pub instance_id: String,
    /// `service.version`.
    pub version: String,
}

/// A span begun: its ids (the record's `trace_id`/`span_id`) and when it started.
#[derive(Debug, Clone)]
pub struct Started {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when the request continued a trace.
    pub parent: Option<[u8; 8]>,
    pub state: Option<String>,
    pub flags: u8,
    pub start_unix_ns: u64,
}

/// What a span says about its decision, filled on the decision path without formatting.
#[derive(Debug, Clone, Default)]
pub struct SpanFields {
    pub allowed: bool,
    /// The reason's code (`allowed` for an allow).
    pub reason: &'static str,
    /// An evaluation error's message: the span's status is then `ERROR`.
    pub error: Option<String>,
    pub policy: Option<String>,
    pub rule: Option<String>,
    pub identity: Option<String>,
    pub revision: String,
    pub decision_id: String,
    /// The decision path (`envoy/authz/allow`, or the Data API's document).
    pub path: String,
    pub dry_run: bool,
    pub input_ns: u64,
    pub eval_ns: u64,
}

/// A span to export.
#[derive(Debug)]
pub struct Finished {
    pub started: Started,
    pub end_unix_ns: u64,
    pub origin: Origin,
    pub fields: SpanFields,
}

/// The span pipeline's front: sampling and ids on the decision path, the queue to the exporter.
#[derive(Debug)]
pub struct Tracer {
    tx: mpsc::Sender<Finished>,
    /// Tells the exporter to send what is queued and end; its task, awaited by [`Tracer::close`].
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// How long closing may wait for the last exports.
    timeout: Duration,
    /// Sample a new trace when its id's last 63 bits are below this (`TraceIdRatioBased`;
    /// 2^63 for a ratio of 1 takes every trace).
    bound: u64,
    rng: aws_lc_rs::rand::SystemRandom,
    metrics: Arc<Metrics>,
}

/// The sampling bound of a ratio: `ratio` · 2^63 (`as` saturates, so 1.0 gives 2^63, above
/// every 63-bit value).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn ratio_bound(ratio: f64) -> u64 {
    (ratio * (1u64 << 63) as f64) as u64
}

fn random<const N: usize>(rng: &aws_lc_rs::rand::SystemRandom) -> [u8; N] {
    loop {
        if let Ok(b) = aws_lc_rs::rand::generate::<[u8; N]>(rng).map(|r| r.expose())
            && b != [0; N]
        {
            return b;
        }
    }
}

impl Tracer {
    /// Start the exporter task on the current runtime (it runs until [`Tracer::close`]).
    pub fn start(
        config: &OtlpConfig,
        resource: ResourceInfo,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        config.validate()?;
        let exporter = Exporter::new(config, &resource)?;
        let (tx, rx) = mpsc::channel(config.max_queue);
        let (stop, stopped) = watch::channel(false);
        metrics.tracing_enabled();
        let task = tokio::spawn(exporter.run(rx, stopped, metrics.clone()));
        Ok(Tracer {
            tx,
            stop,
            task: std::sync::Mutex::new(Some(task)),
            timeout: config.timeout,
            bound: ratio_bound(config.sample_ratio),
            rng: aws_lc_rs::rand::SystemRandom::new(),
            metrics,
        })
    }

    /// Begin a span for a request that arrived with `incoming` (or none) at `start_unix_ns`;
    /// `None` when it is not sampled.
    pub fn begin(&self, incoming: Option<&TraceContext>, start_unix_ns: u64) -> Option<Started> {
        match incoming {
            Some(c) => c.parent.sampled().then(|| Started {
                trace_id: c.parent.trace_id,
                span_id: random::<8>(&self.rng),
                parent: Some(c.parent.span_id),
                state: c.state.clone(),
                flags: c.parent.flags,
                start_unix_ns,
            }),
            None => {
                let trace_id = random::<16>(&self.rng);
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                (u64::from_be_bytes(low) >> 1 < self.bound).then(|| Started {
                    trace_id,
                    span_id: random::<8>(&self.rng),
                    parent: None,
                    state: None,
                    flags: 1,
                    start_unix_ns,
                })
            }
        }
    }

    /// Send what is queued (each export within its time limit) and stop exporting: called at
    /// shutdown, once the servers make no more spans. Later spans are dropped.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // What the queue can hold is a few batches: a few export time limits at most.
            let _ = tokio::time::timeout(self.timeout.saturating_mul(4), task).await;
        }
    }

    /// Queue a finished span; a full queue drops it (counted).
    pub fn end(&self, span: Finished) {
        if self.tx.try_send(span).is_err() {
            self.metrics.spans_dropped(SpanDrop::QueueFull, 1);
        }
    }
}

/// The span's name: the RPC for checks (as OpenTelemetry's gRPC instrumentation names it), the
/// operation for the others.
fn span_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Grpc => "envoy.service.auth.v3.Authorization/Check",
        Origin::HttpAuthz => "ext_authz.http check",
        Origin::DataApi => "data api query",
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: u64) -> KeyValue {
    kv(
        key,
        any_value::Value::IntValue(i64::try_from(value).unwrap_or(i64::MAX)),
    )
}

/// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` and `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The OTLP span for `f`: attributes `arbiter.decision`, `arbiter.reason`, `arbiter.policy`,
/// `arbiter.rule`, `arbiter.identity`, `arbiter.revision`, `arbiter.decision_id`,
/// `arbiter.path`, the timings in nanoseconds, and the RPC's semantic conventions for gRPC.
pub fn to_span(f: Finished) -> Span {
    let Finished {
        started: s,
        end_unix_ns,
        origin,
        fields,
    } = f;
    let mut attributes = Vec::with_capacity(16);
    if origin == Origin::Grpc {
        attributes.push(text("rpc.system", "grpc"));
        attributes.push(text("rpc.service", "envoy.service.auth.v3.Authorization"));
        attributes.push(text("rpc.method", "Check"));
    }
    attributes.push(text("arbiter.origin", origin.engine().as_str()));
    attributes.push(text(
        "arbiter.decision",
        if fields.allowed { "allow" } else { "deny" },
    ));
    attributes.push(text("arbiter.reason", fields.reason));
    if let Some(p) = fields.policy {
        attributes.push(text("arbiter.policy", p));
    }
    if let Some(r) = fields.rule {
        attributes.push(text("arbiter.rule", r));
    }
    if let Some(i) = fields.identity {
        attributes.push(text("arbiter.identity", i));
    }
    attributes.push(text("arbiter.revision", fields.revision));
    attributes.push(text("arbiter.decision_id", fields.decision_id));
    attributes.push(text("arbiter.path", fields.path));
    if fields.dry_run {
        attributes.push(kv("arbiter.dry_run", any_value::Value::BoolValue(true)));
    }
    attributes.push(int("arbiter.input_ns", fields.input_ns));
    attributes.push(int("arbiter.eval_ns", fields.eval_ns));
    let status = fields.error.map(|message| Status {
        message,
        code: status::StatusCode::Error as i32,
    });
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s.state.unwrap_or_default(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(s.flags) | HAS_IS_REMOTE | if s.parent.is_some() { IS_REMOTE } else { 0 },
        name: span_name(origin).to_string(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: s.start_unix_ns,
        end_time_unix_nano: end_unix_ns.max(s.start_unix_ns),
        attributes,
        status,
        ..Span::default()
    }
}

/// An error and what caused it (`client error (Connect): tcp connect error: Connection
/// refused`), for the operator.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

enum Transport {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http(Box<(HttpClient, hyper::Uri)>),
}

struct Exporter {
    transport: Transport,
    headers: Vec<(String, String)>,
    resource: Resource,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    fn new(config: &OtlpConfig, resource: &ResourceInfo) -> Result<Self, String> {
        let transport = match config.protocol {
            Protocol::Grpc => {
                let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| format!("OTLP endpoint `{}`: {e}", config.endpoint))?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout)
                    .tcp_nodelay(true);
                Transport::Grpc(TraceServiceClient::new(endpoint.connect_lazy()))
            }
            Protocol::HttpProtobuf => Transport::Http(Box::new((
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
                config.http_uri()?,
            ))),
        };
        let mut attributes = vec![
            text("service.name", config.service_name.clone()),
            text("telemetry.sdk.name", "arbiter"),
            text("telemetry.sdk.language", "rust"),
            text("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ];
        if !resource.version.is_empty() {
            attributes.push(text("service.version", resource.version.clone()));
        }
        if !resource.instance_id.is_empty() {
            attributes.push(text("service.instance.id", resource.instance_id.clone()));
        }
        for (k, v) in &config.resource {
            attributes.retain(|a| &a.key != k);
            attributes.push(text(k, v.clone()));
        }
        Ok(Exporter {
            transport,
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            resource: Resource {
                attributes,
                ..Resource::default()
            },
            max_batch: config.max_batch,
            delay: config.delay,
            timeout: config.timeout,
        })
    }

    /// Take spans in batches of `max_batch`, or what arrived within `delay` of a batch's first
    /// span, and export each; at stop, export what is queued and end.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Finished>,
        mut stopped: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            let first = tokio::select! {
                s = rx.recv() => s,
                _ = stopped.wait_for(|s| *s) => None,
            };
            let Some(first) = first else { break };
            batch.push(to_span(first));
            let deadline = tokio::time::Instant::now() + self.delay;
            while batch.len() < self.max_batch {
                tokio::select! {
                    s = rx.recv() => match s {
                        Some(s) => batch.push(to_span(s)),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            self.export(std::mem::take(&mut batch), &metrics).await;
            if *stopped.borrow() {
                break;
            }
        }
        // Stopping: what is queued now goes in one last round of batches.
        rx.close();
        while let Some(s) = rx.recv().await {
            batch.push(to_span(s));
            if batch.len() == self.max_batch {
                self.export(std::mem::take(&mut batch), &metrics).await;
            }
        }
        if !batch.is_empty() {
            self.export(batch, &metrics).await;
        }
    }

    async fn export(&mut self, spans: Vec<Span>, metrics: &Metrics) {
        let n = spans.len();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "arbiter".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match self.send(request).await {
            Ok(rejected) => {
                let rejected = usize::try_from(rejected).unwrap_or(n).min(n);
                metrics.spans_exported(n - rejected);
                if rejected > 0 {
                    metrics.spans_dropped(SpanDrop::Rejected, rejected);
                }
            }
            Err(e) => {
                metrics.spans_dropped(SpanDrop::ExportFailed, n);
                tracing::warn!(
                    event = "trace_export_failed",
                    spans = n,
                    error = %e,
                    "cannot export {n} spans: {e}"
                );
            }
        }
    }

    /// Send one request; the number of spans the collector rejected.
    async fn send(&mut self, request: ExportTraceServiceRequest) -> Result<i64, String> {
        let response: ExportTraceServiceResponse = match &mut self.transport {
            Transport::Grpc(client) => {
                let mut r = tonic::Request::new(request);
                r.set_timeout(self.timeout);
                for (k, v) in &self.headers {
                    if let (Ok(k), Ok(v)) = (
                        tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(
                            k.as_bytes(),
                        ),
                        tonic::metadata::MetadataValue::try_from(v.as_str()),
                    ) {
                        r.metadata_mut().insert(k, v);
                    }
                }
                client
                    .export(r)
                    .await
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                    .into_inner()
            }
            Transport::Http(http) => {
                let (client, uri) = &**http;
                let mut b = hyper::Request::post(uri.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf");
                for (k, v) in &self.headers {
                    b = b.header(k.as_str(), v.as_str());
                }
                let req = b
                    .body(Full::new(Bytes::from(request.encode_to_vec())))
                    .map_err(|e| e.to_string())?;
                let send = async {
                    let resp = client.request(req).await.map_err(|e| with_causes(&e))?;
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    if !status.is_success() {
                        return Err(format!("{uri} answered {status}"));
                    }
                    // An empty body is a full success; a body that is not the message is
                    // taken as one too (the status said so).
                    Ok(ExportTraceServiceResponse::decode(body).unwrap_or_default())
                };
                tokio::time::timeout(self.timeout, send)
                    .await
                    .map_err(|_| format!("{uri}: no answer within {:?}", self.timeout))??
            }
        };
        Ok(response.partial_success.map_or(0, |p| p.rejected_spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> Tracer {
        let (tx, _rx) = mpsc::channel(1);
        let (stop, _) = watch::channel(false);
        Tracer {
            tx,
            stop,
            task: std::sync::Mutex::new(None),
            timeout: Duration::from_secs(1),
            bound: ratio_bound(ratio),
            rng: aws_lc_rs::rand::SystemRandom::new(),
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn incoming(flags: &str) -> TraceContext {
        TraceContext::from_headers(
            Some(&format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
            )),
            Some("k=v"),
        )
        .unwrap()
    }

    #[test]
    fn a_sampled_caller_gets_a_child_span() {
        let t = tracer(0.0);
        let s = t.begin(Some(&incoming("01")), 7).unwrap();
        assert_eq!(hex::encode(s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            s.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(s.span_id, [0; 8]);
        assert_ne!(Some(s.span_id), s.parent);
        assert_eq!(s.state.as_deref(), Some("k=v"));
        // A caller that did not sample: no span, whatever the ratio.
        assert!(tracer(1.0).begin(Some(&incoming("00")), 7).is_none());
    }

    #[test]
    fn new_traces_follow_the_ratio() {
        assert!(tracer(0.0).begin(None, 0).is_none());
        let t = tracer(1.0);
        let s = t.begin(None, 0).unwrap();
        assert_eq!(s.parent, None);
        let t = tracer(0.25);
        let n = (0..4000).filter(|_| t.begin(None, 0).is_some()).count();
        assert!((800..1200).contains(&n), "{n} of 4000 sampled at 25 %");
    }

    #[test]
    fn the_span_carries_the_decision() {
        let started = tracer(1.0).begin(Some(&incoming("01")), 100).unwrap();
        let span = to_span(Finished {
            started,
            end_unix_ns: 250,
            origin: Origin::Grpc,
            fields: SpanFields {
                allowed: false,
                reason: "eval_error",
                error: Some("boom".into()),
                policy: Some("data.envoy.authz.allow".into()),
                rule: None,
                identity: Some("spiffe://example.org/a".into()),
                revision: "r1".into(),
                decision_id: "d-1".into(),
                path: "envoy/authz/allow".into(),
                dry_run: false,
                input_ns: 3,
                eval_ns: 4,
            },
        });
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(span.name, "envoy.service.auth.v3.Authorization/Check");
        assert_eq!(
            span.parent_span_id,
            hex::decode("00f067aa0ba902b7").unwrap()
        );
        assert_eq!(span.flags, 0x301);
        assert_eq!(
            (span.start_time_unix_nano, span.end_time_unix_nano),
            (100, 250)
        );
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            attr("arbiter.decision"),
            Some(any_value::Value::StringValue("deny".into()))
        );
        assert_eq!(
            attr("arbiter.identity"),
            Some(any_value::Value::StringValue(
                "spiffe://example.org/a".into()
            ))
        );
        assert_eq!(attr("arbiter.eval_ns"), Some(any_value::Value::IntValue(4)));
        assert_eq!(attr("arbiter.rule"), None);
        let status = span.status.unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (status::StatusCode::Error as i32, "boom")
        );
    }

    #[test]
    fn endpoints_are_checked() {
        let ok = OtlpConfig::new("http://127.0.0.1:4318", Protocol::HttpProtobuf);
        assert!(ok.validate().is_ok());
        assert_eq!(
            ok.http_uri().unwrap().to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        let custom = OtlpConfig::new("http://c:4318/otlp/traces", Protocol::HttpProtobuf);
        assert_eq!(custom.http_uri().unwrap().path(), "/otlp/traces");
        for bad in ["https://c:4317", "c:4317", "ftp://c", "http://"] {
            assert!(
                OtlpConfig::new(bad, Protocol::Grpc).validate().is_err(),
                "{bad}"
            );
        }
        let mut h = OtlpConfig::new("http://c:4317", Protocol::Grpc);
        h.headers = vec![("bad name".into(), "v".into())];
        assert!(h.validate().is_err());
        h.headers = vec![("x-key".into(), "line\nbreak".into())];
        assert!(h.validate().is_err());
        h.headers.clear();
        h.sample_ratio = 1.5;
        assert!(h.validate().is_err());
        assert_eq!("http".parse::<Protocol>(), Ok(Protocol::HttpProtobuf));
        assert!("http/json".parse::<Protocol>().is_err());
    }
}
