//! Runners for foreign conformance suites.
//!
//! The suites themselves are data kept outside the repository (`../shared/conformance`, with
//! their licenses); each runner reads them from there, or from the folder an environment
//! variable names. A missing suite is an error with a clear message, never a silent skip.

use std::path::PathBuf;

pub mod cel_spec;
pub mod envoy;
pub mod grpc_body;
pub mod harness;
pub mod istio_envoy;
pub mod nats;
pub mod opa;
pub mod otlp;
pub mod pki;
pub mod rbac;

/// A committed report (`conformance/<file>`) against the one a test run just made. A test run
/// never writes to the tree: with `ARBITER_UPDATE_RESULTS=1` the report is rewritten (the
/// command to regenerate it); otherwise a difference is an error naming that command, so a
/// stale report cannot pass for a fresh one.
pub fn check_report(file: &str, test: &str, fresh: &str) -> Result<(), String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    if std::env::var_os("ARBITER_UPDATE_RESULTS").is_some_and(|v| v == "1") {
        return std::fs::write(&path, fresh).map_err(|e| format!("{}: {e}", path.display()));
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == fresh {
        return Ok(());
    }
    let first = committed
        .lines()
        .zip(fresh.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
    Err(format!(
        "conformance/{file} is not what this run found (first difference at line {}): regenerate it with `ARBITER_UPDATE_RESULTS=1 cargo test -p arbiter-conformance --test {test}` and commit it",
        first + 1
    ))
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn a_stale_report_names_the_command_that_regenerates_it() {
        if std::env::var_os("ARBITER_UPDATE_RESULTS").is_some() {
            return; // the variable asks for writing; this test is about comparing
        }
        let e = super::check_report("no-such-report.md", "opa_conformance", "fresh\n").unwrap_err();
        assert!(
            e.contains(
                "ARBITER_UPDATE_RESULTS=1 cargo test -p arbiter-conformance --test opa_conformance"
            ),
            "{e}"
        );
        assert!(
            !std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("no-such-report.md")
                .exists(),
            "comparing never writes"
        );
    }
}
