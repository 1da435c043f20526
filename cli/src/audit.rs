//! `arbiter audit verify FILE…` and `arbiter audit summary FILE…`: check a decision log's hash
//! chain, and summarize what it says.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use arbiter_engine::audit::chain::{self, GENESIS};
use arbiter_engine::audit::index::chronological;
use arbiter_engine::audit::summary::{Count, Summary, SummaryBuilder, percent};

use crate::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check the hash chain of decision-log files: report the first modified, missing or
    /// reordered event (exit 1). Rotated files (`x.2 x.1 x`) are put in order.
    Verify(VerifyArgs),
    /// Totals, allow/deny over time, top denied identities, paths and rules, error reasons,
    /// latency percentiles, per policy revision.
    Summary(SummaryArgs),
    /// A read-only web page over decision-log files: decisions over time, top denied
    /// identities, paths and rules, latency, revisions, a filterable table of events and the
    /// hash chain's verdict. Loopback by default; any other address needs a token or mTLS.
    /// With --nats and --stream: the same page over every instance's events in a JetStream
    /// stream, live, in bounded memory.
    Serve(Box<ServeArgs>),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Decision-log files (a rotated set in any order: `x.2 x.1 x`).
    #[arg(
        required_unless_present = "nats",
        conflicts_with = "nats",
        value_name = "FILE"
    )]
    pub files: Vec<PathBuf>,
    /// Show every instance's events from a NATS JetStream stream (`serve
    /// --decision-log-nats`) at this URL (several, comma-separated, for a cluster), live.
    #[arg(long, value_name = "URL", requires = "stream")]
    pub nats: Option<String>,
    /// The stream.
    #[arg(long, value_name = "NAME", requires = "nats")]
    pub stream: Option<String>,
    /// Keep the index in this file and read the stream with a durable consumer: a restart
    /// resumes where the last save left off. Without it, the stream is read from its first
    /// message at every start.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub state: Option<PathBuf>,
    /// With --state: the durable consumer's name.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "arbiter-dashboard",
        requires = "state"
    )]
    pub durable: String,
    /// With --state: how often the index is saved (and the consumer acknowledged).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        requires = "state"
    )]
    pub save_every: String,
    /// With --nats: the newest events kept in rows for the events table (≈ 80 bytes each);
    /// older ones stay in the totals.
    #[arg(long, value_name = "N", default_value_t = 100_000, requires = "nats")]
    pub window: usize,
    /// A NATS credentials file.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) of a TLS NATS server.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_ca: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8282", value_name = "HOST:PORT")]
    pub addr: String,
    /// A file holding the bearer token callers must present (required off loopback unless
    /// mTLS with allowed callers is configured).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates from this CA.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// SPIFFE ID patterns allowed to look (`*`, `**` by segment); repeatable; needs
    /// --tls-client-ca.
    #[arg(
        long = "allowed-caller",
        value_name = "PATTERN",
        requires = "tls_client_ca"
    )]
    pub allowed_callers: Vec<String>,
    /// How often to look for new events.
    #[arg(long, default_value = "2s", value_name = "DURATION")]
    pub refresh: String,
    /// Replay the files under these candidate policies (repeatable) and show what would flip
    /// on the impact page (`/impact`), as `arbiter replay` reports it.
    #[arg(long, value_name = "PATH")]
    pub candidate: Vec<PathBuf>,
    /// With --candidate: re-decide under these policies too, as `arbiter replay --baseline`.
    #[arg(long, value_name = "PATH", requires = "candidate")]
    pub baseline: Vec<PathBuf>,
    /// With --candidate: `serve`'s configuration file, as `arbiter replay --config`.
    #[arg(long, value_name = "FILE", requires = "candidate")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[arg(required_unless_present = "nats", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Verify every instance's chain in a NATS JetStream stream (`serve --decision-log-nats`)
    /// at this URL; with FILEs, also compare them with their instance's events in the stream.
    #[arg(long, value_name = "URL", requires = "stream")]
    pub nats: Option<String>,
    /// The stream.
    #[arg(long, value_name = "NAME", requires = "nats")]
    pub stream: Option<String>,
    /// Only this instance (`labels.id`).
    #[arg(long, value_name = "ID", requires = "nats")]
    pub instance: Option<String>,
    /// A NATS credentials file.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) of a TLS NATS server.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_ca: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SummaryArgs {
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Entries in each ranking.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// Replay the dashboard's files under the candidate on a thread of its own; the impact page
/// shows the result when it is done.
fn spawn_replay(
    dashboard: &std::sync::Arc<arbiter_ext_authz::dashboard::Dashboard>,
    replayer: arbiter_engine::audit::replay::Replayer,
    args: &crate::replay::Args,
) -> std::io::Result<()> {
    use arbiter_ext_authz::dashboard::Impact;
    let show = |p: &[PathBuf]| {
        p.iter()
            .map(|x| x.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let candidate = show(&args.policies);
    let baseline = if args.baseline.is_empty() {
        "the recorded decisions".to_string()
    } else {
        format!("{}, re-decided", show(&args.baseline))
    };
    let files = chronological(&arbiter_engine::audit::index::with_rotated(&args.logs));
    dashboard.set_impact(Impact::Running {
        candidate: candidate.clone(),
    });
    let d = dashboard.clone();
    std::thread::Builder::new()
        .name("arbiter-replay".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let readers: std::io::Result<Vec<_>> = files
                .iter()
                .map(|f| File::open(f).map(|h| (f.display().to_string(), BufReader::new(h))))
                .collect();
            let done = readers
                .and_then(|r| replayer.replay_files(r, crate::replay::threads(0)))
                .map_err(|e| e.to_string());
            d.set_impact(match done {
                Ok(report) => Impact::Done {
                    candidate,
                    baseline,
                    report: std::sync::Arc::new(report),
                    seconds: started.elapsed().as_secs_f64(),
                },
                Err(e) => Impact::Failed(e),
            });
        })
        .map(|_| ())
}

pub fn run(cmd: &Command) -> Exit {
    let stdout = std::io::stdout();
    // Not locked for the command's whole run: `audit serve`'s threads log to it (a lock held
    // here would block them for good).
    let mut stderr = std::io::stderr();
    run_to(cmd, &mut stdout.lock(), &mut stderr)
}

pub fn run_to(cmd: &Command, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    match cmd {
        Command::Verify(a) => verify(a, out, err),
        Command::Summary(a) => summary(a, out, err),
        Command::Serve(a) => serve(a, err),
    }
}

/// Read a bearer token: the file's first line, printable ASCII without spaces or `;` (it also
/// travels in a cookie), at least 16 characters.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16
        || !token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    {
        return Err(format!(
            "{}: the token must be at least 16 printable characters without `;` or `,`",
            path.display()
        ));
    }
    Ok(token)
}

/// The fleet dashboard's reader, from `--nats` and the flags beside it.
fn fleet_reader(a: &ServeArgs) -> Result<Option<arbiter_ext_authz::fleet::Reader>, String> {
    let (Some(url), Some(stream)) = (&a.nats, &a.stream) else {
        return Ok(None);
    };
    let nats = arbiter_ext_authz::decision_log::NatsConfig::reader(
        url,
        a.nats_creds.clone(),
        a.nats_ca.clone(),
    );
    nats.validate().map_err(|e| format!("--nats: {e}"))?;
    if a.window == 0 {
        return Err("--window must be at least 1".into());
    }
    if !a.candidate.is_empty() {
        return Err(
            "--candidate replays files; with --nats, replay the instances' files with `arbiter replay`"
                .into(),
        );
    }
    let durable = match &a.state {
        None => None,
        Some(state) => {
            arbiter_ext_authz::decision_log::nats::check_name("consumer", &a.durable)
                .map_err(|e| format!("--durable: {e}"))?;
            Some(arbiter_ext_authz::fleet::Durable {
                name: a.durable.clone(),
                state: state.clone(),
                every: crate::serve::parse_duration(&a.save_every)
                    .map_err(|e| format!("--save-every: {e}"))?,
            })
        }
    };
    Ok(Some(arbiter_ext_authz::fleet::Reader {
        nats,
        stream: stream.clone(),
        durable,
        batch: 1024,
    }))
}

fn serve(a: &ServeArgs, err: &mut dyn Write) -> Exit {
    use arbiter_ext_authz::dashboard::{Auth, Dashboard, check_exposure};
    let addr: std::net::SocketAddr = match a.addr.parse() {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "arbiter audit: --addr `{}`: {e}", a.addr);
            return Exit::Usage;
        }
    };
    let refresh = match crate::serve::parse_duration(&a.refresh) {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "arbiter audit: --refresh: {e}");
            return Exit::Usage;
        }
    };
    let auth = match &a.token_file {
        None => Auth::None,
        Some(p) => match read_token(p) {
            Ok(t) => Auth::Token(t),
            Err(e) => {
                let _ = writeln!(err, "arbiter audit: --token-file {e}");
                return Exit::Usage;
            }
        },
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(arbiter_ext_authz::tls::TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: a.tls_client_ca.clone(),
            allowed_callers: a.allowed_callers.clone(),
        }),
        _ => None,
    };
    if let Err(e) = check_exposure(&addr, &auth, !a.allowed_callers.is_empty()) {
        let _ = writeln!(err, "arbiter audit: refusing to start: {e}");
        return Exit::Usage;
    }
    let reader = match fleet_reader(a) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "arbiter audit: {e}");
            return Exit::Usage;
        }
    };
    let dashboard = match &reader {
        Some(r) => {
            let index = match &r.durable {
                Some(dur) => arbiter_ext_authz::fleet::load_state(&dur.state, a.window),
                None => Ok(arbiter_engine::audit::fleet::FleetIndex::new(a.window)),
            };
            match index {
                Ok(i) => Dashboard::fleet(&r.stream, i, auth, ""),
                Err(e) => {
                    let _ = writeln!(err, "arbiter audit: --state {e}");
                    return Exit::Usage;
                }
            }
        }
        None => match Dashboard::open(&a.files, auth, "") {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(err, "arbiter audit: {e}");
                return Exit::Usage;
            }
        },
    };
    // Indexing peaks well above what the index keeps (every line parsed, in batches, on
    // several threads): give the difference back before serving.
    arbiter_alloc_counter::release_free_memory();
    if reader.is_none() {
        dashboard.spawn_refresher(refresh);
    }
    if !a.candidate.is_empty() {
        let replay = crate::replay::Args {
            logs: a.files.clone(),
            policies: a.candidate.clone(),
            baseline: a.baseline.clone(),
            config: a.config.clone(),
            examples: arbiter_engine::audit::replay::DEFAULT_EXAMPLES,
            ..Default::default()
        };
        let replayer = match crate::replay::replayer(&replay) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(err, "arbiter audit: --candidate: {e}");
                return Exit::Usage;
            }
        };
        if let Err(e) = spawn_replay(&dashboard, replayer, &replay) {
            let _ = writeln!(err, "arbiter audit: {e}");
            return Exit::Failed;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "arbiter audit: {e}");
            return Exit::Failed;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::serve::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let reading = reader.map(|r| {
            eprintln!(
                "arbiter audit: reading stream `{}` at {} ({} events in the saved index); serving {}://{local}/",
                r.stream,
                r.nats.url,
                dashboard.with_fleet(|i| i.messages()).unwrap_or(0),
                if tls.is_some() { "https" } else { "http" }
            );
            tokio::spawn(arbiter_ext_authz::fleet::run(
                dashboard.clone(),
                r,
                stopped(stop_rx.clone()),
            ))
        });
        if reading.is_none() {
            eprintln!(
                "arbiter audit: indexed {} events in {:.2} s; serving {}://{local}/",
                dashboard.events(),
                dashboard.loaded_in.as_secs_f64(),
                if tls.is_some() { "https" } else { "http" }
            );
        }
        let served = arbiter_ext_authz::dashboard::serve(
            dashboard.clone(),
            listener,
            tls.as_ref(),
            Default::default(),
            stopped(stop_rx),
        )
        .await;
        // The reader saves its index when it stops.
        if let Some(r) = reading {
            let _ = r.await;
        }
        served
    });
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            let _ = writeln!(err, "arbiter audit: {e:#}");
            Exit::Failed
        }
    }
}

fn open_all(files: &[PathBuf], err: &mut dyn Write) -> Option<Vec<(String, BufReader<File>)>> {
    let mut readers = Vec::new();
    for p in chronological(files) {
        match File::open(&p) {
            Ok(f) => readers.push((p.display().to_string(), BufReader::new(f))),
            Err(e) => {
                let _ = writeln!(err, "arbiter audit: {}: {e}", p.display());
                return None;
            }
        }
    }
    Some(readers)
}

fn verify(a: &VerifyArgs, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    if let (Some(url), Some(stream)) = (&a.nats, &a.stream) {
        return crate::audit_nats::verify(a, url, stream, out, err);
    }
    let Some(readers) = open_all(&a.files, err) else {
        return Exit::Usage;
    };
    let order: Vec<String> = readers.iter().map(|(n, _)| n.clone()).collect();
    let report = match chain::verify(readers) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "arbiter audit: {e}");
            return Exit::Usage;
        }
    };
    let from_genesis = report.first_prev_hash.as_deref() == Some(GENESIS);
    match a.format {
        Format::Json => {
            let v = serde_json::json!({
                "ok": report.failure.is_none(),
                "files": order,
                "events": report.events,
                "skipped_lines": report.skipped,
                "first_prev_hash": report.first_prev_hash,
                "from_genesis": from_genesis,
                "last_hash": report.last_hash,
                "failure": report.failure.as_ref().map(|f| serde_json::json!({
                    "file": f.file, "line": f.line, "error": f.error.to_string(),
                })),
            });
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
        }
        Format::Pretty => match &report.failure {
            Some(f) => {
                let _ = writeln!(out, "FAILED: {}:{}: {}", f.file, f.line, f.error);
                let _ = writeln!(
                    out,
                    "{} events verified before it (files in order: {})",
                    report.events,
                    order.join(", ")
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "OK: {} events in {} file{}, chain intact",
                    report.events,
                    report.files,
                    if report.files == 1 { "" } else { "s" }
                );
                match (&report.first_prev_hash, from_genesis) {
                    (_, true) => {
                        let _ = writeln!(out, "starts: at the beginning of the chain");
                    }
                    (Some(p), false) => {
                        let _ = writeln!(
                            out,
                            "starts: after event {p} (earlier files were not given or were rotated away)"
                        );
                    }
                    (None, _) => {}
                }
                if let Some(h) = &report.last_hash {
                    let _ = writeln!(out, "last hash: {h}");
                }
            }
        },
    }
    if report.skipped > 0 && matches!(a.format, Format::Pretty) {
        let _ = writeln!(
            out,
            "skipped: {} line{} that {} not decision events (a console log's other messages)",
            report.skipped,
            if report.skipped == 1 { "" } else { "s" },
            if report.skipped == 1 { "is" } else { "are" }
        );
    }
    if report.failure.is_some() {
        Exit::Failed
    } else {
        Exit::Ok
    }
}

fn summary(a: &SummaryArgs, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let Some(readers) = open_all(&a.files, err) else {
        return Exit::Usage;
    };
    let mut b = SummaryBuilder::default();
    for (name, mut r) in readers {
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let l = line.strip_suffix(b"\n").unwrap_or(&line);
                    if !l.is_empty() {
                        b.add_line(l);
                    }
                }
                Err(e) => {
                    let _ = writeln!(err, "arbiter audit: {name}: {e}");
                    return Exit::Usage;
                }
            }
        }
    }
    let s = b.finish(a.top);
    let text = match a.format {
        Format::Json => serde_json::to_string_pretty(&s).unwrap_or_default() + "\n",
        Format::Pretty => pretty(&s),
    };
    let _ = out.write_all(text.as_bytes());
    Exit::Ok
}

fn dur(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}µs", ns as f64 / 1e3)
    }
}

fn ranking(s: &mut String, title: &str, list: &[Count], of: u64) {
    let _ = writeln!(s, "\n{title}:");
    if list.is_empty() {
        let _ = writeln!(s, "  (none)");
    }
    for c in list {
        let _ = writeln!(
            s,
            "  {:>8}  {:>6}  {}",
            c.count,
            percent(c.count, of),
            c.name
        );
    }
}

fn pretty(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} decisions{}",
        s.events,
        match (&s.first, &s.last) {
            (Some(f), Some(l)) => format!(" from {f} to {l}"),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        o,
        "  allowed {} ({}), denied {} ({}), of which errors {}{}",
        s.allowed,
        percent(s.allowed, s.events),
        s.denied,
        percent(s.denied, s.events),
        s.errors,
        if s.dry_run > 0 {
            format!("; dry-run {}", s.dry_run)
        } else {
            String::new()
        }
    );
    if s.unreadable > 0 {
        let _ = writeln!(o, "  {} lines were not decision events", s.unreadable);
    }
    if !s.timeline.is_empty() {
        let _ = writeln!(o, "\nover time (per {}s):", s.bucket_seconds);
        let widest = s
            .timeline
            .iter()
            .map(|b| b.allowed + b.denied)
            .max()
            .unwrap_or(1)
            .max(1);
        for b in &s.timeline {
            let total = b.allowed + b.denied;
            let bar = usize::try_from(total * 40 / widest).unwrap_or(0);
            let denied_bar = usize::try_from(b.denied * 40 / widest).unwrap_or(0);
            let _ = writeln!(
                o,
                "  {}  {:>7} allowed {:>7} denied  {}{}",
                b.start,
                b.allowed,
                b.denied,
                "#".repeat(bar.saturating_sub(denied_bar)),
                "x".repeat(denied_bar)
            );
        }
    }
    ranking(
        &mut o,
        "top denied identities",
        &s.top_denied_identities,
        s.denied,
    );
    ranking(&mut o, "top denied paths", &s.top_denied_paths, s.denied);
    ranking(
        &mut o,
        "top denying policies and rules",
        &s.top_deny_rules,
        s.denied,
    );
    ranking(&mut o, "denial reasons", &s.reasons, s.denied);
    let l = &s.latency;
    let _ = writeln!(
        o,
        "\nlatency ({} decisions): p50 {}  p90 {}  p99 {}  max {}",
        l.count,
        dur(l.p50_ns),
        dur(l.p90_ns),
        dur(l.p99_ns),
        dur(l.max_ns)
    );
    let _ = writeln!(o, "\nper policy revision:");
    for r in &s.revisions {
        let short: String = r.revision.chars().take(12).collect();
        let _ = writeln!(
            o,
            "  {short}  {:>8} decisions  {:>6} allowed  {} .. {}",
            r.events,
            percent(r.allowed, r.events),
            r.first,
            r.last
        );
    }
    if s.shadow_new_access + s.shadow_new_denials > 0 {
        let _ = writeln!(
            o,
            "\nshadow disagreements: {} new access (the shadow set allowed), {} new denials",
            s.shadow_new_access, s.shadow_new_denials
        );
        for c in &s.shadow_disagreements {
            let _ = writeln!(
                o,
                "  {:>8}  {:<10}  {}  {} {}",
                c.count, c.direction, c.identity, c.method, c.path
            );
        }
    }
    o
}
