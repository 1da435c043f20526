//! Shared fixtures for arbiter's benchmarks: the reference policy set and inputs.
#![expect(
    clippy::panic,
    reason = "benchmark fixtures: a missing fixture must stop the benchmark"
)]

use std::path::PathBuf;

use arbiter_engine::{LoadOptions, PolicySet};

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
