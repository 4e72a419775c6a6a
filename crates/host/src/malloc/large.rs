//! Large allocations (above the size classes, 1 MiB, up to [`LARGE_MAX`]): one exact
//! page-heap allocation each, rounded up to an eighth of the power of two below the size
//! (at most 12.5% more; not to a power of two: the buddy gives the unused tail back at once)
//! and aligned to the next power of two of its size. The rounding makes freed blocks fit
//! later requests of similar sizes, so the thread's large-block cache serves them.
//! Huge ones (above [`LARGE_MAX`]) are mapped directly: at 64 MiB, touching the memory
//! costs milliseconds of page faults, and the two system calls are noise against that.

use super::arena::{self, GRANULE_ORDER, LARGE_TAG};
use super::span_cache;
use super::stats::STATS;
use super::thread_cache;
use crate::os;
use std::sync::atomic::Ordering::Relaxed;

/// Largest request served from the page heap (64 MiB); larger ones are huge.
pub const LARGE_MAX: usize = 64 << 20;

/// The page-heap bytes for `size` bytes at `align`, or `None` if it must be huge. An
/// alignment above the size's own power of two takes a whole block of `align` bytes.
#[inline]
pub(crate) fn bytes_for(size: usize, align: usize) -> Option<usize> {
    let size = size.max(1);
    // An eighth of the power of two below `size`, at least one granule.
    let step = (1usize << (usize::BITS - 1 - size.leading_zeros())) / 8;
    let bytes = size.checked_next_multiple_of(step.max(1 << GRANULE_ORDER))?;
    let bytes = if align > bytes.next_power_of_two() {
        align
    } else {
        bytes
    };
    (bytes <= LARGE_MAX).then_some(bytes)
}

/// Allocates `bytes` (from [`bytes_for`]): a block the thread cached if it has one that
/// fits, else one from the central span cache, else from the page heap; null when the OS
/// refuses memory. A cached block keeps its pagemap entry (its real size) while cached.
pub(crate) fn alloc(bytes: usize) -> *mut u8 {
    if let Some((p, _)) = thread_cache::take_large(bytes) {
        return p;
    }
    let mut evicted = ([(0, 0); span_cache::SLOTS + 1], 0);
    let hit = span_cache::take(bytes, &mut evicted);
    to_heap(&evicted);
    if let Some((addr, _)) = hit {
        return addr as *mut u8;
    }
    let Some((a, addr)) = arena::alloc_block(bytes) else {
        return std::ptr::null_mut();
    };
    a.set_pagemap(addr, 1, (bytes >> GRANULE_ORDER) << 6 | LARGE_TAG);
    STATS.large_blocks.fetch_add(1, Relaxed);
    STATS.large_bytes.fetch_add(bytes, Relaxed);
    addr as *mut u8
}

/// Frees the large block at `p`: into the thread's large-block cache (up to 4 blocks, 16 MiB),
/// which may evict another block to the central span cache, or to that cache directly.
///
/// # Safety
/// `p` is a live large block of `granules` granules, not used afterwards.
pub(crate) unsafe fn free(p: *mut u8, granules: usize) {
    if let Some((addr, bytes)) = thread_cache::keep_large(p as usize, granules << GRANULE_ORDER) {
        release(addr, bytes);
    }
}

/// Gives a free large block to the central span cache (which passes older or decayed
/// blocks on to the page heap).
pub(crate) fn release(addr: usize, bytes: usize) {
    let mut evicted = ([(0, 0); span_cache::SLOTS + 1], 0);
    span_cache::put(addr, bytes, &mut evicted);
    to_heap(&evicted);
}

/// Empties the central span cache into the page heap.
pub(crate) fn drain_span_cache() {
    let mut evicted = ([(0, 0); span_cache::SLOTS + 1], 0);
    span_cache::drain(&mut evicted);
    to_heap(&evicted);
}

fn to_heap(evicted: &span_cache::Evicted) {
    for &(addr, bytes) in &evicted.0[..evicted.1] {
        free_to_heap(addr, bytes);
    }
}

/// Gives a large block back to its arena's page heap.
pub(crate) fn free_to_heap(addr: usize, bytes: usize) {
    let Some(arena) = arena::arena_of(addr) else {
        return;
    };
    STATS.large_blocks.fetch_sub(1, Relaxed);
    STATS.large_bytes.fetch_sub(bytes, Relaxed);
    arena::free_block(arena, addr, bytes, 1);
}

// ------------------------------------------------------------------ huge

/// Header at the start of a huge mapping: its total length.
const HUGE_ALIGN: usize = 1 << arena::ARENA_ORDER;

/// Maps a huge allocation: 1 GiB-aligned (so it owns its address-table slots), a header page
/// (or `align` bytes) in front of the data. Null when the OS refuses or `align` > 1 GiB.
pub(crate) fn alloc_huge(size: usize, align: usize) -> *mut u8 {
    if align > HUGE_ALIGN {
        return std::ptr::null_mut();
    }
    let off = align.max(os::PAGE);
    let Some(total) = size
        .checked_add(off)
        .and_then(|t| t.checked_next_multiple_of(os::PAGE))
    else {
        return std::ptr::null_mut();
    };
    let Some(base) = os::map_aligned(total, HUGE_ALIGN) else {
        return std::ptr::null_mut();
    };
    let base = base.as_ptr();
    // SAFETY: the mapping is fresh, writable and at least a page long.
    unsafe { base.cast::<usize>().write(total) };
    arena::set_huge(base as usize, total, true);
    STATS.huge_mappings.fetch_add(1, Relaxed);
    STATS.huge_bytes.fetch_add(total, Relaxed);
    base.wrapping_add(off)
}

/// Length of the huge mapping at `base`.
///
/// # Safety
/// `base` is the start of a live huge mapping.
pub(crate) unsafe fn huge_len(base: usize) -> usize {
    // SAFETY: caller contract; the header word was written by alloc_huge.
    unsafe { (base as *const usize).read() }
}

/// Unmaps the huge mapping at `base`.
///
/// # Safety
/// `base` is the start of a live huge mapping whose allocation is no longer used.
pub(crate) unsafe fn free_huge(base: usize) {
    // SAFETY: caller contract.
    let total = unsafe { huge_len(base) };
    arena::set_huge(base, total, false);
    STATS.huge_mappings.fetch_sub(1, Relaxed);
    STATS.huge_bytes.fetch_sub(total, Relaxed);
    // SAFETY: the whole mapping is ours and dead.
    unsafe { os::unmap(base as *mut u8, total) };
}
