//! The audit dashboard in a real browser: Debian's headless Chromium (`apt-get install
//! chromium`, which `.ci/run` does; `ARBITER_CHROMIUM` may name another binary) renders the
//! pages `arbiter audit serve` serves over a fixture log, and the test reads the DOM Chromium
//! produced (after the page's own script ran):
//! - the totals and top lists shown, and those of `arbiter audit summary --format json`, equal
//!   what the fixture holds, counted as the fixture is written (not by arbiter's summary code);
//! - a filter narrows the table to what it names;
//! - a tampered copy shows the broken-chain verdict where `arbiter audit verify` finds it;
//! - a header value and an identity containing `<script>` render as text;
//! - a screenshot is saved (`$CARGO_TARGET_TMPDIR/dashboard.png`; the README shows one).
//!
//! Without Chromium the test fails with the instruction to install it: it never skips.
//! Also: the dashboard refuses to listen off loopback without authentication.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;

use arbiter_engine::audit::chain::{GENESIS, seal};
use serde_json::{Value as Json, json};

const SCRIPT: &str = "<script>alert(1)</script>";

fn arbiter() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
}

fn tmp(name: &str) -> arbiter_engine::scratch::ScratchDir {
    arbiter_engine::scratch::ScratchDir::new(&format!("arbiter-dash-{}-{name}", std::process::id()))
}

/// 400 sealed events: seven callers (one with markup in its SPIFFE ID path), six paths (one
/// with markup), allowed, denied and timeouts, two revisions, one header carrying `<script>`.
/// What the fixture holds, counted while it is written (not by arbiter's summary code): the
/// expectations of the page and of `audit summary`.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    allowed: u64,
    denied: u64,
    /// Denials whose reason is not the policy's (timeouts).
    errors: u64,
    reasons: std::collections::BTreeMap<String, u64>,
    denied_identities: std::collections::BTreeMap<String, u64>,
    denied_paths: std::collections::BTreeMap<String, u64>,
    deny_rules: std::collections::BTreeMap<String, u64>,
    revisions: Vec<(String, u64)>,
}

/// Rows by count, most first, then by name: the order the README gives for top lists.
fn ranked(m: &std::collections::BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn fixture(dir: &Path) -> PathBuf {
    fixture_counted(dir).0
}

fn fixture_counted(dir: &Path) -> (PathBuf, Tally) {
    let callers = [
        "frontend".to_string(),
        "orders".into(),
        "billing".into(),
        "reports".into(),
        "batch".into(),
        "legacy".into(),
        format!("x{SCRIPT}"),
    ];
    let paths = [
        "/api/v1/products",
        "/api/v1/orders",
        "/admin/users",
        "/public/hello",
        "/<img src=x onerror=alert(2)>",
        "/api/v1/invoices",
    ];
    let f = dir.join("decisions.log");
    let mut out = std::fs::File::create(&f).unwrap();
    let mut prev = GENESIS.to_string();
    let mut t = Tally::default();
    for i in 0..400usize {
        let caller = &callers[(i * 3 + i / 11) % callers.len()];
        let path = paths[(i * 5 + i / 7) % paths.len()];
        let kind = (i * 7 + i / 5) % 10;
        let (allowed, reason, rule) = match kind {
            0..=5 => (true, "allowed", Some("mesh-callers")),
            6..=8 => (false, "policy_denied", Some("deny-writes")),
            _ => (false, "timeout", None),
        };
        let mut e = json!({
            "decision_id": format!("dec-{i:04}"),
            "timestamp": format!("2026-11-26T{:02}:{:02}:{:02}Z", 9 + i / 120, (i / 2) % 60, (i * 7) % 60),
            "path": "envoy/authz/allow",
            "input": {"attributes": {"request": {"http": {"method": "GET", "path": path,
                "headers": {"x-note": if i == 42 { SCRIPT.to_string() } else { format!("n{i}") }}}}}},
            "allowed": allowed,
            "http_status": if allowed { 200 } else { 403 },
            "reason": reason,
            "identity": {"spiffe_id": format!("spiffe://cluster.local/ns/shop/sa/{caller}")},
            "policy": "policies/authz.cel.yaml",
            "metrics": {"timer_server_handler_ns": 10_000 + (i % 97) * 313},
            "revision": if i < 250 { "rev-a" } else { "rev-b" },
            "dry_run": false,
        });
        if let Some(r) = rule {
            e["rule"] = json!(r);
        }
        t.events += 1;
        if allowed {
            t.allowed += 1;
        } else {
            t.denied += 1;
            t.errors += u64::from(reason == "timeout");
            *t.reasons.entry(reason.into()).or_default() += 1;
            *t.denied_identities
                .entry(format!("spiffe://cluster.local/ns/shop/sa/{caller}"))
                .or_default() += 1;
            *t.denied_paths.entry(path.into()).or_default() += 1;
            let rule = rule.map_or("policies/authz.cel.yaml".to_string(), |r| {
                format!("policies/authz.cel.yaml:{r}")
            });
            *t.deny_rules.entry(rule).or_default() += 1;
        }
        let (line, hash) = seal(e.as_object().unwrap().clone(), &prev);
        out.write_all(&line).unwrap();
        prev = hash;
    }
    t.revisions = vec![("rev-a".into(), 250), ("rev-b".into(), 150)];
    (f, t)
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("ARBITER_CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Chromium is not installed: `apt-get install chromium` (bash .ci/run does), or set ARBITER_CHROMIUM"
    );
}

/// Chromium, headless, with a profile of its own; stopped after 90 s at most.
fn run_chromium(args: &[&str], url: &str) -> Vec<u8> {
    let profile = tmp(&format!("profile-{}", url.len() + args.len()));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run Chromium: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).unwrap();
        buf
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("Chromium did not finish within 90 s for {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&profile);
    reader.join().unwrap()
}

/// The DOM after the page's scripts ran.
fn dom(url: &str) -> String {
    let out = run_chromium(&["--virtual-time-budget=3000", "--dump-dom"], url);
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(
        text.contains("</html>"),
        "no page from Chromium for {url}: {text}"
    );
    text
}

/// `arbiter audit serve` on an ephemeral loopback port, killed when dropped
/// (`common::Server`).
struct Served {
    /// Held for its drop.
    _child: common::Server,
    url: String,
}

fn serve(files: &[&Path], extra: &[&str]) -> Served {
    serve_at("127.0.0.1:0", files, extra)
}

/// `arbiter audit serve --addr ADDR`, up once it says where it serves.
fn serve_at(addr: &str, files: &[&Path], extra: &[&str]) -> Served {
    let mut child = arbiter()
        .args(["audit", "serve", "--addr", addr])
        .args(extra)
        .args(files)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let url = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            panic!("arbiter audit serve stopped: {seen}");
        };
        seen.push_str(&line);
        if let Some(u) = line.split("serving ").nth(1) {
            break u.trim().trim_end_matches('/').to_string();
        }
    };
    // Keep draining stderr so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Served {
        _child: child.into(),
        url,
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The number shown in `data-k="key"`.
fn number(dom: &str, key: &str) -> u64 {
    let re = regex::Regex::new(&format!(r#"data-k="{key}"[^>]*>([0-9]+)<"#)).unwrap();
    let caps = re
        .captures(dom)
        .unwrap_or_else(|| panic!("no `{key}` in the page"));
    caps[1].parse().unwrap()
}

/// The `(name, count)` rows of the table `data-k="key"`.
fn ranking(dom: &str, key: &str) -> Vec<(String, u64)> {
    let start = dom
        .find(&format!("data-k=\"{key}\""))
        .unwrap_or_else(|| panic!("no table `{key}`"));
    let end = start + dom[start..].find("</table>").unwrap();
    let re = regex::Regex::new(r#"<tr data-name="([^"]*)" data-count="([0-9]+)""#).unwrap();
    re.captures_iter(&dom[start..end])
        .map(|c| (unescape(&c[1]), c[2].parse().unwrap()))
        .collect()
}

fn expected_ranking(summary: &Json, key: &str) -> Vec<(String, u64)> {
    summary[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn summary_json(file: &Path) -> Json {
    let out = arbiter()
        .args(["audit", "summary", "--format", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_dashboard_in_chromium() {
    let dir = tmp("main");
    let (log, tally) = fixture_counted(&dir);
    let summary = summary_json(&log);
    let served = serve(&[&log], &[]);
    let page = dom(&format!("{}/", served.url));
    assert!(
        page.contains("data-js=\"on\""),
        "the page's script did not run"
    );

    // Totals and top lists: what the fixture holds, counted as it was written; the page and
    // `arbiter audit summary` must both show exactly that.
    for (key, want) in [
        ("events", tally.events),
        ("allowed", tally.allowed),
        ("denied", tally.denied),
        ("errors", tally.errors),
        ("dry_run", 0),
    ] {
        assert_eq!(number(&page, key), want, "page: {key}");
        assert_eq!(summary[key].as_u64(), Some(want), "summary: {key}");
    }
    assert_eq!(tally.allowed + tally.denied, 400);
    for (key, want) in [
        ("top_denied_identities", ranked(&tally.denied_identities)),
        ("top_denied_paths", ranked(&tally.denied_paths)),
        ("top_deny_rules", ranked(&tally.deny_rules)),
        ("reasons", ranked(&tally.reasons)),
    ] {
        assert!(!want.is_empty(), "{key}");
        assert_eq!(ranking(&page, key), want, "page: {key}");
        assert_eq!(expected_ranking(&summary, key), want, "summary: {key}");
    }
    let revisions: Vec<(String, u64)> = summary["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["revision"].as_str().unwrap().to_string(),
                r["events"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(revisions, tally.revisions, "summary: revisions");
    assert_eq!(
        ranking(&page, "revisions"),
        tally.revisions,
        "page: revisions"
    );
    assert!(
        page.contains("data-ok=\"true\""),
        "the chain of an untouched log verifies"
    );
    assert_eq!(number(&page, "verified"), 400);
    assert_eq!(number(&page, "matching"), 400);

    // Attacker-controlled text is text.
    assert!(
        !page.contains("<script>alert"),
        "markup from the log reached the DOM"
    );
    assert!(
        !page.contains("<img src=x"),
        "markup from the log reached the DOM"
    );
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(page.contains("sa/x&lt;script&gt;alert(1)&lt;/script&gt;"));

    // A filter narrows the table.
    let reports = "spiffe://cluster.local/ns/shop/sa/reports";
    let expected = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).unwrap())
        .filter(|e| e["identity"]["spiffe_id"] == reports && e["reason"] == "policy_denied")
        .count() as u64;
    let filtered = dom(&format!(
        "{}/?identity=sa/reports&decision=denied",
        served.url
    ));
    let matching = number(&filtered, "matching");
    assert_eq!(matching, expected);
    assert!(matching > 0 && matching < 400);
    let table_start = filtered.find("data-k=\"events-table\"").unwrap();
    let table =
        &filtered[table_start..table_start + filtered[table_start..].find("</table>").unwrap()];
    let rows = table.matches("<tr class=").count() as u64;
    assert_eq!(rows, matching.min(50));
    assert_eq!(
        table.matches(reports).count() as u64,
        rows,
        "every row is the caller filtered for"
    );
    assert_eq!(table.matches("<tr class=\"denied\"").count() as u64, rows);

    // The event with the `<script>` header, whole.
    let event = dom(&format!("{}/event/42", served.url));
    assert!(event.contains("dec-0042"));
    assert!(
        event.contains("\"x-note\": \"&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "{event}"
    );
    assert_eq!(event.matches("<script").count(), 1);

    // The screenshot.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &[
            "--window-size=1280,1900",
            &format!("--screenshot={}", shot.display()),
        ],
        &format!("{}/", served.url),
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn a_tampered_log_shows_where_the_chain_breaks() {
    let dir = tmp("tamper");
    let log = fixture(&dir);
    let text = std::fs::read_to_string(&log).unwrap();
    // Turn the 100th event's allow into a denial, leaving its hash as it was.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(lines[99].contains("\"allowed\":true"), "{}", lines[99]);
    lines[99] = lines[99].replacen("\"allowed\":true", "\"allowed\":false", 1);
    let tampered = dir.join("tampered.log");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let verify = arbiter()
        .args(["audit", "verify", "--format", "json"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(1));
    let v: Json = serde_json::from_slice(&verify.stdout).unwrap();
    let at = format!(
        "{}:{}",
        v["failure"]["file"].as_str().unwrap(),
        v["failure"]["line"]
    );
    assert!(at.ends_with(":100"), "{at}");

    let served = serve(&[&tampered], &[]);
    let page = dom(&format!("{}/", served.url));
    assert!(
        page.contains("data-ok=\"false\""),
        "the verdict must say broken"
    );
    assert!(page.contains("Hash chain BROKEN"));
    let re = regex::Regex::new(r#"data-k="broken-at">([^<]*)<"#).unwrap();
    assert_eq!(unescape(&re.captures(&page).unwrap()[1]), at);
    assert_eq!(number(&page, "events"), 400, "every event is still shown");
}

#[test]
fn off_loopback_without_authentication_refuses_to_start() {
    let dir = tmp("exposure");
    let log = fixture(&dir);
    let out = arbiter()
        .args(["audit", "serve", "--addr", "0.0.0.0:0"])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to start"), "{stderr}");

    // The same with a token file starts (and asks for the token).
    let token = dir.join("token");
    std::fs::write(&token, "0123456789abcdef-dashboard\n").unwrap();
    let served = serve(&[&log], &["--token-file", token.to_str().unwrap()]);
    assert!(served.url.starts_with("http://127.0.0.1:"));
    drop(served);
    let served = serve_at(
        "0.0.0.0:0",
        &[&log],
        &["--token-file", token.to_str().unwrap()],
    );
    assert!(served.url.starts_with("http://0.0.0.0:"), "{}", served.url);
    drop(served);

    // `arbiter serve --ui` on every interface without a token: refused too.
    let out = arbiter()
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "0.0.0.0:0",
            "--ui",
            "--decision-log",
        ])
        .arg(dir.join("live.log"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to start"));
    // And --ui needs a decision-log file to show.
    let out = arbiter()
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--ui",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--decision-log FILE"));
}

/// `arbiter serve --ui`: the page on the server's HTTP listener follows its decision log.
#[test]
fn serve_ui_follows_the_live_log() {
    use std::io::Read;
    let dir = tmp("live");
    let log = dir.join("live.log");
    let mut child = arbiter()
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--ui",
            "--decision-log",
        ])
        .arg(&log)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Stopped by its pid when dropped, also when an assertion below fails (it used to be left
    // running then, e.g. without Chromium).
    let _server = Served {
        _child: child.into(),
        url: String::new(),
    };
    let mut lines = BufReader::new(stderr).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.split("audit dashboard on ").nth(1) {
            url = Some(u.trim().to_string());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let url = url.expect("serve announces the dashboard");
    let hostport = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let http = |method: &str, path: &str, body: &str| -> String {
        let mut s = std::net::TcpStream::connect(&hostport).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {hostport}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    for _ in 0..5 {
        let r = http(
            "POST",
            "/v1/data/envoy/authz/allow",
            r#"{"input": {"attributes": {"request": {"http": {"method": "GET", "path": "/public/x"}}}}}"#,
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // The log is written in batches and indexed every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let events = loop {
        let r = http("GET", "/ui/api/summary", "");
        let body = r.split("\r\n\r\n").nth(1).unwrap_or("");
        let n = serde_json::from_str::<Json>(body)
            .ok()
            .and_then(|v| v["events"].as_u64())
            .unwrap_or(0);
        if n >= 5 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(events, 5);
    let page = dom(&url);
    assert_eq!(number(&page, "events"), 5);
    assert!(page.contains("data-ok=\"true\""));
    assert!(
        page.contains("id=\"autorefresh\""),
        "a live page offers auto-refresh"
    );
}

/// Off loopback with mTLS: a client certificate whose SPIFFE ID is allowed sees the page; any
/// other certificate does not get past the handshake.
#[test]
fn mtls_with_allowed_callers_guards_the_dashboard() {
    use arbiter_conformance::envoy::{request_tls, tls_client_config};
    use arbiter_conformance::pki::Ca;
    let dir = tmp("mtls");
    let log = fixture(&dir);
    let ca = Ca::new(&dir, "audit CA").unwrap();
    let server = ca
        .issue(
            "server",
            Some("spiffe://td/ns/audit/sa/dashboard"),
            &["localhost"],
            &["127.0.0.1"],
        )
        .unwrap();
    let auditor = ca
        .issue("auditor", Some("spiffe://td/ns/audit/sa/auditor"), &[], &[])
        .unwrap();
    let other = ca
        .issue("other", Some("spiffe://td/ns/shop/sa/frontend"), &[], &[])
        .unwrap();
    let served = serve_at(
        "0.0.0.0:0",
        &[&log],
        &[
            "--allowed-caller",
            "spiffe://td/ns/audit/sa/*",
            "--tls-cert",
            server.cert.to_str().unwrap(),
            "--tls-key",
            server.key.to_str().unwrap(),
            "--tls-client-ca",
            ca.file.to_str().unwrap(),
        ],
    );
    assert!(served.url.starts_with("https://0.0.0.0:"), "{}", served.url);
    let port: u16 = served
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{}", served.url));
    let config = |pair: &arbiter_conformance::pki::Pair| {
        tls_client_config(
            &ca.pem,
            Some((&pair.cert_pem, &pair.key_pem)),
            &[b"http/1.1"],
        )
        .unwrap()
    };
    let ok = request_tls(port, config(&auditor), "GET", "/api/summary", &[]).unwrap();
    assert_eq!(ok.status, 200);
    assert!(ok.body_text().contains("\"events\": 400"));
    let refused = request_tls(port, config(&other), "GET", "/api/summary", &[]);
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.status != 200),
        "{refused:?}"
    );
    let no_cert = tls_client_config(&ca.pem, None, &[b"http/1.1"]).unwrap();
    assert!(request_tls(port, no_cert, "GET", "/", &[]).is_err());
    drop(served);
}
