//! The `arbiter` command line: each subcommand is a module with an `Args` struct and a `run`
//! function, so tests reach the logic without spawning a process.
//!
//! Exit codes tell "the tool failed" from "the policy said no" from "a check or test failed":
//! see [`Exit`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod audit;
pub mod audit_nats;
pub mod bench;
pub mod build;
pub mod check;
pub mod config;
pub mod eval;
pub mod input;
pub mod istio;
pub mod load_limits;
pub mod logconfig;
pub mod logging;
pub mod replay;
pub mod run;
pub mod serve;
pub mod strvals;
pub mod test;

/// `println!` for a command's output: when the reader has gone (`arbiter eval … | head`), the
/// command ends quietly with status 0, as `opa eval` does, instead of panicking.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*)
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            std::process::exit(0);
        }
    }};
}

/// What an exit status means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success: everything loaded, passed, or the query was defined.
    Ok = 0,
    /// The command ran and found a problem: policy errors, failing tests, an undefined result
    /// under `--fail`.
    Failed = 1,
    /// The command could not run: bad arguments, unreadable files, load errors for `test`.
    Usage = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// arbiter: a policy engine and Envoy external authorization service for zero-trust meshes.
#[derive(Debug, Parser)]
#[command(name = "arbiter", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate a Rego query against policies, data and an input (like `opa eval`).
    Eval(eval::Args),
    /// Load and compile policies; print every error as `file:line:col: message`.
    Check(check::Args),
    /// Run Rego tests (`test_*` rules) and decision tests (`*_test.yaml`), like `opa test`.
    Test(test::Args),
    /// Build an OPA bundle (`.tar.gz`, optionally signed) from a policy folder, like `opa build`.
    Build(build::Args),
    /// Measure a query or a whole decision, like `opa bench`.
    Bench(bench::Args),
    /// Re-decide recorded decisions under candidate policies and report what flips: new
    /// access (deny -> allow) and new denials (allow -> deny).
    Replay(Box<replay::Args>),
    /// Reason about Istio AuthorizationPolicies: `istio diff OLD NEW` (does a change open
    /// access?) and `istio check-invariants DIR --deny TERMS`.
    #[command(subcommand)]
    Istio(istio::Command),
    /// Verify and summarize decision logs.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Serve Envoy's ext_authz gRPC API (and health, metrics, OPA's Data API over HTTP).
    Serve(Box<serve::Args>),
    /// `serve` with OPA's command line (`run --server --addr … --config-file … --set …`), so an
    /// OPA-Envoy Deployment's arguments carry over.
    Run(Box<run::Args>),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    // `serve` and `run` install the log with their `--log-level` and `--log-format`; the other
    // commands' messages (a policy set's warnings) are plain lines.
    if !matches!(cli.command, Command::Serve(_) | Command::Run(_)) {
        logging::init(None, None);
    }
    let exit = match cli.command {
        Command::Eval(args) => eval::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Audit(cmd) => audit::run(&cmd),
        Command::Replay(args) => replay::run(&args),
        Command::Istio(cmd) => istio::run(&cmd),
        Command::Bench(args) => bench::run(&args),
        Command::Build(args) => build::run(&args),
    };
    exit.into()
}
