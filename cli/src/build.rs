//! `arbiter build DIR -o bundle.tar.gz`: an OPA bundle of a policy folder, like `opa build -b`.

use std::path::PathBuf;

use arbiter_engine::bundle::{self, Signing};

use crate::Exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub limits: crate::load_limits::LoadLimitArgs,
    /// The policy folder (Rego, data, CEL and tests, in bundle layout).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where to write the bundle.
    #[arg(short, long, default_value = "bundle.tar.gz", value_name = "FILE")]
    pub output: PathBuf,
    /// The manifest's revision [default: a digest of the contents].
    #[arg(short, long, value_name = "REVISION")]
    pub revision: Option<String>,
    /// A manifest root (repeatable): packages and data must lie under the roots.
    #[arg(long = "root", value_name = "PATH")]
    pub roots: Vec<String>,
    /// Sign the bundle: a PEM private key file, or an HMAC secret.
    #[arg(long, value_name = "KEY")]
    pub signing_key: Option<String>,
    /// The signing algorithm (as `opa build --signing-alg`).
    #[arg(long, default_value = "RS256", value_name = "ALG")]
    pub signing_alg: String,
    /// The key id written in the signature (`kid`).
    #[arg(long, value_name = "ID")]
    pub signing_key_id: Option<String>,
    /// The scope written in the signature.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
}

/// A key argument: the contents of the file it names, or the text itself (an HMAC secret).
pub fn key_material(arg: &str) -> Result<String, String> {
    let p = std::path::Path::new(arg);
    if p.is_file() {
        std::fs::read_to_string(p).map_err(|e| format!("{arg}: {e}"))
    } else {
        Ok(arg.to_string())
    }
}

pub fn run(args: &Args) -> Exit {
    let signing = match &args.signing_key {
        None => None,
        Some(k) => match key_material(k) {
            Ok(key) => Some(Signing {
                algorithm: args.signing_alg.clone(),
                key,
                key_id: args.signing_key_id.clone(),
                scope: args.scope.clone(),
            }),
            Err(e) => {
                eprintln!("arbiter build: {e}");
                return Exit::Usage;
            }
        },
    };
    let revision = match &args.revision {
        Some(r) => r.clone(),
        None => match arbiter_engine::PolicySources::discover_with(
            &[&args.dir],
            &[],
            &args.limits.limits(),
        ) {
            Ok(s) => match arbiter_engine::PolicySet::from_sources(
                &s,
                &arbiter_engine::LoadOptions::default(),
            ) {
                Ok(set) => set.revision().to_string(),
                Err(e) => {
                    eprintln!("{e}");
                    return Exit::Failed;
                }
            },
            Err(e) => {
                eprintln!("{e}");
                return Exit::Failed;
            }
        },
    };
    let roots = (!args.roots.is_empty()).then_some(args.roots.as_slice());
    match bundle::build_with(
        &args.dir,
        &revision,
        roots,
        signing.as_ref(),
        &args.limits.limits(),
    ) {
        Ok(bytes) => match std::fs::write(&args.output, bytes) {
            Ok(()) => {
                eprintln!(
                    "arbiter build: wrote {} (revision {revision}{})",
                    args.output.display(),
                    if signing.is_some() { ", signed" } else { "" }
                );
                Exit::Ok
            }
            Err(e) => {
                eprintln!("arbiter build: {}: {e}", args.output.display());
                Exit::Usage
            }
        },
        Err(e) => {
            eprintln!("arbiter build: {e}");
            Exit::Failed
        }
    }
}
