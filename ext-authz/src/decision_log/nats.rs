//! Shipping decision events to NATS JetStream, the fleet's audit path.
//!
//! The decision-log file is the spool: a decision's event is in the file (written by the log
//! writer, as always) before it is shipped, and a shipper thread follows the file — across
//! rotations, by the open file's identity, not its name — publishing each whole line to
//! JetStream with `Nats-Msg-Id` set to the event's `decision_id`, and waiting for the stream's
//! acknowledgements. After each acknowledged batch it records how far it got in
//! `<log>.nats-position` (written to a temporary file, synced, renamed), so a SIGKILL of arbiter
//! or a NATS outage costs no event: the next run, or the next connection, resumes from the
//! last acknowledged line. Events shipped twice (acknowledged but not yet recorded when the
//! process died) are dropped by the stream's duplicate window; so the stream holds each
//! decision once, and at least once.
//!
//! The shipper never blocks a decision: with `--audit required` a decision waits for its event
//! to be written to the file (and is denied when the file does not take it within a second),
//! never for NATS; so an answered decision is in the spool, and a SIGKILL loses none. A NATS
//! server that is down makes the spool grow within the file's rotation limits
//! (`arbiter_decision_logs_ship_lag_bytes`); events rotated away before they were shipped are
//! counted (`arbiter_decision_logs_ship_lost_total`), never silently skipped.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use tokio_stream::StreamExt;

use crate::metrics::Metrics;
use arbiter_engine::audit::index::file_id;

/// Where and how events are shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `nats://host:4222` (several, comma-separated, for a cluster; `tls://` for TLS;
    /// `nats://user:password@host` for user credentials).
    pub url: String,
    /// The subject events are published on (`arbiter.decisions.<instance>` by default).
    pub subject: String,
    /// A stream to create when it does not exist, for `arbiter.decisions.>` (or the subject):
    /// file storage, the default duplicate window (2 minutes). `None`: a stream for the subject
    /// must exist.
    pub stream: Option<String>,
    /// Its replicas, when created.
    pub replicas: usize,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// CA certificates (PEM) for a `tls://` server.
    pub ca: Option<PathBuf>,
    /// Events published before their acknowledgements are awaited.
    pub batch: usize,
    /// How long an acknowledgement may take.
    pub timeout: Duration,
}

impl NatsConfig {
    pub fn new(url: impl Into<String>, subject: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            subject: subject.into(),
            stream: None,
            replicas: 1,
            creds: None,
            ca: None,
            batch: 256,
            timeout: Duration::from_secs(5),
        }
    }

    /// A config for reading a stream (no subject to publish on): `audit verify --nats` and
    /// the fleet dashboard.
    pub fn reader(url: &str, creds: Option<PathBuf>, ca: Option<PathBuf>) -> Self {
        NatsConfig {
            creds,
            ca,
            ..NatsConfig::new(url, "unused")
        }
    }

    /// What is wrong with it, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        for server in self.url.split(',') {
            server
                .trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("NATS URL `{server}`: {e}"))?;
        }
        if self.subject.is_empty()
            || self
                .subject
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'*' || b == b'>')
            || self.subject.split('.').any(str::is_empty)
        {
            return Err(format!(
                "NATS subject `{}`: give tokens separated by dots, without wildcards",
                self.subject
            ));
        }
        if let Some(s) = &self.stream {
            check_name("stream", s)?;
        }
        if self.batch == 0 {
            return Err("the NATS batch must be at least 1".into());
        }
        Ok(())
    }

    /// The subjects of a stream this config creates.
    fn stream_subjects(&self) -> Vec<String> {
        match self.subject.strip_prefix("arbiter.decisions.") {
            Some(_) => vec!["arbiter.decisions.>".into()],
            None => vec![self.subject.clone()],
        }
    }
}

/// A JetStream stream or consumer name as the server takes it: not empty, no whitespace,
/// dots, wildcards or path separators.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.bytes().any(|b| b"\t .*>/\\".contains(&b)) {
        return Err(format!(
            "NATS {kind} name `{name}`: no spaces, dots or wildcards"
        ));
    }
    Ok(())
}

/// Where the shipper got to: the file (by identity) and the byte after the last acknowledged
/// line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Position {
    dev: u64,
    ino: u64,
    offset: u64,
}

fn position_path(log: &Path) -> PathBuf {
    PathBuf::from(format!("{}.nats-position", log.display()))
}

fn load_position(log: &Path) -> Option<Position> {
    let text = std::fs::read(position_path(log)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save_position(log: &Path, p: Position) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = position_path(log);
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(&p).map_err(std::io::Error::other)?)?;
    f.sync_data()?;
    std::fs::rename(&tmp, &path)
}

fn id_of(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| file_id(&m))
}

/// The log's files, oldest first, with their identities.
fn files(log: &Path) -> Vec<(PathBuf, (u64, u64))> {
    arbiter_engine::audit::index::with_rotated(&[log.to_path_buf()])
        .into_iter()
        .filter_map(|p| id_of(&p).map(|id| (p, id)))
        .collect()
}

/// The file being shipped: open, read from `offset`.
struct Cursor {
    id: (u64, u64),
    reader: BufReader<File>,
    /// The byte after the last whole line read.
    offset: u64,
}

impl Cursor {
    fn open(path: &Path, offset: u64) -> std::io::Result<Self> {
        let mut f = File::open(path)?;
        let id = file_id(&f.metadata()?);
        let len = f.metadata()?.len();
        // A file shorter than the position was replaced or cut: from its start.
        let offset = if offset > len { 0 } else { offset };
        f.seek(SeekFrom::Start(offset))?;
        Ok(Cursor {
            id,
            reader: BufReader::with_capacity(256 << 10, f),
            offset,
        })
    }

    /// Up to `n` whole lines (without their newline) and the offset after each; a line still
    /// being written is left for later.
    fn lines(&mut self, n: usize) -> std::io::Result<Vec<(Bytes, u64)>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while out.len() < n {
            buf.clear();
            let read = self.reader.read_until(b'\n', &mut buf)?;
            if read == 0 {
                break;
            }
            if buf.last() != Some(&b'\n') {
                // Partial: go back to its start and wait for the rest.
                self.reader.seek(SeekFrom::Start(self.offset))?;
                break;
            }
            self.offset += read as u64;
            buf.pop();
            if !buf.is_empty() {
                out.push((Bytes::copy_from_slice(&buf), self.offset));
            }
        }
        Ok(out)
    }

    /// Whether a whole line follows the last one read (read without moving: data the writer
    /// appended after a read found the end).
    fn whole_line_left(&self) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let f = self.reader.get_ref();
        let len = f.metadata()?.len();
        let mut at = self.offset;
        let mut buf = vec![0u8; 64 << 10];
        while at < len {
            let n = f.read_at(&mut buf, at)?;
            if n == 0 {
                break;
            }
            if buf[..n].contains(&b'\n') {
                return Ok(true);
            }
            at += n as u64;
        }
        Ok(false)
    }

    fn rewind(&mut self, offset: u64) -> std::io::Result<()> {
        self.reader.seek(SeekFrom::Start(offset))?;
        self.offset = offset;
        Ok(())
    }
}

/// The event's `decision_id` (the stream's de-duplication key), or its `hash` for a line
/// without one. serde_json reads the event only up to its top-level `decision_id` (the writer
/// puts it second, after `labels`): the input and result after it are not parsed.
fn message_id(line: &[u8]) -> Option<String> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct UpToDecisionId<'s>(&'s mut Option<String>);
    impl<'de> Visitor<'de> for UpToDecisionId<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a decision event")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "decision_id" {
                    *self.0 = Some(map.next_value::<String>()?);
                    // The rest is left unread (the deserializer then reports the unread
                    // entries, which is of no concern here).
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut found = None;
    let _ = serde_json::Deserializer::from_slice(line).deserialize_map(UpToDecisionId(&mut found));
    if found.is_some() {
        return found;
    }
    #[derive(serde::Deserialize)]
    struct Hash<'a> {
        #[serde(borrow, default)]
        hash: Option<std::borrow::Cow<'a, str>>,
    }
    let h: Hash<'_> = serde_json::from_slice(line).ok()?;
    h.hash.map(|s| s.into_owned())
}

/// The shipper thread's handle, held by the log writer.
#[derive(Debug)]
pub struct Shipper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shipper {
    /// Follow `log` and ship it with `config`.
    pub fn start(config: NatsConfig, log: PathBuf, metrics: Arc<Metrics>) -> Result<Self, String> {
        config.validate()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("arbiter-nats-shipper".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(event = "decision_log_sink", sink = "nats", error = %e, "decision log: cannot start the NATS shipper: {e}");
                        return;
                    }
                };
                runtime.block_on(ship(config, log, metrics, s));
            })
            .map_err(|e| format!("cannot start the NATS shipper: {e}"))?;
        Ok(Shipper {
            stop,
            thread: Some(thread),
        })
    }

    /// Ship what the file holds now (for up to `grace`), record the position, and stop.
    pub fn shutdown(&mut self, grace: Duration) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let until = Instant::now() + grace + Duration::from_secs(1);
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A JetStream context on `config`'s servers, with its credentials; no stream created.
pub(crate) async fn connect_only(config: &NatsConfig) -> Result<jetstream::Context, String> {
    let mut c = config.clone();
    c.stream = None;
    connect(&c).await
}

async fn connect(config: &NatsConfig) -> Result<jetstream::Context, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name("arbiter decision log")
        .connection_timeout(config.timeout)
        .request_timeout(Some(config.timeout));
    if let Some(c) = &config.creds {
        options = options
            .credentials_file(c)
            .await
            .map_err(|e| format!("NATS credentials {}: {e}", c.display()))?;
    }
    if let Some(ca) = &config.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = config
        .url
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let client = options
        .connect(servers)
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", config.url))?;
    let js = jetstream::new(client);
    if let Some(name) = &config.stream {
        js.get_or_create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: config.stream_subjects(),
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas.max(1),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("NATS stream `{name}`: {e}"))?;
    }
    Ok(js)
}

/// Bytes in the spool after `cursor`: the rest of its file and every newer file.
fn lag_bytes(log: &Path, cursor: &Cursor) -> u64 {
    let all = files(log);
    let mut lag = 0;
    let mut after = false;
    for (p, id) in &all {
        let len = std::fs::metadata(p).map_or(0, |m| m.len());
        if *id == cursor.id {
            lag += len.saturating_sub(cursor.offset);
            after = true;
        } else if after {
            lag += len;
        }
    }
    if !after {
        // The file being read was rotated away: everything on disk is after it.
        lag = all
            .iter()
            .map(|(p, _)| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
    }
    lag
}

/// Where to start: the recorded position's file (by identity) and offset, else the oldest
/// file. A recorded file that is gone took its unshipped events with it (counted).
fn start_cursor(log: &Path, metrics: &Metrics) -> Option<Cursor> {
    let all = files(log);
    let position = load_position(log);
    if let Some(p) = position
        && let Some((path, _)) = all.iter().find(|(_, id)| *id == (p.dev, p.ino))
    {
        return Cursor::open(path, p.offset).ok();
    }
    if position.is_some() {
        metrics.ship_lost(1);
        tracing::warn!(
            event = "decision_log_sink",
            sink = "nats",
            "decision log: the file the NATS shipper was reading was rotated away before it was shipped; starting from the oldest file"
        );
    }
    let (oldest, _) = all.first()?;
    Cursor::open(oldest, 0).ok()
}

/// The next file after the one `cursor` reads, once that one is finished: `None` while it is
/// still the newest (the writer may append to it).
fn next_file(log: &Path, cursor: &Cursor) -> Option<PathBuf> {
    let all = files(log);
    match all.iter().position(|(_, id)| *id == cursor.id) {
        Some(i) => all.get(i + 1).map(|(p, _)| p.clone()),
        // Rotated out of the set (deleted) while open: on to the oldest that is left.
        None => all.first().map(|(p, _)| p.clone()),
    }
}

async fn ship(config: NatsConfig, log: PathBuf, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    let mut js: Option<jetstream::Context> = None;
    let mut cursor: Option<Cursor> = None;
    let mut backoff = Duration::from_millis(100);
    let mut stop_deadline: Option<Instant> = None;
    // The position is recorded (a synced write) at most every 100 ms while busy, and whenever
    // the shipper catches up or stops: a crash in between sends some events again, which the
    // stream drops.
    let mut unsaved: Option<Position> = None;
    let mut saved_at = Instant::now();
    let save = |p: Position| {
        if let Err(e) = save_position(&log, p) {
            tracing::warn!(event = "decision_log_sink", sink = "nats", error = %e, "decision log: cannot record the NATS position: {e}");
        }
    };
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if stopping && stop_deadline.is_none() {
            stop_deadline = Some(Instant::now() + Duration::from_secs(10));
        }
        if stop_deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        let Some(c) = cursor.as_mut() else {
            cursor = start_cursor(&log, &metrics);
            if cursor.is_none() {
                if stopping {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let Some(context) = js.as_ref() else {
            match connect(&config).await {
                Ok(c) => {
                    js = Some(c);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    metrics.ship_failed();
                    tracing::warn!(event = "decision_log_sink", sink = "nats", error = %e, "decision log: {e}");
                    if stopping {
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let start = c.offset;
        let lines = match c.lines(config.batch) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(event = "decision_log_sink", sink = "nats", error = %e, "decision log: cannot read the spool: {e}");
                cursor = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if lines.is_empty() {
            if let Some(p) = unsaved.take() {
                save(p);
                saved_at = Instant::now();
            }
            metrics.set_ship_lag(lag_bytes(&log, c));
            match next_file(&log, c) {
                // A newer file exists, so the writer is done with this one; but it may have
                // appended to it after the read above found the end: those lines first. (A
                // partial line a crash left at its end is not an event: it is passed over.)
                Some(_) if c.whole_line_left().unwrap_or(false) => {}
                Some(next) => match Cursor::open(&next, 0) {
                    Ok(n) => {
                        *c = n;
                        let p = Position {
                            dev: c.id.0,
                            ino: c.id.1,
                            offset: 0,
                        };
                        let _ = save_position(&log, p);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                None => {
                    if stopping {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        }
        match publish(context, &config, &lines).await {
            Ok(()) => {
                metrics.log_shipped(lines.len());
                let p = Position {
                    dev: c.id.0,
                    ino: c.id.1,
                    offset: c.offset,
                };
                if saved_at.elapsed() >= Duration::from_millis(100) {
                    save(p);
                    saved_at = Instant::now();
                    unsaved = None;
                    metrics.set_ship_lag(lag_bytes(&log, c));
                } else {
                    unsaved = Some(p);
                }
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                metrics.ship_failed();
                tracing::warn!(event = "decision_log_sink", sink = "nats", error = %e, "decision log: NATS did not take {} events: {e}", lines.len());
                // From the first line not acknowledged, after a pause; the stream drops
                // the ones it had taken.
                if c.rewind(start).is_err() {
                    cursor = None;
                }
                if stopping {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    if let Some(p) = unsaved {
        save(p);
    }
}

/// Publish `lines` in order, then wait for every acknowledgement.
async fn publish(
    js: &jetstream::Context,
    config: &NatsConfig,
    lines: &[(Bytes, u64)],
) -> Result<(), String> {
    let mut acks = Vec::with_capacity(lines.len());
    // One subject for the batch (its clones share the bytes).
    let subject = async_nats::Subject::from(config.subject.as_str());
    for (line, _) in lines {
        let mut message = jetstream::message::PublishMessage::build().payload(line.clone());
        if let Some(id) = message_id(line) {
            message = message.message_id(id);
        }
        let ack = tokio::time::timeout(config.timeout, js.send_publish(subject.clone(), message))
            .await
            .map_err(|_| "publishing timed out".to_string())?
            .map_err(|e| e.to_string())?;
        acks.push(ack);
    }
    for ack in acks {
        tokio::time::timeout(config.timeout, ack.into_future())
            .await
            .map_err(|_| "no acknowledgement in time".to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A message of a stream: its sequence, subject, `Nats-Msg-Id` and payload (an event's line).
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub msg_id: Option<String>,
    pub payload: Bytes,
}

/// Every message of `stream` (on `config`'s server, with its credentials), in sequence order;
/// from a blocking caller.
pub fn read_stream(config: &NatsConfig, stream: &str) -> Result<Vec<Stored>, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(read_stream_async(config, stream))
}

/// [`read_stream`] on the caller's runtime.
pub async fn read_stream_async(config: &NatsConfig, stream: &str) -> Result<Vec<Stored>, String> {
    let js = connect_only(config).await?;
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("NATS stream `{stream}`: {e}"))?;
    let state = s
        .info()
        .await
        .map_err(|e| format!("NATS stream `{stream}`: {e}"))?
        .state
        .clone();
    let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    if state.messages == 0 {
        return Ok(out);
    }
    // An ordered consumer (ephemeral, flow-controlled, no acknowledgements) streams the
    // messages in order. Its creation can fail while a node of a cluster is down (it may be
    // placed there): tried twice, then the messages are fetched one by one, slower but through
    // the stream's leader alone.
    for _ in 0..2 {
        match read_ordered(&s, stream, &state, config.timeout).await {
            Ok(all) => return Ok(all),
            Err(e) => tracing::debug!(error = %e, "reading the stream with an ordered consumer"),
        }
    }
    for seq in state.first_sequence..=state.last_sequence {
        let m = match s.get_raw_message(seq).await {
            Ok(m) => m,
            // A message deleted from the middle of the stream: not there to read.
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                continue;
            }
            Err(e) => return Err(format!("NATS stream `{stream}`, message {seq}: {e}")),
        };
        out.push(Stored {
            sequence: m.sequence,
            subject: m.subject.to_string(),
            msg_id: m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string()),
            payload: m.payload,
        });
    }
    Ok(out)
}

/// Every message up to `state.last_sequence`, through an ordered consumer (a gap, a deleted
/// message, is simply not delivered); what arrives meanwhile is left for the next reader.
async fn read_ordered(
    s: &jetstream::stream::Stream,
    stream: &str,
    state: &jetstream::stream::State,
    timeout: Duration,
) -> Result<Vec<Stored>, String> {
    let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    let consumer = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("NATS stream `{stream}`: cannot read it: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("NATS stream `{stream}`: cannot read it: {e}"))?;
    loop {
        let next = tokio::time::timeout(timeout, messages.next())
            .await
            .map_err(|_| {
                format!(
                    "NATS stream `{stream}`: no message for {timeout:?} after {} of {}",
                    out.len(),
                    state.messages
                )
            })?;
        let Some(m) = next else {
            return Err(format!("NATS stream `{stream}`: the reader stopped"));
        };
        let m = m.map_err(|e| format!("NATS stream `{stream}`: {e}"))?;
        let sequence = m
            .info()
            .map_err(|e| format!("NATS stream `{stream}`: {e}"))?
            .stream_sequence;
        out.push(Stored {
            sequence,
            subject: m.subject.to_string(),
            msg_id: m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_string()),
            payload: m.payload.clone(),
        });
        if sequence >= state.last_sequence {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configs_are_checked() {
        assert!(
            NatsConfig::new("nats://127.0.0.1:4222", "arbiter.decisions.a")
                .validate()
                .is_ok()
        );
        assert!(
            NatsConfig::new("nats://a:4222,nats://b:4222", "x")
                .validate()
                .is_ok()
        );
        for subject in ["", "a..b", "a.*", "a.>", "a b"] {
            assert!(
                NatsConfig::new("nats://h:4222", subject)
                    .validate()
                    .is_err(),
                "{subject}"
            );
        }
        let mut c = NatsConfig::new("nats://h:4222", "arbiter.decisions.i-1");
        assert_eq!(c.stream_subjects(), ["arbiter.decisions.>"]);
        c.stream = Some("bad.name".into());
        assert!(c.validate().is_err());
        assert_eq!(
            NatsConfig::new("nats://h", "s.t").stream_subjects(),
            ["s.t"]
        );
    }

    #[test]
    fn message_ids_are_decision_ids() {
        assert_eq!(
            message_id(br#"{"labels":{},"decision_id":"d-1","hash":"h"}"#).as_deref(),
            Some("d-1")
        );
        assert_eq!(message_id(br#"{"hash":"h2"}"#).as_deref(), Some("h2"));
        // The top-level one, not one inside `labels` or the input.
        assert_eq!(
            message_id(br#"{"labels":{"decision_id":"fake"},"decision_id":"d-2","input":{"decision_id":"x"}}"#)
                .as_deref(),
            Some("d-2")
        );
        // Escapes are read as JSON.
        assert_eq!(
            message_id(br#"{"decision_id":"a\u0062c","hash":"h"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(message_id(b"not json"), None);
    }

    #[test]
    fn the_cursor_reads_whole_lines_only() {
        let dir = std::env::temp_dir().join(format!("arbiter-nats-cursor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("d.log");
        std::fs::write(&log, "{\"a\":1}\n\n{\"b\":2}\n{\"c\":").unwrap();
        let mut c = Cursor::open(&log, 0).unwrap();
        let lines = c.lines(10).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(&lines[1].0[..], b"{\"b\":2}");
        assert_eq!(lines[1].1, 17);
        assert!(c.lines(10).unwrap().is_empty(), "the partial line waits");
        assert!(!c.whole_line_left().unwrap());
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"3}\n")
            .unwrap();
        assert!(
            c.whole_line_left().unwrap(),
            "appended after the end was found"
        );
        let lines = c.lines(10).unwrap();
        assert_eq!(&lines[0].0[..], b"{\"c\":3}");
        // A recorded position past the end of a replaced file starts it over.
        let again = Cursor::open(&log, 10_000).unwrap();
        assert_eq!(again.offset, 0);
        save_position(
            &log,
            Position {
                dev: 1,
                ino: 2,
                offset: 3,
            },
        )
        .unwrap();
        assert_eq!(
            load_position(&log),
            Some(Position {
                dev: 1,
                ino: 2,
                offset: 3
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
