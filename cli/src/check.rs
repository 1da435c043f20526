//! `arbiter check PATH…`: load and compile everything (policies, Rego tests, decision tests),
//! print every problem as `file:line:col: message`, exit 0 when clean and 1 otherwise.

use std::path::PathBuf;

use arbiter_engine::{LoadOptions, PolicySet, RegoVersion};

use crate::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Policy files or folders.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Accept pre-1.0 Rego syntax, as `opa --v0-compatible`.
    #[arg(long)]
    pub v0_compatible: bool,
    /// Fail (exit 1) on warnings too, such as Istio's best-practice advice.
    #[arg(long)]
    pub strict: bool,
}

pub fn run(args: &Args) -> Exit {
    let options = LoadOptions {
        rego_version: if args.v0_compatible {
            RegoVersion::V0Compatible
        } else {
            RegoVersion::V1
        },
        // Test modules are policy code too: check them.
        include_tests: true,
        ..LoadOptions::default()
    };
    let sources = match arbiter_engine::PolicySources::discover(&args.paths) {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    let mut diagnostics = Vec::new();
    let mut warnings = 0;
    match PolicySet::from_sources(&sources, &options) {
        Ok(set) => {
            for w in set.warnings() {
                eprintln!("{}", warning(w));
                warnings += 1;
            }
        }
        Err(e) => diagnostics.extend(e.diagnostics),
    }
    // Decision tests are checked too: a typo in one should not wait for `arbiter test`.
    if let Err(e) = arbiter_engine::testing::decision::parse_all(
        &sources,
        arbiter_ext_authz::protojson::authz_request,
    ) {
        diagnostics.extend(e.diagnostics);
    }
    if diagnostics.is_empty() {
        if args.strict && warnings > 0 {
            Exit::Failed
        } else {
            Exit::Ok
        }
    } else {
        report(&arbiter_engine::LoadError { diagnostics })
    }
}

fn report(e: &arbiter_engine::LoadError) -> Exit {
    for d in &e.diagnostics {
        eprintln!("{d}");
    }
    Exit::Failed
}

/// `file:line: warning: message`.
pub fn warning(d: &arbiter_engine::Diagnostic) -> String {
    let mut w = d.clone();
    w.message = format!("warning: {}", d.message);
    w.to_string()
}
