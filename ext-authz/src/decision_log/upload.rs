//! Uploading decision events to a collector in OPA's format: a gzip-compressed JSON array
//! POSTed to the service URL (OPA's `services` + `decision_logs.resource`, default `/logs`).
//!
//! Events wait in a bounded buffer (by count); the uploader thread sends them in order, in
//! batches of up to `batch_bytes` (uncompressed) once a batch is full or the oldest event has
//! waited `max_delay`. A failed upload (no connection, a timeout, a non-2xx status) is retried
//! with exponential backoff and the same batch, so the collector receives events in order and
//! only once per success. When the buffer is full, new events are dropped and counted
//! (`upload_buffer_full`): memory stays bounded and the decision path never waits.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::metrics::{DropReason, Metrics};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// `http://host:port/path` or `https://…`.
    pub url: String,
    /// Events buffered at most.
    pub buffer_events: usize,
    /// Uncompressed bytes per upload, at most (one event larger than this goes alone).
    pub batch_bytes: usize,
    /// Longest an event waits before an upload starts.
    pub max_delay: Duration,
    /// Connect, write and read timeout of one upload.
    pub timeout: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// At shutdown, how long to keep trying to deliver what is buffered.
    pub shutdown_grace: Duration,
    /// The service's headers and credentials (OPA's `services.*`).
    pub auth: crate::service::ServiceAuth,
}

impl UploadConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            buffer_events: 10_000,
            batch_bytes: 1 << 20,
            max_delay: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            auth: Default::default(),
        }
    }
}

/// A parsed `http(s)://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

/// Read by `http::Uri` (IPv6 literals in brackets, ports, no user information); a URL without
/// a path posts to `/logs`, OPA's default `decision_logs.resource`.
pub(crate) fn parse_url(url: &str) -> Result<Target, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "`{url}`: the collector URL must start with http:// or https://"
            ));
        }
    };
    let authority = uri.authority().map_or("", |a| a.as_str());
    if authority.contains('@') {
        return Err(format!(
            "`{url}`: user information in the URL is not supported (give credentials)"
        ));
    }
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{url}`: no host"));
    }
    // `http::Uri` takes `host:junk` with no port: a port that is written must be one.
    if let Some((_, p)) = authority.rsplit_once(':')
        && !p.contains(']')
        && p.parse::<u16>().is_err()
    {
        return Err(format!("`{url}`: bad port `{p}`"));
    }
    let explicit_path = url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let path = match uri.path_and_query() {
        Some(p) if explicit_path => p.as_str().to_string(),
        _ => "/logs".to_string(),
    };
    Ok(Target {
        tls,
        host: host.to_string(),
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        path,
    })
}

struct Buffer {
    events: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    closing: bool,
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
}

/// The sending side, held by the log writer.
pub struct Uploader {
    shared: Arc<Shared>,
    config: UploadConfig,
    metrics: Arc<Metrics>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("url", &self.config.url)
            .finish()
    }
}

impl Uploader {
    pub fn start(config: UploadConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        // Checked at start: a URL that does not parse is a configuration error.
        parse_url(&config.url)?;
        // Built once: every upload reuses it.
        let tls = config.auth.tls.client_config_for(&config.url)?;
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                events: VecDeque::new(),
                bytes: 0,
                closing: false,
            }),
            wake: Condvar::new(),
        });
        let (s, c, m) = (shared.clone(), config.clone(), metrics.clone());
        let thread = std::thread::Builder::new()
            .name("arbiter-log-upload".into())
            .spawn(move || upload_loop(&s, &c, tls, &m))
            .map_err(|e| format!("cannot start the uploader: {e}"))?;
        Ok(Self {
            shared,
            config,
            metrics,
            thread: Some(thread),
        })
    }

    /// Buffer one encoded event (a JSON object, no newline needed). Never waits for the
    /// network; returns false when the event was dropped.
    pub fn push(&self, event: &[u8]) -> bool {
        let Ok(mut b) = self.shared.buffer.lock() else {
            return false;
        };
        if b.events.len() >= self.config.buffer_events {
            drop(b);
            self.metrics.log_dropped(DropReason::UploadBufferFull);
            return false;
        }
        let line = event.strip_suffix(b"\n").unwrap_or(event).to_vec();
        b.bytes += line.len();
        b.events.push_back((Instant::now(), line));
        self.metrics.set_upload_buffered(b.events.len());
        if b.bytes >= self.config.batch_bytes {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Deliver what is buffered (for at most `shutdown_grace`) and stop.
    pub fn shutdown(&mut self) {
        if let Ok(mut b) = self.shared.buffer.lock() {
            b.closing = true;
        }
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Take the next batch (without removing it): at least one event, at most `batch_bytes`.
fn next_batch(b: &Buffer, batch_bytes: usize) -> (usize, Vec<u8>) {
    let mut body = Vec::with_capacity(batch_bytes.min(b.bytes + 2 * b.events.len() + 2));
    body.push(b'[');
    let mut n = 0;
    for (_, e) in &b.events {
        if n > 0 && body.len() + e.len() + 2 > batch_bytes {
            break;
        }
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
        n += 1;
    }
    body.push(b']');
    (n, body)
}

fn upload_loop(
    shared: &Shared,
    config: &UploadConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    metrics: &Metrics,
) {
    let mut backoff = Duration::ZERO;
    let mut deadline: Option<Instant> = None;
    loop {
        // Wait for a full batch, an old enough event, or shutdown.
        let (n, body) = {
            let Ok(mut b) = shared.buffer.lock() else {
                return;
            };
            loop {
                if b.closing && deadline.is_none() {
                    deadline = Some(Instant::now() + config.shutdown_grace);
                }
                if b.events.is_empty() {
                    if b.closing {
                        return;
                    }
                    b = match shared.wake.wait(b) {
                        Ok(g) => g,
                        Err(_) => return,
                    };
                    continue;
                }
                let oldest = b
                    .events
                    .front()
                    .map_or(Duration::ZERO, |(t, _)| t.elapsed());
                if b.closing || b.bytes >= config.batch_bytes || oldest >= config.max_delay {
                    break;
                }
                let wait = config.max_delay.saturating_sub(oldest);
                b = match shared.wake.wait_timeout(b, wait) {
                    Ok((g, _)) => g,
                    Err(_) => return,
                };
            }
            next_batch(&b, config.batch_bytes)
        };
        if let Some(d) = deadline
            && Instant::now() >= d
        {
            // Shutting down and out of time: what is left is lost, and counted.
            if let Ok(mut b) = shared.buffer.lock() {
                for _ in 0..b.events.len() {
                    metrics.log_dropped(DropReason::Shutdown);
                }
                b.events.clear();
                b.bytes = 0;
                metrics.set_upload_buffered(0);
            }
            return;
        }
        match post(tls.as_ref(), config, &body) {
            Ok(()) => {
                backoff = Duration::ZERO;
                if let Ok(mut b) = shared.buffer.lock() {
                    for _ in 0..n {
                        if let Some((_, e)) = b.events.pop_front() {
                            b.bytes -= e.len();
                        }
                    }
                    metrics.set_upload_buffered(b.events.len());
                }
                metrics.log_uploaded(n);
            }
            Err(_) => {
                metrics.upload_failed();
                backoff = (backoff * 2)
                    .max(Duration::from_millis(100))
                    .min(config.max_backoff);
                let sleep = match deadline {
                    Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                    None => backoff,
                };
                // Sleep, but wake early for shutdown.
                if let Ok(b) = shared.buffer.lock()
                    && !b.closing
                {
                    let _ = shared.wake.wait_timeout(b, sleep);
                } else {
                    std::thread::sleep(sleep.min(Duration::from_millis(200)));
                }
            }
        }
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
    enc.write_all(body)?;
    enc.finish()
}

/// POST a batch (gzipped) to the collector, with the service's headers and credentials.
fn post(
    tls: Option<&Arc<rustls::ClientConfig>>,
    config: &UploadConfig,
    json_array: &[u8],
) -> Result<(), String> {
    let body = gzip(json_array).map_err(|e| e.to_string())?;
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Content-Encoding".to_string(), "gzip".to_string()),
    ];
    headers.extend(config.auth.headers_within(config.timeout)?);
    let (status, _, _) =
        crate::fetch::request("POST", &config.url, &headers, &body, tls, config.timeout)?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("collector answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/logs").unwrap(),
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9000,
                path: "/logs".into()
            }
        );
        assert_eq!(parse_url("https://collector").unwrap().port, 443);
        assert_eq!(parse_url("http://c").unwrap().path, "/logs");
        assert_eq!(parse_url("http://[::1]:81/x").unwrap().host, "::1");
        assert!(parse_url("ftp://c").is_err());
        assert!(parse_url("http://c:port").is_err());
        assert!(parse_url("http://user:pw@c/x").is_err());
        assert!(parse_url("http:///x").is_err());
        assert_eq!(parse_url("http://c/a?b=1").unwrap().path, "/a?b=1");
        assert_eq!(parse_url("http://c:8080").unwrap().port, 8080);
    }

    #[test]
    fn batches_respect_the_size_and_take_at_least_one() {
        let mut b = Buffer {
            events: VecDeque::new(),
            bytes: 0,
            closing: false,
        };
        for i in 0..5 {
            let e = format!("{{\"i\":{i}}}").into_bytes();
            b.bytes += e.len();
            b.events.push_back((Instant::now(), e));
        }
        let (n, body) = next_batch(&b, 20);
        assert_eq!(n, 2);
        assert_eq!(body, b"[{\"i\":0},{\"i\":1}]");
        let (n, _) = next_batch(&b, 1);
        assert_eq!(n, 1);
        let (n, body) = next_batch(&b, 1 << 20);
        assert_eq!(n, 5);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 5);
    }
}
