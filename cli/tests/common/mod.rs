//! Helpers shared by the CLI's end-to-end tests: a scratch folder, plain HTTP/1.1 requests to
//! a server under test, and stopping it the way an operator would.
#![allow(
    dead_code,
    reason = "each test crate uses its own subset of these helpers"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server under test, killed when dropped: a failed assertion unwinds through it, so the
/// server never outlives its test (holding the output pipe the test runner waits on).
#[derive(Debug)]
pub struct Server(Option<Child>);

impl From<Child> for Server {
    fn from(child: Child) -> Self {
        Server(Some(child))
    }
}

impl Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a server is held until dropped")
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a server is held until dropped")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take()
            && matches!(child.try_wait(), Ok(None))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An empty folder for this test process, `$TMPDIR/arbiter-<suite>-<pid>-<name>`, removed
/// when dropped (kept when its test fails).
pub fn tmp(suite: &str, name: &str) -> arbiter_engine::scratch::ScratchDir {
    arbiter_engine::scratch::ScratchDir::new(&format!(
        "arbiter-{suite}-{}-{name}",
        std::process::id()
    ))
}

/// One request with `connection: close`; the status and the body.
pub fn http(addr: &str, method: &str, target: &str, body: &str) -> (u16, String) {
    http_with(addr, method, target, &[], body)
}

/// [`http`] with more header lines.
pub fn http_with(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        c,
        "{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

/// SIGTERM (the server drains its decision log first), then wait up to 20 s for the exit.
pub fn stop(child: impl Into<Server>) {
    let mut child: Server = child.into();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start `arbiter serve` (`cmd` holds the arguments; its stderr is taken) and wait up to 30 s for
/// its announcement: the child, the gRPC address and the HTTP address. Stderr keeps being
/// drained so the server never blocks on it.
pub fn serve(cmd: Command) -> (Server, String, String) {
    let (child, grpc, http, _) = serve_announced(cmd);
    (child, grpc, http)
}

/// [`serve`], and the lines `serve` wrote up to its announcement.
pub fn serve_announced(cmd: Command) -> (Server, String, String, Vec<String>) {
    try_serve_announced(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// [`serve_announced`], or `Err` with what `serve` wrote when it ended before announcing its
/// addresses (a refused configuration, for a test that expects one).
pub fn try_serve_announced(
    mut cmd: Command,
) -> Result<(Server, String, String, Vec<String>), String> {
    let mut child = Server::from(cmd.stderr(Stdio::piped()).spawn().unwrap());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let start = Instant::now();
    let mut before = Vec::new();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "serve did not start: {}",
            before.join("\n")
        );
        let Some(Ok(line)) = lines.next() else {
            // Serve ended (or closed stderr) before announcing: say what it said and how it ended.
            let status = child.wait();
            return Err(format!(
                "serve ended before announcing its addresses ({status:?}); it wrote:\n{}",
                before.join("\n")
            ));
        };
        if let Some(rest) = line.split("gRPC ext_authz on ").nth(1) {
            let (grpc, http) = rest
                .split_once(", HTTP (health, metrics, Data API) on ")
                .unwrap();
            std::thread::spawn(move || for _ in lines {});
            before.push(line.clone());
            return Ok((
                child,
                grpc.trim().to_string(),
                http.trim().to_string(),
                before,
            ));
        }
        before.push(line);
    }
}

/// `arbiter serve` on ephemeral loopback ports (gRPC and HTTP); add the policies and flags,
/// then [`serve`] it.
pub fn serve_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arbiter"));
    cmd.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]);
    cmd
}

/// `arbiter serve DIR/policy` on ephemeral loopback ports, its decision log in
/// `DIR/decisions.log` shipped to the JetStream at `url` (stream `stream`, created if missing);
/// add arguments, then [`serve`] it.
pub fn serve_shipping(dir: &std::path::Path, url: &str, stream: &str) -> Command {
    let mut cmd = serve_command();
    cmd.arg(dir.join("policy"))
        .arg("--decision-log")
        .arg(dir.join("decisions.log"))
        .args(["--decision-log-nats", url])
        .args(["--decision-log-nats-stream", stream]);
    cmd
}

/// Data API queries `{"input": {"n": i}}` for each `i` of `ns`, each a decision with its event.
pub fn decide(http_addr: &str, ns: std::ops::Range<usize>) {
    for i in ns {
        let (status, body) = http(
            http_addr,
            "POST",
            "/v1/data/envoy/authz/allow",
            &format!("{{\"input\": {{\"n\": {i}}}}}"),
        );
        assert_eq!(status, 200, "{body}");
    }
}

/// Run `f` to its end on a runtime of its own (for the NATS client in a synchronous test).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every message of JetStream stream `stream` at `url`, in sequence order.
pub fn stream_messages(
    url: &str,
    stream: &str,
) -> Result<Vec<arbiter_conformance::nats::Stored>, String> {
    block_on(arbiter_conformance::nats::read_stream(url, stream))
}

/// Start `arbiter audit serve` with `args` (`--addr 127.0.0.1:0` is added) and wait up to 30 s
/// for its announcement: the child, the address it serves (`host:port`) and the announcement.
/// Stderr keeps being drained.
pub fn audit_serve(args: &[&std::ffi::OsStr]) -> (Server, String, String) {
    let mut child = Server::from(
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["audit", "serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let start = Instant::now();
    loop {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("audit serve did not start");
        }
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("audit serve stopped before serving");
        };
        if let Some(u) = line.split("serving http://").nth(1) {
            // What it says later goes to the test's stderr (past the harness's capture: a
            // thread of its own): a reader's warnings explain a failure.
            std::thread::spawn(move || {
                for l in lines.map_while(Result::ok) {
                    let _ = writeln!(std::io::stderr(), "audit serve: {l}");
                }
            });
            let addr = u.trim_end_matches('/').to_string();
            return (child, addr, line);
        }
    }
}

/// A `Check` for `GET path` to host `svc`, with `headers`.
pub fn check_request(
    path: &str,
    headers: Vec<(String, String)>,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest, attribute_context,
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "svc".into(),
                    headers: headers.into_iter().collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

/// The decision ids of a decision log's whole lines, its rotated files included, oldest first
/// (a line a SIGKILL cut short is not an event: the next run cuts it off).
pub fn file_ids(log: &std::path::Path) -> Vec<String> {
    // A rotation renames `x.1` to `x.2` before `x` to `x.1`: read in between, the set looks
    // like `x` alone. Read until two readings agree (a log still being written: at most 5 s).
    let until = Instant::now() + Duration::from_secs(5);
    let mut last = read_ids(log);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = read_ids(log);
        if now == last || Instant::now() > until {
            return now;
        }
        last = now;
    }
}

fn read_ids(log: &std::path::Path) -> Vec<String> {
    arbiter_engine::audit::index::with_rotated(&[log.to_path_buf()])
        .iter()
        .flat_map(|f| {
            // Only whole lines (the newest file may end in a write in progress); each one an
            // event — a restart cuts back what a killed run left half-written.
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .split_inclusive('\n')
                .enumerate()
                .filter(|(_, l)| l.ends_with('\n') && l.len() > 1)
                .map(|(n, l)| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
                        panic!("{} line {}: not an event ({e}): {l}", f.display(), n + 1)
                    });
                    v["decision_id"].as_str().unwrap().to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// An upstream that answers 200 to everything.
pub fn upstream() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}
