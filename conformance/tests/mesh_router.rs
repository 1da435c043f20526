//! Issue 18's router at mesh size: 1,000 service packages behind one rule
//! (`data.envoy.svc[input.parsed_path[0]].allow`), and 400 requests whose decisions real OPA
//! 1.7.1 recorded (`conformance/fixtures/mesh/router-1000.json`, re-recorded by
//! `benches/mesh/record-agreement.py`). arbiter must decide every one as OPA did, on the
//! bytecode VM, both as a gRPC check (the request made into OPA-Envoy's input) and through the
//! Data API's path (the same input posted as a document); and on the interpreter, the fallback
//! when a set cannot run on the VM, which evaluates only the package the key selects (regorus
//! patch 30: it used to build the whole `data.envoy.svc` document, ≈ 20 ms a decision here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use arbiter_engine::authorizer::{Authorizer, RegoEngine};
use arbiter_engine::input::{InputOptions, build_input};
use arbiter_engine::regorus::Value;
use arbiter_engine::request::{AuthzRequest, HttpRequest, Peer};
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};

/// `benches/mesh/gen-router.py`'s templates.
const ROUTER: &str = "package envoy.authz\n\ndefault allow := false\n\nallow if data.envoy.svc[input.parsed_path[0]].allow\n";

fn service(i: usize) -> String {
    format!(
        "package envoy.svc.s{i:05}\n\ndefault allow := false\n\nallow if {{\n\tinput.attributes.request.http.method == \"GET\"\n\tinput.parsed_path[1] == \"public\"\n}}\n\nallow if input.attributes.source.principal == \"spiffe://cluster.local/ns/default/sa/c{i:05}\"\n"
    )
}

fn fixture() -> serde_json::Value {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(here.join("fixtures/mesh/router-1000.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's set, with the deadline of `serve` (50 ms): none of the 400 may run out of time.
fn authorizer(fixture: &serde_json::Value) -> Authorizer {
    let packages = usize::try_from(fixture["packages"].as_u64().unwrap()).unwrap();
    let mut sources = PolicySources::default();
    sources.add_rego("router.rego", ROUTER);
    for i in 0..packages {
        sources.add_rego(format!("svc/s{i:05}.rego"), service(i));
    }
    let set = Arc::new(PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap());
    Authorizer::new(
        set,
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    )
}

#[test]
fn a_thousand_packages_decide_as_recorded_opa_on_the_vm() {
    let fixture = fixture();
    let authorizer = authorizer(&fixture);
    assert_eq!(
        authorizer.rego_engine(),
        Ok(RegoEngine::Rvm),
        "1,000 packages run on the VM"
    );
    decide_as_recorded(&authorizer, &fixture);
}

#[test]
fn a_thousand_packages_decide_as_recorded_opa_on_the_interpreter() {
    let fixture = fixture();
    let authorizer = authorizer(&fixture).with_rego_engine(RegoEngine::Interpreter);
    assert!(authorizer.rego_engine().is_err(), "the interpreter decides");
    decide_as_recorded(&authorizer, &fixture);
}

fn decide_as_recorded(authorizer: &Authorizer, fixture: &serde_json::Value) {
    let path = DataRef::parse("envoy/authz/allow").unwrap();
    let requests = fixture["requests"].as_array().unwrap();
    let decisions = fixture["opa"].as_array().unwrap();
    assert_eq!(requests.len(), 400);
    let mut allowed = 0;
    for (r, want) in requests.iter().zip(decisions) {
        let [_, method, http_path, principal] = r.as_array().unwrap().as_slice() else {
            panic!("a request is [service, method, path, principal]: {r}");
        };
        let want = want.as_bool().unwrap();
        let req = AuthzRequest {
            source: Some(Peer {
                principal: principal.as_str().unwrap().into(),
                ..Peer::default()
            }),
            http: Some(HttpRequest {
                method: method.as_str().unwrap().into(),
                path: http_path.as_str().unwrap().into(),
                ..HttpRequest::default()
            }),
            ..AuthzRequest::default()
        };
        let decision = authorizer.check(&req).decision;
        assert_eq!(
            decision.allowed, want,
            "gRPC check of {r}: {:?}",
            decision.reason
        );
        let input = build_input(&req, &InputOptions::default()).unwrap().value;
        assert_eq!(
            authorizer.evaluate_value(&path, input).unwrap(),
            Value::Bool(want),
            "Data API for {r}"
        );
        allowed += usize::from(want);
    }
    // The recording holds both answers in numbers (so neither "all allow" nor "all deny"
    // passes).
    assert!(allowed > 100 && allowed < 300, "{allowed} of 400 allowed");
}
