//! `arbiter bench`: how long a query or a whole decision takes, like `opa bench`.
//!
//! `arbiter bench -d policies -i input.json data.envoy.authz.allow` evaluates the reference
//! (on the RVM when it compiles, as `serve` does) for `--benchtime`, `--count` times, and prints
//! samples, ns/op, allocations and bytes per op, and latency percentiles. With `--decision`,
//! the input is an OPA-Envoy input (a CheckRequest) and each operation is a whole decision as
//! `serve` makes it: input building, identity, CEL and Rego.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter_engine::authorizer::{Authorizer, RegoEngine};
use arbiter_engine::input::InputOptions;
use arbiter_engine::rvm::RvmDecider;
use arbiter_engine::value::from_json;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources, RegoVersion};

use crate::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Rvm,
    Interpreter,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub limits: crate::load_limits::LoadLimitArgs,
    /// The query: a reference such as `data.envoy.authz.allow` (any Rego query without
    /// `--decision`).
    #[arg(value_name = "QUERY")]
    pub query: String,
    /// Policy or data files and folders (repeatable).
    #[arg(short, long = "data", value_name = "PATH")]
    pub data: Vec<PathBuf>,
    /// The input document (JSON or YAML).
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Benchmark whole decisions: the input is an OPA-Envoy input, decided as `serve` does.
    #[arg(long)]
    pub decision: bool,
    /// Runs of the benchmark, each printed.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// How long each run lasts.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub benchtime: String,
    /// The Rego evaluator.
    #[arg(long, value_enum, default_value = "rvm")]
    pub engine: Engine,
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
    #[arg(long)]
    pub v0_compatible: bool,
}

/// One run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub samples: u64,
    pub ns_per_op: f64,
    pub allocs_per_op: f64,
    pub bytes_per_op: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub engine: &'static str,
}

fn measure(budget: Duration, engine: &'static str, mut op: impl FnMut() -> bool) -> Run {
    // Warm up (caches, the thread's VM) outside the measurement.
    for _ in 0..100 {
        op();
    }
    // Timed with counting off: counting costs two atomic adds per allocation (≈ 10 ns each
    // time, 15–20 % of a whole decision), which Go's `opa bench` does not pay for its figures.
    let mut times: Vec<u64> = Vec::with_capacity(1 << 16);
    let start = Instant::now();
    while start.elapsed() < budget || times.len() < 10 {
        let t = Instant::now();
        std::hint::black_box(op());
        times.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let total = start.elapsed();
    let n = times.len() as u64;
    // Then counted, apart: the same operation up to 10,000 times (as many as were timed, if
    // fewer).
    let counted = n.clamp(10, 10_000);
    arbiter_alloc_counter::start();
    for _ in 0..counted {
        std::hint::black_box(op());
    }
    let (allocs, bytes) = arbiter_alloc_counter::stop();
    times.sort_unstable();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    Run {
        samples: n,
        ns_per_op: total.as_nanos() as f64 / n as f64,
        allocs_per_op: allocs as f64 / counted as f64,
        bytes_per_op: bytes as f64 / counted as f64,
        p50_ns: pct(50),
        p90_ns: pct(90),
        p99_ns: pct(99),
        engine,
    }
}

pub fn run(args: &Args) -> Exit {
    let fail = |msg: String| {
        eprintln!("arbiter bench: {msg}");
        Exit::Usage
    };
    let budget = match crate::serve::parse_duration(&args.benchtime) {
        Ok(b) => b,
        Err(e) => return fail(format!("--benchtime: {e}")),
    };
    let options = LoadOptions {
        rego_version: if args.v0_compatible {
            RegoVersion::V0Compatible
        } else {
            RegoVersion::V1
        },
        // No deadline, as `opa eval` and `opa bench` have none.
        eval_timeout: None,
        ..LoadOptions::default()
    };
    let sources = match PolicySources::discover_with(&args.data, &[], &args.limits.limits()) {
        Ok(s) => s,
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            return Exit::Usage;
        }
    };
    let set = match PolicySet::from_sources(&sources, &options) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            return Exit::Failed;
        }
    };
    let input_json = match &args.input {
        Some(p) => match crate::input::read_document(p) {
            Ok(v) => Some(v),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let mut runs = Vec::new();
    for _ in 0..args.count.max(1) {
        let run = if args.decision {
            let path = match DataRef::parse(&args.query) {
                Ok(p) => p,
                Err(e) => return fail(e.to_string()),
            };
            let request = match arbiter_ext_authz::protojson::authz_request(
                input_json.as_ref().unwrap_or(&serde_json::Value::Null),
            ) {
                Ok(r) => r,
                Err(e) => return fail(format!("the input is not an OPA-Envoy input: {e}")),
            };
            let a = Authorizer::new(set.clone(), path, InputOptions::default()).with_rego_engine(
                match args.engine {
                    Engine::Rvm => RegoEngine::Rvm,
                    Engine::Interpreter => RegoEngine::Interpreter,
                },
            );
            let engine = if a.rego_engine() == Ok(RegoEngine::Rvm) {
                "rvm"
            } else {
                "interpreter"
            };
            // As `serve` decides without a decision log: the input document holds only what
            // the policies read (a log keeps the whole document, `check`).
            measure(budget, engine, || {
                a.check_with(&request, false).decision.allowed
            })
        } else {
            let input = input_json.as_ref().map(from_json);
            let reference = DataRef::parse(&args.query).ok().filter(|r| {
                // A plain reference, not a query that happens to parse as a path.
                !args.query.contains(char::is_whitespace)
                    && (args.query.starts_with("data.") || args.query.contains('/'))
                    && set.defines(r)
            });
            match (reference, args.engine) {
                (Some(r), Engine::Rvm) if RvmDecider::compile(&set, &r).is_ok() => {
                    let d = match RvmDecider::compile(&set, &r) {
                        Ok(d) => d,
                        Err(e) => return fail(e),
                    };
                    let input = input
                        .clone()
                        .unwrap_or(arbiter_engine::regorus::Value::Undefined);
                    measure(budget, "rvm", || d.evaluate(input.clone()).is_ok())
                }
                (Some(r), _) => {
                    let input = input
                        .clone()
                        .unwrap_or(arbiter_engine::regorus::Value::Undefined);
                    measure(budget, "interpreter", || {
                        set.evaluate(&r, input.clone()).is_ok()
                    })
                }
                (None, _) => {
                    if let Err(e) = set.query(&args.query, input.clone()) {
                        return fail(e.to_string());
                    }
                    measure(budget, "interpreter", || {
                        set.query(&args.query, input.clone()).is_ok()
                    })
                }
            }
        };
        runs.push(run);
    }
    match args.format {
        Format::Json => {
            crate::outln!(
                "{}",
                serde_json::to_string_pretty(&runs).unwrap_or_default()
            );
        }
        Format::Pretty => {
            for r in &runs {
                let rows = [
                    ("samples", format!("{}", r.samples)),
                    ("ns/op", format!("{:.0}", r.ns_per_op)),
                    ("B/op", format!("{:.0}", r.bytes_per_op)),
                    ("allocs/op", format!("{:.0}", r.allocs_per_op)),
                    ("p50 ns", format!("{}", r.p50_ns)),
                    ("p90 ns", format!("{}", r.p90_ns)),
                    ("p99 ns", format!("{}", r.p99_ns)),
                    ("engine", r.engine.to_string()),
                ];
                let line = format!("+{}+{}+", "-".repeat(22), "-".repeat(14));
                crate::outln!("{line}");
                for (k, v) in rows {
                    crate::outln!("| {k:<20} | {v:>12} |");
                }
                crate::outln!("{line}");
            }
        }
    }
    Exit::Ok
}
