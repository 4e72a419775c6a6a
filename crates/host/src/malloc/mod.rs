//! The general-purpose, thread-caching allocator.
//!
//! # Layers (bottom-up)
//!
//! - [`crate::os`]: mmap/munmap/madvise, a futex lock, thread-exit keys.
//! - [`arena`]: 1 GiB arenas of OS pages, each a core buddy with 8 KiB granules (the *page
//!   heap*), a pagemap from granule to owner, and a global table from address to arena.
//! - [`span`], [`central`]: small objects are carved from spans (page-heap blocks of one size
//!   class, see [`size_class`]); each class has a central list (partial spans + transfer
//!   slots of whole batches) behind one lock.
//! - [`thread_cache`]: per-thread LIFO lists per class, refilled and drained in batches; the
//!   only path taken by most calls, lock-free, and also where frees from other threads land.
//! - [`size_class`]: 41 small classes up to 32 KiB and 20 medium ones up to 1 MiB, all on the
//!   same thread-cache path.
//! - [`large`]: requests above 1 MiB take an exact page-heap allocation (whole granules),
//!   reused through the thread's few cached blocks and the central [`span_cache`] of recently
//!   freed blocks; above 64 MiB they are mapped directly (huge) and unmapped on free.
//! - [`purge`]: free page-heap memory returns to the OS after it stayed free for a second;
//!   the span cache hands its blocks to the page heap after a second too.
//! - this module: the `malloc` family; [`CoalesceAlloc`] implements `GlobalAlloc`.
//!
//! Nothing here allocates through a heap: all metadata is mmapped, so the same code serves
//! as Rust's global allocator and as the C `malloc` of an `LD_PRELOAD` library.

mod arena;
mod central;
mod fork;
mod global;
mod large;
pub mod purge;
pub mod size_class;
mod span;
mod span_cache;
mod stats;
mod thread_cache;
mod tls;

pub use global::CoalesceAlloc;
pub use large::LARGE_MAX;
pub use stats::MallocStats;
pub use thread_cache::flush_current_thread;

use arena::Owner;
use size_class::{CLASS_SIZE, class_for, class_of};
use std::ptr;

/// Why [`check_live`] rejected a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    #[error("{0:#x} was not allocated by coalesce (foreign pointer, or already freed)")]
    NotOurs(usize),
    #[error("{0:#x} points inside an allocation, not at its start")]
    Interior(usize),
}

/// Allocates `size` bytes aligned to 16 (8 for requests of at most 8 bytes). Null when the
/// OS refuses memory.
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    match class_of(size) {
        Some(c) => thread_cache::alloc(c),
        None => alloc_big(size, 16),
    }
}

/// Allocates `size` bytes aligned to `align` (a power of two). Null on failure.
#[inline]
pub fn malloc_aligned(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    match class_for(size, align) {
        Some(c) => thread_cache::alloc(c),
        None => alloc_big(size, align),
    }
}

#[cold]
fn alloc_big(size: usize, align: usize) -> *mut u8 {
    match large::bytes_for(size, align) {
        Some(bytes) => large::alloc(bytes),
        None => large::alloc_huge(size, align),
    }
}

/// Allocates `n * size` zeroed bytes; null on overflow or failure.
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    let Some(total) = n.checked_mul(size) else {
        return ptr::null_mut();
    };
    let p = malloc(total);
    if !p.is_null() && !matches!(arena::owner(p as usize), Owner::Huge { .. }) {
        // SAFETY: p is a fresh allocation of at least `total` bytes. Huge mappings are fresh
        // from the OS and already zero.
        unsafe { p.write_bytes(0, total) };
    }
    p
}

/// Frees `p` (null is ignored). Pointers this allocator does not know are ignored too, so a
/// C program that frees a foreign pointer is not crashed by the allocator itself.
///
/// # Safety
/// `p` is null or a live allocation of this allocator that is not used afterwards.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    match arena::owner(p as usize) {
        // SAFETY: the pagemap says p is an object of this class; caller contract for the rest.
        Owner::Small { class, .. } => unsafe { thread_cache::free(p, class) },
        // SAFETY: the pagemap says p starts a live large block of this order.
        Owner::Large { granules, .. } => unsafe { large::free(p, granules) },
        // SAFETY: the table says p lies in the huge mapping at base.
        Owner::Huge { base } => unsafe { large::free_huge(base) },
        Owner::Unknown => {}
    }
}

/// Frees `p`, which was allocated with exactly this `size` and `align` (Rust's `dealloc`):
/// the size class comes from the layout, so small frees need no lookup at all.
///
/// # Safety
/// As [`free`], and the layout is the one `p` was allocated (or last reallocated) with.
#[inline]
pub unsafe fn free_sized(p: *mut u8, size: usize, align: usize) {
    match class_for(size, align) {
        // SAFETY: same class as at allocation (caller contract).
        Some(c) => unsafe { thread_cache::free(p, c) },
        // SAFETY: caller contract.
        None => unsafe { free(p) },
    }
}

/// Bytes usable at `p` (at least what was requested); 0 for null or unknown pointers.
///
/// # Safety
/// `p` is null or a live allocation of this allocator.
pub unsafe fn usable_size(p: *const u8) -> usize {
    match arena::owner(p as usize) {
        Owner::Small { class, .. } => CLASS_SIZE[class] as usize,
        Owner::Large { granules, .. } => granules << arena::GRANULE_ORDER,
        // SAFETY: the table says p lies in the live huge mapping at base.
        Owner::Huge { base } => base + unsafe { large::huge_len(base) } - p as usize,
        Owner::Unknown => 0,
    }
}

/// C `realloc`: grows or shrinks `p` to `size` bytes, in place when the usable size already
/// fits and would not waste more than half. Null `p` allocates; on failure `p` is untouched
/// and null is returned.
///
/// # Safety
/// `p` is null or a live allocation of this allocator; on success it is not used afterwards.
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        return malloc(size);
    }
    // SAFETY: caller contract.
    let old = unsafe { usable_size(p) };
    if size <= old && size >= old / 2 {
        return p;
    }
    let q = malloc(size);
    if !q.is_null() {
        // SAFETY: both are live, distinct allocations of at least min(old, size) bytes.
        unsafe {
            ptr::copy_nonoverlapping(p, q, old.min(size));
            free(p);
        }
    }
    q
}

/// Checks that `p` is the start of an allocation this allocator handed out, without touching
/// its memory. Catches foreign and interior pointers and freed huge blocks (and freed large
/// blocks once they left the freeing thread's cache); a freed small object is
/// indistinguishable from a live one.
pub fn check_live(p: *const u8) -> Result<usize, PointerError> {
    let addr = p as usize;
    match arena::owner(addr) {
        Owner::Small { span, class } => {
            // SAFETY: `start` and `obj_size` of a live span are fixed while it holds objects.
            let (start, size) = unsafe { ((*span).start, (*span).obj_size as usize) };
            if (addr - start).is_multiple_of(size) {
                Ok(CLASS_SIZE[class] as usize)
            } else {
                Err(PointerError::Interior(addr))
            }
        }
        Owner::Large { granules, .. } => Ok(granules << arena::GRANULE_ORDER),
        Owner::Huge { base } => {
            // SAFETY: the table says the huge mapping at base is live.
            let (len, off) = (unsafe { large::huge_len(base) }, addr - base);
            // The data starts max(page, align) bytes into the mapping: a power of two.
            if off >= crate::os::PAGE && off.is_power_of_two() {
                Ok(base + len - addr)
            } else {
                Err(PointerError::Interior(addr))
            }
        }
        Owner::Unknown => Err(PointerError::NotOurs(addr)),
    }
}

/// A snapshot of the allocator's counters.
pub fn stats() -> MallocStats {
    stats::snapshot()
}

/// Returns all cached memory that can go back to the OS now, regardless of the purge delay:
/// the calling thread's cache and the central transfer slots go back to their spans (spans
/// that become empty go back to the page heap), the span cache goes to the page heap, then
/// every free page-heap granule is purged. Other threads' caches are untouched.
pub fn purge_all() {
    thread_cache::flush_current_thread();
    central::drain_all();
    large::drain_span_cache();
    for a in arena::arenas() {
        let mut heap = a.heap.lock();
        let heap = &mut *heap;
        heap.purge.sweep(&heap.buddy, a.base, true);
    }
}
