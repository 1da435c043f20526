//! TLS and mTLS on arbiter's own listeners (rustls).
//!
//! - The serving certificate and key are re-read when their files change (SPIRE rotates SVIDs
//!   hourly): each handshake asks the resolver, which checks the files' modification times at
//!   most once a second and keeps the last good pair if a new one does not load. Established
//!   connections are not touched.
//! - With a client CA, client certificates are required and verified; with allowed callers, the
//!   client certificate must also be an X.509-SVID whose SPIFFE ID matches one of the patterns
//!   (`spiffe://cluster.local/ns/istio-system/sa/*`). A caller that fails gets a failed
//!   handshake — never a `CheckResponse`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use arbiter_engine::identity::spiffe_match;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// TLS settings for the listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by these CAs.
    pub client_ca: Option<PathBuf>,
    /// SPIFFE ID patterns allowed to call (needs `client_ca`).
    pub allowed_callers: Vec<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load_certified_key(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid certificate PEM in {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .with_context(|| format!("unsupported private key in {}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Serves the certificate in `cert`/`key`, re-reading them when they change.
#[derive(Debug)]
struct ReloadingResolver {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
    last_check_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl ReloadingResolver {
    fn new(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let ck = load_certified_key(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new((ck, mtime(cert), mtime(key))),
            last_check_ms: AtomicU64::new(now_ms()),
        })
    }

    fn maybe_reload(&self) {
        let now = now_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .last_check_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (c, k) = (mtime(&self.cert), mtime(&self.key));
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        if (c, k) == (cur.1, cur.2) {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(ck) => *cur = (ck, c, k),
            Err(e) => tracing::warn!(
                event = "tls_reload_failed",
                error = %format!("{e:#}"),
                "keeping the previous TLS certificate: {e:#}"
            ),
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.maybe_reload();
        self.current.lock().ok().map(|c| c.0.clone())
    }
}

/// The SPIFFE ID in a certificate's single URI SAN: the engine's one reading of it.
pub use arbiter_engine::identity::chain::spiffe_id_of_der as certificate_spiffe_id;

/// Verifies the chain with WebPKI, then the caller's SPIFFE ID against the allowed patterns.
#[derive(Debug)]
struct SpiffeCallerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for SpiffeCallerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.is_empty() {
            return Ok(ClientCertVerified::assertion());
        }
        let id = certificate_spiffe_id(end_entity).map_err(|e| {
            rustls::Error::General(format!("client certificate is not an X.509-SVID: {e}"))
        })?;
        if self.allowed.iter().any(|p| spiffe_match(id.as_str(), p)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "caller `{id}` is not allowed"
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The rustls server configuration `s` describes.
pub fn server_config(s: &TlsSettings, alpn: &[&[u8]]) -> anyhow::Result<Arc<ServerConfig>> {
    anyhow::ensure!(
        s.allowed_callers.is_empty() || s.client_ca.is_some(),
        "--allowed-caller needs --tls-client-ca (caller identities come from client certificates)"
    );
    for p in &s.allowed_callers {
        anyhow::ensure!(
            p.starts_with("spiffe://"),
            "--allowed-caller `{p}` is not a SPIFFE ID pattern (spiffe://trust-domain/path, `*` and `**` by segment)"
        );
    }
    let resolver = Arc::new(ReloadingResolver::new(&s.cert, &s.key)?);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?;
    let mut config = match &s.client_ca {
        None => builder.with_no_client_auth().with_cert_resolver(resolver),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cannot read {}", ca.display()))?
            {
                roots
                    .add(c.with_context(|| format!("invalid certificate in {}", ca.display()))?)
                    .with_context(|| format!("unusable CA certificate in {}", ca.display()))?;
            }
            anyhow::ensure!(!roots.is_empty(), "no CA certificate in {}", ca.display());
            let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .context("client certificate verifier")?;
            let verifier = Arc::new(SpiffeCallerVerifier {
                inner: webpki,
                allowed: s.allowed_callers.clone(),
            });
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(resolver)
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS connection accepted from TCP, with its peer address for tonic and axum.
#[derive(Debug)]
pub struct TlsConn {
    pub stream: TlsStream<TcpStream>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// One of the listener's `max_connections`, held until the connection closes.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: Some(self.local),
            remote_addr: Some(self.remote),
        }
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accept TCP connections (at most `max_connections` open, handshakes included) and complete
/// TLS handshakes off the accept loop (a slow or failing client never blocks the next one).
/// Failed handshakes, and those not done within `handshake_timeout`, are dropped; each
/// completed one is handed over as `wrap` makes it.
pub fn accept_tls<T: Send + 'static>(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    max_connections: usize,
    handshake_timeout: Duration,
    wrap: impl Fn(TlsConn) -> T + Clone + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let mut accepted = crate::listener::accept_limited(listener, max_connections, |io, p| (io, p));
    tokio::spawn(async move {
        while let Some(((tcp, remote), permit)) = accepted.recv().await {
            let local = tcp.local_addr().unwrap_or(remote);
            let acceptor = acceptor.clone();
            let conn_tx = tx.clone();
            let wrap = wrap.clone();
            tokio::spawn(async move {
                if let Ok(Ok(stream)) =
                    tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await
                {
                    let _ = conn_tx
                        .send(wrap(TlsConn {
                            stream,
                            remote,
                            local,
                            _permit: permit,
                        }))
                        .await;
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}
