//! Decision logs as JSON lines, written off the decision path.
//!
//! A decision hands its [`DecisionRecord`] to a bounded queue without waiting; a writer thread
//! encodes events and writes them. When the queue is full the event is dropped and counted
//! (`arbiter_decision_logs_dropped_total{reason="queue_full"}`): logging never blocks or slows a
//! decision. Shutdown drains the queue.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use arbiter_engine::record::{DecisionRecord, InstanceLabels};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::metrics::{DropReason, Metrics};

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

impl LogTarget {
    /// `-` is stdout; anything else a file path.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            LogTarget::Stdout
        } else {
            LogTarget::File(PathBuf::from(s))
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecisionLogConfig {
    pub target: LogTarget,
    /// Events that may wait for the writer.
    pub queue: usize,
}

/// The sending half, held by the servers.
#[derive(Debug)]
pub struct DecisionLog {
    tx: Option<Sender<Box<DecisionRecord>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl DecisionLog {
    /// Open the target and start the writer.
    pub fn start(
        config: &DecisionLogConfig,
        labels: InstanceLabels,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match &config.target {
            LogTarget::Stdout => Box::new(std::io::stdout()),
            LogTarget::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = bounded(config.queue.max(1));
        let m = metrics.clone();
        let writer = std::thread::Builder::new()
            .name("arbiter-decision-log".into())
            .spawn(move || write_loop(rx, out, &labels, &m))?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            metrics,
        })
    }

    /// Queue an event without waiting. Returns false when it was dropped.
    pub fn submit(&self, record: Box<DecisionRecord>) -> bool {
        match self.tx.as_ref().map(|t| t.try_send(record)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.metrics.log_dropped(DropReason::QueueFull);
                false
            }
        }
    }

    /// Stop accepting events, write every queued one, and wait for the writer.
    pub fn shutdown(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn write_loop(
    rx: Receiver<Box<DecisionRecord>>,
    mut out: Box<dyn Write + Send>,
    labels: &InstanceLabels,
    metrics: &Metrics,
) {
    let mut line = Vec::with_capacity(4096);
    while let Ok(first) = rx.recv() {
        // Write what is queued in one go, then flush once.
        let mut next = Some(first);
        while let Some(record) = next.take() {
            line.clear();
            match serde_json::to_writer(&mut line, &record.to_event(labels)) {
                Ok(()) => {
                    line.push(b'\n');
                    if out.write_all(&line).is_ok() {
                        metrics.log_written();
                    } else {
                        metrics.log_dropped(DropReason::SinkError);
                    }
                }
                Err(_) => metrics.log_dropped(DropReason::Encode),
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}
