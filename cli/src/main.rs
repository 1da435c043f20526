//! The `arbiter` binary: parse arguments, dispatch, exit with a meaningful code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc behind a counter; `arbiter bench` switches on its counting.
#[global_allocator]
static ALLOCATOR: arbiter_alloc_counter::Counting = arbiter_alloc_counter::Counting;

fn main() -> ExitCode {
    // The allocator commits memory on demand (set before `main`; see the function).
    let _ = arbiter_alloc_counter::commits_on_demand();
    let cli = arbiter_cli::Cli::parse();
    arbiter_cli::run(cli)
}
