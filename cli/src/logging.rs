//! The server's own log (not decision logs): `tracing` events on stderr, as plain
//! `arbiter: …` lines (`--log-format text`, the default: the lines operators and scripts
//! already read) or one JSON object per line (`--log-format json`, OPA's flag) with the
//! event's stable fields beside its message:
//!
//! ```json
//! {"timestamp":"2026-12-04T10:00:00.000000Z","level":"INFO","message":"reloaded (SIGHUP): revision 3f…","event":"reload","reason":"SIGHUP","revision":"3f…","target":"arbiter_cli::serve"}
//! ```
//!
//! Every line names its `event`: `start`, `listening`, `loopback_only`, `awaiting_bundle`,
//! `policy_warning`, `no_entrypoint`, `reload`, `reload_failed`, `shadow_start`,
//! `shadow_reload`, `shadow_reload_failed`, `shadow_priority`, `bundle_poll_failed`,
//! `bundle_delta`, `bundle_delta_failed`, `bundle_delta_dropped`, `data_write`,
//! `data_write_dropped`, `decision_log_sink`, `tls_reload_failed`, `stopped`, `fatal`. `--log-level` filters
//! arbiter's events (`error`, `warn`, `info`, `debug`); the libraries' own events (gRPC,
//! HTTP/2) are shown from `warn` up.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// OPA's `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// OPA's `--log-format` (`json-pretty` is written as `json`: one event per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
    #[value(name = "json-pretty")]
    JsonPretty,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// Install the process's log subscriber. A second call (tests running several servers in one
/// process) keeps the first.
pub fn init(level: Option<LogLevel>, format: Option<LogFormat>) {
    let level = level.unwrap_or(LogLevel::Info).filter();
    let targets = Targets::new()
        .with_target("arbiter_cli", level)
        .with_target("arbiter_ext_authz", level)
        .with_target("arbiter_engine", level)
        .with_default(LevelFilter::WARN);
    let _ = match format.unwrap_or(LogFormat::Text) {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(Plain)
                    .with_writer(std::io::stderr),
            )
            .with(targets)
            .try_init(),
        LogFormat::Json | LogFormat::JsonPretty => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .with(targets)
            .try_init(),
    };
}

/// `arbiter: <message>`, the line as it always was (the fields are for JSON).
struct Plain;

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        // Events from libraries have no `arbiter:` voice of their own.
        let target = event.metadata().target();
        if target.starts_with("arbiter") {
            writeln!(writer, "arbiter: {message}")
        } else {
            writeln!(writer, "arbiter: {target}: {message}")
        }
    }
}
