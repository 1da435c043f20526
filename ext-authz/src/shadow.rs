//! Shadow evaluation (`serve --shadow DIR`): a second policy set decides every Envoy check
//! beside the live one and is never enforced.
//!
//! The live decision is made and answered first; the check's request then goes to a bounded
//! queue and one side thread, at the lowest scheduling priority, decides it under the shadow
//! set with the clock frozen at the time the check arrived (as `arbiter replay` decides
//! recorded events), so the two sets see the same request at the same time. A disagreement
//! is counted
//! (`arbiter_shadow_disagreements_total{direction}`) and written into the check's decision
//! event (`shadow: {allowed, reason, policy, rule, revision}`): the event waits in the same
//! queue and goes on to the decision log after the shadow has decided. When the queue is full
//! (the shadow set is slower than the traffic) the check is not shadowed — its event goes
//! straight to the log, and the drop is counted (`arbiter_shadow_dropped_total`): the live path
//! never waits for the shadow.
//!
//! With `--audit required` the live answer waits until its event is written, so the event is
//! never handed to the shadow: the shadow still decides and counts disagreements
//! (`arbiter_shadow_disagreements_total`), and the event is written without the shadow's
//! verdict.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::record::{DecisionRecord, ShadowVerdict};
use arbiter_engine::request::AuthzRequest;
use arc_swap::ArcSwap;
use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::metrics::Metrics;
use crate::state::State;

/// Checks that may wait for the shadow thread.
pub const QUEUE: usize = 1024;

/// One check to shadow.
pub(crate) struct Job {
    pub request: Arc<AuthzRequest>,
    /// What the live set decided (the real decision, also under dry-run).
    pub live_allowed: bool,
    /// When the check arrived, ns since the epoch.
    pub timestamp_ns: i128,
    /// The check's decision event, when a log is kept.
    pub record: Option<Box<DecisionRecord>>,
}

/// The shadow set and its thread.
pub struct Shadow {
    authorizer: Arc<ArcSwap<Authorizer>>,
    tx: Sender<Option<Job>>,
    closed: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("revision", &self.authorizer.load().policies().revision())
            .finish_non_exhaustive()
    }
}

impl Shadow {
    /// Start the side thread. It reaches the decision log through `state`.
    pub(crate) fn start(
        authorizer: Authorizer,
        state: Weak<State>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let authorizer = Arc::new(ArcSwap::from_pointee(authorizer));
        let (tx, rx) = bounded::<Option<Job>>(QUEUE);
        let set = authorizer.clone();
        metrics.shadow_enabled();
        let thread = std::thread::Builder::new()
            .name("arbiter-shadow".into())
            .spawn(move || {
                lowest_priority();
                while let Ok(Some(job)) = rx.recv() {
                    decide(&set, &metrics, &state, job);
                }
            })?;
        Ok(Shadow {
            authorizer,
            tx,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Serve `next` as the shadow set from now on (a reload).
    pub fn replace(&self, next: Authorizer) {
        self.authorizer.store(Arc::new(next));
    }

    /// The shadow set's revision.
    pub fn revision(&self) -> String {
        self.authorizer.load().policies().revision().to_string()
    }

    /// Whether checks are taken.
    pub(crate) fn open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Hand a check over without waiting; the job back when the queue is full or closed.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        if !self.open() {
            return Err(job);
        }
        match self.tx.try_send(Some(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Some(j)) | TrySendError::Disconnected(Some(j))) => Err(j),
            Err(_) => Ok(()),
        }
    }

    /// Stop taking checks, decide the queued ones (their events go on to the log), and wait.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let thread = match self.thread.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(t) = thread {
            let _ = self.tx.send(None);
            let _ = t.join();
        }
    }
}

impl Drop for Shadow {
    fn drop(&mut self) {
        self.close();
    }
}

/// Run this thread at the lowest priority (nice 19): the shadow takes the CPU the live checks
/// leave, and when they leave none its queue fills and checks go unshadowed (counted) instead
/// of the live path slowing down. Linux sets a thread's own nice value this way; elsewhere, and
/// if refused, the thread keeps its priority.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    {
        let me = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(me), 19) {
            tracing::warn!(event = "shadow_priority", error = %e, "the shadow thread keeps its priority: {e}");
        }
    }
}

fn decide(set: &ArcSwap<Authorizer>, metrics: &Metrics, state: &Weak<State>, mut job: Job) {
    let authorizer = set.load_full();
    let decision = {
        let _at = arbiter_engine::clock::freeze(i64::try_from(job.timestamp_ns).unwrap_or(0));
        authorizer.check(&job.request).decision
    };
    metrics.shadow_evaluated(job.live_allowed, decision.allowed);
    if decision.allowed != job.live_allowed
        && let Some(r) = job.record.as_mut()
    {
        r.shadow = Some(ShadowVerdict::of(
            &decision,
            authorizer.policies().revision(),
        ));
    }
    if let Some(r) = job.record
        && let Some(state) = state.upgrade()
        && let Some(log) = &state.decision_log
    {
        log.submit_waiting(r);
    }
}
