//! The `arbiter` binary: parse arguments, dispatch, exit with a meaningful code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc behind a counter; `arbiter bench` switches on its counting.
#[global_allocator]
static ALLOCATOR: arbiter_alloc_counter::Counting = arbiter_alloc_counter::Counting;

fn main() -> ExitCode {
    // The allocator commits memory on demand (set before `main`; see the function).
    let _ = arbiter_alloc_counter::commits_on_demand();
    // A benchmarking aid: count every allocation from start-up, for `/metrics`
    // (`arbiter_allocations_total`; the Envoy harness's `--allocations`). Off, counting costs
    // one relaxed load per allocation; on, two atomic adds.
    if std::env::var_os("ARBITER_COUNT_ALLOCATIONS").is_some_and(|v| v == "1") {
        arbiter_alloc_counter::start();
    }
    let cli = arbiter_cli::Cli::parse();
    arbiter_cli::run(cli)
}
