//! The listeners hold under the attacks of issue 16: stalled gRPC streams that declare a large
//! message and never send it, and slow-loris HTTP/1 clients. The server is the real binary;
//! its memory is read from `/proc`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

mod common;
use common::{http, stop};

/// The bound the stalled-stream attack must stay under (issue 16).
const RSS_BOUND_KIB: u64 = 128 * 1024;

fn serve(dir: &Path, extra: &[&str]) -> (common::Server, String, String) {
    std::fs::write(
        dir.join("policy.rego"),
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.parsed_path[0] == \"ok\"\n",
    )
    .unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, "limits:\n  request_timeout: 3s\n").unwrap();
    let mut cmd = common::serve_command();
    cmd.arg(dir.join("policy.rego"))
        .args(["--config", config.to_str().unwrap()])
        .args(extra);
    common::serve(cmd)
}

/// Stops the server when the test ends, passed or failed.
struct Stopper(Option<common::Server>);

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop(c);
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The process's own memory (heap, stacks): RSS less the executable's pages, which `serve`
/// unmaps once started and maps back as code runs (more code runs as an attack goes on: that
/// is not memory held).
fn anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn metric(http_addr: &str, name: &str) -> u64 {
    let text = http(http_addr, "GET", "/metrics", "").1;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn check(path: &str) -> CheckRequest {
    common::check_request(path, Vec::new())
}

/// A gRPC `Check` whose 5-byte prefix declares `declared` bytes, and nothing after it.
fn stalled_check(declared: u32) -> (tonic::codegen::http::Request<()>, bytes::Bytes) {
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri("http://svc/envoy.service.auth.v3.Authorization/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&declared.to_be_bytes());
    (request, bytes::Bytes::from(prefix))
}

type Stalled = (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>);

/// Open `streams` stalled streams on a new connection.
async fn stall(
    addr: &str,
    streams: usize,
    declared: u32,
) -> (Vec<Stalled>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut open = Vec::with_capacity(streams);
    for _ in 0..streams {
        client = client.ready().await.unwrap();
        let (request, prefix) = stalled_check(declared);
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(prefix, false).unwrap();
        open.push((response, send));
    }
    (open, driver)
}

/// The gRPC status of an answer (trailers-only or in trailers).
async fn grpc_status(response: h2::client::ResponseFuture) -> String {
    let response = response.await.unwrap();
    if let Some(s) = response.headers().get("grpc-status") {
        return s.to_str().unwrap().to_string();
    }
    let mut body = response.into_body();
    while body.data().await.is_some() {}
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn stalled_grpc_streams_are_bounded_and_legitimate_checks_still_answered() {
    stalled_streams("grpc", &[], 100);
}

/// The same on a single-threaded runtime (`--io-threads 1`), where one thread serves every
/// connection and decides: stalled streams must not hold it either.
#[test]
fn stalled_grpc_streams_do_not_hold_a_single_io_thread() {
    stalled_streams("grpc-one-thread", &["--io-threads", "1"], 20);
}

/// `connections` connections of 100 streams each, every stream declaring 1 MiB and sending
/// none of it; legitimate checks beside them.
fn stalled_streams(name: &str, extra: &[&str], connections: usize) {
    let streams = connections * 100;
    let dir = common::tmp("listener-bounds", name);
    let (child, grpc_addr, http_addr) = serve(&dir, extra);
    let pid = child.id();
    let _stopper = Stopper(Some(child));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let before = rss_kib(pid);
        // 100 connections × 100 streams took the server past 11 GB before issue 16.
        let mut attack = Vec::new();
        for _ in 0..connections {
            attack.push(stall(&grpc_addr, 100, 1 << 20).await);
        }
        // Let the server take in every stream's prefix.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = rss_kib(pid);
        let during_anon = anon_kib(pid);
        assert!(
            during < RSS_BOUND_KIB,
            "RSS {during} KiB with {streams} stalled streams (bound {RSS_BOUND_KIB} KiB; {before} KiB before)"
        );

        // A legitimate check on its own connection is answered, and answered at once.
        let mut client = AuthorizationClient::connect(format!("http://{grpc_addr}"))
            .await
            .unwrap();
        let started = Instant::now();
        let answer = client.check(check("/ok")).await.unwrap().into_inner();
        assert_eq!(answer.status.unwrap().code, 0, "the legitimate check was allowed");
        let denied = client.check(check("/no")).await.unwrap().into_inner();
        assert_eq!(denied.status.unwrap().code, 7);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "legitimate checks took {:?} during the attack",
            started.elapsed()
        );

        // A declared length over the limit (4 MiB) is refused without waiting for the bytes.
        let (mut over, over_driver) = stall(&grpc_addr, 1, 64 << 20).await;
        let (response, _send) = over.pop().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(2), grpc_status(response))
            .await
            .expect("an oversized declaration is refused at once");
        assert_eq!(status, "8", "RESOURCE_EXHAUSTED");
        over_driver.abort();

        // Each stalled stream ends with DEADLINE_EXCEEDED once `request_timeout` (3 s) passes.
        let mut ended = 0;
        for (streams, _) in &mut attack {
            for (response, _) in streams.drain(..5) {
                let status = tokio::time::timeout(Duration::from_secs(10), grpc_status(response))
                    .await
                    .expect("a stalled stream is ended by the server");
                assert_eq!(status, "4", "DEADLINE_EXCEEDED");
                ended += 1;
            }
        }
        assert_eq!(ended, connections * 5);
        // Every one of them is ended that way (and counted), not only those awaited.
        let started = Instant::now();
        let timeout_metric = "arbiter_requests_refused_total{reason=\"timeout\"}";
        while metric(&http_addr, timeout_metric) < streams as u64 {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{} of {streams} stalled streams timed out",
                metric(&http_addr, timeout_metric)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (_, driver) in attack {
            driver.abort();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        assert!(after < RSS_BOUND_KIB, "RSS {after} KiB after the attack");

        // The allocator keeps freed pages, but a second round reuses them: nothing leaks.
        let mut again = Vec::new();
        for _ in 0..connections {
            again.push(stall(&grpc_addr, 100, 1 << 20).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = rss_kib(pid);
        let second_anon = anon_kib(pid);
        for (_, driver) in again {
            driver.abort();
        }
        eprintln!(
            "RSS: {before} KiB before, {during} KiB with {streams} stalled streams, {after} KiB after, {second} KiB in a second round; of it the process's own: {during_anon} KiB during, {second_anon} KiB in the second round"
        );
        assert!(
            second_anon < during_anon + 16 * 1024,
            "the second round grew the process's own memory from {during_anon} KiB to {second_anon} KiB"
        );
        assert_eq!(
            metric(
                &http_addr,
                "arbiter_requests_refused_total{reason=\"too_large\"}"
            ),
            1
        );
    });
}

/// `--io-threads`: 0 (the default) chooses the single-threaded runtime where the process has
/// one CPU (here: pinned to one with `taskset`), a thread per CPU otherwise; the start-up line
/// says which, and either serves.
#[test]
fn io_threads_default_to_one_where_the_process_has_one_cpu() {
    let dir = common::tmp("listener-bounds", "io-threads");
    std::fs::write(
        dir.join("policy.rego"),
        "package envoy.authz\n\nallow := true\n",
    )
    .unwrap();
    let arbiter = env!("CARGO_BIN_EXE_arbiter");
    let policy = dir.join("policy.rego");
    let pinned: &[&str] = &["taskset", "-c", "0"];
    let runs: [(&[&str], &[&str], &str); 3] = [
        (pinned, &[], "one I/O thread"),
        (&[], &["--io-threads", "2"], "2 I/O threads"),
        (&[], &["--io-threads", "1"], "one I/O thread"),
    ];
    for (launcher, flags, expected) in runs {
        let mut cmd = match launcher.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(arbiter);
                c
            }
            None => Command::new(arbiter),
        };
        cmd.args(["serve", policy.to_str().unwrap()])
            .args(flags)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
        let (child, _grpc, http_addr, lines) = common::serve_announced(cmd);
        let _stopper = Stopper(Some(child));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("arbiter: serving") && l.contains(expected)),
            "{launcher:?} {flags:?}: expected `{expected}` in {lines:?}"
        );
        let (code, body) = common::http(&http_addr, "POST", "/v1/data/envoy/authz/allow", "{}");
        assert_eq!(
            (code, body.contains("true")),
            (200, true),
            "{flags:?}: {body}"
        );
    }
}

#[test]
fn slow_loris_http_clients_are_cut_off_and_health_still_answers() {
    let dir = common::tmp("listener-bounds", "http");
    let (child, _grpc, http_addr) = serve(&dir, &[]);
    let _stopper = Stopper(Some(child));
    // 200 clients that send half a request line of headers and then nothing.
    let mut slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&http_addr).unwrap();
            c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .unwrap();
            c
        })
        .collect();
    let started = Instant::now();
    let (code, _) = http(&http_addr, "GET", "/health", "");
    assert_eq!(code, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The server closes each within `request_timeout` (3 s) of its first byte.
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        // Closed: EOF or a reset (anything it wrote before is read and ignored).
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!(
                        "a slow client was still connected after {:?}",
                        started.elapsed()
                    )
                }
                Err(_) => break,
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "slow clients were closed after {:?}",
        started.elapsed()
    );
}
