//! `serve --shadow` behind a real Envoy 1.40: the live set (`fixtures/replay/base`) decides and
//! is enforced; the shadow set (`fixtures/replay/candidate`) decides every check beside it and
//! never is. Envoy's answers are the live set's; exactly the checks the two sets decide
//! differently carry a `shadow` object in their decision event, and the disagreement counters
//! say how many in each direction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arbiter_conformance::envoy::{TempDir, request};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use serde_json::Value as Json;

fn authorizer(side: &str) -> arbiter_engine::authorizer::Authorizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/replay")
        .join(side);
    let settings = arbiter_cli::serve::Args {
        policies: vec![dir],
        ..Default::default()
    }
    .settings()
    .unwrap();
    let sources = arbiter_cli::serve::policy_sources(&settings).unwrap();
    arbiter_cli::serve::authorizer_from_sources(&settings, &sources).unwrap()
}

/// A request through Envoy: method, target, headers, body, the live set's answer, whether the
/// shadow set decides it otherwise.
type Sent<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [u8],
    u16,
    bool,
);

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_shadow_set_decides_beside_the_live_one_and_is_never_enforced() {
    let dir = TempDir::new("shadow").unwrap();
    let log = dir.0.join("decisions.log");
    let mut h = Harness::start(
        authorizer("base"),
        loopback_config(Some(DecisionLogConfig::to(LogTarget::File(log.clone())))),
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let running = h.arbiter.as_ref().unwrap();
    running.state.start_shadow(authorizer("candidate")).unwrap();
    let http = running.http_addr.unwrap().port();

    let json = [("content-type", "application/json")];
    let sent: [Sent; 8] = [
        ("GET", "/public/docs", &[], b"", 200, false),
        ("GET", "/public/other", &[], b"", 200, true),
        ("GET", "/private", &[], b"", 403, true),
        ("GET", "/private", &[], b"", 403, true),
        ("POST", "/orders", &json, br#"{"amount": 50}"#, 200, false),
        ("POST", "/orders", &json, br#"{"amount": 500}"#, 403, true),
        ("POST", "/orders", &json, br#"{"amount": 5000}"#, 403, false),
        (
            "GET",
            "/keyed",
            &[("x-api-key", "revoked")],
            b"",
            403,
            false,
        ),
    ];
    for (method, target, headers, body, status, _) in &sent {
        let r = request(h.envoy.port, method, target, headers, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}\n{}", h.envoy.log_text()));
        assert_eq!(r.status, *status, "{method} {target}: the live set decides");
    }
    // The counters, once the side thread has decided every check.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let r = request(http, "GET", "/metrics", &[], b"").unwrap();
        let text = r.body_text();
        if metric(&text, "arbiter_shadow_evaluations_total") == Some(sent.len() as u64)
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        metric(&text, "arbiter_shadow_evaluations_total"),
        Some(sent.len() as u64),
        "{text}"
    );
    let count = |d: &str| {
        metric(
            &text,
            &format!("arbiter_shadow_disagreements_total{{direction=\"{d}\"}}"),
        )
    };
    assert_eq!(count("new_access"), Some(3), "{text}");
    assert_eq!(count("new_denial"), Some(1), "{text}");
    assert_eq!(metric(&text, "arbiter_shadow_dropped_total"), Some(0));

    // Every check's event is written (the shadow sends it on), and exactly the disagreeing
    // ones carry what the shadow decided.
    h.stop_arbiter().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<Json> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), sent.len(), "{text}");
    for (method, target, _, body, status, differs) in &sent {
        let e = events
            .iter()
            .find(|e| {
                e["request"]["method"] == *method
                    && e["request"]["path"] == *target
                    && e["input"]["attributes"]["request"]["http"]["body"]
                        .as_str()
                        .unwrap_or("")
                        == String::from_utf8_lossy(body)
                    && (*target != "/private" || e.get("shadow").is_some())
            })
            .unwrap_or_else(|| panic!("no event for {method} {target}"));
        assert_eq!(e["allowed"], *status == 200, "{e}");
        match e.get("shadow") {
            Some(s) if *differs => {
                assert_eq!(s["allowed"], *status != 200, "{s}");
                assert_eq!(s["revision"].as_str().map(str::len), Some(24), "{s}");
                let want = if *status == 200 {
                    "policy_denied"
                } else {
                    "allowed"
                };
                assert_eq!(s["reason"], want, "{s}");
            }
            None if !differs => {}
            other => panic!("{method} {target}: shadow {other:?}, differs: {differs}"),
        }
    }
    // The chain holds with the shadow's events in it.
    let verify = arbiter_engine::audit::chain::verify(vec![(
        "decisions.log".to_string(),
        std::io::BufReader::new(std::fs::File::open(&log).unwrap()),
    )])
    .unwrap();
    assert!(verify.failure.is_none(), "{verify:?}");
}
