//! Runners for foreign conformance suites.
//!
//! The suites themselves are data kept outside the repository (`../shared/conformance`, with
//! their licenses); each runner reads them from there, or from the folder an environment
//! variable names. A missing suite is an error with a clear message, never a silent skip.

use std::path::PathBuf;

pub mod cel_spec;
pub mod envoy;
pub mod harness;
pub mod istio_envoy;
pub mod opa;
pub mod pki;
pub mod rbac;

/// The folder of a suite: `$env_var` when set, else `../shared/conformance/<name>` next to the
/// workspace.
pub fn suite_dir(env_var: &str, name: &str) -> Result<PathBuf, String> {
    let dir = match std::env::var_os(env_var) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/conformance")
            .join(name),
    };
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "conformance suite `{name}` not found at {} (set {env_var} to its folder)",
            dir.display()
        ))
    }
}
