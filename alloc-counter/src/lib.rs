//! arbiter's global allocator: mimalloc, counting allocations while counting is switched on
//! (`arbiter bench` reports allocations per operation, as `opa bench` does). Switched off —
//! always, except inside a benchmark — it costs one relaxed atomic load per allocation.
//!
//! Why mimalloc: a decision allocates and frees a few hundred small objects (Rego and CEL
//! values, the input document), and glibc's malloc/free were about a quarter of a decision's
//! profile. See `benches/RESULTS.md` for the measured difference.
//!
//! This is the only crate of arbiter with `unsafe` code: `GlobalAlloc` is an unsafe trait. Each
//! method forwards to [`MiMalloc`] with the caller's arguments unchanged, so the safety
//! contract the caller upholds for this allocator is exactly the one it upholds for
//! `MiMalloc`.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as Inner;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// mimalloc, counting while [`start`] is in effect.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

#[inline]
fn count(size: usize) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `MiMalloc` with the same arguments; counting touches only
// atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { Inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { Inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `MiMalloc` (every allocation went through it).
        unsafe { Inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { Inner.realloc(ptr, layout, new_size) }
    }
}

/// Reset the counters and start counting (all threads).
pub fn start() {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
}

/// Stop counting; the allocations and bytes counted since [`start`].
pub fn stop() -> (u64, u64) {
    COUNTING.store(false, Ordering::Relaxed);
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// Hand memory that is free but still held back to the operating system (after a large
/// one-off job, such as indexing a decision log, whose peak the process need not keep).
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// mimalloc v3's `mi_option_arena_eager_commit` (its place in `mi_option_e`, `mimalloc.h`;
/// `libmimalloc-sys` names no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// The allocator commits its arenas on demand rather than all at once (mimalloc's default on
/// Linux). A long-running server that builds a large set, frees it and builds the next (every
/// reload) then hands the freed parts back to the system: RSS after reloads that change a
/// 100,000-identity data document stays near the first load's instead of growing by 13–20%
/// (`benches/RESULTS.md`, "Memory and loads"). It has to be set before the first allocation
/// (which reserves the first arena), so it is set by a constructor that runs before `main`
/// and before Rust's runtime allocates; the environment variable `MIMALLOC_ARENA_EAGER_COMMIT`
/// overrides it. Returns whether it is in effect; calling it also keeps the constructor linked
/// into the binary.
pub fn commits_on_demand() -> bool {
    std::hint::black_box(&COMMIT_ON_DEMAND);
    // SAFETY: `mi_option_get` takes no pointers.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) == 0 }
}

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static COMMIT_ON_DEMAND: extern "C" fn() = commit_on_demand;

#[cfg(not(target_os = "linux"))]
static COMMIT_ON_DEMAND: extern "C" fn() = commit_on_demand;

extern "C" fn commit_on_demand() {
    unsafe extern "C" {
        fn getenv(name: *const std::ffi::c_char) -> *mut std::ffi::c_char;
    }
    // SAFETY: `getenv` reads a NUL-terminated name; before `main` no thread changes the
    // environment. `mi_option_set` takes no pointers and needs no initialised allocator.
    unsafe {
        if getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The constructor ran before the test harness allocated (this crate's own test binary
    /// links it as `arbiter` does).
    #[test]
    #[cfg(target_os = "linux")]
    fn arenas_commit_on_demand() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert!(super::commits_on_demand());
        }
    }

    #[test]
    fn counts_only_while_on() {
        // The test harness's allocator is not this one; exercise the counters directly.
        super::start();
        super::count(10);
        super::count(5);
        assert_eq!(super::stop(), (2, 15));
        super::count(7);
        assert_eq!(super::stop(), (2, 15));
    }
}
