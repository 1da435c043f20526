//! Istio AuthorizationPolicy conformance: the cases of `conformance/cases/istio/*/`, written
//! from istio.io's documentation examples (each file and case cites its page).
//!
//! Every scenario folder holds the Istio policies (`*.istio.yaml`), the same decisions written
//! as CEL (`*.cel.yaml`) and the cases (`cases_test.yaml`, an `arbiter test` decision-test
//! file). Each case is decided
//! - in-process with the Istio policies alone, which must give exactly what the case expects
//!   (including the `namespace/name` and rule index that decided),
//! - in-process with the CEL policies alone, which must give the same decision,
//! - by `arbiter test`'s runner with both loaded, as `arbiter test DIR` does,
//! - and through a real Envoy in front of arbiter (Istio policies): mTLS client certificates
//!   for principals, Envoy's `jwt_authn` filter for JWTs (the metadata Istio's
//!   RequestAuthentication produces), per-route context extensions for the workload. Cases
//!   that need a source address other than 127.0.0.1, a destination port or SNI cannot be
//!   sent through a loopback Envoy and run in-process only; the test counts both and asserts
//!   exactly the numbers the README states (100 cases, 87 through Envoy, 13 in-process), so
//!   the README cannot drift from what is tested.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arbiter_conformance::envoy::{EnvoyOptions, request_tls, tls_client_config};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_conformance::istio_envoy::{
    Pki, Signer, ext_authz_per_route, jwt_filter, routes, scenarios,
};
use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::testing::decision::{self, Case, Expect};
use arbiter_engine::testing::{self, Outcome, TestOptions};
use arbiter_engine::{LoadOptions, PolicySet, PolicySources};
use serde_json::Value as Json;

struct Scenario {
    istio: Authorizer,
    cel: Authorizer,
    cases: Vec<Case>,
}

fn authorizer(sources: &PolicySources, path: &arbiter_engine::DataRef) -> Authorizer {
    let set =
        PolicySet::from_sources(sources, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    Authorizer::new(Arc::new(set), path.clone(), InputOptions::default())
}

fn load(dir: &Path) -> Scenario {
    let sources = PolicySources::discover(&[dir.to_path_buf()]).unwrap();
    assert!(
        !sources.istio.is_empty(),
        "{}: no Istio policies",
        dir.display()
    );
    assert!(
        !sources.cel.is_empty(),
        "{}: no CEL policies",
        dir.display()
    );
    let files = decision::parse_all(&sources, arbiter_ext_authz::protojson::authz_request)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(files.len(), 1, "{}: one cases file", dir.display());
    let file = &files[0];
    let mut istio_only = sources.clone();
    istio_only.cel.clear();
    let mut cel_only = sources.clone();
    cel_only.istio.clear();
    assert!(
        file.cases.iter().all(|c| c.data.is_none()),
        "{}: data overrides are not replayed through Envoy",
        dir.display()
    );
    Scenario {
        istio: authorizer(&istio_only, &file.path),
        cel: authorizer(&cel_only, &file.path),
        cases: file.cases.clone(),
    }
}

fn status_of(d: &arbiter_engine::Decision) -> u16 {
    d.http_status
}

#[test]
fn istio_cases_decide_as_documented_and_cel_agrees() {
    let mut total = 0;
    let mut failures = Vec::new();
    for dir in scenarios() {
        let s = load(&dir);
        for case in &s.cases {
            total += 1;
            let doc = case.doc.as_deref().unwrap_or("");
            assert!(
                doc.starts_with("https://istio.io/"),
                "{}: case `{}` must cite an istio.io page",
                dir.display(),
                case.name
            );
            let istio = s.istio.check(&case.request).decision;
            let cel = s.cel.check(&case.request).decision;
            let mismatches = decision::compare(&istio, &case.expect);
            if !mismatches.is_empty() {
                failures.push(format!(
                    "{} `{}` (Istio): {mismatches:?} decided_by {:?} ({doc})",
                    dir.display(),
                    case.name,
                    istio.decided_by
                ));
            }
            let without_rule = Expect {
                rule: None,
                ..case.expect.clone()
            };
            let cel_mismatches = decision::compare(&cel, &without_rule);
            if !cel_mismatches.is_empty()
                || cel.allowed != istio.allowed
                || status_of(&cel) != status_of(&istio)
            {
                failures.push(format!(
                    "{} `{}`: CEL decided {} ({}), Istio {} ({}): {cel_mismatches:?}, reason {:?}",
                    dir.display(),
                    case.name,
                    cel.allowed,
                    status_of(&cel),
                    istio.allowed,
                    status_of(&istio),
                    cel.reason
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The README states these numbers.
    assert_eq!(total, 100, "the README says 100 Istio cases");
    eprintln!("{total} Istio cases: Istio and CEL agree with every expectation");
}

#[test]
fn arbiter_test_runs_the_cases_against_istio_and_cel_together() {
    for dir in scenarios() {
        let sources = PolicySources::discover(std::slice::from_ref(&dir)).unwrap();
        let options = TestOptions {
            check_request_reader: arbiter_ext_authz::protojson::authz_request,
            ..TestOptions::default()
        };
        let report = testing::run(&sources, &options).unwrap();
        let bad: Vec<String> = report
            .results
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Pass))
            .map(|r| format!("{}: {:?}", r.name, r.outcome))
            .collect();
        assert!(bad.is_empty(), "{}:\n{}", dir.display(), bad.join("\n"));
        assert!(!report.results.is_empty());
    }
}

#[test]
fn a_wrong_expectation_fails() {
    // The runner is not vacuous: flipping one expectation makes the Istio comparison fail.
    let s = load(&scenarios()[0]);
    let case = &s.cases[0];
    let flipped = Expect {
        allowed: case.expect.allowed.map(|a| !a),
        ..case.expect.clone()
    };
    let d = s.istio.check(&case.request).decision;
    assert!(!decision::compare(&d, &flipped).is_empty());
}

// ---- through Envoy ----

/// What a case sends, from its short-form request.
struct Wire {
    method: String,
    path: String,
    host: String,
    headers: Vec<(String, String)>,
    spiffe_id: Option<String>,
    jwt: Option<Json>,
    workload: BTreeMap<String, String>,
}

/// The case as an HTTP request through Envoy, or why it cannot be one.
fn wire(case: &Case) -> Result<Wire, String> {
    let r = case.short.as_ref().ok_or("a whole OPA-Envoy input")?;
    if r.get("source_address")
        .and_then(Json::as_str)
        .is_some_and(|a| a != "127.0.0.1")
    {
        return Err("a source address other than the loopback client".into());
    }
    if r.get("destination_port").is_some() {
        return Err("a destination port (Envoy's listener port is the destination)".into());
    }
    if r.get("sni").is_some() {
        return Err("SNI".into());
    }
    let text = |k: &str| r.get(k).and_then(Json::as_str).map(str::to_string);
    let map = |k: &str| -> BTreeMap<String, String> {
        r.get(k)
            .and_then(Json::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(Wire {
        method: text("method").unwrap_or_else(|| "GET".into()),
        path: text("path").unwrap_or_else(|| "/".into()),
        host: text("host").unwrap_or_else(|| "example.com".into()),
        headers: map("headers").into_iter().collect(),
        spiffe_id: text("spiffe_id").or_else(|| text("principal")),
        jwt: r.get("jwt_payload").cloned(),
        workload: map("context_extensions"),
    })
}

#[test]
fn istio_cases_through_envoy() {
    let signer = Signer::new();
    let mut pki = Pki::new();
    let mut sent = 0;
    let mut in_process_only: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    for dir in scenarios() {
        let s = load(&dir);
        let mut wires = Vec::new();
        for case in &s.cases {
            match wire(case) {
                Ok(w) => wires.push((case, w)),
                Err(why) => {
                    in_process_only.push(format!("{} `{}`: {why}", dir.display(), case.name))
                }
            }
        }
        if wires.is_empty() {
            continue;
        }
        let mut workloads: Vec<BTreeMap<String, String>> = Vec::new();
        let mut issuers: Vec<String> = Vec::new();
        for (_, w) in &wires {
            if !workloads.contains(&w.workload) {
                workloads.push(w.workload.clone());
            }
            if let Some(iss) = w.jwt.as_ref().and_then(|p| p["iss"].as_str())
                && !issuers.iter().any(|i| i == iss)
            {
                issuers.push(iss.to_string());
            }
        }
        let chain = pki.listener_tls();
        let before = if issuers.is_empty() {
            String::new()
        } else {
            jwt_filter(&issuers, &signer.jwks)
        };
        let route_text = routes(&workloads, &|i| ext_authz_per_route(&workloads[i]));
        let mut config = loopback_config(None);
        config.workers = 0;
        let harness = Harness::start(s.istio, config, |o: &mut EnvoyOptions| {
            o.filter_chain_extra = chain;
            o.http_filters_before = before;
            o.routes = route_text;
            o.ext_authz_extra =
                "              metadata_context_namespaces: [envoy.filters.http.jwt_authn]".into();
        })
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (case, w) in &wires {
            let client = w.spiffe_id.as_ref().map(|id| pki.client(id));
            let tls = tls_client_config(
                &pki.ca.pem,
                client
                    .as_ref()
                    .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
                &[b"http/1.1"],
            )
            .unwrap();
            let route = workloads
                .iter()
                .position(|x| *x == w.workload)
                .unwrap()
                .to_string();
            let token = w
                .jwt
                .as_ref()
                .map(|p| format!("Bearer {}", signer.token(p)));
            let mut headers: Vec<(&str, &str)> =
                vec![("host", &w.host), ("x-arbiter-workload", &route)];
            headers.extend(w.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            if let Some(t) = &token {
                headers.push(("authorization", t));
            }
            let expected = case
                .expect
                .http_status
                .unwrap_or(match case.expect.allowed {
                    Some(false) => 403,
                    _ => 200,
                });
            sent += 1;
            match request_tls(harness.envoy.port, tls, &w.method, &w.path, &headers) {
                Ok(resp) if resp.status == expected => {}
                Ok(resp) => failures.push(format!(
                    "{} `{}`: Envoy answered {}, expected {expected}: {}",
                    dir.display(),
                    case.name,
                    resp.status,
                    resp.body_text()
                )),
                Err(e) => failures.push(format!("{} `{}`: {e}", dir.display(), case.name)),
            }
        }
        if !failures.is_empty() {
            eprintln!("Envoy log:\n{}", harness.envoy.log_text());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{sent} Istio cases through Envoy; in-process only:\n  {}",
        in_process_only.join("\n  ")
    );
    // The README states these numbers: 87 through Envoy, 13 in-process only.
    assert_eq!(sent, 87, "the README says 87 cases go through Envoy");
    assert_eq!(in_process_only.len(), 13, "{in_process_only:?}");
}
