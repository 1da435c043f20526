//! Decision logs, written off the decision path.
//!
//! A decision hands its [`DecisionRecord`] to a bounded queue without waiting. One writer
//! thread turns records into OPA decision-log events, drops or masks them (default credential
//! headers, OPA's `system.log.drop` and `system.log.mask` policies), seals each into the hash
//! chain ([`arbiter_engine::audit::chain`]) and hands the line to the sinks: a rotating file,
//! stdout, and an HTTP uploader with its own bounded buffer. When the queue is full the event
//! is dropped and counted (`arbiter_decision_logs_dropped_total{reason="queue_full"}`), and
//! with `audit: required` the server denies the request instead (see
//! [`crate::state::State::check`]). With `audit: required` the answer also waits until the
//! event is in its sinks (for a file: written, and synced as its fsync setting says): the
//! writer tells each waiting check after the batch that held its event
//! ([`DecisionLog::submit_acked`]), so a crash of the server cannot lose a decision it had
//! answered. Shutdown drains the queue, then the upload buffer.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use arbiter_engine::audit::{chain, mask};
use arbiter_engine::record::{DecisionRecord, InstanceLabels};
use arbiter_engine::value::{from_json, to_json};
use arbiter_engine::{DataRef, PolicySet};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde_json::{Map, Value as Json};

use crate::metrics::{DropReason, Metrics};

pub mod file;
pub mod nats;
pub mod upload;

pub use file::{FileSinkConfig, Fsync};
pub use nats::NatsConfig;
pub use upload::UploadConfig;

/// Where events go (`--decision-log`): `-` is stdout, anything else a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(std::path::PathBuf),
}

impl LogTarget {
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            LogTarget::Stdout
        } else {
            LogTarget::File(std::path::PathBuf::from(s))
        }
    }
}

/// How decision logs are written.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLogConfig {
    pub file: Option<FileSinkConfig>,
    pub stdout: bool,
    pub upload: Option<UploadConfig>,
    /// Ship the file's events to NATS JetStream (needs `file`: it is the spool).
    pub nats: Option<NatsConfig>,
    /// Events that may wait for the writer.
    pub queue: usize,
    /// Request headers erased from every event (lower case).
    pub mask_headers: Vec<String>,
    /// OPA's `decision_logs.mask_decision` (default `system/log/mask`).
    pub mask_decision: DataRef,
    /// OPA's `decision_logs.drop_decision` (default `system/log/drop`).
    pub drop_decision: DataRef,
    /// Deny requests whose event cannot be queued.
    pub audit_required: bool,
}

impl DecisionLogConfig {
    /// Defaults for one target (`-` or a file).
    pub fn to(target: LogTarget) -> Self {
        let (file, stdout) = match target {
            LogTarget::Stdout => (None, true),
            LogTarget::File(p) => (Some(FileSinkConfig::new(p)), false),
        };
        Self {
            file,
            stdout,
            upload: None,
            nats: None,
            queue: 10_000,
            mask_headers: mask::DEFAULT_MASKED_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            mask_decision: default_ref("system/log/mask"),
            drop_decision: default_ref("system/log/drop"),
            audit_required: false,
        }
    }

    /// Defaults with no sink (add `file`, `stdout` or `upload`).
    pub fn none() -> Self {
        Self {
            file: None,
            stdout: false,
            ..Self::to(LogTarget::Stdout)
        }
    }
}

fn default_ref(s: &str) -> DataRef {
    // Constant, valid paths.
    DataRef::parse(s).unwrap_or_else(|_| unreachable_ref())
}

#[expect(
    clippy::panic,
    reason = "only reachable if a constant path stopped parsing"
)]
fn unreachable_ref() -> DataRef {
    panic!("constant decision-log policy paths parse")
}

/// Told whether an event reached its sinks (`--audit required`: the answer waits for it).
pub type Written = tokio::sync::oneshot::Receiver<bool>;

/// How long a check waits for its event to be written under `--audit required` before it is
/// denied (`audit_unavailable`). The event may still be written after that: an auditor then
/// sees a decision the caller was denied, never the other way round.
pub const AUDIT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// An event waiting for the writer, with whom to tell when it is written.
struct Queued {
    record: Box<DecisionRecord>,
    written: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// The sending half, held by the servers.
#[derive(Debug)]
pub struct DecisionLog {
    /// `None` on the queue tells the writer to finish: write what is queued and stop.
    tx: Sender<Option<Queued>>,
    closed: std::sync::atomic::AtomicBool,
    /// Taken once, by [`DecisionLog::close`]; never touched on the decision path.
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    audit_required: bool,
    /// The file sink takes events (false while writes fail, until they succeed again).
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

struct Sinks {
    file: Option<file::FileSink>,
    stdout: Option<std::io::Stdout>,
    upload: Option<upload::Uploader>,
    shipper: Option<nats::Shipper>,
}

impl DecisionLog {
    /// Open the sinks and start the writer.
    pub fn start(
        config: &DecisionLogConfig,
        labels: InstanceLabels,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let mut prev = chain::GENESIS.to_string();
        let file = match &config.file {
            Some(c) => {
                let (sink, tail) = file::FileSink::open(c.clone())?;
                if let Some(h) = tail {
                    prev = h;
                }
                Some(sink)
            }
            None => None,
        };
        let upload = match &config.upload {
            Some(c) => Some(
                upload::Uploader::start(c.clone(), metrics.clone())
                    .map_err(std::io::Error::other)?,
            ),
            None => None,
        };
        let shipper = match (&config.nats, &config.file) {
            (Some(n), Some(f)) => {
                metrics.shipping_enabled();
                Some(
                    nats::Shipper::start(n.clone(), f.path.clone(), metrics.clone())
                        .map_err(std::io::Error::other)?,
                )
            }
            (Some(_), None) => {
                return Err(std::io::Error::other(
                    "shipping to NATS needs a decision-log file (it is the spool)",
                ));
            }
            _ => None,
        };
        let sinks = Sinks {
            file,
            stdout: config.stdout.then(std::io::stdout),
            upload,
            shipper,
        };
        let (tx, rx) = bounded(config.queue.max(1));
        let m = metrics.clone();
        let c = config.clone();
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = healthy.clone();
        let writer = std::thread::Builder::new()
            .name("arbiter-decision-log".into())
            .spawn(move || {
                let mut w = Writer {
                    sinks,
                    labels,
                    metrics: m,
                    config: c,
                    prev,
                    policy_flags: HashMap::new(),
                    healthy: h,
                    acks: Vec::new(),
                    line: Vec::new(),
                };
                w.run(&rx);
            })?;
        Ok(Self {
            tx,
            closed: std::sync::atomic::AtomicBool::new(false),
            writer: std::sync::Mutex::new(Some(writer)),
            metrics,
            audit_required: config.audit_required,
            healthy,
        })
    }

    /// Whether the sinks take events (for `/health` and gRPC health).
    pub fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a request is answered only once its event is written (denied when it cannot be).
    pub fn audit_required(&self) -> bool {
        self.audit_required
    }

    /// Queue an event without waiting. Returns false when it was dropped. With auditing
    /// required, an event is refused while the file refuses writes: the caller denies
    /// (`audit_unavailable`) instead of allowing what cannot be recorded.
    pub fn submit(&self, record: Box<DecisionRecord>) -> bool {
        self.admits() && self.queue(record, None)
    }

    /// Queue an event without waiting, to be told when it is in its sinks (`--audit
    /// required`). `None` when it was refused, as [`DecisionLog::submit`] refuses.
    pub fn submit_acked(&self, record: Box<DecisionRecord>) -> Option<Written> {
        if !self.admits() {
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(record, Some(tx)).then_some(rx)
    }

    /// With auditing required, no event is taken while the file refuses writes (counted).
    fn admits(&self) -> bool {
        if self.audit_required && !self.healthy() {
            self.metrics.log_dropped(DropReason::SinkError);
            return false;
        }
        true
    }

    fn queue(
        &self,
        record: Box<DecisionRecord>,
        written: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> bool {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            self.metrics.log_dropped(DropReason::QueueFull);
            return false;
        }
        match self.tx.try_send(Some(Queued { record, written })) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics.log_dropped(DropReason::QueueFull);
                false
            }
        }
    }

    /// Queue an event, waiting for room: for the shadow stage, which holds events off the
    /// decision path until their shadow decision is made. False when the log is closed.
    pub fn submit_waiting(&self, record: Box<DecisionRecord>) -> bool {
        if self.closed.load(std::sync::atomic::Ordering::Acquire)
            || self
                .tx
                .send(Some(Queued {
                    record,
                    written: None,
                }))
                .is_err()
        {
            self.metrics.log_dropped(DropReason::QueueFull);
            return false;
        }
        true
    }

    /// Stop accepting events, write every queued one, deliver the upload buffer, and wait.
    /// Blocks; safe to call more than once and from any holder of a shared reference, so a
    /// server's shutdown does not depend on who else still holds its state.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let writer = match self.writer.lock() {
            Ok(mut w) => w.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(w) = writer {
            // The writer drains the queue, so this waits at most for the queued events.
            let _ = self.tx.send(None);
            let _ = w.join();
        }
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    sinks: Sinks,
    labels: InstanceLabels,
    metrics: Arc<Metrics>,
    config: DecisionLogConfig,
    /// Hash of the last sealed event.
    prev: String,
    /// Per policy revision: (defines the mask policy, defines the drop policy).
    policy_flags: HashMap<String, (bool, bool)>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    /// Checks waiting for this batch's events, with whether each event went to its sinks.
    acks: Vec<(tokio::sync::oneshot::Sender<bool>, bool)>,
    /// The last line's buffer, sealed into again by the next event (one allocation, not one
    /// per event).
    line: Vec<u8>,
}

/// While checks wait for their events, the most events and the longest time one batch holds
/// before it is written and they are told.
const ACKED_BATCH_EVENTS: usize = 256;
const ACKED_BATCH_TIME: std::time::Duration = std::time::Duration::from_millis(2);

/// The largest line buffer the writer keeps for the next event.
const LINE_BUFFER_KEPT: usize = 64 * 1024;

/// How often a writer whose file refuses events tries again.
const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

impl Writer {
    /// Follow the file sink's state and say so once on stderr when it changes. Nothing is
    /// dropped here (the events wait); what is given up is counted where it is.
    fn file_state(&mut self, error: Option<std::io::Error>) {
        use std::sync::atomic::Ordering;
        let was = self.healthy.load(Ordering::Acquire);
        match error {
            None if !was => {
                self.healthy.store(true, Ordering::Release);
                tracing::info!(
                    event = "decision_log_sink",
                    sink = "file",
                    healthy = true,
                    "decision log: the file takes events again; the chain goes on"
                );
            }
            Some(e) if was => {
                self.healthy.store(false, Ordering::Release);
                tracing::error!(
                    event = "decision_log_sink",
                    sink = "file",
                    healthy = false,
                    error = %e,
                    "decision log: {e}; events wait until the file takes them{}",
                    if self.config.audit_required {
                        " (audit required: checks are denied, audit_unavailable)"
                    } else {
                        ""
                    }
                );
            }
            _ => {}
        }
    }

    fn run(&mut self, rx: &Receiver<Option<Queued>>) {
        loop {
            // While a sync is pending, or events wait for a file that refused them, wake up for
            // it even if no event comes.
            let retry = !self.healthy.load(std::sync::atomic::Ordering::Acquire);
            let first: Option<Option<Queued>> = if retry
                || self
                    .sinks
                    .file
                    .as_ref()
                    .is_some_and(file::FileSink::sync_pending)
            {
                let wait = if retry {
                    RETRY_INTERVAL
                } else {
                    file::BATCH_SYNC_INTERVAL
                };
                match rx.recv_timeout(wait) {
                    Ok(r) => Some(r),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            // Write what is queued, then flush (and sync when due) once. While checks wait for
            // their events (`--audit required`), a batch ends after `ACKED_BATCH_TIME` or
            // `ACKED_BATCH_EVENTS`, so a long queue does not make the first check wait for the
            // last event's write.
            let mut next = first;
            let mut stop = false;
            let mut batch_start = std::time::Instant::now();
            let mut in_batch = 0usize;
            while let Some(msg) = next.take() {
                match msg {
                    Some(Queued { record, written }) => {
                        let went = self.one(&record);
                        if let Some(tx) = written {
                            self.acks.push((tx, went));
                        }
                        in_batch += 1;
                    }
                    None => stop = true,
                }
                if !self.acks.is_empty()
                    && (in_batch >= ACKED_BATCH_EVENTS || batch_start.elapsed() >= ACKED_BATCH_TIME)
                {
                    self.end_batch();
                    batch_start = std::time::Instant::now();
                    in_batch = 0;
                }
                next = rx.try_recv().ok();
            }
            self.end_batch();
            if stop {
                break;
            }
        }
        if let Some(f) = self.sinks.file.as_mut()
            && let Err(e) = f.sync()
        {
            self.file_state(Some(e));
        }
        self.end_batch();
        if let Some(u) = self.sinks.upload.as_mut() {
            u.shutdown();
        }
        // The file has every event now: the shipper ships what it holds, up to its grace.
        if let Some(s) = self.sinks.shipper.as_mut() {
            s.shutdown(std::time::Duration::from_secs(10));
        }
    }

    fn end_batch(&mut self) {
        let outcome = self.sinks.file.as_mut().map(file::FileSink::end_batch);
        let file_took = !matches!(outcome, Some(Err(_)));
        match outcome {
            Some(Ok(())) => self.file_state(None),
            Some(Err(e)) => self.file_state(Some(e)),
            None => {}
        }
        if let Some(s) = self.sinks.stdout.as_mut() {
            let _ = s.flush();
        }
        // The batch is written (and synced, when due): tell the checks waiting for it. An event
        // the file refused waits in the sink, but its check is not told yes.
        for (tx, went) in self.acks.drain(..) {
            let _ = tx.send(went && file_took);
        }
    }

    /// On the console, OPA writes each event as a log line: the event's fields plus `level`,
    /// `msg: "Decision Log"`, `time` and `type`. With stdout on, every sink gets the same line
    /// (one hash chain), so these fields are in the event wherever it goes.
    fn console_envelope(&self, event: &mut serde_json::Map<String, Json>, record: &DecisionRecord) {
        if self.sinks.stdout.is_none() {
            return;
        }
        for (k, v) in arbiter_engine::record::console_envelope(record.timestamp_ns) {
            event.insert(k.into(), Json::from(v));
        }
    }

    /// Seal and write one event; false when it reached no sink (not encodable, refused).
    /// An event the drop policy drops went where it should: true.
    fn one(&mut self, record: &DecisionRecord) -> bool {
        let (has_mask, has_drop) = match &record.policies {
            // Looked up by reference: a new revision's key is copied once, not every event's.
            Some(p) => match self.policy_flags.get(p.revision()) {
                Some(flags) => *flags,
                None => {
                    let flags = (
                        p.defines(&self.config.mask_decision),
                        p.defines(&self.config.drop_decision),
                    );
                    self.policy_flags.insert(p.revision().to_string(), flags);
                    flags
                }
            },
            None => (false, false),
        };
        let (line, hash) = match (&record.policies, has_mask || has_drop) {
            (Some(p), true) => {
                // OPA's mask and drop policies see the whole event as JSON.
                let Json::Object(mut event) = record.to_event(&self.labels) else {
                    self.metrics.log_dropped(DropReason::Encode);
                    return false;
                };
                if has_drop && policy_says_drop(p, &self.config.drop_decision, &event) {
                    self.metrics.log_dropped(DropReason::Policy);
                    return true;
                }
                let mut ops = mask::header_ops(&event, &self.config.mask_headers);
                if has_mask {
                    match mask_ops(p, &self.config.mask_decision, &event) {
                        Ok(more) => ops.extend(more),
                        Err(why) => {
                            // Fail closed: when the mask policy breaks, nothing it might have
                            // hidden is written.
                            ops.push(mask::MaskOp::Remove("/input".into()));
                            ops.push(mask::MaskOp::Remove("/result".into()));
                            event.insert("mask_error".into(), Json::String(why));
                        }
                    }
                }
                mask::apply(&mut event, &ops);
                self.console_envelope(&mut event, record);
                chain::seal(event, &self.prev)
            }
            _ => {
                // The common case: the event is written straight to bytes from the record
                // (no JSON tree), the input from the Rego value with the credential headers
                // taken out of a copy-on-write view of it.
                record.seal_into(
                    std::mem::take(&mut self.line),
                    &self.labels,
                    &self.config.mask_headers,
                    self.sinks.stdout.is_some(),
                    &self.prev,
                )
            }
        };
        self.prev = hash;
        let mut written = false;
        let outcome = self.sinks.file.as_mut().map(|f| f.write(&line));
        match outcome {
            Some(Ok(())) => written = true,
            // The event stays waiting for the file (see `file`); the state says why.
            Some(Err(e)) => self.file_state(Some(e)),
            None => {}
        }
        if let Some(f) = self.sinks.file.as_mut()
            && f.pending_bytes() > file::MAX_PENDING_BYTES
        {
            // The file has refused events for too long: give the oldest up, counted.
            for _ in 0..f.drop_pending() {
                self.metrics.log_dropped(DropReason::SinkError);
            }
        }
        if let Some(s) = self.sinks.stdout.as_mut() {
            if s.write_all(&line).is_ok() {
                written = true;
            } else {
                self.metrics.log_sink_error();
            }
        }
        if let Some(u) = self.sinks.upload.as_ref()
            && u.push(&line)
        {
            written = true;
        }
        if written {
            self.metrics.log_written();
        }
        // A buffer grown by an unusually large event is not kept.
        if line.capacity() <= LINE_BUFFER_KEPT {
            self.line = line;
        }
        written
    }
}

fn policy_says_drop(p: &PolicySet, reference: &DataRef, event: &Map<String, Json>) -> bool {
    matches!(
        p.evaluate(reference, from_json(&Json::Object(event.clone()))),
        Ok(arbiter_engine::regorus::Value::Bool(true))
    )
}

fn mask_ops(
    p: &PolicySet,
    reference: &DataRef,
    event: &Map<String, Json>,
) -> Result<Vec<mask::MaskOp>, String> {
    let v = p
        .evaluate(reference, from_json(&Json::Object(event.clone())))
        .map_err(|e| format!("mask policy failed: {e}"))?;
    mask::parse_ops(&to_json(&v)).map_err(|e| format!("mask policy result: {e}"))
}
