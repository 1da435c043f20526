//! `arbiter check PATH…`: load and compile everything (policies, Rego tests, decision tests),
//! print every problem as `file:line:col: message`, exit 0 when clean and 1 otherwise.

use std::path::PathBuf;

use arbiter_engine::{Diagnostic, LoadOptions, PolicySet, RegoVersion};

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
    /// The decision path `serve` would decide, as OPA-Envoy's `path`: when the policies define
    /// it and it cannot run on the RVM, a warning says why (decisions then run on the slower
    /// interpreter).
    #[arg(long, value_name = "PATH", default_value = "envoy/authz/allow")]
    pub path: String,
    #[command(flatten)]
    pub limits: crate::load_limits::LoadLimitArgs,
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
    let sources =
        match arbiter_engine::PolicySources::discover_with(&args.paths, &[], &args.limits.limits())
        {
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
            if let Some(why) = off_the_vm(&set, &args.path) {
                eprintln!("{why}");
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

/// A warning when the decision path is defined but cannot run on the RVM.
fn off_the_vm(set: &PolicySet, path: &str) -> Option<String> {
    let path = arbiter_engine::DataRef::parse(path).ok()?;
    if !set.defines(&path) {
        return None;
    }
    let why = arbiter_engine::rvm::RvmDecider::compile(set, &path).err()?;
    // The compiler's error names the rule's file, line and column when it has them.
    let mut d = Diagnostic::from_regorus(&anyhow::anyhow!(why), path.as_rego());
    d.message = format!(
        "{} runs on the interpreter, not the bytecode VM (several times slower): {}",
        path.as_rego(),
        d.message
    );
    Some(warning(&d))
}

fn report(e: &arbiter_engine::LoadError) -> Exit {
    for d in &e.diagnostics {
        eprintln!("{d}");
    }
    Exit::Failed
}

/// `file:line: warning: message`.
pub fn warning(d: &Diagnostic) -> String {
    let mut w = d.clone();
    w.message = format!("warning: {}", d.message);
    w.to_string()
}
