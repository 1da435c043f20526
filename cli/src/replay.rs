//! `arbiter replay --policies CANDIDATE [--baseline DIR] LOG…`: re-decide every recorded
//! decision under a candidate policy set and report what flips — deny to allow (new access)
//! and allow to deny (new denials) — grouped by who asked for what and by the rule that decided
//! before and after. See [`arbiter_engine::audit::replay`] for what is compared and counted.
//!
//! Decisions are made as `serve` makes them, with `serve`'s settings: `--config` (the same
//! file, so the decision path, path normalization, identity trust, Istio's root namespace and
//! the limits carry over), or the flags below. The policies come from `--policies` only: a
//! configuration's bundles are the policies being replaced.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;

use arbiter_engine::audit::index::{chronological, with_rotated};
use arbiter_engine::audit::replay::{Direction, Group, Replayer, Report, Side};

use crate::Exit;
use crate::serve::PathNormalization;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Pretty,
    Json,
}

/// When the command fails (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Any request denied before is allowed now.
    NewAccess,
    /// Any decision flips, either way.
    Any,
}

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Decision-log files; a rotated set (`x.2 x.1 x`) is read oldest first, and giving `x`
    /// alone reads its rotated siblings too.
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    /// The candidate policies: files or folders, as `serve` takes them (repeatable).
    #[arg(long = "policies", required = true, value_name = "PATH")]
    pub policies: Vec<PathBuf>,
    /// Re-decide every event under these policies as well and compare the two, so that
    /// what changed since the events were recorded (time, data, errors) does not count
    /// (repeatable). Without it the recorded decision is the baseline.
    #[arg(long, value_name = "PATH")]
    pub baseline: Vec<PathBuf>,
    /// `serve`'s configuration file: the same settings decide replayed events.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a configuration value, as `serve --set`.
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The decision path of events that name none [default: envoy/authz/allow]; events are
    /// re-decided at the path they record.
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// As `serve --path-normalization`.
    #[arg(long, value_enum, value_name = "MODE")]
    pub path_normalization: Option<PathNormalization>,
    /// As `serve --trust-bundle` (`TD=FILE`, repeatable).
    #[arg(long, value_name = "TD=FILE")]
    pub trust_bundle: Vec<String>,
    /// As `serve --trust-xfcc-by`.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub trust_xfcc_by: Option<String>,
    /// As `serve --jwt-bundle` (`TD=FILE`, repeatable).
    #[arg(long, value_name = "TD=FILE")]
    pub jwt_bundle: Vec<String>,
    /// As `serve --jwt-audience` (repeatable).
    #[arg(long, value_name = "AUDIENCE")]
    pub jwt_audience: Vec<String>,
    /// As `serve --jwt-svid-header`.
    #[arg(long, value_name = "NAME")]
    pub jwt_svid_header: Option<String>,
    /// As `serve --skip-request-body-parse`.
    #[arg(long)]
    pub skip_request_body_parse: bool,
    /// As `serve --proto-descriptor`.
    #[arg(long, value_name = "FILE")]
    pub proto_descriptor: Option<PathBuf>,
    /// As `serve --v0-compatible`.
    #[arg(long)]
    pub v0_compatible: bool,
    /// As `serve --istio-root-namespace`.
    #[arg(long, value_name = "NS")]
    pub istio_root_namespace: Option<String>,
    /// As `serve --istio-allow-without-allow-policies`.
    #[arg(long)]
    pub istio_allow_without_allow_policies: bool,
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Exit 1 when the replay finds new access (`new-access`) or any flip (`any`).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub fail_on: Option<FailOn>,
    /// Example events shown per group.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub examples: usize,
    /// Groups shown per list in the pretty output (`-f json` has them all).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top: usize,
    /// Threads deciding events; 0 for one per CPU.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
}

pub fn run(args: &Args) -> Exit {
    run_to(
        args,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

/// `serve`'s settings for one side: its flags and file, with `policies` as the policy set.
fn settings(args: &Args, policies: &[PathBuf]) -> Result<crate::serve::Settings, String> {
    let serve = crate::serve::Args {
        policies: policies.to_vec(),
        config: args.config.clone(),
        set: args.set.clone(),
        path: args.path.clone(),
        path_normalization: args.path_normalization,
        trust_bundle: args.trust_bundle.clone(),
        trust_xfcc_by: args.trust_xfcc_by.clone(),
        jwt_bundle: args.jwt_bundle.clone(),
        jwt_audience: args.jwt_audience.clone(),
        jwt_svid_header: args.jwt_svid_header.clone(),
        skip_request_body_parse: args.skip_request_body_parse,
        proto_descriptor: args.proto_descriptor.clone(),
        v0_compatible: args.v0_compatible,
        istio_root_namespace: args.istio_root_namespace.clone(),
        istio_allow_without_allow_policies: args.istio_allow_without_allow_policies,
        ..crate::serve::Args::default()
    };
    let mut s = serve.settings()?;
    // The candidate (or baseline) replaces whatever the configuration serves.
    s.bundles.clear();
    s.policies = policies.to_vec();
    Ok(s)
}

fn side(args: &Args, policies: &[PathBuf]) -> Result<Side, String> {
    let s = settings(args, policies)?;
    let sources = crate::serve::policy_sources(&s)?;
    let authorizer = crate::serve::authorizer_from_sources(&s, &sources)?;
    Ok(Side::new(authorizer, &sources))
}

/// The replayer `args` describe: the candidate side, the baseline side if any, the server's
/// reader; `args.examples` per group.
pub fn replayer(args: &Args) -> Result<Replayer, String> {
    let candidate =
        side(args, &args.policies).map_err(|e| format!("the candidate policies: {e}"))?;
    let baseline = if args.baseline.is_empty() {
        None
    } else {
        Some(side(args, &args.baseline).map_err(|e| format!("the baseline policies: {e}"))?)
    };
    Ok(Replayer::new(
        candidate,
        baseline,
        arbiter_ext_authz::protojson::authz_request,
    )
    .with_examples(args.examples))
}

/// `threads`, or one per CPU for 0.
pub fn threads(n: usize) -> usize {
    match n {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

pub fn run_to(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let fail = |err: &mut dyn Write, msg: String| {
        let _ = writeln!(err, "arbiter replay: {msg}");
        Exit::Usage
    };
    let replayer = match replayer(args) {
        Ok(r) => r,
        Err(e) => return fail(err, e),
    };
    let files = chronological(&with_rotated(&args.logs));
    let mut readers = Vec::new();
    for f in &files {
        match File::open(f) {
            Ok(h) => readers.push((
                f.display().to_string(),
                BufReader::with_capacity(1 << 20, h),
            )),
            Err(e) => return fail(err, format!("{}: {e}", f.display())),
        }
    }
    let started = std::time::Instant::now();
    let report = match replayer.replay_files(readers, threads(args.threads)) {
        Ok(r) => r,
        Err(e) => return fail(err, format!("reading the logs: {e}")),
    };
    let elapsed = started.elapsed();
    let text = match args.format {
        Format::Json => {
            let mut j = report.to_json();
            j["files"] = serde_json::json!(
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
            );
            j["baseline"] = serde_json::json!(if args.baseline.is_empty() {
                "recorded"
            } else {
                "re-decided"
            });
            format!("{j:#}\n")
        }
        Format::Pretty => pretty(&report, args, files.len(), elapsed),
    };
    if out.write_all(text.as_bytes()).is_err() {
        return Exit::Usage;
    }
    let failed = match args.fail_on {
        None => false,
        Some(FailOn::NewAccess) => report.new_access > 0,
        Some(FailOn::Any) => report.flips() > 0,
    };
    if failed { Exit::Failed } else { Exit::Ok }
}

fn counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pretty(r: &Report, args: &Args, files: usize, elapsed: std::time::Duration) -> String {
    let mut s = String::new();
    let baseline = if args.baseline.is_empty() {
        "the recorded decisions"
    } else {
        "the baseline policies, re-decided"
    };
    let _ = writeln!(
        s,
        "replayed {} lines from {files} file(s) in {:.1}s against {baseline}",
        r.lines,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  compared {} · unchanged {} · new access {} · new denials {}",
        r.compared, r.unchanged, r.new_access, r.new_denials
    );
    if r.approximate > 0 {
        let _ = writeln!(
            s,
            "  approximate: {} compared events had masked input fields the policies may read ({} of them flipped)",
            r.approximate, r.approximate_flips
        );
    }
    let without: u64 = r.without_input.values().sum();
    let not_compared: u64 = r.not_compared.values().sum();
    if r.data_api + without + not_compared + r.unreadable > 0 {
        let mut parts = Vec::new();
        if r.data_api > 0 {
            parts.push(format!("{} Data API queries", r.data_api));
        }
        if without > 0 {
            parts.push(format!(
                "{without} without input ({})",
                counts(&r.without_input)
            ));
        }
        if not_compared > 0 {
            parts.push(format!(
                "{not_compared} recorded errors that are not decisions ({})",
                counts(&r.not_compared)
            ));
        }
        if r.unreadable > 0 {
            parts.push(format!("{} unreadable", r.unreadable));
        }
        let _ = writeln!(s, "  not compared: {}", parts.join(" · "));
        for u in r.unreadable_examples() {
            let _ = writeln!(s, "    {u}");
        }
    }
    if !r.recorded_errors.is_empty() {
        let _ = writeln!(s, "  recorded as errors: {}", counts(&r.recorded_errors));
    }
    if !r.candidate_errors.is_empty() {
        let _ = writeln!(
            s,
            "  the candidate decided with an error: {}",
            counts(&r.candidate_errors)
        );
    }
    for (d, title, n) in [
        (
            Direction::NewAccess,
            "NEW ACCESS (denied before, allowed now)",
            r.new_access,
        ),
        (
            Direction::NewDenial,
            "NEW DENIALS (allowed before, denied now)",
            r.new_denials,
        ),
    ] {
        if n == 0 {
            continue;
        }
        let _ = writeln!(s, "\n{title}: {n} events");
        let _ = writeln!(s, "  by identity, path and method:");
        let groups = r.requests(d);
        for ((_, identity, path, method), g) in groups.iter().take(args.top) {
            let _ = writeln!(
                s,
                "    {:>6}  {identity}  {method} {path}{}",
                g.count,
                approx(g)
            );
            examples(&mut s, g);
        }
        if groups.len() > args.top {
            let _ = writeln!(
                s,
                "    … {} more (-f json lists all)",
                groups.len() - args.top
            );
        }
        let _ = writeln!(s, "  by rule (before -> after):");
        let groups = r.rules(d);
        for ((_, before, after), g) in groups.iter().take(args.top) {
            let _ = writeln!(s, "    {:>6}  {before} -> {after}{}", g.count, approx(g));
        }
        if groups.len() > args.top {
            let _ = writeln!(
                s,
                "    … {} more (-f json lists all)",
                groups.len() - args.top
            );
        }
    }
    if r.flips() == 0 {
        let _ = writeln!(s, "\nno decision flips");
    }
    s
}

fn approx(g: &Group) -> String {
    if g.approximate == 0 {
        String::new()
    } else {
        format!("  ({} approximate)", g.approximate)
    }
}

fn examples(s: &mut String, g: &Group) {
    for x in &g.examples {
        let _ = writeln!(
            s,
            "            {} at {} ({}): {} by {} -> {} by {}{}",
            x.decision_id,
            x.timestamp,
            x.at,
            x.before.reason,
            x.before.rule,
            x.after.reason,
            x.after.rule,
            if x.approximate { " [approximate]" } else { "" }
        );
    }
}
