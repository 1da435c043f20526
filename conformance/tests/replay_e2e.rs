//! `arbiter replay` over a decision log written by arbiter behind a real Envoy 1.40.
//!
//! The policy (`fixtures/replay/base`) decides on the time (a one-second freshness window, a
//! token's expiry), the JSON body and a header the log erases. The log is replayed after the
//! window has closed and the token has expired, so only a clock frozen at each event's time
//! decides them as they were decided. Replayed under the policies that wrote it, nothing flips
//! but the one event whose deciding header was erased (flagged approximate); a deliberate
//! change (`fixtures/replay/candidate`) flips exactly the requests it should, grouped by
//! request and by rule, with the recorded decision ids as examples.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbiter_cli::Exit;
use arbiter_cli::replay::{Args, FailOn, Format};
use arbiter_conformance::envoy::{TempDir, request};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use serde_json::{Value as Json, json};

fn fixtures(side: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/replay")
        .join(side)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token signed with `secret`, expiring at `exp`.
fn token(exp: u64) -> String {
    use arbiter_engine::builtins::{encoding::base64url_encode_raw as b64, jose::hmac_sign};
    let head = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(json!({"sub": "alice", "exp": exp}).to_string().as_bytes());
    let sig = hmac_sign("HS256", b"secret", format!("{head}.{body}").as_bytes()).unwrap();
    format!("{head}.{body}.{}", b64(&sig))
}

/// A request sent through Envoy: method, target, headers, body, the status Envoy answers.
type Sent<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16);

fn args(logs: &Path, candidate: &str, baseline: Option<&str>) -> Args {
    Args {
        logs: vec![logs.to_path_buf()],
        policies: vec![fixtures(candidate)],
        baseline: baseline.map(fixtures).into_iter().collect(),
        config: None,
        set: Vec::new(),
        path: None,
        path_normalization: None,
        trust_bundle: Vec::new(),
        trust_xfcc_by: None,
        jwt_bundle: Vec::new(),
        jwt_audience: Vec::new(),
        jwt_svid_header: None,
        skip_request_body_parse: false,
        proto_descriptor: None,
        v0_compatible: false,
        istio_root_namespace: None,
        istio_allow_without_allow_policies: false,
        format: Format::Json,
        fail_on: None,
        examples: 3,
        top: 10,
        threads: 2,
    }
}

fn replay(a: &Args) -> (Exit, Json) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = arbiter_cli::replay::run_to(a, &mut out, &mut err);
    let text = String::from_utf8(out).unwrap();
    let report = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\nstderr: {}", String::from_utf8_lossy(&err)));
    (exit, report)
}

/// The `by_request` groups of one direction, as `(method path, count, decision ids)`.
fn groups(report: &Json, direction: &str) -> Vec<(String, u64, Vec<String>)> {
    report["flips"][direction]["by_request"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            assert_eq!(g["identity"], "(no identity)", "{g}");
            let ids = g["examples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["decision_id"].as_str().unwrap().to_string())
                .collect();
            (
                format!(
                    "{} {}",
                    g["method"].as_str().unwrap(),
                    g["path"].as_str().unwrap()
                ),
                g["count"].as_u64().unwrap(),
                ids,
            )
        })
        .collect()
}

#[test]
fn replay_a_log_recorded_through_envoy() {
    let dir = TempDir::new("replay").unwrap();
    let log = dir.0.join("decisions.log");
    // The log keeps `authorization` (the token rule replays) and erases `x-api-key`.
    let log_config = DecisionLogConfig {
        mask_headers: vec!["x-api-key".into()],
        ..DecisionLogConfig::to(LogTarget::File(log.clone()))
    };
    // Recorded with the authorizer `serve` builds from the base policies.
    let settings = arbiter_cli::serve::Args {
        policies: vec![fixtures("base")],
        ..Default::default()
    }
    .settings()
    .unwrap();
    let sources = arbiter_cli::serve::policy_sources(&settings).unwrap();
    let authorizer = arbiter_cli::serve::authorizer_from_sources(&settings, &sources).unwrap();
    let mut h = Harness::start(authorizer, loopback_config(Some(log_config)), |_| {})
        .unwrap_or_else(|e| panic!("{e}"));

    let exp = now_secs() + 2;
    let valid = format!("Bearer {}", token(exp));
    let expired = format!("Bearer {}", token(now_secs() - 60));
    let sent: Vec<Sent> = vec![
        ("GET", "/public/docs", vec![], b"", 200),
        ("GET", "/public/other", vec![], b"", 200),
        ("GET", "/private", vec![], b"", 403),
        ("GET", "/private", vec![], b"", 403),
        ("GET", "/fresh", vec![], b"", 200),
        (
            "GET",
            "/token",
            vec![("authorization", valid.as_str())],
            b"",
            200,
        ),
        (
            "GET",
            "/token",
            vec![("authorization", expired.as_str())],
            b"",
            403,
        ),
        (
            "POST",
            "/orders",
            vec![("content-type", "application/json")],
            br#"{"amount": 50}"#,
            200,
        ),
        (
            "POST",
            "/orders",
            vec![("content-type", "application/json")],
            br#"{"amount": 500}"#,
            403,
        ),
        (
            "POST",
            "/orders",
            vec![("content-type", "application/json")],
            br#"{"amount": 5000}"#,
            403,
        ),
        ("GET", "/keyed", vec![("x-api-key", "k-1")], b"", 200),
        ("GET", "/keyed", vec![("x-api-key", "revoked")], b"", 403),
        // Refused before an input is built: no input to replay.
        ("GET", "/a/%2e%2e/b", vec![], b"", 400),
    ];
    for (method, target, headers, body, status) in &sent {
        let r = request(h.envoy.port, method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}\n{}", h.envoy.log_text()));
        assert_eq!(r.status, *status, "{method} {target}: {}", r.body_text());
    }
    // A Data API query: logged, never an access decision.
    let http = h.arbiter.as_ref().unwrap().http_addr.unwrap();
    let r = request(
        http.port(),
        "POST",
        "/v1/data/envoy/authz/allow",
        &[("content-type", "application/json")],
        br#"{"input": {"parsed_path": ["public", "x"], "attributes": {"request": {"http": {"method": "GET"}}}}}"#,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    // Past the freshness window and the token's expiry, then the log is flushed.
    while now_secs() <= exp + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    h.stop_arbiter().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<Json> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), sent.len() + 1, "{text}");
    let id_of = |method: &str, path: &str, n: usize| -> String {
        events
            .iter()
            .filter(|e| {
                e["input"]["attributes"]["request"]["http"]["method"] == method
                    && e["input"]["attributes"]["request"]["http"]["path"] == path
            })
            .nth(n)
            .unwrap_or_else(|| panic!("no event {n} for {method} {path}"))["decision_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let compared = (sent.len() - 1) as u64;

    // The policies that wrote the log: nothing flips but the revoked key's event, whose
    // deciding header the log erased (flagged approximate, as is the other keyed event).
    let (exit, r) = replay(&args(&log, "base", None));
    assert_eq!(exit, Exit::Ok);
    assert_eq!(r["lines"], sent.len() + 1, "{r:#}");
    assert_eq!(r["compared"], compared, "{r:#}");
    assert_eq!(r["new_denials"], 0, "{r:#}");
    assert_eq!(r["new_access"], 1, "{r:#}");
    assert_eq!(r["approximate"], 2, "{r:#}");
    assert_eq!(r["approximate_flips"], 1, "{r:#}");
    assert_eq!(
        groups(&r, "new_access"),
        vec![("GET /keyed".to_string(), 1, vec![id_of("GET", "/keyed", 1)])]
    );
    assert_eq!(r["not_replayed"]["data_api"], 1, "{r:#}");
    assert_eq!(
        r["not_replayed"]["without_input"],
        json!({"non_canonical_path": 1}),
        "{r:#}"
    );
    assert_eq!(r["not_replayed"]["unreadable"], 0, "{r:#}");
    // Re-decided on both sides, the erased header is missing on both: nothing flips.
    let (_, r) = replay(&args(&log, "base", Some("base")));
    assert_eq!(
        (
            r["compared"].as_u64(),
            r["new_access"].as_u64(),
            r["new_denials"].as_u64()
        ),
        (Some(compared), Some(0), Some(0)),
        "{r:#}"
    );

    // The deliberate change.
    let (exit, r) = replay(&args(&log, "candidate", None));
    assert_eq!(exit, Exit::Ok, "no --fail-on: the report is the answer");
    assert_eq!(r["new_access"], 4, "{r:#}");
    assert_eq!(r["new_denials"], 1, "{r:#}");
    assert_eq!(
        groups(&r, "new_access"),
        vec![
            (
                "GET /private".to_string(),
                2,
                vec![id_of("GET", "/private", 0), id_of("GET", "/private", 1)]
            ),
            ("GET /keyed".to_string(), 1, vec![id_of("GET", "/keyed", 1)]),
            (
                "POST /orders".to_string(),
                1,
                vec![id_of("POST", "/orders", 1)]
            ),
        ]
    );
    assert_eq!(
        groups(&r, "new_denials"),
        vec![(
            "GET /public/other".to_string(),
            1,
            vec![id_of("GET", "/public/other", 0)]
        )]
    );
    let example = &r["flips"]["new_access"]["by_request"][0]["examples"][0];
    assert_eq!(example["before"]["reason"], "policy_denied", "{example}");
    assert_eq!(example["after"]["allowed"], true, "{example}");
    assert_eq!(
        r["flips"]["new_access"]["by_rule"][0]["rule_before"],
        "data.envoy.authz.allow"
    );
    // Against the base re-decided: the same flips but the approximate one.
    let (_, r) = replay(&args(&log, "candidate", Some("base")));
    assert_eq!(
        (r["new_access"].as_u64(), r["new_denials"].as_u64()),
        (Some(3), Some(1)),
        "{r:#}"
    );

    // The CI gates.
    let mut gate = args(&log, "candidate", Some("base"));
    gate.fail_on = Some(FailOn::NewAccess);
    assert_eq!(replay(&gate).0, Exit::Failed);
    let mut gate = args(&log, "base", Some("base"));
    gate.fail_on = Some(FailOn::Any);
    assert_eq!(replay(&gate).0, Exit::Ok);
}
