//! Process-wide counters of the malloc, updated with relaxed atomics on the slow paths only
//! (span, large and huge operations), so the fast paths pay nothing for them.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

pub(crate) struct Counters {
    pub(crate) spans: AtomicUsize,
    pub(crate) span_bytes: AtomicUsize,
    pub(crate) large_blocks: AtomicUsize,
    pub(crate) large_bytes: AtomicUsize,
    pub(crate) huge_mappings: AtomicUsize,
    pub(crate) huge_bytes: AtomicUsize,
}

pub(crate) static STATS: Counters = Counters {
    spans: AtomicUsize::new(0),
    span_bytes: AtomicUsize::new(0),
    large_blocks: AtomicUsize::new(0),
    large_bytes: AtomicUsize::new(0),
    huge_mappings: AtomicUsize::new(0),
    huge_bytes: AtomicUsize::new(0),
};

/// A snapshot of the allocator's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MallocStats {
    /// Arenas mapped (1 GiB of address space each).
    pub arenas: usize,
    /// Spans carved into small objects, and their bytes.
    pub spans: usize,
    pub span_bytes: usize,
    /// Large blocks in use, and their bytes (powers of two).
    pub large_blocks: usize,
    pub large_bytes: usize,
    /// Huge allocations (mapped directly), and their mapped bytes.
    pub huge_mappings: usize,
    pub huge_bytes: usize,
    /// Free page-heap bytes not yet returned to the OS.
    pub dirty_free_bytes: u64,
    /// Free large blocks held by the central span cache (also dirty, not in the page heap).
    pub span_cache_bytes: usize,
    /// Bytes returned to the OS with madvise so far.
    pub purged_bytes: u64,
}

pub(crate) fn snapshot() -> MallocStats {
    let mut s = MallocStats {
        spans: STATS.spans.load(Relaxed),
        span_bytes: STATS.span_bytes.load(Relaxed),
        large_blocks: STATS.large_blocks.load(Relaxed),
        large_bytes: STATS.large_bytes.load(Relaxed),
        huge_mappings: STATS.huge_mappings.load(Relaxed),
        huge_bytes: STATS.huge_bytes.load(Relaxed),
        span_cache_bytes: super::span_cache::cached_bytes(),
        ..MallocStats::default()
    };
    for a in super::arena::arenas() {
        let heap = a.heap.lock();
        s.arenas += 1;
        s.dirty_free_bytes += heap.purge.dirty_bytes();
        s.purged_bytes += heap.purge.purged_bytes;
    }
    s
}
