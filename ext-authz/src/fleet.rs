//! The fleet dashboard's reader: every instance's decision events from the JetStream stream
//! they are shipped to (`serve --decision-log-nats`), into the dashboard's
//! [`FleetIndex`](arbiter_engine::audit::fleet::FleetIndex), live.
//!
//! - **With a state file** (`--state FILE`): a durable pull consumer (acknowledge-all) whose
//!   acknowledged position is the index last saved. Every few seconds the index is written to
//!   the state file (a new file, synced, renamed over the old one) and only then is the last
//!   message read acknowledged. A restart loads the state and goes on from the consumer. The
//!   consumer may have delivered messages after the saved position that the stopped process
//!   never saved; JetStream would send those again only after their acknowledgement wait, out
//!   of order, so the consumer is then re-created at the saved position (same name) and the
//!   messages come again, in order. Nothing is counted twice (the index skips sequences it
//!   has read) or missed.
//! - **Without one**: an ordered consumer from the stream's first message, in memory; a
//!   restart reads the stream again.
//!
//! A lost connection or a failed read is retried every second; the page keeps showing what
//! was read.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter_engine::audit::fleet::FleetIndex;
use async_nats::jetstream::{self, consumer};
use tokio_stream::{Stream, StreamExt};

use crate::dashboard::Dashboard;
use crate::decision_log::NatsConfig;

/// How the dashboard reads the stream.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The servers and credentials (`url`, `creds`, `ca`, `timeout`).
    pub nats: NatsConfig,
    pub stream: String,
    /// A durable consumer and where the index is saved; `None`: read from the stream's first
    /// message at every start.
    pub durable: Option<Durable>,
    /// Messages indexed together (parsed and hashed on all cores).
    pub batch: usize,
}

/// The durable consumer and the state saved for it.
#[derive(Debug, Clone)]
pub struct Durable {
    pub name: String,
    pub state: PathBuf,
    /// How often the index is saved (and the consumer acknowledged).
    pub every: Duration,
}

/// The index saved at `path`, or a new one when there is none; a state that cannot be read is
/// an error, never silently replaced.
pub fn load_state(path: &Path, window: usize) -> Result<FleetIndex, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            FleetIndex::load(&bytes, window).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FleetIndex::new(window)),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Write `bytes` to `path` whole or not at all: a new file beside it, synced, renamed over it,
/// the folder synced.
pub fn save_state(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    // A name of its own for each write: the indexer and the last save at a stop may overlap
    // (either state is whole; the consumer is re-pointed at whichever is loaded).
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = PathBuf::from(format!("{}.tmp.{}.{n}", path.display(), std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Save the dashboard's index to the durable state file.
fn save(d: &Dashboard, dur: &Durable) -> Result<(), String> {
    match d.with_fleet(FleetIndex::save) {
        Some(bytes) => save_state(&dur.state, &bytes).map_err(|e| {
            format!(
                "saving the dashboard's state to {}: {e}",
                dur.state.display()
            )
        }),
        None => Ok(()),
    }
}

type Messages = Pin<Box<dyn Stream<Item = Result<jetstream::Message, String>> + Send>>;

/// Read the stream into `d` until `stop` resolves; then save the index a last time.
pub async fn run(d: Arc<Dashboard>, r: Reader, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            res = read(&d, &r) => {
                if let Err(e) = res {
                    tracing::warn!(stream = %r.stream, error = %e, "reading stream `{}`: {e}; retrying in 1 s", r.stream);
                }
            }
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    // What was read since the last save is read again after a restart: nothing is lost by
    // stopping between saves, but save now so that little is.
    if let Some(dur) = &r.durable
        && let Err(e) = save(&d, dur)
    {
        tracing::warn!(state = %dur.state.display(), error = %e, "{e}");
    }
}

/// Connect, open the consumer, and index what comes until an error.
async fn read(d: &Arc<Dashboard>, r: &Reader) -> Result<(), String> {
    let js = crate::decision_log::nats::connect_only(&r.nats).await?;
    let mut stream = js
        .get_stream(&r.stream)
        .await
        .map_err(|e| format!("NATS stream `{}`: {e}", r.stream))?;
    d.set_stream(stream.clone());
    let info = stream
        .info()
        .await
        .map_err(|e| format!("NATS stream `{}`: {e}", r.stream))?
        .clone();
    let state = &info.state;
    let read = d.with_fleet(FleetIndex::last_sequence).unwrap_or(0);
    // A stream deleted and created again numbers its messages from 1 again: an index of the
    // old one would skip them. Told apart by the stream's creation time.
    let id = info.created.unix_timestamp_nanos().to_string();
    if d.fleet_stream(&id, state.last_sequence) {
        tracing::warn!(
            stream = %r.stream,
            "stream `{}` is not the one the index read (created again; the index had read to message {read}): starting a new index",
            r.stream
        );
    } else if state.first_sequence > read + 1 && state.messages > 0 {
        tracing::warn!(
            stream = %r.stream,
            "stream `{}` starts at message {}: messages {}..{} left the stream (its limits) before the dashboard read them; they are not counted",
            r.stream,
            state.first_sequence,
            read + 1,
            state.first_sequence - 1
        );
    }
    let from = d.with_fleet(FleetIndex::last_sequence).unwrap_or(0) + 1;
    tracing::info!(stream = %r.stream, from, "reading stream `{}` from message {from}", r.stream);
    let mut messages: Messages = match &r.durable {
        Some(dur) => {
            let c = durable_consumer(&stream, &dur.name, from).await?;
            Box::pin(
                c.stream()
                    .max_messages_per_batch(r.batch.max(1))
                    .messages()
                    .await
                    .map_err(|e| format!("consumer `{}`: {e}", dur.name))?
                    .map(|m| m.map_err(|e| e.to_string())),
            )
        }
        None => {
            let c = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: deliver_from(from),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("NATS stream `{}`: cannot read it: {e}", r.stream))?;
            Box::pin(
                c.messages()
                    .await
                    .map_err(|e| format!("NATS stream `{}`: cannot read it: {e}", r.stream))?
                    .map(|m| m.map_err(|e| e.to_string())),
            )
        }
    };
    // Receiving and indexing overlap: batches go to a thread of their own, which also saves
    // the index and then acknowledges what it holds.
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(4);
    let ingester = {
        let d = d.clone();
        let durable = r.durable.clone();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("arbiter-fleet-index".into())
            .spawn(move || index_batches(&d, durable.as_ref(), &handle, rx))
            .map_err(|e| e.to_string())?
    };
    let failed = |ingester: std::thread::JoinHandle<Result<(), String>>| async move {
        match tokio::task::spawn_blocking(move || ingester.join()).await {
            Ok(Ok(Err(e))) => e,
            _ => "the indexing thread stopped".to_string(),
        }
    };
    // Without a message for this long, an empty batch tells the indexer to save if due.
    let tick = r.durable.as_ref().map_or(Duration::from_secs(1), |d| {
        d.every.min(Duration::from_secs(1))
    });
    loop {
        // Wait for a message, then take what else has arrived, up to a batch.
        let mut batch = Vec::new();
        let mut last = None;
        if let Ok(next) = tokio::time::timeout(tick, messages.next()).await {
            let m = next.ok_or("the consumer stopped")??;
            push(&mut batch, &mut last, m)?;
            while batch.len() < r.batch {
                match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                    Ok(Some(m)) => push(&mut batch, &mut last, m?)?,
                    Ok(None) => return Err("the consumer stopped".into()),
                    Err(_) => break,
                }
            }
        }
        if tx.send((batch, last)).await.is_err() {
            return Err(failed(ingester).await);
        }
    }
}

/// Messages `(sequence, payload)` and the last of them, to acknowledge once saved.
type Batch = (Vec<(u64, Vec<u8>)>, Option<jetstream::Message>);

/// Index batches as they come; with a durable consumer, every `every` save the index and
/// then acknowledge the last message it holds (and with it every one before).
fn index_batches(
    d: &Dashboard,
    durable: Option<&Durable>,
    handle: &tokio::runtime::Handle,
    mut rx: tokio::sync::mpsc::Receiver<Batch>,
) -> Result<(), String> {
    let mut saved_at = Instant::now();
    let mut unsaved: Option<jetstream::Message> = None;
    while let Some((batch, last)) = rx.blocking_recv() {
        d.ingest(batch);
        if last.is_some() {
            unsaved = last;
        }
        if let Some(dur) = durable
            && saved_at.elapsed() >= dur.every
            && let Some(m) = unsaved.take()
        {
            save(d, dur)?;
            handle
                .block_on(m.ack())
                .map_err(|e| format!("acknowledging to consumer `{}`: {e}", dur.name))?;
            saved_at = Instant::now();
        }
    }
    Ok(())
}

fn push(
    batch: &mut Vec<(u64, Vec<u8>)>,
    last: &mut Option<jetstream::Message>,
    m: jetstream::Message,
) -> Result<(), String> {
    let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
    batch.push((seq, m.payload.to_vec()));
    *last = Some(m);
    Ok(())
}

fn deliver_from(from: u64) -> consumer::DeliverPolicy {
    if from <= 1 {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: from,
        }
    }
}

/// The durable consumer `name`, delivering from stream sequence `from`: the existing one when
/// it has delivered nothing after `from - 1` (a clean stop: it resumes where it is), else
/// created again at `from` (see the module's documentation).
async fn durable_consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
    from: u64,
) -> Result<consumer::PullConsumer, String> {
    let err = |e: &dyn std::fmt::Display| format!("consumer `{name}`: {e}");
    if let Ok(info) = stream.consumer_info(name).await {
        let usable = info.config.ack_policy == consumer::AckPolicy::All
            && info.config.filter_subject.is_empty()
            && info.delivered.stream_sequence < from;
        if usable {
            return stream.get_consumer(name).await.map_err(|e| err(&e));
        }
        tracing::info!(
            consumer = name,
            delivered = info.delivered.stream_sequence,
            saved = from - 1,
            "consumer `{name}` delivered up to message {} but the index was saved at {}: re-created at the saved position",
            info.delivered.stream_sequence,
            from - 1
        );
        stream.delete_consumer(name).await.map_err(|e| err(&e))?;
    }
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_string()),
            description: Some(
                "arbiter audit serve: the fleet dashboard (acknowledged = saved in its state file)"
                    .into(),
            ),
            deliver_policy: deliver_from(from),
            ack_policy: consumer::AckPolicy::All,
            ack_wait: Duration::from_secs(120),
            max_ack_pending: -1,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&e))
}
