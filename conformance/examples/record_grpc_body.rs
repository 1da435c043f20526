//! Records what the reference OPA-Envoy 1.7.1 decodes from gRPC calls with its
//! `proto-descriptor` option, for `tests/grpc_body_e2e.rs` to compare arbiter with, in CI,
//! without OPA:
//!
//! ```sh
//! ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa \
//!   cargo run -p arbiter-conformance --example record_grpc_body
//! ```
//!
//! OPA-Envoy runs `fixtures/grpc-body/policy.rego` behind a real Envoy 1.40 configured as the
//! test configures it (`with_request_body` with `pack_as_bytes`, HTTP/2 to a tonic upstream);
//! the same tonic client makes the same calls (`grpc_body::calls`). For each call the fixture
//! keeps the gRPC status the client got and the `parsed_body` and `truncated_body` from OPA's
//! console decision log. The reference binary comes from `../shared/tools/build-reference-opa`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arbiter_conformance::envoy::{Envoy, EnvoyOptions, TempDir, free_port};
use arbiter_conformance::grpc_body;
use serde_json::{Value as Json, json};

const COMMAND: &str = "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa cargo run -p arbiter-conformance --example record_grpc_body";

fn main() {
    let opa = std::env::var("ARBITER_REFERENCE_OPA").unwrap_or_else(|_| {
        format!(
            "{}/.cache/arbiter-ref/opa",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let version = Command::new(&opa)
        .arg("version")
        .output()
        .unwrap_or_else(|e| {
            panic!("{opa}: {e} (build it with ../shared/tools/build-reference-opa)")
        });
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or("unknown")
        .to_string();
    let dir = TempDir::new("record-grpc-body").unwrap();
    let pb = dir.0.join("greeter.pb");
    let pool = grpc_body::write_descriptor_set(&pb).unwrap();
    let grpc_port = free_port();
    let config = dir.0.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "plugins:\n  envoy_ext_authz_grpc:\n    addr: 127.0.0.1:{grpc_port}\n    path: envoy/authz/allow\n    proto-descriptor: {}\ndecision_logs:\n  console: true\n",
            pb.display()
        ),
    )
    .unwrap();
    let log = dir.0.join("opa.log");
    let mut child = Command::new(&opa)
        .args(["run", "--server", "--log-format", "json"])
        .arg(format!("--addr=127.0.0.1:{}", free_port()))
        .arg(format!("--diagnostic-addr=127.0.0.1:{}", free_port()))
        .arg(format!("--config-file={}", config.display()))
        .arg(grpc_body::fixtures().join("policy.rego"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", grpc_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "OPA-Envoy did not listen:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let upstream = rt.block_on(grpc_body::start_upstream()).unwrap();
    let mut options =
        EnvoyOptions::new(format!("127.0.0.1:{grpc_port}").parse().unwrap(), upstream);
    options.with_request_body = grpc_body::WITH_BODY.into();
    options.upstream_cluster_extra = grpc_body::UPSTREAM_HTTP2.into();
    let envoy = Envoy::start(&options).unwrap();
    let mut answers = Vec::new();
    for call in grpc_body::calls() {
        let a = rt
            .block_on(grpc_body::make_call(envoy.port, &pool, &call))
            .unwrap();
        answers.push((call.name, a));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    drop(envoy);
    let text = std::fs::read_to_string(&log).unwrap();
    let decisions: Vec<Json> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|l| l.get("decision_id").is_some())
        .collect();
    let mut calls = serde_json::Map::new();
    for (name, answer) in answers {
        let d = decisions
            .iter()
            .find(|d| d["input"]["attributes"]["request"]["http"]["headers"]["x-call"] == name)
            .unwrap_or_else(|| panic!("no decision for {name}:\n{text}"));
        calls.insert(
            name.to_string(),
            json!({
                "code": answer.code as i64,
                "result": d["result"],
                "parsed_body": d["input"].get("parsed_body").cloned().unwrap_or(Json::Null),
                "truncated_body": d["input"].get("truncated_body").cloned().unwrap_or(Json::Null),
            }),
        );
    }
    let out = json!({
        "recorded_with": COMMAND,
        "opa_version": version,
        "calls": calls,
    });
    let path = grpc_body::fixtures().join("opa-envoy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap() + "\n").unwrap();
    println!("wrote {}", path.display());
}
