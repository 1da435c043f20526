//! Fetching bundles over HTTP(S) with ETags, as OPA's bundle plugin does: `GET` with
//! `If-None-Match`; `304` means unchanged. A small blocking HTTP/1.1 client (Content-Length
//! and chunked bodies), bounded in size and time; no redirects.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::decision_log::upload::parse_url;
use crate::service::ServiceAuth;

/// What a fetch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `304 Not Modified`.
    Unchanged,
    /// A new body and its ETag.
    New { body: Vec<u8>, etag: Option<String> },
}

/// Largest body accepted.
pub const MAX_BODY_BYTES: usize = 256 << 20;

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// `GET url`, with `If-None-Match: etag` when given, and the service's headers, credentials
/// and TLS configuration.
pub fn get(
    url: &str,
    etag: Option<&str>,
    auth: &ServiceAuth,
    timeout: Duration,
) -> Result<Fetched, String> {
    let mut headers = String::from("Accept: application/gzip\r\n");
    if let Some(e) = etag {
        headers.push_str(&format!("If-None-Match: {e}\r\n"));
    }
    headers.push_str(
        &auth
            .header_lines_within(timeout)
            .map_err(|e| format!("{url}: {e}"))?,
    );
    let tls = auth.tls.client_config_for(url)?;
    let (status, new_etag, body) = request("GET", url, &headers, &[], tls.as_ref(), timeout)?;
    if status == 304 {
        return Ok(Fetched::Unchanged);
    }
    if !(200..300).contains(&status) {
        return Err(format!("{url}: the server answered {status}"));
    }
    Ok(Fetched::New {
        body,
        etag: new_etag,
    })
}

/// One HTTP/1.1 request to a service — bundle downloads, OAuth2 tokens and decision-log
/// uploads all go through it (`headers`: extra header lines, each ending in CRLF; `tls`: the
/// configuration for an `https://` URL). The status, the `ETag`, and, for a 2xx answer, the
/// body (Content-Length, chunked, or to the end; at most [`MAX_BODY_BYTES`]).
pub fn request(
    method: &str,
    url: &str,
    headers: &str,
    body: &[u8],
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let target = parse_url(url)?;
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{url}: {e}"))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: arbiter/{}\r\nConnection: close\r\n",
        target.path,
        target.host,
        target.port,
        env!("CARGO_PKG_VERSION")
    );
    head.push_str(headers);
    if method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut stream: Box<dyn ReadWrite> = if target.tls {
        let cfg = tls
            .cloned()
            .ok_or_else(|| format!("{url}: no TLS configuration"))?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| e.to_string())?;
        let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
        Box::new(rustls::StreamOwned::new(conn, tcp))
    } else {
        Box::new(tcp)
    };
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .and_then(|()| stream.flush())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("{url}: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP response"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut new_etag = None;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| format!("{url}: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "etag" => new_etag = Some(v.to_string()),
                _ => {}
            }
        }
    }
    if status == 304 || !(200..300).contains(&status) {
        return Ok((status, new_etag, Vec::new()));
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| format!("{url}: {e}"))?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("{url}: bad chunk size"))?;
            if size == 0 {
                break;
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(format!(
                    "{url}: the body is larger than {MAX_BODY_BYTES} bytes"
                ));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| format!("{url}: {e}"))?;
            line.clear();
            r.read_line(&mut line).map_err(|e| format!("{url}: {e}"))?;
        }
    } else if let Some(n) = length {
        if n > MAX_BODY_BYTES {
            return Err(format!(
                "{url}: the body is larger than {MAX_BODY_BYTES} bytes"
            ));
        }
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|e| format!("{url}: {e}"))?;
    } else {
        r.take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("{url}: {e}"))?;
        if body.len() > MAX_BODY_BYTES {
            return Err(format!(
                "{url}: the body is larger than {MAX_BODY_BYTES} bytes"
            ));
        }
    }
    Ok((status, new_etag, body))
}
