//! Bounded listeners: how many connections each listener holds, how long a request may take to
//! arrive, and — for gRPC — how many requests and bytes may be on their way at once.
//!
//! tonic's decoder reserves a message's *declared* length as soon as its 5-byte prefix arrives,
//! so a client that declares 1 MiB and never sends it costs 1 MiB per stream (10,000 such
//! streams took the server past 11 GB). [`Intake`] receives each gRPC request's message before
//! tonic sees it: memory grows with the bytes that actually arrived, a declared length above
//! `max_request_bytes` is refused at once, every request must arrive within `request_timeout`,
//! and the requests and bytes in flight across all connections are capped. The limits are in
//! [`arbiter_engine::limits`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arbiter_engine::limits::Limits;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::codegen::http::{Request, Response};

use crate::metrics::{Metrics, Refusal};

/// A connection that holds one of its listener's `max_connections` permits until it closes.
#[derive(Debug)]
pub struct Limited<T> {
    pub io: T,
    _permit: OwnedSemaphorePermit,
}

impl<T> Limited<T> {
    pub fn new(io: T, permit: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _permit: permit,
        }
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Something connections are accepted from.
pub trait Accept: Send + 'static {
    type Io: Send + 'static;
    fn accept(&mut self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = (tokio::net::TcpStream, std::net::SocketAddr);
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (s, a) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, a))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        Ok(tokio::net::UnixListener::accept(self).await?.0)
    }
}

/// Accept connections while fewer than `max` are open: each is handed over with the permit it
/// holds until it closes (`wrap` joins them). Past `max`, new connections wait in the kernel's
/// backlog until one closes. The loop ends when the receiver is dropped.
pub fn accept_limited<L: Accept, T: Send + 'static>(
    mut listener: L,
    max: usize,
    wrap: impl Fn(L::Io, OwnedSemaphorePermit) -> T + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(max.max(1)));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let io = tokio::select! {
                io = listener.accept() => io,
                () = tx.closed() => return,
            };
            match io {
                Ok(io) => {
                    if tx.send(wrap(io, permit)).await.is_err() {
                        return;
                    }
                }
                // Out of file descriptors and the like: wait a moment rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    rx
}

/// Counts shared by every gRPC request: what is in flight and what may be.
#[derive(Debug)]
pub struct IntakeLimits {
    max_message: usize,
    max_receiving: usize,
    max_receiving_bytes: usize,
    timeout: Duration,
    receiving: AtomicUsize,
    receiving_bytes: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl IntakeLimits {
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            max_message: limits.max_request_bytes,
            max_receiving: limits.max_receiving,
            max_receiving_bytes: limits.max_receiving_bytes,
            timeout: limits.request_timeout,
            receiving: AtomicUsize::new(0),
            receiving_bytes: AtomicUsize::new(0),
            metrics,
        })
    }
}

/// One request being received: its slot and its bytes are given back when it is dropped.
struct Receiving<'a> {
    limits: &'a IntakeLimits,
    bytes: usize,
}

impl<'a> Receiving<'a> {
    fn enter(limits: &'a IntakeLimits) -> Option<Self> {
        let before = limits.receiving.fetch_add(1, Ordering::AcqRel);
        let slot = Self { limits, bytes: 0 };
        (before < limits.max_receiving).then_some(slot)
    }

    fn hold(&mut self, n: usize) -> bool {
        let before = self.limits.receiving_bytes.fetch_add(n, Ordering::AcqRel);
        self.bytes += n;
        before + n <= self.limits.max_receiving_bytes
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.limits.receiving.fetch_sub(1, Ordering::AcqRel);
        self.limits
            .receiving_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The [`tower::Layer`] that puts [`Intake`] in front of the gRPC services: a check goes to
/// the Check service directly, anything else through the router.
#[derive(Debug, Clone)]
pub struct IntakeLayer(pub Arc<IntakeLimits>, pub crate::grpc::AuthzService);

impl<S> tower::Layer<S> for IntakeLayer {
    type Service = Intake<S>;
    fn layer(&self, inner: S) -> Intake<S> {
        Intake {
            inner,
            limits: self.0.clone(),
            check: self.1.clone(),
        }
    }
}

/// Receives a gRPC request's message within the limits, then hands a check to `check` and
/// anything else to `inner` (the router: health, and UNIMPLEMENTED for other methods). The
/// router would do for a check what it does for every call (a boxed service clone, URL
/// parameters in the extensions) only to reach the same service.
#[derive(Debug, Clone)]
pub struct Intake<S> {
    inner: S,
    limits: Arc<IntakeLimits>,
    check: crate::grpc::AuthzService,
}

/// Where [`Intake`] hands a received request.
enum Target<S> {
    Check(crate::grpc::AuthzService),
    Router(S),
}

fn refuse(code: tonic::Code, message: String) -> Response<tonic::body::Body> {
    tonic::Status::new(code, message).into_http()
}

/// Why a message was not received.
enum Refused {
    /// `max_receiving` requests were already arriving.
    Receiving,
    /// The declared or sent length, over `max_request_bytes`.
    TooLarge(usize),
    /// `max_receiving_bytes` were already held.
    Bytes,
    /// The message did not arrive within `request_timeout`.
    Timeout,
    /// The body could not be read.
    Body(String),
}

impl Refused {
    /// Count the refusal and answer it with its gRPC status.
    fn answer(self, limits: &IntakeLimits) -> Response<tonic::body::Body> {
        let (counted, code, message) = match self {
            Refused::Receiving => (
                Some(Refusal::Receiving),
                tonic::Code::ResourceExhausted,
                format!(
                    "more than {} requests are being received; try again",
                    limits.max_receiving
                ),
            ),
            Refused::TooLarge(n) => (
                Some(Refusal::TooLarge),
                tonic::Code::ResourceExhausted,
                format!(
                    "message length too large: found {n} bytes, the limit is: {} bytes",
                    limits.max_message
                ),
            ),
            Refused::Bytes => (
                Some(Refusal::ReceivingBytes),
                tonic::Code::ResourceExhausted,
                format!(
                    "more than {} bytes of requests are being received; try again",
                    limits.max_receiving_bytes
                ),
            ),
            Refused::Timeout => (
                Some(Refusal::Timeout),
                tonic::Code::DeadlineExceeded,
                format!("the request did not arrive within {:?}", limits.timeout),
            ),
            Refused::Body(e) => (
                None,
                tonic::Code::Internal,
                format!("cannot read the request: {e}"),
            ),
        };
        if let Some(r) = counted {
            limits.metrics.refused(r);
        }
        refuse(code, message)
    }
}

impl<S> tower::Service<Request<tonic::body::Body>> for Intake<S>
where
    S: tower::Service<
            Request<tonic::body::Body>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let target = if request.uri().path() == crate::grpc::CHECK_PATH {
            Target::Check(self.check.clone())
        } else {
            // The ready router answers this request; a fresh clone waits for the next one.
            let clone = self.inner.clone();
            Target::Router(std::mem::replace(&mut self.inner, clone))
        };
        let limits = self.limits.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // The slot is released once the message is in: evaluation is bounded by the pool's
            // queue.
            let message = match Receiving::enter(&limits) {
                None => Err(Refused::Receiving),
                Some(mut slot) => {
                    tokio::time::timeout(limits.timeout, receive(body, &limits, &mut slot))
                        .await
                        .unwrap_or(Err(Refused::Timeout))
                }
            };
            let message = match message {
                Ok(m) => m,
                Err(refused) => return Ok(refused.answer(&limits)),
            };
            let body = tonic::body::Body::new(
                http_body_util::Full::new(message).map_err(|e: Infallible| match e {}),
            );
            let request = Request::from_parts(parts, body);
            match target {
                Target::Check(mut check) => check.call(request).await,
                Target::Router(mut inner) => inner.call(request).await,
            }
        })
    }
}

/// Read the whole body, refusing a declared or actual length above the limit and bytes past the
/// shared budget. Memory follows the bytes received, never a declared length.
async fn receive(
    mut body: tonic::body::Body,
    limits: &IntakeLimits,
    slot: &mut Receiving<'_>,
) -> Result<Bytes, Refused> {
    let limit = limits.max_message.saturating_add(5);
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refused::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if data.is_empty() {
            continue;
        }
        total += data.len();
        if !slot.hold(data.len()) {
            return Err(Refused::Bytes);
        }
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(f) => {
                rest.reserve(f.len() + data.len());
                rest.extend_from_slice(&f);
                rest.extend_from_slice(&data);
            }
        }
        let head: &[u8] = first.as_deref().unwrap_or(&rest);
        if head.len() >= 5 {
            let declared = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if declared > limits.max_message {
                return Err(Refused::TooLarge(declared));
            }
        }
        if total > limit {
            return Err(Refused::TooLarge(total - 5));
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// HTTP/1 connections: headers within `request_timeout` (which also closes an idle
/// keep-alive connection), a bounded header block, and a whole answer within
/// `request_timeout` (else 408).
pub mod http1 {
    use super::*;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::sync::watch;
    use tower::ServiceExt as _;

    /// Serve `router` on `listener` (TLS when `tls` is given) until `shutdown` resolves, then
    /// let open connections finish their request (at most `request_timeout`).
    pub async fn serve_http(
        listener: tokio::net::TcpListener,
        tls: Option<&crate::tls::TlsSettings>,
        router: axum::Router,
        limits: Limits,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        match tls {
            None => {
                let rx = accept_limited(listener, limits.max_connections, |(tcp, remote), p| {
                    (Limited::new(tcp, p), remote)
                });
                serve(rx, router, limits, stopped).await
            }
            Some(t) => {
                let config = crate::tls::server_config(t, &[b"http/1.1"])?;
                let rx = crate::tls::accept_tls(
                    listener,
                    config,
                    limits.max_connections,
                    limits.request_timeout,
                    |c| {
                        let remote = c.remote;
                        (c, remote)
                    },
                );
                serve(rx, router, limits, stopped).await
            }
        }
    }

    /// Serve `router` on connections from `rx` (each holding its listener permit) until
    /// `stopped` turns true.
    async fn serve<Io>(
        mut rx: mpsc::Receiver<(Io, std::net::SocketAddr)>,
        router: axum::Router,
        limits: Limits,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<()>
    where
        Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut connections = tokio::task::JoinSet::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.request_timeout)
            .max_buf_size(limits.max_header_list_bytes.max(8192))
            .keep_alive(true);
        loop {
            let next = tokio::select! {
                c = rx.recv() => c,
                _ = stopped.changed() => None,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let Some((io, remote)) = next else {
                break;
            };
            let router = router.clone();
            let timeout = limits.request_timeout;
            let service = tower::service_fn(move |mut request: Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(crate::http::PeerAddr(remote)));
                let answer = router.clone().oneshot(request.map(axum::body::Body::new));
                async move {
                    Ok::<_, Infallible>(match tokio::time::timeout(timeout, answer).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => match e {},
                        Err(_) => {
                            let mut r = axum::response::Response::new(axum::body::Body::from(
                                "request timeout\n",
                            ));
                            *r.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
                            r.headers_mut().insert(
                                axum::http::header::CONNECTION,
                                axum::http::HeaderValue::from_static("close"),
                            );
                            r
                        }
                    })
                }
            });
            let connection = builder.serve_connection(
                TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(service),
            );
            let mut stop = stopped.clone();
            connections.spawn(async move {
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => return,
                    _ = stop.wait_for(|s| *s) => {}
                }
                connection.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(timeout, connection).await;
            });
        }
        drop(rx);
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}
