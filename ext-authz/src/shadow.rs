//! Shadow evaluation (`serve --shadow DIR`): a second policy set decides every Envoy check
//! beside the live one and is never enforced.
//!
//! The live decision is made and answered first; the check's request then goes to a bounded
//! queue, and the shadow set decides it later with the clock frozen at the time the check
//! arrived (as `arbiter replay` decides recorded events), so the two sets see the same request
//! at the same time. A disagreement is counted
//! (`arbiter_shadow_disagreements_total{direction}`) and written into the check's decision
//! event (`shadow: {allowed, reason, policy, rule, revision}`): the event waits in the same
//! queue and goes on to the decision log after the shadow has decided. When the queue is full
//! (the shadow set is slower than the traffic, or the server has no time to spare) the check is
//! not shadowed — its event goes straight to the log, and the drop is counted
//! (`arbiter_shadow_dropped_total`): the live path never waits for the shadow.
//!
//! Where the shadow decides ([`Runner`]):
//! - **In the I/O thread's idle time** (`serve` with one I/O thread, the default on one CPU: a
//!   sidecar's limit). Each time the runtime has no task left to run and is about to wait for
//!   I/O, it decides one queued check ([`IdleSlot::on_park`], the runtime's `on_thread_park`),
//!   then looks for I/O without blocking before the next: live checks always run first, one
//!   that arrives meanwhile waits at most one shadow evaluation, and no second thread takes
//!   the core from them. A side thread at the lowest priority on the same core cost the live
//!   p99 1.0–1.4× (`benches/RESULTS.md`, "`serve --shadow`"): what the live checks paid was the
//!   switch back from it. Shadow evaluations that take more than [`IDLE_BUDGET`] of CPU
//!   time three times in a row move the shadow to a side thread from then on (logged), so a
//!   slow candidate set does not stall the I/O thread. A server so loaded that its runtime
//!   never runs out of tasks has no idle time: its queue fills and further checks go
//!   unshadowed (counted), and the queued checks' events wait for the load to drop (or for
//!   shutdown, which decides and writes them) — written late, not lost.
//! - **On a side thread at the lowest scheduling priority** (several I/O threads, or a
//!   runtime arbiter did not build: an embedding program's, the tests').
//!
//! With `--audit required` the live answer waits until its event is written, so the event is
//! never handed to the shadow: the shadow still decides and counts disagreements
//! (`arbiter_shadow_disagreements_total`), and the event is written without the shadow's
//! verdict.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::record::{DecisionRecord, ShadowVerdict};
use arbiter_engine::request::AuthzRequest;
use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::metrics::Metrics;
use crate::state::State;

/// Checks that may wait for the shadow.
pub const QUEUE: usize = 1024;

/// Decided checks' events held before they go on to the log together.
const BATCH: usize = 64;

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

/// Shadow evaluations in the I/O thread's idle time that take more CPU time than this,
/// [`SLOW_IN_A_ROW`] times in a row, move the shadow to its side thread: a live check that
/// arrives during one waits for it. CPU time, not wall time, so that the thread being
/// descheduled during one evaluation does not count.
pub const IDLE_BUDGET: Duration = Duration::from_millis(2);

/// See [`IDLE_BUDGET`].
const SLOW_IN_A_ROW: u32 = 3;

/// Where the shadow set decides (see the module's documentation).
#[derive(Clone, Debug, Default)]
pub enum Runner {
    /// A side thread at the lowest scheduling priority.
    #[default]
    Thread,
    /// The idle time of the runtime whose `on_thread_park` calls this slot's
    /// [`IdleSlot::on_park`]. Only for a current-thread runtime, where the hook runs with
    /// nothing else to do.
    Idle(IdleSlot),
}

/// Where a current-thread runtime finds the shadow's queued checks when it is about to wait
/// for I/O. Made before the runtime (its `on_thread_park` calls [`IdleSlot::on_park`]) and
/// handed to [`crate::state::State::start_shadow_with`] once the shadow set is built.
#[derive(Clone, Default)]
pub struct IdleSlot(Arc<OnceLock<Arc<Side>>>);

impl std::fmt::Debug for IdleSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleSlot")
            .field("filled", &self.0.get().is_some())
            .finish()
    }
}

impl IdleSlot {
    /// Decide one queued check, if any; with more queued, have the runtime look for I/O
    /// without blocking and come back (a task for it to run instead of waiting). Cheap when
    /// nothing is queued: the runtime calls it every time it is about to wait.
    pub fn on_park(&self) {
        if let Some(side) = self.0.get() {
            side.idle();
        }
    }
}

/// What decides a queued check, wherever it runs.
struct Side {
    /// The shadow set (replaced by [`Shadow::replace`]).
    set: ArcSwap<Authorizer>,
    rx: Receiver<Option<Job>>,
    metrics: Arc<Metrics>,
    state: Weak<State>,
    /// Held while a check is decided in idle time, and by [`Shadow::close`] while it decides
    /// what is left: an event is never on its way to the log when the log closes.
    turn: Mutex<()>,
    /// Set once the shadow has moved to its side thread: the idle hook does nothing.
    moved: AtomicBool,
    /// Evaluations in idle time over [`IDLE_BUDGET`] in a row.
    slow: AtomicU32,
    /// Decided checks' events, sent to the log together (at most [`BATCH`], or when the queue
    /// is empty): one wake-up of the log's writer for many events, not one each.
    #[expect(
        clippy::vec_box,
        reason = "the log's queue takes the boxes: held as they are, not moved out and back"
    )]
    pending: Mutex<Vec<Box<DecisionRecord>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Side {
    fn idle(self: &Arc<Self>) {
        let Ok(_turn) = self.turn.try_lock() else {
            return;
        };
        if self.moved.load(Ordering::Acquire) {
            return;
        }
        let Ok(Some(job)) = self.rx.try_recv() else {
            return;
        };
        let started = cpu_time();
        self.decide(job, false);
        let took = cpu_time().saturating_sub(started);
        let slow = if took > IDLE_BUDGET {
            self.slow.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.slow.store(0, Ordering::Relaxed);
            0
        };
        if slow >= SLOW_IN_A_ROW {
            self.send_pending(false);
            self.move_to_thread(took);
        } else if !self.rx.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async {});
        }
    }

    /// From now on decide on a side thread ([`SLOW_IN_A_ROW`] evaluations over
    /// [`IDLE_BUDGET`]).
    fn move_to_thread(self: &Arc<Self>, took: Duration) {
        if self.moved.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            event = "shadow_moved",
            took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            "{SLOW_IN_A_ROW} shadow evaluations in a row took over {IDLE_BUDGET:?} of CPU time (the last {took:?}): the shadow set decides on a side thread from now on"
        );
        match self.clone().spawn() {
            Ok(t) => *lock(&self.thread) = Some(t),
            Err(e) => {
                // No thread: keep deciding in idle time.
                self.moved.store(false, Ordering::Release);
                tracing::warn!(event = "shadow_thread", error = %e, "cannot start the shadow thread: {e}");
            }
        }
    }

    fn spawn(self: Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("arbiter-shadow".into())
            .spawn(move || {
                lowest_priority();
                while let Ok(Some(job)) = self.rx.recv() {
                    self.decide(job, true);
                }
                self.send_pending(true);
            })
    }

    /// Decide what is queued, in the caller's thread.
    fn drain(&self) {
        let _turn = lock(&self.turn);
        while let Ok(Some(job)) = self.rx.try_recv() {
            self.decide(job, true);
        }
        self.send_pending(true);
    }

    /// Decide `job`; send the pending events on once [`BATCH`] are held or nothing is queued.
    /// `may_wait`: wait for room in the log's queue (a side thread), else send as a live
    /// event is sent (the I/O thread never blocks; a full queue drops it, counted).
    fn decide(&self, job: Job, may_wait: bool) {
        let record = decide(&self.set, &self.metrics, job);
        let full = match record {
            Some(r) => {
                let mut pending = lock(&self.pending);
                pending.push(r);
                pending.len() >= BATCH
            }
            None => false,
        };
        if full || self.rx.is_empty() {
            self.send_pending(may_wait);
        }
    }

    fn send_pending(&self, may_wait: bool) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.is_empty() {
            return;
        }
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let Some(log) = &state.decision_log else {
            return;
        };
        for r in pending {
            if may_wait {
                log.submit_waiting(r);
            } else {
                log.submit(r);
            }
        }
    }
}

/// The calling thread's CPU time (Linux); elsewhere the time since a fixed instant.
fn cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shadow set and where it decides.
pub struct Shadow {
    tx: Sender<Option<Job>>,
    closed: AtomicBool,
    side: Arc<Side>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("revision", &self.side.set.load().policies().revision())
            .finish_non_exhaustive()
    }
}

impl Shadow {
    /// Start deciding where `runner` says. It reaches the decision log through `state`.
    pub(crate) fn start(
        authorizer: Authorizer,
        state: Weak<State>,
        metrics: Arc<Metrics>,
        runner: &Runner,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded::<Option<Job>>(QUEUE);
        metrics.shadow_enabled();
        let side = Arc::new(Side {
            set: ArcSwap::from_pointee(authorizer),
            rx,
            metrics,
            state,
            turn: Mutex::new(()),
            moved: AtomicBool::new(false),
            slow: AtomicU32::new(0),
            pending: Mutex::new(Vec::new()),
            thread: Mutex::new(None),
        });
        match runner {
            Runner::Thread => {
                side.moved.store(true, Ordering::Release);
                let thread = side.clone().spawn()?;
                *lock(&side.thread) = Some(thread);
            }
            Runner::Idle(slot) => {
                slot.0.set(side.clone()).map_err(|_| {
                    std::io::Error::other("the idle slot already serves a shadow set")
                })?;
            }
        }
        Ok(Shadow {
            tx,
            closed: AtomicBool::new(false),
            side,
        })
    }

    /// Serve `next` as the shadow set from now on (a reload).
    pub fn replace(&self, next: Authorizer) {
        self.side.set.store(Arc::new(next));
    }

    /// The shadow set's revision.
    pub fn revision(&self) -> String {
        self.side.set.load().policies().revision().to_string()
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
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Nothing more in idle time: once the turn is ours, no check is being decided there
        // and no thread is being started.
        {
            let _turn = lock(&self.side.turn);
            self.side.moved.store(true, Ordering::Release);
        }
        let thread = lock(&self.side.thread).take();
        if let Some(t) = thread {
            let _ = self.tx.send(None);
            let _ = t.join();
        }
        // Deciding in idle time (or the thread gone early): what is left, here.
        self.side.drain();
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

/// Decide `job` under the shadow set: its event, with the shadow's verdict when the two sets
/// disagree.
fn decide(
    set: &ArcSwap<Authorizer>,
    metrics: &Metrics,
    mut job: Job,
) -> Option<Box<DecisionRecord>> {
    let authorizer = set.load_full();
    let decision = {
        let _at = arbiter_engine::clock::freeze(i64::try_from(job.timestamp_ns).unwrap_or(0));
        authorizer.check_with(&job.request, false).decision
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
    job.record
}
