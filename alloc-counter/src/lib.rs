//! arbiter's global allocator: mimalloc, counting allocations while counting is switched on
//! (`arbiter bench` reports allocations per operation, as `opa bench` does). Switched off —
//! always, except inside a benchmark — it costs one relaxed atomic load per allocation.
//!
//! Why mimalloc: a decision allocates and frees a few hundred small objects (Rego and CEL
//! values, the input document), and glibc's malloc/free were about a quarter of a decision's
//! profile. See `benches/RESULTS.md` for the measured difference.
//!
//! This is the only crate of arbiter with `unsafe` code: `GlobalAlloc` is an unsafe trait, and
//! [`release_executable_pages`] asks the kernel (`madvise`) to unmap the executable's pages
//! that only starting used (its safety argument is in `code_pages.rs`). Each allocator method
//! forwards to [`MiMalloc`] with the caller's arguments unchanged (or, inside [`in_own_heap`],
//! to the same mimalloc call on a heap of its own), so the safety contract the caller upholds
//! for this allocator is exactly the one it upholds for `MiMalloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

mod code_pages;
pub use code_pages::release_executable_pages;

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

thread_local! {
    /// The heap this thread allocates from while [`in_own_heap`] runs; null otherwise (then
    /// mimalloc's own, as `MiMalloc` does). Const-initialised and without a destructor, so
    /// reading it never allocates and works at any point of a thread's life.
    static HEAP: Cell<*mut libmimalloc_sys::mi_heap_t> = const { Cell::new(std::ptr::null_mut()) };
}

// SAFETY: every method forwards to `MiMalloc` with the same arguments, or, while this thread
// runs `in_own_heap`, to the same mimalloc call on that live heap (`mi_heap_*_aligned` take
// the size and alignment `MiMalloc` passes to `mi_*_aligned`); mimalloc frees a block of any
// heap with `mi_free`, from any thread. Counting touches only atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        let heap = HEAP.with(Cell::get);
        if heap.is_null() {
            // SAFETY: the caller's contract for `alloc` is passed on unchanged.
            unsafe { Inner.alloc(layout) }
        } else {
            // SAFETY: as above; `heap` is live while it is set (`in_own_heap`).
            unsafe {
                libmimalloc_sys::mi_heap_malloc_aligned(heap, layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        let heap = HEAP.with(Cell::get);
        if heap.is_null() {
            // SAFETY: as above.
            unsafe { Inner.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe {
                libmimalloc_sys::mi_heap_zalloc_aligned(heap, layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by mimalloc (every allocation went through it), whichever
        // heap it came from.
        unsafe { Inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        let heap = HEAP.with(Cell::get);
        if heap.is_null() {
            // SAFETY: as above.
            unsafe { Inner.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: as above.
            unsafe {
                libmimalloc_sys::mi_heap_realloc_aligned(heap, ptr.cast(), new_size, layout.align())
                    .cast()
            }
        }
    }
}

/// A mimalloc heap of its own, holding what was allocated while [`in_own_heap`] ran. Dropping
/// it deletes the heap: blocks still in use move to mimalloc's main heap (nothing is freed
/// that is in use), and pages that are empty go back to the arena.
#[derive(Debug)]
pub struct Heap(*mut libmimalloc_sys::mi_heap_t);

// SAFETY: mimalloc v3's heaps are first-class: any thread may allocate from, free into or
// delete one. After `in_own_heap` returns no thread allocates from it; deleting it from
// another thread is what mimalloc allows.
unsafe impl Send for Heap {}

impl Drop for Heap {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a heap made by `mi_heap_new`, deleted once, no longer any thread's
            // override (`in_own_heap` restored the previous one before returning this).
            unsafe { libmimalloc_sys::mi_heap_delete(self.0) }
        }
    }
}

/// Run `f` with every allocation this thread makes in a new heap, and return that heap with
/// `f`'s result. A server builds each policy set this way and keeps the heap while the set
/// serves: the set's data then fills pages of its own, so freeing it after a reload frees
/// whole pages, instead of leaving holes in pages shared with the sets before and after it
/// (RSS crept by ≈ 0.3–0.5 MiB with every reload that parsed a changed 100,000-identity
/// document, `benches/RESULTS.md`). Other threads allocate as before. When mimalloc cannot
/// make a heap, `f` runs as usual.
pub fn in_own_heap<R>(f: impl FnOnce() -> R) -> (R, Heap) {
    struct Restore(*mut libmimalloc_sys::mi_heap_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            HEAP.with(|h| h.set(self.0));
        }
    }
    // SAFETY: `mi_heap_new` takes no arguments; a null result means no heap (handled).
    let heap = Heap(unsafe { libmimalloc_sys::mi_heap_new() });
    if heap.0.is_null() {
        return (f(), heap);
    }
    // Declared after `heap`: on a panic in `f`, the override is restored before the heap is
    // deleted.
    let restore = Restore(HEAP.with(|h| h.replace(heap.0)));
    let result = f();
    drop(restore);
    (result, heap)
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

/// The allocations and bytes counted since [`start`], while counting goes on; `None` when
/// counting is off.
pub fn counted() -> Option<(u64, u64)> {
    COUNTING.load(Ordering::Relaxed).then(|| {
        (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        )
    })
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
    use std::alloc::{GlobalAlloc, Layout};

    // mimalloc v3's (`libmimalloc-sys` declares it for v2 only).
    unsafe extern "C" {
        fn mi_heap_contains(
            heap: *const libmimalloc_sys::mi_heap_t,
            p: *const std::ffi::c_void,
        ) -> bool;
    }

    /// Inside `in_own_heap` a block comes from the new heap, outside from mimalloc's own; a
    /// block still in use when the heap is deleted stays usable, and is freed as any other.
    #[test]
    fn own_heap_allocations() {
        let layout = Layout::from_size_align(200, 16).unwrap();
        // SAFETY: blocks of a non-zero size, written within their size, freed once with their
        // layout; `mi_heap_contains` reads only the pointers.
        unsafe {
            let (block, heap) = super::in_own_heap(|| super::Counting.alloc(layout));
            assert!(!block.is_null());
            assert!(mi_heap_contains(heap.0, block.cast()));
            let outside = super::Counting.alloc(layout);
            assert!(!mi_heap_contains(heap.0, outside.cast()));
            let (grown, _) = super::in_own_heap(|| super::Counting.realloc(outside, layout, 4000));
            assert!(!grown.is_null());
            block.write_bytes(7, 200);
            drop(heap);
            block.write_bytes(9, 200);
            assert_eq!(*block.add(199), 9);
            super::Counting.dealloc(block, layout);
            super::Counting.dealloc(grown, Layout::from_size_align(4000, 16).unwrap());
        }
    }

    /// A panic inside `in_own_heap` leaves the thread allocating as before.
    #[test]
    fn a_panic_restores_the_heap() {
        let caught = std::panic::catch_unwind(|| super::in_own_heap(|| panic!("in the heap")));
        assert!(caught.is_err());
        assert!(super::HEAP.with(std::cell::Cell::get).is_null());
    }

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
