//! `arbiter run --server`: OPA's command line, as OPA-Envoy Deployments write it, mapped onto
//! [`crate::serve`]. A Deployment's `args` carry over unchanged:
//!
//! ```text
//! run --server --config-file=/config/config.yaml --addr=localhost:8181
//!     --diagnostic-addr=0.0.0.0:8282 --ignore=.* /policy/policy.rego
//! ```
//!
//! OPA's other modes (the REPL without `--server`) are not provided.

use std::path::PathBuf;

use crate::Exit;
use crate::serve;

pub use crate::logging::{LogFormat, LogLevel};

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Start the server (required: OPA's interactive shell is not provided).
    #[arg(short = 's', long)]
    pub server: bool,
    /// Policy and data files or folders (bundles with `--bundle`).
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
    /// The HTTP listener (health, metrics, Data API) [default: 127.0.0.1:8181].
    #[arg(short = 'a', long, value_name = "ADDR")]
    pub addr: Vec<String>,
    /// A plaintext listener with `/health` and `/metrics` only.
    #[arg(long, value_name = "ADDR")]
    pub diagnostic_addr: Vec<String>,
    /// OPA's configuration file.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Override a configuration value (`plugins.envoy_ext_authz_grpc.addr=:9191`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Override a configuration value with a file's contents.
    #[arg(long, value_name = "KEY=PATH")]
    pub set_file: Vec<String>,
    /// Load the paths as bundles.
    #[arg(short = 'b', long)]
    pub bundle: bool,
    /// Reload the paths when their files change.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// File and folder names to skip when loading (Go `filepath.Match` on the base name).
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// The server's own log level, as `serve --log-level` (decision logs are separate).
    #[arg(short = 'l', long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// The server's own log format, as `serve --log-format` (`json-pretty` is written as
    /// `json`, one object per line).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Accepted: arbiter sends no telemetry.
    #[arg(long)]
    pub disable_telemetry: bool,
    /// Accepted: arbiter checks no version.
    #[arg(long)]
    pub skip_version_check: bool,
    /// OPA's `--authentication`.
    #[arg(long, value_enum, value_name = "MODE")]
    pub authentication: Option<serve::AuthenticationArg>,
    /// OPA's `--authorization`.
    #[arg(long, value_enum, value_name = "MODE")]
    pub authorization: Option<serve::AuthorizationArg>,
    /// TLS certificate of the listeners.
    #[arg(long, value_name = "FILE", requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS private key of the listeners.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA certificates client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_cert_file: Option<PathBuf>,
    /// Verify bundle signatures with this key (a PEM file or an HMAC secret).
    #[arg(long, value_name = "KEY")]
    pub verification_key: Option<String>,
    /// The key's id [default: default].
    #[arg(long, value_name = "ID")]
    pub verification_key_id: Option<String>,
    /// The signature algorithm [default: RS256].
    #[arg(long, value_name = "ALG")]
    pub signing_alg: Option<String>,
    /// The scope signatures must carry.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Parse policies as Rego v0 (with `rego.v1` modules accepted).
    #[arg(long)]
    pub v0_compatible: bool,
}

impl Args {
    /// The `serve` arguments this command line means.
    pub fn serve_args(&self) -> Result<serve::Args, String> {
        if !self.server {
            return Err(
                "`arbiter run` serves only with --server (OPA's interactive shell is \
                 not provided; `arbiter eval` answers queries)"
                    .into(),
            );
        }
        let one = |flag: &str, v: &[String]| -> Result<Option<String>, String> {
            match v {
                [] => Ok(None),
                [a] => Ok(Some(a.clone())),
                _ => Err(format!("more than one {flag} is not supported")),
            }
        };
        let (paths, bundle) = if self.bundle {
            (Vec::new(), self.paths.clone())
        } else {
            (self.paths.iter().map(PathBuf::from).collect(), Vec::new())
        };
        Ok(serve::Args {
            paths,
            bundle,
            config: self.config_file.clone(),
            set: self.set.clone(),
            set_file: self.set_file.clone(),
            http_addr: one("--addr", &self.addr)?,
            diagnostic_addr: one("--diagnostic-addr", &self.diagnostic_addr)?,
            watch: self.watch,
            ignore: self.ignore.clone(),
            authentication: self.authentication,
            authorization: self.authorization,
            tls_cert: self.tls_cert_file.clone(),
            tls_key: self.tls_private_key_file.clone(),
            tls_client_ca: self.tls_ca_cert_file.clone(),
            verification_key: self.verification_key.clone(),
            verification_key_id: self.verification_key_id.clone(),
            verification_alg: self.signing_alg.clone(),
            verification_scope: self.scope.clone(),
            v0_compatible: self.v0_compatible,
            log_level: self.log_level,
            log_format: self.log_format,
            ..serve::Args::default()
        })
    }
}

pub fn run(args: &Args) -> Exit {
    match args.serve_args() {
        Ok(serve) => serve::run(&serve),
        Err(e) => {
            eprintln!("arbiter: {e}");
            Exit::Usage
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Args {
        match crate::Cli::try_parse_from(std::iter::once("arbiter").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            crate::Command::Run(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    /// The OPA-Envoy quick start's Deployment `args`, unchanged (issue 25, item 9).
    #[test]
    fn the_quick_start_deployment_command_line() {
        let a = parse(&[
            "run",
            "--server",
            "--config-file=/config/config.yaml",
            "--addr=localhost:8181",
            "--diagnostic-addr=0.0.0.0:8282",
            "--ignore=.*",
            "/policy/policy.rego",
        ]);
        let s = a.serve_args().unwrap();
        assert_eq!(s.config, Some(PathBuf::from("/config/config.yaml")));
        assert_eq!(s.http_addr.as_deref(), Some("localhost:8181"));
        assert_eq!(s.diagnostic_addr.as_deref(), Some("0.0.0.0:8282"));
        assert_eq!(s.ignore, [".*"]);
        assert_eq!(s.paths, [PathBuf::from("/policy/policy.rego")]);
        // The gloo-edge example's `--set` lines, and OPA's other habits.
        let a = parse(&[
            "run",
            "-s",
            "--set=plugins.envoy_ext_authz_grpc.addr=0.0.0.0:9191",
            "--set=plugins.envoy_ext_authz_grpc.query=data.envoy.authz.allow",
            "--set=decision_logs.console=true",
            "--log-level=debug",
            "--log-format=json",
            "--disable-telemetry",
            "-b",
            "/bundles/authz.tar.gz",
        ]);
        let s = a.serve_args().unwrap();
        assert_eq!(s.set.len(), 3);
        assert_eq!(s.bundle, ["/bundles/authz.tar.gz"]);
        assert!(s.paths.is_empty());
        // Without --server there is nothing to run.
        let e = parse(&["run", "policy.rego"]).serve_args().unwrap_err();
        assert!(e.contains("--server"), "{e}");
    }
}
