//! The `arbiter` binary: parse arguments, dispatch, exit with a meaningful code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = arbiter_cli::Cli::parse();
    arbiter_cli::run(cli)
}
