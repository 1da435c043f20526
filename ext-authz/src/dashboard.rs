//! The audit dashboard: a read-only web page over decision-log files — decisions over time,
//! deny rate, top denied identities, paths and rules, latency percentiles, counts per policy
//! revision, a filterable, paged table of events that open whole, and the hash chain's verdict.
//!
//! - Served by `arbiter audit serve FILE…` (after the fact), mounted at `/ui/` by
//!   `arbiter serve --ui` (live, following the log as it grows and rotates), and served by
//!   `arbiter audit serve --nats URL --stream S` over every instance's events in a JetStream
//!   stream ([`Source::Fleet`], fed by [`crate::fleet`]): the same pages, plus the instances
//!   and their chains.
//! - Server-rendered HTML (maud templates, checked when compiled) with SVG charts, one small
//!   stylesheet and one small script, all compiled into the binary: no CDN, no network.
//!   Everything shown is escaped by maud, control characters spelled out (`Shown`): paths,
//!   headers and identities come from callers. A strict Content-Security-Policy allows only
//!   the page's own script and stylesheet.
//! - The log is indexed once ([`LogIndex`]) and re-read incrementally by a background thread;
//!   requests only read the index. Totals come from the same code as `arbiter audit summary`.
//! - Access: a bearer token (header, or a cookie set by `/login`), or mTLS on the listener
//!   (`crate::tls`), or neither on loopback only — [`check_exposure`] refuses the rest.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use arbiter_engine::audit::fleet::FleetIndex;
use arbiter_engine::audit::index::{At, Filter, LogIndex, Outcome, Row, Strings, Verdict};
use arbiter_engine::audit::summary::{Count, Summary, percent};
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, Render, html};

const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const PER_PAGE: usize = 50;
const TOP: usize = 10;
const COOKIE: &str = "arbiter_audit_token";

/// How callers prove who they are (mTLS is the listener's business).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Loopback, or mTLS with allowed callers on the listener.
    None,
    /// `Authorization: Bearer <token>`, or the cookie `/login` sets.
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(…)"),
        }
    }
}

/// Whether a dashboard may listen on `addr` with this protection: loopback always; any other
/// address only with a token or with mTLS restricted to allowed SPIFFE IDs.
pub fn check_exposure(
    addr: &SocketAddr,
    auth: &Auth,
    mtls_allowed_callers: bool,
) -> Result<(), String> {
    if addr.ip().is_loopback() || *auth != Auth::None || mtls_allowed_callers {
        Ok(())
    } else {
        Err(format!(
            "the audit dashboard would be open to anyone on {addr}: give a bearer token file (--token-file) or mTLS with allowed callers (--tls-cert, --tls-key, --tls-client-ca, --allowed-caller), or listen on loopback"
        ))
    }
}

/// What a dashboard shows: decision-log files, or a stream of every instance's events.
#[derive(Debug)]
pub enum Source {
    Files(LogIndex),
    /// The fleet's stream (`arbiter audit serve --nats`), named.
    Fleet {
        stream: String,
        index: FleetIndex,
    },
}

impl Source {
    fn summary(&self, top: usize) -> Summary {
        match self {
            Source::Files(i) => i.summary(top),
            Source::Fleet { index, .. } => index.summary(top),
        }
    }

    /// Events held in rows.
    pub fn rows(&self) -> usize {
        match self {
            Source::Files(i) => i.rows.len(),
            Source::Fleet { index, .. } => index.rows().len(),
        }
    }

    fn row(&self, i: usize) -> Option<Row> {
        match self {
            Source::Files(x) => x.rows.get(i).copied(),
            Source::Fleet { index, .. } => index.rows().get(i).copied(),
        }
    }

    fn strings(&self) -> &Strings {
        match self {
            Source::Files(i) => &i.strings,
            Source::Fleet { index, .. } => index.strings(),
        }
    }

    fn query(&self, f: &Filter, page: usize, per_page: usize) -> (usize, Vec<usize>) {
        match self {
            Source::Files(i) => i.query(f, page, per_page),
            Source::Fleet { index, .. } => index.query(f, page, per_page),
        }
    }

    /// The number in an event's link: its row for files (rows never move), its stream
    /// sequence for the fleet (rows leave the window).
    fn link_id(&self, i: usize) -> u64 {
        match self.row(i).map(|r| r.at) {
            Some(At::Stream { sequence }) => sequence,
            _ => i as u64,
        }
    }

    fn location(&self, i: usize) -> String {
        match self {
            Source::Files(x) => x.location(i),
            Source::Fleet { stream, .. } => match self.row(i).map(|r| r.at) {
                Some(At::Stream { sequence }) => format!("{stream}, message {sequence}"),
                _ => String::new(),
            },
        }
    }
}

/// A dashboard over one set of files, or over a fleet's stream.
#[derive(Debug)]
pub struct Dashboard {
    index: RwLock<Source>,
    summary: RwLock<(u64, Arc<Summary>)>,
    generation: AtomicU64,
    auth: Auth,
    /// Where the page is mounted (`""` or `/ui`).
    prefix: String,
    /// Whether the log is live (the page offers auto-refresh).
    live: bool,
    pub loaded_in: Duration,
    /// A replay of the files under candidate policies, for the impact page.
    impact: RwLock<Impact>,
    /// The fleet's stream, to read an event whole (set once connected).
    stream: std::sync::OnceLock<async_nats::jetstream::stream::Stream>,
}

/// The replay behind the impact page (`arbiter audit serve --candidate`).
#[derive(Debug, Clone, Default)]
pub enum Impact {
    /// None was asked for.
    #[default]
    None,
    /// Replaying `candidate`.
    Running {
        candidate: String,
    },
    Done {
        candidate: String,
        /// `recorded`, or the baseline replayed.
        baseline: String,
        report: Arc<arbiter_engine::audit::replay::Report>,
        seconds: f64,
    },
    Failed(String),
}

impl Dashboard {
    /// Index `files` (a finished log; rotated sets are put in order).
    pub fn open(files: &[PathBuf], auth: Auth, prefix: &str) -> std::io::Result<Arc<Self>> {
        let start = Instant::now();
        let index = LogIndex::open(files)?;
        Ok(Self::new(
            Source::Files(index),
            auth,
            prefix,
            false,
            start.elapsed(),
        ))
    }

    /// Follow a live log file and its rotations. Nothing is read here: the refresher (or
    /// [`Dashboard::refresh`]) reads the log, so a large one does not delay the server.
    pub fn follow(file: &std::path::Path, auth: Auth, prefix: &str) -> Arc<Self> {
        Self::new(
            Source::Files(LogIndex::unread(file)),
            auth,
            prefix,
            true,
            Duration::ZERO,
        )
    }

    /// Show the events of stream `stream`, as [`crate::fleet`] reads them into `index`.
    pub fn fleet(stream: &str, index: FleetIndex, auth: Auth, prefix: &str) -> Arc<Self> {
        Self::new(
            Source::Fleet {
                stream: stream.to_string(),
                index,
            },
            auth,
            prefix,
            true,
            Duration::ZERO,
        )
    }

    fn new(index: Source, auth: Auth, prefix: &str, live: bool, loaded_in: Duration) -> Arc<Self> {
        let summary = Arc::new(index.summary(TOP));
        Arc::new(Self {
            index: RwLock::new(index),
            summary: RwLock::new((0, summary)),
            generation: AtomicU64::new(0),
            auth,
            prefix: prefix.trim_end_matches('/').to_string(),
            live,
            loaded_in,
            impact: RwLock::new(Impact::None),
            stream: std::sync::OnceLock::new(),
        })
    }

    /// Where events shown whole are read from (the fleet's stream).
    pub fn set_stream(&self, s: async_nats::jetstream::stream::Stream) {
        let _ = self.stream.set(s);
    }

    /// Read messages `(sequence, payload)` of the fleet's stream into the index.
    pub fn ingest(&self, batch: Vec<(u64, Vec<u8>)>) {
        if batch.is_empty() {
            return;
        }
        // Parsed before the lock: pages wait only for the linking and counting.
        let parsed = FleetIndex::parse(batch);
        if let Ok(mut s) = self.index.write()
            && let Source::Fleet { index, .. } = &mut *s
        {
            index.add_parsed(parsed);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Read from the stream known as `id` (see [`FleetIndex::stream_id`]): an index of another
    /// stream — one that was deleted and created again under the same name — or one read past
    /// the stream's last message (`last_sequence`) starts again, empty. Returns whether it did.
    pub fn fleet_stream(&self, id: &str, last_sequence: u64) -> bool {
        let Ok(mut s) = self.index.write() else {
            return false;
        };
        let Source::Fleet { index, .. } = &mut *s else {
            return false;
        };
        let other = !index.stream_id().is_empty() && index.stream_id() != id;
        let reset = other || index.last_sequence() > last_sequence;
        if reset {
            *index = FleetIndex::new(index.window());
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        index.set_stream_id(id);
        reset
    }

    /// With the fleet's index: `f` of it (saving it, the last sequence read).
    pub fn with_fleet<T>(&self, f: impl FnOnce(&FleetIndex) -> T) -> Option<T> {
        match &*self.index.read().ok()? {
            Source::Fleet { index, .. } => Some(f(index)),
            Source::Files(_) => None,
        }
    }

    /// What the impact page shows of a replay.
    pub fn set_impact(&self, impact: Impact) {
        if let Ok(mut i) = self.impact.write() {
            *i = impact;
        }
    }

    /// Events indexed.
    pub fn events(&self) -> usize {
        self.index.read().map(|i| i.rows()).unwrap_or(0)
    }

    /// Re-read what changed. Appended events are read under the write lock (a few, between
    /// two looks); a rebuild (rotation) happens on a new index beside the one pages read.
    pub fn refresh(&self) -> std::io::Result<bool> {
        let rebuild = match self.index.read().as_deref() {
            Ok(Source::Files(i)) => i.needs_rebuild()?.then(|| i.reopen()),
            // The fleet's index is fed by its reader.
            Ok(Source::Fleet { .. }) | Err(_) => return Ok(false),
        };
        let changed = match rebuild {
            Some(fresh) => {
                let fresh = fresh?;
                if let Ok(mut i) = self.index.write() {
                    *i = Source::Files(fresh);
                }
                true
            }
            None => match self.index.write().as_deref_mut() {
                Ok(Source::Files(i)) => i.refresh()?,
                _ => false,
            },
        };
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(changed)
    }

    /// Refresh now and then every `every`, on a thread of its own, until the dashboard is
    /// dropped.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("arbiter-audit-index".into())
            .spawn(move || {
                while let Some(d) = weak.upgrade() {
                    // A file that disappears for a moment (rotation) is retried next time.
                    let _ = d.refresh();
                    drop(d);
                    std::thread::sleep(every);
                }
            });
    }

    /// The summary of what is indexed, computed again only after the index changed.
    fn summary(&self) -> Arc<Summary> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Ok(s) = self.summary.read()
            && s.0 == generation
        {
            return s.1.clone();
        }
        let fresh = match self.index.read() {
            Ok(i) => Arc::new(i.summary(TOP)),
            Err(_) => return Arc::new(empty_summary()),
        };
        if let Ok(mut s) = self.summary.write() {
            *s = (generation, fresh.clone());
        }
        fresh
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Auth::Token(token) = &self.auth else {
            return true;
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")))
            .next();
        [bearer, cookie]
            .into_iter()
            .flatten()
            .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
    }
}

fn empty_summary() -> Summary {
    arbiter_engine::audit::summary::SummaryBuilder::default().finish(TOP)
}

use arbiter_engine::builtins::crypto::constant_time_eq;

/// The routes, relative to where they are mounted.
pub fn router(d: Arc<Dashboard>) -> Router {
    // Everything that shows the log sits behind one check; only the assets and the login
    // form are open.
    let protected = Router::new()
        .route("/", get(page))
        .route("/event/{n}", get(event_page))
        .route("/api/summary", get(api_summary))
        .route("/api/events", get(api_events))
        .route("/impact", get(impact_page))
        .route("/api/impact", get(api_impact))
        .route_layer(axum::middleware::from_fn_with_state(
            d.clone(),
            require_auth,
        ));
    Router::new()
        .merge(protected)
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
        .route("/login", get(login_form).post(login))
        .with_state(d)
}

/// Refuse callers without the token (a no-op without token auth; mTLS is checked at the
/// handshake).
async fn require_auth(
    State(d): State<Arc<Dashboard>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !d.authorized(req.headers()) {
        return unauthorized(&d);
    }
    next.run(req).await
}

/// The answer when a writer panicked while holding the index.
fn index_unavailable() -> Response {
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        "index unavailable".into(),
    )
}

/// Listen on `listener` (TLS when `tls` is given), within `limits`, until `shutdown` resolves.
pub async fn serve(
    d: Arc<Dashboard>,
    listener: tokio::net::TcpListener,
    tls: Option<&crate::tls::TlsSettings>,
    limits: arbiter_engine::limits::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::listener::http1::serve_http(listener, tls, router(d), limits, shutdown).await
}

fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    secure(r)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(r)
}

fn json(body: &impl serde::Serialize) -> Response {
    let mut r = serde_json::to_string_pretty(body)
        .unwrap_or_default()
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    secure(r)
}

fn unauthorized(d: &Dashboard) -> Response {
    let mut r = html(
        StatusCode::UNAUTHORIZED,
        layout(
            d,
            "sign in",
            html! {
                p { "This dashboard needs its bearer token. " a href={ (d.prefix) "/login" } { "Sign in" } "." }
            },
        ),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Text as the page shows it, escaped by maud: the control characters a log line can carry
/// (but newlines and tabs) spelled out (`\u{1b}`), so an event cannot hide or fake text.
struct Shown<'a>(&'a str);

fn hidden(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

impl Render for Shown<'_> {
    fn render_to(&self, buf: &mut String) {
        if !self.0.chars().any(hidden) {
            return self.0.render_to(buf);
        }
        let mut spelled = String::with_capacity(self.0.len() + 8);
        for c in self.0.chars() {
            if hidden(c) {
                let _ = write!(spelled, "\\u{{{:x}}}", u32::from(c));
            } else {
                spelled.push(c);
            }
        }
        spelled.render_to(buf);
    }
}

/// Percent-encode a query value.
fn enc(s: &str) -> String {
    arbiter_engine::path::encode_component(s)
}

fn layout(d: &Dashboard, title: &str, body: Markup) -> String {
    let p = &d.prefix;
    let mut page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (Shown(title)) " · arbiter audit" }
                link rel="stylesheet" href={ (p) "/assets/app.css" };
                script src={ (p) "/assets/app.js" } defer {}
            }
            body {
                header {
                    a.brand href={ (p) "/" } { "arbiter audit" }
                    " "
                    a href={ (p) "/impact" } { "impact" }
                    @if d.live {
                        label.live { input type="checkbox" id="autorefresh"; " refresh every 5 s" }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string();
    page.push('\n');
    page
}

/// The filter as given in the query string.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Params {
    #[serde(default)]
    identity: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    rule: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    instance: String,
    #[serde(default)]
    page: Option<usize>,
}

fn parse_time(s: &str) -> Result<Option<i64>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let rfc = time::format_description::well_known::Rfc3339;
    // RFC 3339, or a datetime-local value (`2026-11-26T10:00`, seconds optional), read as UTC.
    let candidates = [
        s.to_string(),
        format!("{s}Z"),
        format!("{s}:00Z"),
        format!("{}Z", s.replace(' ', "T")),
    ];
    candidates
        .iter()
        .find_map(|c| time::OffsetDateTime::parse(c, &rfc).ok())
        .map(|t| Some(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)))
        .ok_or_else(|| format!("`{s}` is not a time (2026-11-26T10:00:00Z)"))
}

impl Params {
    fn filter(&self) -> Result<Filter, String> {
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        Ok(Filter {
            identity: opt(&self.identity),
            path: opt(&self.path),
            rule: opt(&self.rule),
            outcome: match self.decision.as_str() {
                "" | "all" => None,
                "allowed" => Some(Outcome::Allowed),
                "denied" => Some(Outcome::Denied),
                "error" => Some(Outcome::Error),
                other => return Err(format!("unknown decision `{other}`")),
            },
            from_ns: parse_time(&self.from)?,
            to_ns: parse_time(&self.to)?.map(|t| t.saturating_add(999_999_999)),
            instance: opt(&self.instance),
        })
    }

    /// The query string for these parameters on another page.
    fn query(&self, page: usize) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("identity", &self.identity),
            ("path", &self.path),
            ("rule", &self.rule),
            ("decision", &self.decision),
            ("from", &self.from),
            ("to", &self.to),
            ("instance", &self.instance),
        ] {
            if !v.is_empty() {
                q.push(format!("{k}={}", enc(v)));
            }
        }
        if page > 0 {
            q.push(format!("page={page}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

fn dur(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

fn fmt_time(ns: i64) -> String {
    if ns == i64::MIN {
        return "—".into();
    }
    arbiter_engine::record::rfc3339_nanos(i128::from(ns))
}

fn verdict_html(v: &Verdict, files: &[String]) -> Markup {
    let files = files.join(", ");
    match &v.failure {
        None => {
            let start = match v.first_prev_hash.as_deref() {
                Some(arbiter_engine::audit::chain::GENESIS) => {
                    "from the start of the chain".to_string()
                }
                Some(h) => format!("continuing after event {}", &h[..h.len().min(16)]),
                None => "no events".to_string(),
            };
            html! {
                section.verdict.ok data-k="chain" data-ok="true" {
                    strong { "Hash chain verified" } ": "
                    span data-k="verified" { (v.verified) } " events, " (Shown(&start)) ". "
                    span.files { "Files: " (Shown(&files)) }
                }
            }
        }
        Some(f) => html! {
            section.verdict.broken data-k="chain" data-ok="false" {
                strong { "Hash chain BROKEN" } " at "
                span data-k="broken-at" { (Shown(&f.file)) ":" (f.line) } ": "
                (Shown(&f.error.to_string())) ". " (v.verified) " events verified before it. "
                span.files { "Files: " (Shown(&files)) }
            }
        },
    }
}

fn card(key: &str, label: &str, value: &str, note: &str) -> Markup {
    html! {
        div.card {
            div.label { (Shown(label)) }
            div.value data-k=(key) { (Shown(value)) }
            div.note { (Shown(note)) }
        }
    }
}

/// Stacked bars per time bucket: allowed, denied by policy, errors.
fn timeline_svg(s: &Summary) -> Markup {
    let (Some(first), Some(last)) = (s.timeline.first(), s.timeline.last()) else {
        return html! { p.empty { "No timestamps." } };
    };
    let (w, h, pad) = (960.0_f64, 180.0_f64, 24.0_f64);
    let max = s
        .timeline
        .iter()
        .map(|b| b.allowed + b.denied)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let n = s.timeline.len() as f64;
    let bw = ((w - 2.0 * pad) / n).max(1.0);
    let scale = |v: u64| v as f64 / max * (h - pad);
    // Each bar's segments bottom up: (class, count, y, height).
    let bars = s.timeline.iter().enumerate().map(|(i, b)| {
        let x = pad + i as f64 * bw;
        let mut y = h;
        let mut segments = Vec::with_capacity(3);
        for (v, class) in [
            (b.allowed, "allowed"),
            (b.denied.saturating_sub(b.errors), "denied"),
            (b.errors, "error"),
        ] {
            let bh = scale(v);
            if bh > 0.0 {
                y -= bh;
                segments.push((class, v, y, bh));
            }
        }
        (x, &b.start, segments)
    });
    html! {
        svg.timeline viewBox={ "0 0 " (w) " " (h + 20.0) } role="img" aria-label="decisions over time" {
            @for (x, start, segments) in bars {
                @for (class, v, y, bh) in segments {
                    rect class=(class) x=(format!("{x:.1}")) y=(format!("{y:.1}"))
                        width=(format!("{:.1}", (bw - 1.0).max(0.5))) height=(format!("{bh:.1}")) {
                        title { (Shown(start)) ": " (v) " " (class) }
                    }
                }
            }
            text x=(pad) y=(h + 16.0) class="axis" { (Shown(&first.start)) }
            text x=(w - pad) y=(h + 16.0) class="axis" text-anchor="end" { (Shown(&last.start)) }
            text x=(pad) y="12" class="axis" {
                (bucket_name(s.bucket_seconds)) " per bar (max " (max as u64) ")"
            }
        }
    }
}

fn bucket_name(s: i64) -> String {
    match s {
        60 => "1 minute".into(),
        300 => "5 minutes".into(),
        900 => "15 minutes".into(),
        3600 => "1 hour".into(),
        21_600 => "6 hours".into(),
        86_400 => "1 day".into(),
        604_800 => "1 week".into(),
        s => format!("{s} s"),
    }
}

fn ranking(d: &Dashboard, key: &str, title: &str, list: &[Count], of: u64, param: &str) -> Markup {
    html! {
        section.rank {
            h3 { (Shown(title)) }
            table data-k=(key) {
                tbody {
                    @if list.is_empty() {
                        tr { td.empty { "none" } }
                    }
                    @for c in list {
                        tr data-name=(Shown(&c.name)) data-count=(c.count) {
                            td.name {
                                @if param.is_empty() {
                                    (Shown(&c.name))
                                } @else {
                                    a href={ (d.prefix) "/?" (param) "=" (enc(&c.name)) "&decision=denied#events" } {
                                        (Shown(&c.name))
                                    }
                                }
                            }
                            td.num { (c.count) }
                            td.num { (percent(c.count, of)) }
                        }
                    }
                }
            }
        }
    }
}

async fn page(State(d): State<Arc<Dashboard>>, Query(p): Query<Params>) -> Response {
    let s = d.summary();
    let Ok(index) = d.index.read() else {
        return index_unavailable();
    };
    let range = match (&s.first, &s.last) {
        (Some(f), Some(l)) => format!("from {f} to {l}"),
        _ => String::new(),
    };
    let l = &s.latency;
    let body = html! {
        h1 { (s.events) " decisions " small { (Shown(&range)) } }
        @match &*index {
            Source::Files(i) => {
                @let files: Vec<String> = i.files().iter().map(|f| f.display().to_string()).collect();
                (verdict_html(&i.verdict(), &files))
            }
            Source::Fleet { stream, index } => (fleet_html(&d, stream, index)),
        }
        @if !s.approximate.is_empty() {
            p.note data-k="approximate" {
                "Bounded memory: " (Shown(&s.approximate.join("; "))) "."
            }
        }
        section.cards {
            (card("events", "decisions", &s.events.to_string(), &format!("{} unreadable lines", s.unreadable)))
            (card("allowed", "allowed", &s.allowed.to_string(), &percent(s.allowed, s.events)))
            (card("denied", "denied", &s.denied.to_string(), &format!("deny rate {}", percent(s.denied, s.events))))
            (card("errors", "errors", &s.errors.to_string(), "denials caused by errors"))
            (card("dry_run", "dry-run", &s.dry_run.to_string(), "decisions not enforced"))
            (card("p99", "latency p99", &dur(l.p99_ns), &format!("p50 {} · p90 {} · max {}", dur(l.p50_ns), dur(l.p90_ns), dur(l.max_ns))))
        }
        section {
            h2 { "Decisions over time" }
            div.legend { span.allowed { "allowed" } span.denied { "denied" } span.error { "errors" } }
            (timeline_svg(&s))
        }
        section.ranks {
            (ranking(&d, "top_denied_identities", "Top denied identities", &s.top_denied_identities, s.denied, "identity"))
            (ranking(&d, "top_denied_paths", "Top denied paths", &s.top_denied_paths, s.denied, "path"))
            (ranking(&d, "top_deny_rules", "Top denying rules", &s.top_deny_rules, s.denied, "rule"))
            (ranking(&d, "reasons", "Denial reasons", &s.reasons, s.denied, ""))
        }
        section {
            h2 { "Per policy revision" }
            table data-k="revisions" {
                thead { tr { th { "revision" } th { "decisions" } th { "allowed" } th { "denied" } th { "first" } th { "last" } } }
                tbody {
                    @for r in &s.revisions {
                        tr data-name=(Shown(&r.revision)) data-count=(r.events) {
                            td.mono { (Shown(&r.revision)) }
                            td.num { (r.events) }
                            td.num { (r.allowed) }
                            td.num { (r.denied) }
                            td { (Shown(&r.first)) }
                            td { (Shown(&r.last)) }
                        }
                    }
                }
            }
        }
        (events_section(&d, &index, &p))
    };
    drop(index);
    html(StatusCode::OK, layout(&d, "dashboard", body))
}

fn events_section(d: &Dashboard, index: &Source, p: &Params) -> Markup {
    let pre = &d.prefix;
    html! {
        section id="events" {
            h2 { "Events" }
            form.filter method="get" action={ (pre) "/#events" } id="filter" {
                label { "identity " input name="identity" value=(Shown(&p.identity)) placeholder="spiffe://…"; }
                label { "path " input name="path" value=(Shown(&p.path)) placeholder="/api"; }
                label { "rule " input name="rule" value=(Shown(&p.rule)); }
                @if matches!(index, Source::Fleet { .. }) {
                    label { "instance " input name="instance" value=(Shown(&p.instance)); }
                }
                label {
                    "decision "
                    select name="decision" id="decision" {
                        option value="" { "all" }
                        option value="allowed" selected[p.decision == "allowed"] { "allowed" }
                        option value="denied" selected[p.decision == "denied"] { "denied" }
                        option value="error" selected[p.decision == "error"] { "error" }
                    }
                }
                label { "from " input name="from" value=(Shown(&p.from)) placeholder="2026-11-26T10:00:00Z"; }
                label { "to " input name="to" value=(Shown(&p.to)) placeholder="2026-11-26T11:00:00Z"; }
                button type="submit" { "filter" }
                " "
                a href={ (pre) "/#events" } { "clear" }
            }
            @match p.filter() {
                Err(e) => p.error data-k="filter-error" { (Shown(&e)) },
                Ok(filter) => (events_table(d, index, p, &filter)),
            }
        }
    }
}

/// The events matching `filter`, one page of them, and the links to the pages beside it.
fn events_table(d: &Dashboard, index: &Source, p: &Params, filter: &Filter) -> Markup {
    let pre = &d.prefix;
    let page = p.page.unwrap_or(0);
    let (total, rows) = index.query(filter, page, PER_PAGE);
    let first = page * PER_PAGE;
    let fleet = matches!(index, Source::Fleet { .. });
    let strings = index.strings();
    html! {
        p.count {
            span data-k="matching" { (total) } " matching events"
            @if total > 0 { ", showing " (first + 1) "–" (first + rows.len()) }
            @if let Source::Fleet { index, .. } = index && index.folded() > 0 {
                " (of the newest " (index.rows().len()) " events; "
                (index.folded()) " older ones are counted above but not listed)"
            }
        }
        table.events data-k="events-table" {
            thead {
                tr {
                    th { "time" }
                    @if fleet { th { "instance" } }
                    th { "decision" } th { "identity" } th { "path" } th { "rule" } th { "reason" } th { "latency" }
                }
            }
            tbody {
                @for (i, r) in rows.iter().filter_map(|&i| Some((i, index.row(i)?))) {
                    @let link = format!("{pre}/event/{}", index.link_id(i));
                    tr class=(r.outcome.as_str()) data-href=(link) {
                        td { a href=(link) { (Shown(&fmt_time(r.time_ns))) } }
                        @if fleet { td.mono { (Shown(strings.get(r.instance))) } }
                        td { (r.outcome.as_str()) }
                        td.mono { (Shown(strings.get(r.identity))) }
                        td.mono { (Shown(strings.get(r.path))) }
                        td.mono { (Shown(strings.get(r.rule))) }
                        td { (Shown(strings.get(r.reason))) }
                        td.num { (dur(r.latency_ns)) }
                    }
                }
            }
        }
        nav.pages {
            @if page > 0 {
                a rel="prev" href={ (pre) "/" (p.query(page - 1)) "#events" } { "← newer" }
            }
            @if (page + 1) * PER_PAGE < total {
                a rel="next" href={ (pre) "/" (p.query(page + 1)) "#events" } { "older →" }
            }
        }
    }
}

async fn event_page(State(d): State<Arc<Dashboard>>, Path(n): Path<u64>) -> Response {
    let read = {
        let Ok(index) = d.index.read() else {
            return index_unavailable();
        };
        match &*index {
            Source::Files(i) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                Ok((i.event(n), i.location(n)))
            }
            Source::Fleet { stream, .. } => Err(format!("{stream}, message {n}")),
        }
    };
    let (event, location) = match read {
        Ok(found) => found,
        Err(location) => (stream_event(&d, n).await, location),
    };
    let body = match event {
        Ok(e) => html! {
            h1 {
                "Event "
                span.mono { (Shown(e.get("decision_id").and_then(serde_json::Value::as_str).unwrap_or(""))) }
            }
            p.where { (Shown(&location)) " · " a href={ (d.prefix) "/#events" } { "back" } }
            pre.event data-k="event" { (Shown(&serde_json::to_string_pretty(&e).unwrap_or_default())) }
        },
        Err(e) => {
            return html(
                StatusCode::NOT_FOUND,
                layout(&d, "event", html! { p.error { (Shown(&e.to_string())) } }),
            );
        }
    };
    html(StatusCode::OK, layout(&d, "event", body))
}

/// Message `sequence` of the fleet's stream, read back whole.
async fn stream_event(d: &Dashboard, sequence: u64) -> std::io::Result<serde_json::Value> {
    let other = |e: String| std::io::Error::other(e);
    let s = d
        .stream
        .get()
        .ok_or_else(|| other("not connected to the stream yet".into()))?;
    let m = s.get_raw_message(sequence).await.map_err(|e| {
        if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such event")
        } else {
            other(format!("message {sequence}: {e}"))
        }
    })?;
    serde_json::from_slice(&m.payload)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Every instance of the fleet: its events, its chain's state, when it was last heard of.
fn fleet_html(d: &Dashboard, stream: &str, index: &FleetIndex) -> Markup {
    let ok = arbiter_engine::audit::fleet::all_intact(index);
    let (unreadable, first_unreadable) = index.unreadable();
    html! {
        section.verdict.(if ok { "ok" } else { "broken" }) data-k="chain" data-ok=(ok) {
            @if ok {
                strong { "Every instance's hash chain verified" }
            } @else {
                strong { "Hash chain BROKEN or incomplete" }
            }
            ": " (index.instances().len()) " instances, " (index.messages()) " messages of stream "
            span.mono { (Shown(stream)) } " read (to sequence " (index.last_sequence()) ")."
            @if unreadable > 0 {
                " " (unreadable) " messages are not decision events (the first: message "
                (first_unreadable.unwrap_or(0)) ")."
            }
        }
        section {
            h2 { "Instances" }
            table data-k="instances" {
                thead { tr {
                    th { "instance" } th { "decisions" } th { "allowed" } th { "denied" } th { "errors" }
                    th { "chain" } th { "last event" }
                } }
                tbody {
                    @for (id, i) in index.instances() {
                        tr data-name=(Shown(id)) data-count=(i.events) data-ok=(i.intact()) {
                            td.mono { a href={ (d.prefix) "/?instance=" (enc(id)) "#events" } { (Shown(id)) } }
                            td.num { (i.events) }
                            td.num { (i.allowed) }
                            td.num { (i.denied) }
                            td.num { (i.errors) }
                            td {
                                @if let Some(p) = &i.first_problem {
                                    "BROKEN: " (i.problems) " problems; the first at message " (p.sequence)
                                    " (decision " span.mono { (Shown(&p.decision_id)) } "): " (Shown(&p.error))
                                } @else if let Some((seq, id)) = i.first_waiting() {
                                    "INCOMPLETE: " (i.waiting()) " events wait for the one before them (the first: message "
                                    (seq) ", decision " span.mono { (Shown(id)) } ")"
                                } @else {
                                    "verified: " (i.verified) " events, "
                                    @if i.from_genesis() { "from the start of its chain" } @else { "continuing an earlier chain" }
                                    @if i.duplicates > 0 { ", " (i.duplicates) " copies counted once" }
                                }
                            }
                            td { (Shown(&fmt_time(i.last_time_ns))) }
                        }
                    }
                }
            }
        }
    }
}

/// Who gains or loses access to what: the shadow set's disagreements recorded in the log, and
/// a replay of the log under candidate policies.
async fn impact_page(State(d): State<Arc<Dashboard>>) -> Response {
    use arbiter_engine::audit::replay::Direction;
    let s = d.summary();
    let p = &d.prefix;
    let impact = d.impact.read().map(|i| i.clone()).unwrap_or_default();
    let body = html! {
        h1 { "Impact of a policy change" }
        section {
            h2 { "Shadow disagreements" }
            @if s.shadow_new_access + s.shadow_new_denials == 0 {
                p.note {
                    "None in this log. " code { "arbiter serve --shadow DIR" }
                    " records in each decision event what a second policy set decided when it disagrees."
                }
            } @else {
                p {
                    (s.shadow_new_access) " checks the shadow set would have " b { "allowed" }
                    " (new access), " (s.shadow_new_denials) " it would have " b { "denied" } " (new denials)."
                }
                table {
                    thead { tr { th { "direction" } th { "identity" } th { "request" } th { "events" } } }
                    tbody {
                        @for c in &s.shadow_disagreements {
                            tr {
                                td class=(if c.direction == "new_access" { "denied" } else { "allowed" }) {
                                    (Shown(&c.direction.replace('_', " ")))
                                }
                                td { a href={ (p) "/?identity=" (enc(&c.identity)) } { (Shown(&c.identity)) } }
                                td { (Shown(&c.method)) " " a href={ (p) "/?path=" (enc(&c.path)) } { (Shown(&c.path)) } }
                                td { (c.count) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Replay under candidate policies" }
            @match &impact {
                Impact::None => p.note {
                    "None asked for. " code { "arbiter audit serve --candidate DIR FILE…" }
                    " replays these files under the policies in DIR; " code { "arbiter replay" }
                    " does the same on the command line."
                },
                Impact::Running { candidate } => p { "Replaying under " code { (Shown(candidate)) } "…" },
                Impact::Failed(why) => p.error { "The replay failed: " (Shown(why)) },
                Impact::Done { candidate, baseline, report: r, seconds } => {
                    p {
                        (r.lines) " events replayed under " code { (Shown(candidate)) } " against "
                        (Shown(baseline)) " in " (format!("{seconds:.1}")) " s: " (r.compared)
                        " compared, " (r.unchanged) " unchanged, " b { (r.new_access) " new access" }
                        ", " b { (r.new_denials) " new denials" }
                        @if r.approximate > 0 {
                            " (" (r.approximate) " compared events approximate: masked fields the policies may read; "
                            (r.approximate_flips) " of them flipped)"
                        }
                        "."
                    }
                    @for (direction, title) in [
                        (Direction::NewAccess, "New access (denied before, allowed under the candidate)"),
                        (Direction::NewDenial, "New denials (allowed before, denied under the candidate)"),
                    ] {
                        @let groups = r.requests(direction);
                        @if !groups.is_empty() {
                            h3 { (title) }
                            table {
                                thead { tr { th { "identity" } th { "request" } th { "events" } th { "examples" } } }
                                tbody {
                                    @for ((_, identity, path, method), g) in groups.iter().take(50) {
                                        tr {
                                            td { (Shown(identity)) }
                                            td { (Shown(method)) " " (Shown(path)) }
                                            td {
                                                (g.count)
                                                @if g.approximate > 0 { " (" (g.approximate) " approximate)" }
                                            }
                                            td {
                                                @for (k, x) in g.examples.iter().enumerate() {
                                                    @if k > 0 { " " }
                                                    code title=(Shown(&x.at)) { (Shown(&x.decision_id)) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    html(StatusCode::OK, layout(&d, "impact", body))
}

async fn api_impact(State(d): State<Arc<Dashboard>>) -> Response {
    let s = d.summary();
    let replay = match d.impact.read().map(|i| i.clone()).unwrap_or_default() {
        Impact::None => serde_json::json!({"status": "none"}),
        Impact::Running { candidate } => {
            serde_json::json!({"status": "running", "candidate": candidate})
        }
        Impact::Failed(why) => serde_json::json!({"status": "failed", "error": why}),
        Impact::Done {
            candidate,
            baseline,
            report,
            seconds,
        } => {
            let mut j = report.to_json();
            j["status"] = "done".into();
            j["candidate"] = candidate.into();
            j["baseline"] = baseline.into();
            j["seconds"] = seconds.into();
            j
        }
    };
    json(&serde_json::json!({
        "shadow": {
            "new_access": s.shadow_new_access,
            "new_denials": s.shadow_new_denials,
            "disagreements": s.shadow_disagreements,
        },
        "replay": replay,
    }))
}

async fn api_summary(State(d): State<Arc<Dashboard>>) -> Response {
    json(&*d.summary())
}

async fn api_events(State(d): State<Arc<Dashboard>>, Query(p): Query<Params>) -> Response {
    let filter = match p.filter() {
        Ok(f) => f,
        Err(e) => {
            let mut r = json(&serde_json::json!({"error": e}));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let Ok(index) = d.index.read() else {
        return index_unavailable();
    };
    let (total, rows) = index.query(&filter, p.page.unwrap_or(0), PER_PAGE);
    let strings = index.strings();
    let events: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|&i| Some((i, index.row(i)?)))
        .map(|(i, r)| {
            serde_json::json!({
                "id": index.link_id(i),
                "time": fmt_time(r.time_ns),
                "instance": strings.get(r.instance),
                "decision": r.outcome.as_str(),
                "identity": strings.get(r.identity),
                "path": strings.get(r.path),
                "rule": strings.get(r.rule),
                "reason": strings.get(r.reason),
                "latency_ns": r.latency_ns,
                "location": index.location(i),
            })
        })
        .collect();
    let chain = match &*index {
        Source::Files(i) => {
            let v = i.verdict();
            serde_json::json!({
                "ok": v.failure.is_none(),
                "verified": v.verified,
                "failure": v.failure.map(|f| serde_json::json!({"file": f.file, "line": f.line, "error": f.error.to_string()})),
            })
        }
        Source::Fleet { index: f, .. } => {
            serde_json::json!({
                "ok": arbiter_engine::audit::fleet::all_intact(f),
                "verified": f.instances().values().map(|i| i.verified).sum::<u64>(),
                "instances": fleet_instances(f),
            })
        }
    };
    let mut v = serde_json::json!({
        "matching": total,
        "events": events,
        "chain": chain,
    });
    if let Source::Fleet { index: f, stream } = &*index {
        v["stream"] = serde_json::json!({
            "name": stream,
            "last_sequence": f.last_sequence(),
            "messages": f.messages(),
            "unreadable": f.unreadable().0,
            "window": f.window(),
            "in_window": f.rows().len(),
            "folded": f.folded(),
        });
    }
    json(&v)
}

/// Each instance's counts and chain, as `/api/events` gives them.
fn fleet_instances(f: &FleetIndex) -> serde_json::Value {
    f.instances()
        .iter()
        .map(|(id, i)| {
            serde_json::json!({
                "id": id,
                "events": i.events,
                "allowed": i.allowed,
                "denied": i.denied,
                "errors": i.errors,
                "verified": i.verified,
                "duplicates": i.duplicates,
                "from_genesis": i.from_genesis(),
                "last_sequence": i.last_sequence,
                "last_time": fmt_time(i.last_time_ns),
                "ok": i.intact(),
                "waiting": i.waiting(),
                "problems": i.problems,
                "first_problem": i.first_problem.as_ref().map(|p| serde_json::json!({
                    "sequence": p.sequence, "decision_id": p.decision_id, "error": p.error,
                })),
            })
        })
        .collect()
}

async fn login_form(State(d): State<Arc<Dashboard>>) -> Response {
    html(
        StatusCode::OK,
        layout(
            &d,
            "sign in",
            html! {
                form.login method="post" action={ (d.prefix) "/login" } {
                    label { "token " input type="password" name="token" autocomplete="current-password"; }
                    " "
                    button type="submit" { "sign in" }
                }
            },
        ),
    )
}

async fn login(
    State(d): State<Arc<Dashboard>>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let given = f.get("token").map(String::as_str).unwrap_or("");
    match &d.auth {
        Auth::Token(t) if constant_time_eq(given.as_bytes(), t.as_bytes()) => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            let path = if d.prefix.is_empty() {
                "/".to_string()
            } else {
                format!("{}/", d.prefix)
            };
            if let Ok(v) = HeaderValue::from_str(&path) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE}={t}; HttpOnly; SameSite=Strict; Path={path}"
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            secure(r)
        }
        Auth::None => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("./"));
            secure(r)
        }
        Auth::Token(_) => unauthorized(&d),
    }
}

#[cfg(test)]
mod tests;
