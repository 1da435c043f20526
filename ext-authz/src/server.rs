//! Starting and stopping the servers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use arbiter_engine::authorizer::Authorizer;
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::decision_log::{DecisionLog, DecisionLogConfig};
use crate::grpc::AuthzService;
use crate::listener::Limited;
use crate::metrics::Metrics;
use crate::pool::EvalPool;
use crate::state::{ServeOptions, State};

/// How often an idle HTTP/2 connection is probed with a PING, and how long the answer may take
/// before the connection is closed.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a server listens: `host:port` (`:9191` means every interface, as in OPA) or
/// `unix:///path/to/socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(format!("`{s}`: missing socket path"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(p)));
        }
        let s = s.strip_prefix("grpc://").unwrap_or(s);
        let addr = if s.starts_with(':') {
            format!("0.0.0.0{s}")
        } else {
            s.to_string()
        };
        if addr
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!("`{s}` is not `host:port` or `unix:///path`"));
        }
        Ok(ListenAddr::Tcp(addr))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc: ListenAddr,
    /// `None` to run without the HTTP listener.
    pub http: Option<ListenAddr>,
    pub options: ServeOptions,
    /// Evaluation threads; 0 evaluates on the async runtime's threads (no hand-off).
    pub workers: usize,
    /// Checks that may wait for a worker before new ones are shed.
    pub queue: usize,
    pub decision_log: Option<DecisionLogConfig>,
    /// TLS (and mTLS) on both listeners; `None` for plaintext.
    pub tls: Option<crate::tls::TlsSettings>,
    /// The listeners' bounds (connections, streams, bytes in flight, timeouts) and the largest
    /// `CheckRequest` accepted (bigger: gRPC `RESOURCE_EXHAUSTED`).
    pub limits: arbiter_engine::limits::Limits,
    /// The audit dashboard, mounted at `/ui/` on the HTTP listener.
    pub ui: Option<Arc<crate::dashboard::Dashboard>>,
    /// OPA's `--diagnostic-addr`: a plaintext HTTP listener with `/health` and `/metrics` only,
    /// open to every caller (for probes and scrapers), whatever the main listener requires.
    pub diagnostic: Option<ListenAddr>,
    /// Envoy's HTTP ext_authz protocol (`http_service`) on this `host:port`.
    pub http_authz: Option<(String, crate::http_authz::HttpAuthzOptions)>,
    /// OpenTelemetry spans exported over OTLP.
    pub otlp: Option<crate::otel::OtlpConfig>,
}

/// Servers that are running.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound gRPC address (`None` for a Unix socket).
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    /// The bound diagnostic address.
    pub diagnostic_addr: Option<SocketAddr>,
    /// The bound HTTP ext_authz address.
    pub http_authz_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve `{addr}`"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))
}

/// What gRPC health says: NOT_SERVING while awaiting the policy, and while auditing is required
/// and the decision log refuses events (checks are then denied with `audit_unavailable`).
fn serving(state: &State) -> tonic_health::ServingStatus {
    if state.awaiting_policy.load(Ordering::Acquire) || !state.audit_available() {
        tonic_health::ServingStatus::NotServing
    } else {
        tonic_health::ServingStatus::Serving
    }
}

async fn report_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter
        .set_service_status(crate::grpc::SERVICE_NAME, status)
        .await;
    reporter.set_service_status("", status).await;
}

/// Bind the listeners and start serving `authorizer`.
pub async fn start(config: ServerConfig, authorizer: Authorizer) -> anyhow::Result<RunningServer> {
    start_with(config, authorizer, false).await
}

/// [`start`], optionally *awaiting its policy*: `authorizer` is a stand-in that denies every
/// check, and health (gRPC and `/health`) says NOT_SERVING until the first successful
/// [`crate::reload::reload`] — OPA's behaviour while a bundle has not been activated.
pub async fn start_with(
    config: ServerConfig,
    authorizer: Authorizer,
    awaiting_policy: bool,
) -> anyhow::Result<RunningServer> {
    let metrics = Arc::new(Metrics::with_grpc_buckets(
        &config.options.grpc_duration_buckets,
    ));
    let decision_log = match &config.decision_log {
        Some(c) => Some(
            DecisionLog::start(c, config.options.labels.clone(), metrics.clone())
                .context("cannot start the decision log")?,
        ),
        None => None,
    };
    let tracer = match &config.otlp {
        Some(c) => Some(
            crate::otel::Tracer::start(
                c,
                crate::otel::ResourceInfo {
                    instance_id: config.options.labels.id.clone(),
                    version: config.options.labels.version.clone(),
                },
                metrics.clone(),
            )
            .map_err(anyhow::Error::msg)
            .context("cannot start exporting traces")?,
        ),
        None => None,
    };
    let state = Arc::new(State {
        authorizer: ArcSwap::from_pointee(authorizer),
        reload_status: ArcSwap::from_pointee(crate::reload::ReloadStatus::default()),
        pool: if config.workers == 0 {
            EvalPool::inline(config.queue)
        } else {
            EvalPool::new(config.workers, config.queue)
                .context("cannot start evaluation threads")?
        },
        metrics,
        decision_log,
        options: config.options.clone(),
        grpc_ready: Default::default(),
        awaiting_policy: AtomicBool::new(awaiting_policy),
        readiness_changed: tokio::sync::Notify::new(),
        data_writes: std::sync::Mutex::default(),
        shadow: std::sync::OnceLock::new(),
        tracer,
    });
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // gRPC health follows the policy (NOT_SERVING while awaiting it) and the audit trail (the
    // decision-log writer flips its health on its own thread: looked at every 250 ms).
    let mut status = serving(&state);
    report_health(&health_reporter, status).await;
    {
        let (state, reporter, mut stopped) =
            (state.clone(), health_reporter.clone(), stopped.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                tokio::select! {
                    () = state.readiness_changed.notified() => {}
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                let now = serving(&state);
                if now != status {
                    status = now;
                    report_health(&reporter, now).await;
                }
            }
        });
    }
    let limits = config.limits;
    let intake = crate::listener::IntakeLimits::new(&limits, state.metrics.clone());
    let check = AuthzService::new(state.clone())
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(limits.max_response_bytes);
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams)
        .http2_max_header_list_size(u32::try_from(limits.max_header_list_bytes).unwrap_or(u32::MAX))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_nodelay(true)
        // The Check service is reached from the intake layer, not through the router.
        .layer(crate::listener::IntakeLayer(intake, check))
        .add_service(health_service);
    let mut grpc_addr = None;
    let shutdown = wait_for(stopped.clone());
    match &config.grpc {
        ListenAddr::Tcp(a) => {
            let listener = tokio::net::TcpListener::bind(resolve(a)?)
                .await
                .with_context(|| format!("cannot listen on {a} (gRPC)"))?;
            grpc_addr = Some(listener.local_addr()?);
            match &config.tls {
                None => {
                    let rx = crate::listener::accept_limited(
                        listener,
                        limits.max_connections,
                        |(tcp, _), permit| Ok::<_, std::io::Error>(Limited::new(tcp, permit)),
                    );
                    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
                    tasks.push(tokio::spawn(async move {
                        grpc.serve_with_incoming_shutdown(incoming, shutdown)
                            .await
                            .context("gRPC server failed")
                    }));
                }
                Some(t) => {
                    let tls = crate::tls::server_config(t, &[b"h2"])?;
                    let rx = crate::tls::accept_tls(
                        listener,
                        tls,
                        limits.max_connections,
                        limits.request_timeout,
                        Ok::<_, std::io::Error>,
                    );
                    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
                    tasks.push(tokio::spawn(async move {
                        grpc.serve_with_incoming_shutdown(incoming, shutdown)
                            .await
                            .context("gRPC server failed")
                    }));
                }
            }
        }
        ListenAddr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let listener = tokio::net::UnixListener::bind(p)
                .with_context(|| format!("cannot listen on {} (gRPC)", p.display()))?;
            let rx =
                crate::listener::accept_limited(listener, limits.max_connections, |io, permit| {
                    Ok::<_, std::io::Error>(Limited::new(io, permit))
                });
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            tasks.push(tokio::spawn(async move {
                grpc.serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .context("gRPC server failed")
            }));
        }
    }
    state.grpc_ready.store(true, Ordering::Release);

    let mut http_addr = None;
    if let Some(addr) = &config.http {
        let ListenAddr::Tcp(a) = addr else {
            anyhow::bail!("the HTTP listener needs `host:port`, not {addr}");
        };
        let listener = tokio::net::TcpListener::bind(resolve(a)?)
            .await
            .with_context(|| format!("cannot listen on {a} (HTTP)"))?;
        let local = listener.local_addr()?;
        http_addr = Some(local);
        let mut router = crate::http::router(state.clone());
        if let Some(d) = &config.ui {
            router = router
                .route(
                    "/ui",
                    axum::routing::get(|| async { axum::response::Redirect::permanent("/ui/") }),
                )
                .nest("/ui/", crate::dashboard::router(d.clone()));
        }
        let shutdown = wait_for(stopped.clone());
        let tls = config.tls.clone();
        tasks.push(tokio::spawn(async move {
            crate::listener::http1::serve_http(listener, tls.as_ref(), router, limits, shutdown)
                .await
                .context("HTTP server failed")
        }));
    }
    let mut diagnostic_addr = None;
    if let Some(addr) = &config.diagnostic {
        let ListenAddr::Tcp(a) = addr else {
            anyhow::bail!("the diagnostic listener needs `host:port`, not {addr}");
        };
        let listener = tokio::net::TcpListener::bind(resolve(a)?)
            .await
            .with_context(|| format!("cannot listen on {a} (diagnostic)"))?;
        diagnostic_addr = Some(listener.local_addr()?);
        let router = crate::http::diagnostic_router(state.clone());
        let shutdown = wait_for(stopped.clone());
        tasks.push(tokio::spawn(async move {
            crate::listener::http1::serve_http(listener, None, router, limits, shutdown)
                .await
                .context("diagnostic HTTP server failed")
        }));
    }
    let mut http_authz_addr = None;
    if let Some((a, options)) = &config.http_authz {
        let listener = tokio::net::TcpListener::bind(resolve(a)?)
            .await
            .with_context(|| format!("cannot listen on {a} (HTTP ext_authz)"))?;
        http_authz_addr = Some(listener.local_addr()?);
        let router = crate::http_authz::router(state.clone(), options.clone());
        let shutdown = wait_for(stopped.clone());
        let tls = config.tls.clone();
        tasks.push(tokio::spawn(async move {
            crate::listener::http1::serve_http(listener, tls.as_ref(), router, limits, shutdown)
                .await
                .context("HTTP ext_authz server failed")
        }));
    }
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        diagnostic_addr,
        http_authz_addr,
        state,
        stop,
        tasks,
    })
}

async fn wait_for(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// How long a shutdown waits for open connections to finish before closing them (the decision
/// log is flushed after, within its own bounds; together they fit Kubernetes' default 30 s).
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

impl RunningServer {
    /// Stop accepting connections, let in-flight checks finish — for at most [`DRAIN`]: a
    /// client that keeps its connection open without reading does not hold the shutdown —
    /// then flush the decision log.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.grpc_ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        let mut first_error = None;
        let deadline = tokio::time::Instant::now() + DRAIN;
        for t in self.tasks {
            let abort = t.abort_handle();
            let Ok(done) = tokio::time::timeout_at(deadline, t).await else {
                // Connections still open at the deadline are closed.
                abort.abort();
                continue;
            };
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(anyhow::anyhow!("server task failed: {e}"));
                }
            }
        }
        // The servers are gone: send the last spans, and drain the decision log, whoever else
        // holds the state.
        let state = self.state;
        if let Some(tracer) = &state.tracer {
            tracer.close().await;
        }
        let closed = tokio::task::spawn_blocking(move || {
            // The shadow first: the events it holds go on to the log.
            if let Some(shadow) = state.shadow.get() {
                shadow.close();
            }
            if let Some(log) = &state.decision_log {
                log.close();
            }
        })
        .await;
        if let Err(e) = closed {
            first_error.get_or_insert(anyhow::anyhow!("decision log did not close: {e}"));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Run until one of the servers stops on its own (an error), then shut down.
    pub async fn wait_for_signal(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        signal.await;
        self.shutdown().await
    }
}
