//! arbiter in place of OPA-Envoy, end to end through a real Envoy (issue 25, "must show"): the
//! OPA-Envoy quick start's policy, OPA's configuration file and the Deployment's command line,
//! unchanged but for loopback ports — two bundles from a bundle server that demands a bearer
//! token and is down at first, one signed by real OPA (`opa build --signing-key`, `kid:
//! default`) under a configuration that names the key `global_key`, polled with the
//! configured delays, labels, console decision logs — compared with what the reference
//! OPA-Envoy 1.7.1 answered in the same scenario (`conformance/fixtures/opa-envoy-drop-in/`,
//! recorded by `conformance/opa-envoy-drop-in/record.py`): the status of every request
//! through Envoy, `/health`, `/health?bundles` and `/health?plugins` before and after the
//! bundles arrive, the decision-log lines' fields, and what the bundle server saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use arbiter_conformance::envoy::{Envoy, EnvoyOptions, free_port, request};
use serde_json::{Value as Json, json};

mod common;

const TOKEN: &str = "drop-in-bundle-token";

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/opa-envoy-drop-in")
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/fixtures/opa-envoy-drop-in")
}

fn read_json(p: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: String,
    if_none_match: Option<String>,
}

/// The bundle server: 401 without the token, 503 until `up`, then the bundles with ETags.
fn bundle_server(up: Arc<AtomicBool>, seen: Arc<Mutex<Vec<Seen>>>) -> u16 {
    let bundles: Vec<(String, Vec<u8>)> = ["roles", "meta"]
        .iter()
        .map(|n| {
            (
                format!("/bundles/{n}"),
                std::fs::read(fixtures().join(format!("{n}.tar.gz"))).unwrap(),
            )
        })
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut authorization, mut if_none_match) = (String::new(), None);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or(("", ""));
                match k.to_ascii_lowercase().as_str() {
                    "authorization" => authorization = v.trim().to_string(),
                    "if-none-match" => if_none_match = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            let status =
                |code: &str| format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n").into_bytes();
            let reply = if authorization != format!("Bearer {TOKEN}") {
                status("401 Unauthorized")
            } else if !up.load(Ordering::SeqCst) {
                status("503 Service Unavailable")
            } else {
                match bundles.iter().find(|(p, _)| *p == path) {
                    None => status("404 Not Found"),
                    Some((p, _)) if if_none_match.as_deref() == Some(&format!("\"{p}\"")) => {
                        status("304 Not Modified")
                    }
                    Some((p, bytes)) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\netag: \"{p}\"\r\ncontent-length: {}\r\n\r\n",
                            bytes.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(bytes);
                        r
                    }
                }
            };
            seen.lock().unwrap().push(Seen {
                path,
                authorization,
                if_none_match,
            });
            let _ = conn.write_all(&reply);
        }
    });
    port
}

/// HS256 JWTs signed with the quick start's secret.
fn jwt(claims: &Json) -> String {
    use arbiter_engine::builtins::{encoding::base64url_encode_raw as b64, jose::hmac_sign};
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(serde_json::to_string(claims).unwrap().as_bytes());
    let sig = hmac_sign("HS256", b"secret", format!("{head}.{body}").as_bytes()).unwrap();
    format!("{head}.{body}.{}", b64(&sig))
}

/// Send one HTTP/1.1 request as written and read the answer to its end.
fn send_raw(port: u16, raw: &str) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
}

/// What differs from run to run, replaced: ports, request ids, times (the rules of
/// conformance/opa-envoy-drop-in/record.py's `normalize`).
fn normalize(v: &Json, key: Option<&str>) -> Json {
    match (key, v) {
        (Some("time"), _) => json!("<time>"),
        (_, Json::Object(o)) => Json::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), normalize(x, Some(k))))
                .collect(),
        ),
        (_, Json::Array(a)) => Json::Array(a.iter().map(|x| normalize(x, key)).collect()),
        (Some("portValue"), _) => json!("<port>"),
        (Some("id" | "x-request-id"), _) => json!("<id>"),
        (_, Json::String(s)) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("127.0.0.1:") {
                out.push_str(&rest[..i + 10]);
                rest = &rest[i + 10..];
                let digits =
                    rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                if digits > 0 {
                    out.push_str("<port>");
                    rest = &rest[digits..];
                }
            }
            out.push_str(rest);
            json!(out)
        }
        _ => v.clone(),
    }
}

/// Every path where `got` and `want` differ, field by field.
fn diff(path: &str, got: &Json, want: &Json, out: &mut Vec<String>) {
    match (got, want) {
        (Json::Object(g), Json::Object(w)) => {
            let keys: BTreeSet<&String> = g.keys().chain(w.keys()).collect();
            for k in keys {
                diff(
                    &format!("{path}.{k}"),
                    g.get(k).unwrap_or(&Json::Null),
                    w.get(k).unwrap_or(&Json::Null),
                    out,
                );
            }
        }
        _ if got != want => out.push(format!("{path}: arbiter {got}, OPA-Envoy {want}")),
        _ => {}
    }
}

fn health(addr: &str, query: &str) -> (u16, Json) {
    let (code, body) = common::http(addr, "GET", query, "");
    (code, serde_json::from_str(&body).unwrap())
}

/// `arbiter run --server` as the Deployment starts OPA-Envoy (plus `extra` arguments), with
/// its console lines as they come and its diagnostic address.
fn start_arbiter(
    policy: &Path,
    bundle_port: u16,
    grpc_port: u16,
    extra: &[&str],
) -> (common::Server, mpsc::Receiver<String>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args([
            "run".to_string(),
            "--server".to_string(),
            format!("--config-file={}", here().join("config.yaml").display()),
            "--addr=127.0.0.1:0".to_string(),
            "--diagnostic-addr=127.0.0.1:0".to_string(),
            "--ignore=.*".to_string(),
        ])
        .args(extra)
        .arg(policy)
        .env("BUNDLE_SERVER", format!("http://127.0.0.1:{bundle_port}"))
        .env("BUNDLE_TOKEN", TOKEN)
        .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    // Killed if the test ends early.
    let running = common::Server::from(child);
    // The console: decision-log lines, collected as they come.
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(l);
        }
    });
    let mut err_lines = BufReader::new(stderr).lines();
    let (mut diagnostic, mut said) = (None, String::new());
    let start = Instant::now();
    while diagnostic.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no start: {said}"
        );
        let Some(Ok(l)) = err_lines.next() else {
            panic!("arbiter exited: {said}");
        };
        said.push_str(&l);
        said.push('\n');
        if let Some(rest) = l.split("diagnostic (health, metrics) on ").nth(1) {
            diagnostic = Some(rest.trim().to_string());
        }
    }
    std::thread::spawn(move || for _ in err_lines {});
    (running, lines, diagnostic.unwrap())
}

/// The next `n` decision events on `envoy/authz/allow` from the console.
fn decision_events(lines: &mpsc::Receiver<String>, n: usize) -> Vec<Json> {
    let mut events = Vec::new();
    let start = Instant::now();
    while events.len() < n {
        let left = Duration::from_secs(10).saturating_sub(start.elapsed());
        let Ok(line) = lines.recv_timeout(left) else {
            panic!("{} decision events for {n} requests", events.len());
        };
        let Ok(v) = serde_json::from_str::<Json>(&line) else {
            continue;
        };
        if v["msg"] == "Decision Log" && v["path"] == "envoy/authz/allow" {
            events.push(v);
        }
    }
    events
}

#[test]
fn the_quick_start_deployment_runs_on_arbiter_as_on_opa_envoy() {
    let expected = read_json(&fixtures().join("expected.json"));
    let scenario = read_json(&here().join("requests.json"));
    let policy = arbiter_conformance::suite_dir("ARBITER_OPA_ENVOY_FIXTURES", "opa-envoy")
        .unwrap_or_else(|e| panic!("{e}"))
        .join("extracted/quick_start-policy.rego");

    let up = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let bundle_port = bundle_server(up.clone(), seen.clone());
    let grpc_port = free_port();
    // The Deployment's command line; only the addresses are loopback ports.
    let (running, lines, diagnostic) = start_arbiter(&policy, bundle_port, grpc_port, &[]);

    // Probes while the bundle server is down, then once the bundles are active: OPA's
    // statuses and `error`s (arbiter adds its own fields beside them).
    let probes = |when: &str| {
        for query in ["/health", "/health?bundles", "/health?plugins"] {
            let want = &expected["health"][when][query];
            let (code, body) = health(&diagnostic, query);
            assert_eq!(Json::from(code), want["status"], "{when} {query}: {body}");
            assert_eq!(
                body.get("error"),
                want["body"].get("error"),
                "{when} {query}: {body}"
            );
        }
    };
    probes("before");
    up.store(true, Ordering::SeqCst);
    let start = Instant::now();
    while health(&diagnostic, "/health?bundles").0 != 200 {
        // OPA retries within its polling delays (1–2 s here); so must arbiter.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the bundles did not activate: {}",
            health(&diagnostic, "/health?bundles").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    probes("after");

    // The quick start's requests through a real Envoy.
    let envoy = Envoy::start(&EnvoyOptions::new(
        format!("127.0.0.1:{grpc_port}").parse().unwrap(),
        common::upstream(),
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let tokens = scenario["tokens"].as_object().unwrap();
    let mut statuses = Vec::new();
    for r in scenario["requests"].as_array().unwrap() {
        let token = r
            .get("token")
            .and_then(Json::as_str)
            .map(|t| format!("Bearer {}", jwt(&tokens[t])));
        let body = r.get("body").map(|b| b.to_string()).unwrap_or_default();
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(t) = &token {
            headers.push(("authorization", t));
        }
        if r.get("body").is_some() {
            headers.push(("content-type", "application/json"));
        }
        let method = r["method"].as_str().unwrap();
        let path = r["path"].as_str().unwrap();
        let resp = request(envoy.port, method, path, &headers, body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", envoy.log_text()));
        statuses.push(resp.status);
    }
    assert_eq!(Json::from(statuses.clone()), expected["statuses"]);
    // The decision-log lines: OPA's fields with OPA's values.
    let events = decision_events(&lines, statuses.len());
    for (i, (got, want)) in events
        .iter()
        .zip(expected["events"].as_array().unwrap())
        .enumerate()
    {
        // Every field OPA wrote is there (arbiter's own are beside them).
        for f in want["fields"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            assert!(got.get(f).is_some(), "event {i}: no `{f}`: {got}");
        }
        let http = &got["input"]["attributes"]["request"]["http"];
        for (field, value) in [
            ("path", &got["path"]),
            ("result", &got["result"]),
            ("bundles", &got["bundles"]),
            ("level", &got["level"]),
            ("msg", &got["msg"]),
            ("type", &got["type"]),
            ("method", &http["method"]),
            ("request_path", &http["path"]),
        ] {
            assert_eq!(value, &want[field], "event {i}: {field}: {got}");
        }
        let labels = got["labels"].as_object().unwrap();
        let keys: Vec<&String> = labels.keys().collect();
        assert_eq!(json!(keys), want["label_keys"], "event {i}");
        for (k, v) in want["labels"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "event {i}: label {k}");
        }
        // OPA's timers, but the compile timer: arbiter compiles once, not per query.
        for m in want["metrics_keys"].as_array().unwrap() {
            let m = m.as_str().unwrap();
            if m != "timer_rego_query_compile_ns" {
                assert!(got["metrics"].get(m).is_some(), "event {i}: no metric {m}");
            }
        }
    }

    // The bundle server saw the token on every request, OPA's default resources, and polls
    // with ETags within the configured delays.
    let start = Instant::now();
    loop {
        let seen = seen.lock().unwrap().clone();
        let paths: BTreeSet<&str> = seen.iter().map(|s| s.path.as_str()).collect();
        let auths: BTreeSet<&str> = seen.iter().map(|s| s.authorization.as_str()).collect();
        let etag: BTreeSet<&str> = seen
            .iter()
            .filter(|s| s.if_none_match.is_some())
            .map(|s| s.path.as_str())
            .collect();
        assert_eq!(json!(paths), expected["bundle_server"]["paths"]);
        assert_eq!(json!(auths), expected["bundle_server"]["authorizations"]);
        if json!(etag) == expected["bundle_server"]["polled_with_etag"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no conditional polls of both bundles: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(envoy);
    drop(running);
}

/// Issue 17, item 6: the `input` document arbiter builds from what real Envoy sends is
/// OPA-Envoy's, field by field, in lenient mode (`path-normalization: lenient`): raw requests
/// (query strings, bodies, headers) sent byte for byte as when OPA-Envoy's inputs were
/// recorded (conformance/opa-envoy-drop-in/record.py). Strict mode, the default, refuses some
/// of them on purpose (README, "Differences on purpose"): that is checked too.
#[test]
fn input_documents_are_opa_envoys_through_real_envoy() {
    let expected = read_json(&fixtures().join("expected.json"));
    let scenario = read_json(&here().join("requests.json"));
    let policy = arbiter_conformance::suite_dir("ARBITER_OPA_ENVOY_FIXTURES", "opa-envoy")
        .unwrap_or_else(|e| panic!("{e}"))
        .join("extracted/quick_start-policy.rego");
    let up = Arc::new(AtomicBool::new(true));
    let bundle_port = bundle_server(up, Arc::default());
    let parity = scenario["parity"].as_array().unwrap();
    let recorded = expected["parity"].as_array().unwrap();
    assert_eq!(parity.len(), recorded.len(), "re-record the fixtures");

    for lenient in [true, false] {
        let grpc_port = free_port();
        let extra: &[&str] = if lenient {
            &["--set", "path-normalization=lenient"]
        } else {
            &[]
        };
        let (running, lines, diagnostic) = start_arbiter(&policy, bundle_port, grpc_port, extra);
        let start = Instant::now();
        while health(&diagnostic, "/health?bundles").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(10), "no bundles");
            std::thread::sleep(Duration::from_millis(100));
        }
        let envoy = Envoy::start(&EnvoyOptions::new(
            format!("127.0.0.1:{grpc_port}").parse().unwrap(),
            common::upstream(),
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        for r in parity {
            send_raw(envoy.port, r["raw"].as_str().unwrap());
        }
        let events = decision_events(&lines, parity.len());
        let mut differences = Vec::new();
        for ((got, want), r) in events.iter().zip(recorded).zip(parity) {
            let name = r["name"].as_str().unwrap();
            if want["input"].is_null() {
                // OPA-Envoy could not build an input (a body it cannot parse): an error, no
                // decision. arbiter denies too, with the reason in the record.
                assert_ne!(got["allowed"], json!(true), "{name}: {got}");
                assert!(got["error"].is_object(), "{name}: {got}");
                continue;
            }
            if !lenient && let Some(why) = r.get("strict_refuses").and_then(Json::as_str) {
                // A difference on purpose: strict mode refuses the request.
                let code = why.split(':').next().unwrap();
                assert_eq!(got["error"]["code"], json!(code), "{name}: {got}");
                assert_eq!(got["allowed"], json!(false), "{name}: {got}");
                continue;
            }
            assert_eq!(got["result"], want["result"], "{name}: {got}");
            diff(
                &format!("{name}: input"),
                &normalize(&got["input"], None),
                &want["input"],
                &mut differences,
            );
        }
        // OPA's decision log writes `version` as an AST set of pairs; the input policies see
        // (and arbiter logs) is the object {"encoding": "protojson", "ext_authz": "v3"}.
        differences.retain(|d| !d.contains(": input.version"));
        assert!(
            differences.is_empty(),
            "lenient {lenient}: input documents differ from OPA-Envoy's:\n{}",
            differences.join("\n")
        );
        drop(envoy);
        drop(running);
    }
}
