//! Hot reload: a new policy set replaces the running one only after it is fully validated, in
//! one atomic swap.
//!
//! The caller supplies how to build an [`Authorizer`] (from folders, a bundle, …); a reload
//! builds it completely — Rego compiled, CEL loaded, the decision path checked, and, when
//! required, the set's own tests passed — and only then stores it in the server's
//! `ArcSwap`. A decision loads the authorizer once and uses that one to the end, so every
//! decision (and its decision-log event) belongs to exactly one revision. A broken update
//! leaves the last good set serving; the error goes to the log, to
//! `arbiter_policy_reloads_total{result="error"}` and to `/health` (`last_reload_error`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arbiter_engine::authorizer::Authorizer;

use crate::state::State;

/// Builds a complete, validated authorizer, or says why it cannot.
pub type Build = Arc<dyn Fn() -> Result<Authorizer, String> + Send + Sync>;

/// What the last reload attempt did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    pub reloads: u64,
    pub failures: u64,
    /// The last failure, while the set it tried to replace still serves.
    pub last_error: Option<String>,
    /// When the last error happened (RFC 3339).
    pub last_error_at: Option<String>,
}

/// Build and, if it validates, install. Returns the new revision, or the error (the running
/// set is untouched then).
///
/// What the Data API wrote is replayed over the new set (see [`State::write_data`]); writes
/// wait for the reload, and a write the new set refuses is dropped and logged.
pub fn reload(state: &State, build: &Build) -> Result<String, String> {
    reload_after(state, build, None)
}

/// [`reload`] for a new snapshot of bundle `fresh`: its deltas end with it (they were made
/// against the snapshot it replaces); other bundles' deltas are replayed.
pub fn reload_after(state: &State, build: &Build, fresh: Option<&str>) -> Result<String, String> {
    let mut data = state
        .data_writes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build()))
        .unwrap_or_else(|_| Err("the policy loader panicked".into()));
    let built = built.map(|a| {
        let data = &mut *data;
        if let Some(name) = fresh {
            data.deltas.remove(name);
        }
        if data.overlay.is_empty() && data.deltas.is_empty() {
            return a;
        }
        let mut set = (**a.policies()).clone();
        data.deltas.retain(|name, deltas| {
            let replayed = deltas
                .iter()
                .try_fold(set.clone(), |s, (manifest, writes)| {
                    s.with_bundle_delta(name, manifest, writes)
                });
            match replayed {
                Ok(next) => {
                    set = next;
                    true
                }
                Err(e) => {
                    tracing::warn!(
                        event = "bundle_delta_dropped",
                        bundle = %name,
                        error = %e,
                        "bundle {name}'s deltas no longer apply and are dropped: {e}"
                    );
                    false
                }
            }
        });
        let (set, dropped) = set.with_overlay(&mut data.overlay);
        for d in dropped {
            tracing::warn!(
                event = "data_write_dropped",
                "a Data API write no longer applies and is dropped: {d}"
            );
        }
        a.with_policies(Arc::new(set))
    });
    match built {
        Ok(a) => {
            let revision = a.policies().revision().to_string();
            // Stored even when the policies' revision is the same: what else the authorizer
            // holds (trust and JWT bundles, the gRPC descriptor set) may have changed.
            state.authorizer.store(Arc::new(a));
            state.metrics.reload(true);
            state.update_reload_status(|s| {
                s.reloads += 1;
                s.last_error = None;
                s.last_error_at = None;
            });
            if state
                .awaiting_policy
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                state.readiness_changed.notify_one();
            }
            Ok(revision)
        }
        Err(e) => {
            state.metrics.reload(false);
            state.update_reload_status(|s| {
                s.failures += 1;
                s.last_error = Some(e.clone());
                s.last_error_at =
                    Some(arbiter_engine::record::rfc3339_nanos(crate::state::now_ns()));
            });
            Err(e)
        }
    }
}

/// Files up to this size are fingerprinted by their content too.
const CONTENT_FINGERPRINT_BYTES: u64 = 64 * 1024;

/// A cheap fingerprint of everything under `paths`: names, sizes, modification times, inode
/// numbers, and the content of small files. Size and time alone miss a file replaced by one of
/// the same size within one tick of the filesystem's clock (a JWT bundle rotated by a
/// write-and-rename: same length, new key).
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    fn walk(p: &Path, h: &mut DefaultHasher, depth: usize) {
        let Ok(meta) = std::fs::metadata(p) else {
            p.hash(h);
            0u8.hash(h);
            return;
        };
        p.hash(h);
        meta.len().hash(h);
        meta.modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .hash(h);
        #[cfg(unix)]
        std::os::unix::fs::MetadataExt::ino(&meta).hash(h);
        if meta.is_file()
            && meta.len() <= CONTENT_FINGERPRINT_BYTES
            && let Ok(bytes) = std::fs::read(p)
        {
            bytes.hash(h);
        }
        if meta.is_dir() && depth < 32 {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            for e in entries {
                walk(&e, h, depth + 1);
            }
        }
    }
    let mut h = DefaultHasher::new();
    for p in paths {
        walk(p, &mut h, 0);
    }
    h.finish()
}

/// Watch `paths`: told of changes by the kernel (inotify, through `notify`), and looking again
/// every `interval` in case a change was not reported (a watch that could not be set, a
/// filesystem without events). When the files changed and then stayed unchanged for
/// [`QUIET`] (a write in progress is not loaded half-way), call `on_change`. Stops when
/// `on_change` returns false.
///
/// `seen` is the [`fingerprint`] of the files the serving set was loaded from, taken before
/// that load: taken here, in the watcher's own thread, it could already include a change
/// written after the load, which would then never be reloaded.
pub fn watch(
    paths: Vec<PathBuf>,
    interval: Duration,
    mut seen: u64,
    mut on_change: impl FnMut() -> bool,
) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    // Kept alive for the loop's lifetime: dropping it ends the kernel watches.
    let _watcher = kernel_watch(&paths, tx);
    loop {
        let _ = rx.recv_timeout(interval);
        // Let a burst of events (an editor's write-and-rename, a `cp -r`) settle.
        while rx.recv_timeout(QUIET).is_ok() {}
        let now = fingerprint(&paths);
        if now == seen {
            continue;
        }
        std::thread::sleep(QUIET);
        if fingerprint(&paths) != now {
            // Still being written: look again when it settles.
            continue;
        }
        seen = now;
        if !on_change() {
            return;
        }
    }
}

/// How long files must stay unchanged before a reload reads them.
pub const QUIET: Duration = Duration::from_millis(50);

/// Kernel watches on `paths` (folders recursively; a file through its folder, since editors
/// replace files by renaming), each event a message on `tx`. `None` when none could be set:
/// polling alone then finds changes.
fn kernel_watch(
    paths: &[PathBuf],
    tx: std::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .ok()?;
    let mut any = false;
    for p in paths {
        let (target, mode) = if p.is_dir() {
            (p.as_path(), RecursiveMode::Recursive)
        } else {
            match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => {
                    (parent, RecursiveMode::NonRecursive)
                }
                _ => (Path::new("."), RecursiveMode::NonRecursive),
            }
        };
        any |= watcher.watch(target, mode).is_ok();
    }
    any.then_some(watcher)
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    /// A file rewritten at once with other bytes of the same length (a rotated key) changes
    /// the fingerprint, whether in place or replaced by a rename.
    #[test]
    fn same_size_rewrites_change_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("arbiter-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bundle.jwks");
        std::fs::write(&file, "key-one").unwrap();
        let paths = vec![file.clone()];
        let before = fingerprint(&paths);
        std::fs::write(&file, "key-two").unwrap();
        let in_place = fingerprint(&paths);
        assert_ne!(before, in_place);
        std::fs::write(dir.join("staged"), "key-one").unwrap();
        std::fs::rename(dir.join("staged"), &file).unwrap();
        assert_ne!(fingerprint(&paths), in_place);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The kernel tells the watcher: with a poll interval of a minute, a new file in a watched
    /// folder is still noticed (the test waits at most 20 s; it takes milliseconds).
    #[test]
    fn changes_are_noticed_without_waiting_for_the_poll() {
        let dir = std::env::temp_dir().join(format!("arbiter-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let watched = vec![dir.clone()];
        let seen = fingerprint(&watched);
        let started = std::thread::spawn(move || {
            watch(watched, Duration::from_secs(60), seen, || {
                let _ = tx.send(());
                false
            });
        });
        // Give the watcher time to set its watches, then change a file two levels down.
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(dir.join("sub").join("p.rego"), "package p\n").unwrap();
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "the change was not noticed"
        );
        started.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A change made before the watcher starts (after the set was loaded, while the server was
    /// still starting) is reloaded: the watcher compares with the fingerprint taken before the
    /// load. It used to take its own on start, which already included the change, so the
    /// change was never reloaded (the reload test timed out now and then).
    #[test]
    fn a_change_before_the_watcher_starts_is_noticed() {
        let dir = std::env::temp_dir().join(format!("arbiter-watch-early-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("p.rego"), "package p\n").unwrap();
        let watched = vec![dir.clone()];
        let seen = fingerprint(&watched);
        // The set is loaded from `seen`'s files; then the file changes; then the watcher starts.
        std::fs::write(dir.join("p.rego"), "package p\n\nx := 1\n").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::spawn(move || {
            watch(watched, Duration::from_millis(100), seen, || {
                let _ = tx.send(());
                false
            });
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "the change was not noticed"
        );
        started.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
