//! Fetching bundles over HTTP(S) with ETags, as OPA's bundle plugin does: `GET` with
//! `If-None-Match`; `304` means unchanged. The one HTTP client of the services arbiter talks to
//! (bundle servers, OAuth2 token endpoints, decision-log collectors): hyper's HTTP/1.1
//! connection over a TCP (and rustls) stream, for blocking callers, bounded in size and time;
//! no redirects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

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

/// `GET url`, with `If-None-Match: etag` when given, and the service's headers, credentials
/// and TLS configuration.
pub fn get(
    url: &str,
    etag: Option<&str>,
    auth: &ServiceAuth,
    timeout: Duration,
) -> Result<Fetched, String> {
    let mut headers = vec![("Accept".to_string(), "application/gzip".to_string())];
    if let Some(e) = etag {
        headers.push(("If-None-Match".into(), e.to_string()));
    }
    headers.extend(
        auth.headers_within(timeout)
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
/// uploads all go through it (`headers`: names and values beside `Host` and `User-Agent`;
/// `tls`: the configuration for an `https://` URL), from a blocking thread: the whole exchange
/// runs on a runtime of its own within `timeout`. The status, the `ETag`, and, for a 2xx
/// answer, the body (at most [`MAX_BODY_BYTES`]; hyper reads the framing: Content-Length,
/// chunked, or to the end).
pub fn request(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("{url}: {e}"))?;
    let exchange = exchange(method, url, headers, body, tls);
    runtime
        .block_on(async { tokio::time::timeout(timeout, exchange).await })
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
        .map_err(|e| format!("{url}: {e}"))
}

async fn exchange(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let target = parse_url(url)?;
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let authority = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(target.path.as_str())
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("arbiter/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    let response = if target.tls {
        let cfg = tls.cloned().ok_or("no TLS configuration")?;
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(hyper_util::rt::TokioIo::new(stream), request).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), request).await?
    };
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get(hyper::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status == 304 || !(200..300).contains(&status) {
        return Ok((status, etag, Vec::new()));
    }
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("the body is larger than {MAX_BODY_BYTES} bytes")
            } else {
                e.to_string()
            }
        })?
        .to_bytes();
    Ok((status, etag, body.to_vec()))
}

/// One request on a new HTTP/1.1 connection over `io`.
async fn send<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};

    /// A server that answers one connection with `answer`, and hands back what it was sent.
    fn serve_once(answer: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/bundle.tar.gz", listener.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(&answer);
            String::from_utf8_lossy(&got).into_owned()
        });
        (url, t)
    }

    fn get_with(answer: &[u8], etag: Option<&str>) -> (Result<Fetched, String>, String) {
        let (url, t) = serve_once(answer.to_vec());
        let r = get(
            &url,
            etag,
            &ServiceAuth::bearer("t0k"),
            Duration::from_secs(5),
        );
        (r, t.join().unwrap())
    }

    #[test]
    fn chunked_and_sized_bodies_and_etags() {
        let (r, sent) = get_with(
            b"HTTP/1.1 200 OK\r\nETag: \"v2\"\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            Some("\"v1\""),
        );
        assert_eq!(
            r.unwrap(),
            Fetched::New {
                body: b"abcde".to_vec(),
                etag: Some("\"v2\"".into())
            }
        );
        let sent = sent.to_ascii_lowercase();
        assert!(
            sent.starts_with("get /bundle.tar.gz http/1.1\r\n"),
            "{sent}"
        );
        for h in [
            "if-none-match: \"v1\"",
            "authorization: bearer t0k",
            "host: 127.0.0.1:",
        ] {
            assert!(sent.contains(h), "{h} in {sent}");
        }
        let (r, _) = get_with(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz", None);
        assert_eq!(
            r.unwrap(),
            Fetched::New {
                body: b"xyz".to_vec(),
                etag: None
            }
        );
        let (r, _) = get_with(b"HTTP/1.1 304 Not Modified\r\n\r\n", Some("\"v1\""));
        assert_eq!(r.unwrap(), Fetched::Unchanged);
    }

    #[test]
    fn bad_answers_are_errors() {
        // A redirect is not followed; an error status is an error.
        let (r, _) = get_with(
            b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
            None,
        );
        assert!(r.unwrap_err().contains("302"));
        // A malformed chunk size, a body cut short, a response that is not HTTP.
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ] {
            let (r, _) = get_with(answer, None);
            assert!(r.is_err(), "{}", String::from_utf8_lossy(answer));
        }
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/b", listener.local_addr().unwrap());
        let e = get(
            &url,
            None,
            &ServiceAuth::default(),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("no answer within"), "{e}");
        drop(listener);
    }
}
