//! Shared fixtures for arbiter's benchmarks: the reference policy set and inputs.
#![expect(
    clippy::panic,
    reason = "benchmark fixtures: a missing fixture must stop the benchmark"
)]

use std::path::PathBuf;

use arbiter_engine::{LoadOptions, PolicySet};

/// The demo customer's bearer token (HS256, `policies/authz/data.json`'s secret, expires 2100).
pub const CUSTOMER_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJyb2xlIjoiY3VzdG9tZXIiLCJzdWIiOiJjMSJ9.0M_Xr1S-nkvGiFI704lNLoNPGxRRqclKtsleIpkrnoM";

/// The repository's `policies/` folder.
pub fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// The bundled reference policies, compiled.
pub fn reference_policies() -> PolicySet {
    match PolicySet::load(&[policies_dir()], &LoadOptions::default()) {
        Ok(p) => p,
        Err(e) => panic!("bundled policies do not load: {e}"),
    }
}

/// The sample OPA-Envoy input of an allowed request.
pub fn reference_input() -> serde_json::Value {
    let path = policies_dir().join("inputs/frontend-get-products.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference policies, with the given languages kept.
pub fn reference_sources(rego: bool, cel: bool) -> arbiter_engine::PolicySources {
    let mut s = match arbiter_engine::PolicySources::discover(&[policies_dir()]) {
        Ok(s) => s,
        Err(e) => panic!("bundled policies do not load: {e}"),
    };
    if !rego {
        s.rego.clear();
    }
    if !cel {
        s.cel.clear();
    }
    s
}

/// Data shaped like `policies/authz/data.json` with `principals` workloads and `grants`
/// grants spread over `grants / 10` roles (each principal holds two roles): the scale series.
pub fn scale_data(principals: usize, grants: usize) -> serde_json::Value {
    use serde_json::json;
    let roles = (grants / 10).max(1);
    let mut p = serde_json::Map::new();
    for i in 0..principals {
        p.insert(
            format!("spiffe://cluster.local/ns/ns{}/sa/svc{i}", i % 50),
            json!({"roles": [format!("role{}", i % roles), format!("role{}", (i + 1) % roles)], "tenant": "acme"}),
        );
    }
    // The benchmark's caller, holding role0.
    p.insert(
        "spiffe://cluster.local/ns/default/sa/frontend".into(),
        json!({"roles": ["role0"], "tenant": "acme"}),
    );
    let mut r = serde_json::Map::new();
    for i in 0..roles {
        let list: Vec<serde_json::Value> = (0..10)
            .map(|g| {
                if i == 0 && g == 9 {
                    json!({"methods": ["GET", "HEAD"], "path": ["api", "v1", "products"]})
                } else {
                    json!({"methods": ["GET"], "path": ["api", format!("r{i}"), format!("g{g}")]})
                }
            })
            .collect();
        r.insert(format!("role{i}"), serde_json::Value::Array(list));
    }
    json!({"authz": {
        "principals": p,
        "roles": r,
        "token_roles": {},
        "jwt": {"secret": "s", "issuer": "i", "audience": "a"}
    }})
}
