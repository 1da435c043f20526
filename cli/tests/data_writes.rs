//! The Data API's writes (`PUT`, `PATCH` with JSON Patch, `DELETE` on `/v1/data`) as the
//! reference OPA answers them (issue 18, item 6): the answers recorded by
//! `conformance/opa-data-writes/record.py` replayed against `arbiter serve` on the same folder
//! and the same bundle, request by request — statuses, error codes, storage and ownership
//! messages, the documents read back and the decisions made over the written data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/opa-data-writes")
}

fn answers() -> Json {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../conformance/fixtures/opa-data-writes/answers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// OPA's message, where arbiter promises the same words: storage errors, bundle ownership,
/// bad operations. Go's JSON decoder's wording is OPA's own and only the code is compared.
fn same_words(message: &str) -> bool {
    ["storage_", "path ", "can't write", "bad patch operation"]
        .iter()
        .any(|p| message.starts_with(p))
}

fn replay(setup: &str, args: &[&str]) {
    let recorded = answers();
    let mut cmd = common::serve_command();
    cmd.current_dir(here()).args(args);
    let (child, _, http) = common::serve(cmd);
    let mut failures = Vec::new();
    for (i, case) in recorded[setup].as_array().unwrap().iter().enumerate() {
        let req = &case["request"];
        let headers: Vec<(&str, &str)> = req["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        let (status, body) = common::http_with(
            &http,
            req["method"].as_str().unwrap(),
            req["path"].as_str().unwrap(),
            &headers,
            req["body"].as_str().unwrap_or(""),
        );
        let want = &case["answer"];
        let mut got: Json = if body.trim().is_empty() {
            Json::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Json::String(body.clone()))
        };
        if let Some(o) = got.as_object_mut() {
            o.remove("decision_id");
        }
        let shown = format!(
            "#{i} {} {} {}",
            req["method"],
            req["path"],
            req["body"].as_str().unwrap_or("")
        );
        if u64::from(status) != want["status"].as_u64().unwrap() {
            failures.push(format!(
                "{shown}: status {status}, OPA {}: {body}",
                want["status"]
            ));
            continue;
        }
        let wanted = &want["body"];
        match wanted.get("code") {
            Some(code) => {
                let message = wanted["message"].as_str().unwrap_or("");
                let ours = got["message"].as_str().unwrap_or("");
                // A rule conflict names the rule's file and line: the same words after them.
                let words_differ = if same_words(message) {
                    ours != message
                } else if let Some((_, rest)) = message.split_once(": rego_compile_error: ") {
                    !ours.ends_with(&format!(": rego_compile_error: {rest}"))
                } else {
                    false
                };
                if got["code"] != *code {
                    failures.push(format!("{shown}: code {}, OPA {code}", got["code"]));
                } else if words_differ {
                    failures.push(format!("{shown}: `{ours}`, OPA `{message}`"));
                }
            }
            // OPA answers 405 with no body; arbiter says why.
            None if status == 405 => {}
            // Successes: the same document (204 and 304: none).
            None => {
                if got != *wanted {
                    failures.push(format!("{shown}: {got}, OPA {wanted}"));
                }
            }
        }
    }
    common::stop(child);
    assert!(
        failures.is_empty(),
        "{setup}: {} of {} answers differ from OPA's:\n{}",
        failures.len(),
        recorded[setup].as_array().unwrap().len(),
        failures.join("\n")
    );
}

#[test]
fn writes_to_a_folders_data_as_opa_answers_them() {
    replay("folder", &["folder"]);
}

#[test]
fn writes_beside_a_bundle_as_opa_answers_them() {
    replay("bundle", &["--bundle", "bundle"]);
}

/// The bundles' manifests say which paths a bundle owns: a write may not change them (it
/// would lift the bundle's claim, then overwrite its data).
#[test]
fn the_bundle_manifests_are_not_writable() {
    let mut cmd = common::serve_command();
    cmd.current_dir(here()).args(["--bundle", "bundle"]);
    let (child, _, http) = common::serve(cmd);
    for (method, path, body) in [
        ("PUT", "/v1/data/system/bundles/bundle/manifest/roots", "[]"),
        ("DELETE", "/v1/data/system/bundles/bundle", ""),
        ("PUT", "/v1/data/system", "{}"),
    ] {
        let (status, answer) = common::http(&http, method, path, body);
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert!(answer.contains("owned by the bundle plugin"), "{answer}");
    }
    let (status, _) = common::http(&http, "PUT", "/v1/data/envoy/roles/mallory", "\"admin\"");
    assert_eq!(status, 400, "the bundle still owns envoy");
    common::stop(child);
}

/// Issue 18 item 7: a write's body is a data document, under the data file limit
/// (`--max-data-file-bytes`, as for files and bundles), refused with the limit and how to raise
/// it; other requests keep the Data API's 4 MiB.
#[test]
fn a_write_body_is_under_the_data_file_limit() {
    let mut cmd = common::serve_command();
    cmd.current_dir(here())
        .args(["folder", "--max-data-file-bytes", "1KiB"]);
    let (child, _, http) = common::serve(cmd);
    let big = format!("\"{}\"", "x".repeat(2000));
    let (status, body) = common::http(&http, "PUT", "/v1/data/big", &big);
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("over the limit of 1024 bytes for data")
            && body.contains("--max-data-file-bytes"),
        "{body}"
    );
    let small = format!("\"{}\"", "x".repeat(500));
    assert_eq!(common::http(&http, "PUT", "/v1/data/small", &small).0, 204);
    let patch = format!(r#"[{{"op": "add", "path": "/big", "value": {big}}}]"#);
    assert_eq!(common::http(&http, "PATCH", "/v1/data", &patch).0, 413);
    // A query's body: the Data API's own 4 MiB, whatever the data limit. The server answers
    // without reading the rest, so the body is sent from another thread.
    let query = format!(r#"{{"input": "{}"}}"#, "x".repeat(5 << 20));
    let mut conn = std::net::TcpStream::connect(&http).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let head = format!(
        "POST /v1/data/envoy/authz/allow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        query.len()
    );
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(query.as_bytes());
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        use std::io::Read;
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&answer).contains("bytes\"}") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("Data API's limit of 4194304 bytes"),
        "{answer}"
    );
    drop(conn);
    common::stop(child);
}
