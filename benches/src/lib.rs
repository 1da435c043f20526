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

/// A decision event as `arbiter serve` writes one (before sealing), varied by `i`: callers,
/// paths, methods, outcomes (allowed, denied by policy, timeouts), two policy revisions, one
/// event every 0.6 s from `start_s` (Unix seconds).
pub fn synthetic_event(i: usize, start_s: i64) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let callers = [
        "frontend", "orders", "billing", "reports", "batch", "admin", "legacy",
    ];
    let paths = [
        "/api/v1/products",
        "/api/v1/orders",
        "/api/v1/invoices",
        "/admin/users",
        "/public/hello",
        "/api/v1/orders/42",
    ];
    let methods = ["GET", "GET", "POST", "DELETE"];
    let caller = callers[(i * 7 + i / 13) % callers.len()];
    let path = paths[(i * 5 + i / 7) % paths.len()];
    let method = methods[(i / 3) % methods.len()];
    let outcome = (i * 31 + i / 17) % 20;
    let (allowed, reason, status, rule) = match outcome {
        0..=13 => (true, "allowed", 200, "mesh-callers"),
        14..=18 => (false, "policy_denied", 403, "deny-writes"),
        _ => (false, "timeout", 403, ""),
    };
    let ts_ms = start_s * 1000 + i as i64 * 600;
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let revision = if i < 1_000_000 / 2 && i % 1000 < 600 {
        "sha256:7f3a9c"
    } else {
        "sha256:b41e02"
    };
    let mut e = json!({
        "decision_id": format!("{:08x}-5a1e-4c1b-9f00-{:012x}", i as u32, i),
        "timestamp": ts,
        "path": "envoy/authz/allow",
        "labels": {"id": "arbiter-0", "version": "0.1.0"},
        "input": {"attributes": {
            "source": {"address": {"socketAddress": {"address": "10.0.3.7", "portValue": 40000 + (i % 2000)}},
                       "principal": format!("spiffe://cluster.local/ns/shop/sa/{caller}")},
            "request": {"http": {"id": format!("{i}"), "method": method, "path": path, "host": "shop.internal",
                                  "headers": {":method": method, ":path": path, "user-agent": "envoy", "x-request-id": format!("{i:x}")}}}}},
        "result": allowed,
        "allowed": allowed,
        "http_status": status,
        "reason": reason,
        "identity": {"spiffe_id": format!("spiffe://cluster.local/ns/shop/sa/{caller}"), "trust_domain": "cluster.local", "source": "principal"},
        "policy": "policies/authz.cel.yaml",
        "metrics": {"timer_rego_query_eval_ns": 9000 + (i % 400) * 25, "timer_server_handler_ns": 14000 + (i % 997) * 37},
        "revision": revision,
        "dry_run": false,
    });
    if let (Some(m), false) = (e.as_object_mut(), rule.is_empty()) {
        m.insert("rule".into(), json!(rule));
    }
    match e {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
