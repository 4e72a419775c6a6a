//! Large allocations (above the size classes, up to [`LARGE_MAX`]): one page-heap block each,
//! a power of two of at least 64 KiB, aligned to its size. Huge ones are mapped directly.

use super::arena::{self, Arena, GRANULE_ORDER, LARGE_TAG};
use super::stats::STATS;
use crate::os;
use std::sync::atomic::Ordering::Relaxed;

/// Largest request served from the page heap (64 MiB); larger ones are huge.
pub const LARGE_MAX: usize = 64 << 20;
const LARGE_MAX_ORDER: u32 = LARGE_MAX.trailing_zeros();

/// The block order for `size` bytes at `align`, or `None` if it must be huge.
#[inline]
pub(crate) fn order_for(size: usize, align: usize) -> Option<u32> {
    let need = size
        .max(align)
        .max(1 << GRANULE_ORDER)
        .checked_next_power_of_two()?;
    let k = need.trailing_zeros();
    (k <= LARGE_MAX_ORDER).then_some(k)
}

/// Allocates a block of order `k`; null when the OS refuses memory.
pub(crate) fn alloc(k: u32) -> *mut u8 {
    let Some((a, addr)) = arena::alloc_block(k) else {
        return std::ptr::null_mut();
    };
    a.set_pagemap(addr, 1, (k as usize) << 6 | LARGE_TAG);
    STATS.large_blocks.fetch_add(1, Relaxed);
    STATS.large_bytes.fetch_add(1 << k, Relaxed);
    addr as *mut u8
}

/// Frees the large block at `p`.
///
/// # Safety
/// `p` is a live large block of order `k` in `arena`, not used afterwards.
pub(crate) unsafe fn free(arena: &Arena, p: *mut u8, k: u32) {
    STATS.large_blocks.fetch_sub(1, Relaxed);
    STATS.large_bytes.fetch_sub(1 << k, Relaxed);
    arena::free_block(arena, p as usize, 1);
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
