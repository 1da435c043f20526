//! The reference policies written once in Rego and once in CEL give identical decisions: every
//! request of `cases/differential/reference.yaml` gets its expected decision from Rego alone,
//! from CEL alone and from both together, in-process and through real Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arbiter_conformance::envoy::request;
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::request::{AuthzRequest, HttpRequest, Peer};
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Table {
    tokens: BTreeMap<String, String>,
    principals: BTreeMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Debug, Clone, Deserialize)]
struct Case {
    name: String,
    method: String,
    path: String,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn table() -> Table {
    let p = repo().join("conformance/cases/differential/reference.yaml");
    let t: Table = yaml_serde::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert!(t.cases.len() >= 30, "the table needs at least 30 requests");
    t
}

impl Case {
    fn principal(&self, t: &Table) -> String {
        self.principal
            .as_ref()
            .map(|p| t.principals.get(p).cloned().unwrap_or_else(|| p.clone()))
            .unwrap_or_default()
    }

    /// Headers with `token` and `TOKEN:<name>` placeholders filled in.
    fn headers(&self, t: &Table) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let v = match v.split_once("TOKEN:") {
                    Some((pre, name)) => format!("{pre}{}", t.tokens[name]),
                    None => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        if let Some(tok) = &self.token {
            h.push(("authorization".into(), format!("Bearer {}", t.tokens[tok])));
        }
        h
    }

    fn request(&self, t: &Table) -> AuthzRequest {
        AuthzRequest {
            source: Some(Peer {
                principal: self.principal(t),
                ..Peer::default()
            }),
            http: Some(HttpRequest {
                method: self.method.clone(),
                path: self.path.clone(),
                headers: self.headers(t),
                ..HttpRequest::default()
            }),
            ..AuthzRequest::default()
        }
    }

    fn allowed(&self) -> bool {
        match self.expect.as_str() {
            "allow" => true,
            "deny" => false,
            other => panic!("{}: expect must be allow or deny, not {other}", self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Rego,
    Cel,
    Both,
}

fn authorizer(v: Variant) -> Authorizer {
    let mut sources = PolicySources::discover(&[repo().join("policies")]).unwrap();
    assert!(
        !sources.rego.is_empty() && !sources.cel.is_empty(),
        "the reference policies exist in both languages"
    );
    match v {
        Variant::Rego => sources.cel.clear(),
        Variant::Cel => sources.rego.clear(),
        Variant::Both => {}
    }
    let set = PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap();
    Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    )
}

#[test]
fn rego_and_cel_decide_alike_in_process() {
    let t = table();
    let variants = [Variant::Rego, Variant::Cel, Variant::Both].map(|v| (v, authorizer(v)));
    let mut failures = Vec::new();
    for c in &t.cases {
        let req = c.request(&t);
        for (v, a) in &variants {
            let d = a.check(&req).decision;
            // Without a decision log the input document holds only what the policies read:
            // the same decision.
            assert_eq!(d, a.check_with(&req, false).decision, "{v:?}: `{}`", c.name);
            if d.allowed != c.allowed() {
                failures.push(format!(
                    "{:?}: `{}` was {} ({})",
                    v,
                    c.name,
                    if d.allowed { "allowed" } else { "denied" },
                    d.reason_code()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cel_records_the_deciding_rule() {
    let t = table();
    let a = authorizer(Variant::Cel);
    let c = t
        .cases
        .iter()
        .find(|c| c.name == "customer reads orders")
        .unwrap();
    let d = a.check(&c.request(&t)).decision;
    assert!(d.allowed);
    assert_eq!(d.decided_by[0].rule.as_deref(), Some("end-users"));
    assert!(d.decided_by[0].policy.ends_with("authz.cel.yaml"));
    let both = authorizer(Variant::Both).check(&c.request(&t)).decision;
    assert_eq!(both.decided_by.len(), 2, "{:?}", both.decided_by);
}

/// Through Envoy the caller's SPIFFE ID comes from mTLS; this harness runs Envoy without TLS, so
/// the cases that need a principal run in-process only (and through Envoy with mTLS in the
/// identity tests).
#[test]
fn rego_and_cel_decide_alike_through_envoy() {
    let t = table();
    for v in [Variant::Rego, Variant::Cel] {
        let h = Harness::start(authorizer(v), loopback_config(None), |_| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let mut run = 0;
        for c in t.cases.iter().filter(|c| c.principal.is_none()) {
            let headers = c.headers(&t);
            let hdrs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = request(h.envoy.port, &c.method, &c.path, &hdrs, b"")
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            let allowed = r.status == 200;
            assert_eq!(
                allowed,
                c.allowed(),
                "{v:?} through Envoy: `{}` got {}",
                c.name,
                r.status
            );
            run += 1;
        }
        assert!(run >= 15, "only {run} cases ran through Envoy");
    }
}
