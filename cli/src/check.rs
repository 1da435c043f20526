//! `arbiter check PATH…`: load and compile everything, print every problem as
//! `file:line:col: message`, exit 0 when clean and 1 otherwise.

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
    match PolicySet::load(&args.paths, &options) {
        Ok(_) => Exit::Ok,
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            Exit::Failed
        }
    }
}
