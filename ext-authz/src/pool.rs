//! Where evaluations run, and how many at once.
//!
//! By default (`--workers 0`, [`EvalPool::inline`]) a check is evaluated on the async
//! runtime's thread that received it: the fastest way, with admission bounded by `--queue`.
//! Policy evaluation is CPU-bound and, with a runaway policy or a built-in that cannot be
//! interrupted, can take longer than the deadline, holding that thread; `--workers N` moves
//! evaluation to a fixed set of threads behind a bounded queue instead, so the network threads
//! stay free: a check hands its work to the pool and waits for the answer with a deadline. In
//! both modes, when the bound is reached the check is refused at once (the caller denies with
//! `overload`), so load beyond capacity is shed instead of queued without bound.

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool is saturated: the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

#[derive(Debug)]
pub struct EvalPool {
    tx: Option<Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// No threads: evaluations run on the caller's thread (see [`EvalPool::inline`]).
    inline: Option<Inline>,
}

/// Admission for inline evaluation: at most `limit` evaluations at once.
#[derive(Debug)]
struct Inline {
    running: std::sync::atomic::AtomicUsize,
    limit: usize,
}

/// A slot of an inline pool; frees itself when dropped.
#[derive(Debug)]
pub struct InlineSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InlineSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl EvalPool {
    /// Evaluate on the caller's thread (the async runtime's), admitting at most `limit`
    /// evaluations at once. This saves two thread hand-offs per decision; the engines' own
    /// time limits bound each evaluation, and a decision that overran the deadline is still
    /// a `timeout` denial (see [`crate::state::State::run`]).
    pub fn inline(limit: usize) -> Self {
        Self {
            tx: None,
            workers: Vec::new(),
            inline: Some(Inline {
                running: std::sync::atomic::AtomicUsize::new(0),
                limit: limit.max(1),
            }),
        }
    }

    /// Whether evaluations run inline.
    pub fn is_inline(&self) -> bool {
        self.inline.is_some()
    }

    /// A slot for one inline evaluation, or [`Overloaded`].
    pub fn try_inline(&self) -> Result<InlineSlot<'_>, Overloaded> {
        let Some(i) = &self.inline else {
            return Err(Overloaded);
        };
        let before = i.running.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let slot = InlineSlot(&i.running);
        if before >= i.limit {
            return Err(Overloaded);
        }
        Ok(slot)
    }

    /// `threads` workers and room for `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (tx, rx): (Sender<Job>, Receiver<Job>) = bounded(queue.max(1));
        let mut workers = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("arbiter-eval-{i}"))
                    // Deep policies recurse; give the interpreter room.
                    .stack_size(16 << 20)
                    .spawn(move || {
                        while let Ok(job) = rx.recv() {
                            job();
                        }
                    })?,
            );
        }
        Ok(Self {
            tx: Some(tx),
            workers,
            inline: None,
        })
    }

    /// Queue `f` and get a receiver for its result, or [`Overloaded`] without waiting.
    pub fn try_run<F, R>(&self, f: F) -> Result<oneshot::Receiver<R>, Overloaded>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        match self.tx.as_ref().map(|s| s.try_send(job)) {
            Some(Ok(())) => Ok(rx),
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                Err(Overloaded)
            }
        }
    }
}

impl Drop for EvalPool {
    fn drop(&mut self) {
        // Closing the queue lets the workers finish what is queued and exit.
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_and_sheds() {
        let pool = EvalPool::new(1, 1).unwrap();
        assert_eq!(pool.try_run(|| 2 + 2).unwrap().await.unwrap(), 4);
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        let first = pool.try_run(move || block_rx.recv().is_ok()).unwrap();
        // Wait until the worker has taken the first job, then fill the one queue slot.
        let mut second = None;
        for _ in 0..1000 {
            if let Ok(rx) = pool.try_run(|| true) {
                second = Some(rx);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let second = second.expect("queue slot");
        assert_eq!(pool.try_run(|| true).err(), Some(Overloaded));
        block_tx.send(()).unwrap();
        assert!(first.await.unwrap());
        assert!(second.await.unwrap());
    }
}
