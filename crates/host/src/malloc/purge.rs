//! The purge policy: when free page-heap memory goes back to the OS.
//!
//! Freed spans and large blocks stay mapped and dirty, so reusing them costs no page faults.
//! Each arena keeps two bitmaps over its 64 KiB granules: *dirty* (freed since last purged)
//! and *recent* (freed since the last sweep). A sweep runs at most once per
//! [`PURGE_INTERVAL_MS`], on the allocator's slow paths (a page-heap allocation or free; there
//! is no background thread), and `madvise(MADV_DONTNEED)`s every granule that is free, dirty
//! and *not* recent — i.e. memory that has stayed free for at least one whole interval (one to
//! two seconds) — then clears *recent*. Memory that is reused within a second is never purged,
//! so allocate/free churn never pays page faults; memory a program stops using is returned
//! within two seconds of its next page-heap operation. [`super::purge_all`] purges every free
//! granule at once. Huge allocations are unmapped on free and never wait.

use super::arena::{GRANULE_ORDER, GRANULES};
use crate::os;
use coalesce_core::buddy::Buddy;

/// Memory free for longer than this (and at most twice this) is returned to the OS.
pub const PURGE_INTERVAL_MS: u64 = 1000;
const WORDS: usize = GRANULES / 64;

/// Purge bookkeeping of one arena; lives under the arena's heap lock.
pub(crate) struct PurgeState {
    dirty: [u64; WORDS],
    recent: [u64; WORDS],
    next_sweep_ms: u64,
    /// Bytes returned to the OS by this arena, for statistics.
    pub(crate) purged_bytes: u64,
}

impl PurgeState {
    pub(crate) const fn new() -> PurgeState {
        PurgeState {
            dirty: [0; WORDS],
            recent: [0; WORDS],
            next_sweep_ms: 0,
            purged_bytes: 0,
        }
    }

    /// Marks the granules of a block just freed as dirty and recent.
    pub(crate) fn note_freed(&mut self, arena_base: usize, addr: usize, size: usize) {
        let g0 = (addr - arena_base) >> GRANULE_ORDER;
        for g in g0..g0 + (size >> GRANULE_ORDER) {
            self.dirty[g / 64] |= 1 << (g % 64);
            self.recent[g / 64] |= 1 << (g % 64);
        }
    }

    /// Sweeps if the interval has passed since the last sweep.
    pub(crate) fn maybe_sweep<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        buddy: &Buddy<S>,
        arena_base: usize,
    ) {
        let now = os::now_ms();
        if now >= self.next_sweep_ms {
            self.sweep(buddy, arena_base, false);
            self.next_sweep_ms = now + PURGE_INTERVAL_MS;
        }
    }

    /// Purges free dirty granules (all of them with `everything`, else those not recent).
    /// The caller holds the heap lock, so no free block is handed out during the purge.
    pub(crate) fn sweep<S: AsRef<[u64]> + AsMut<[u64]>>(
        &mut self,
        buddy: &Buddy<S>,
        arena_base: usize,
        everything: bool,
    ) {
        for (addr, k) in buddy.free_blocks() {
            let g0 = (addr as usize - arena_base) >> GRANULE_ORDER;
            let g1 = g0 + (1 << (k - GRANULE_ORDER));
            let mut run: Option<usize> = None;
            for g in g0..=g1 {
                let purgeable = g < g1 && {
                    let (w, b) = (g / 64, 1u64 << (g % 64));
                    self.dirty[w] & b != 0 && (everything || self.recent[w] & b == 0)
                };
                match (purgeable, run) {
                    (true, None) => run = Some(g),
                    (false, Some(start)) => {
                        self.purge_run(arena_base, start, g);
                        run = None;
                    }
                    _ => {}
                }
            }
        }
        self.recent = [0; WORDS];
    }

    fn purge_run(&mut self, arena_base: usize, g0: usize, g1: usize) {
        let addr = arena_base + (g0 << GRANULE_ORDER);
        let len = (g1 - g0) << GRANULE_ORDER;
        // SAFETY: the granules belong to a free buddy block of this arena (the caller iterates
        // free blocks under the heap lock), are page-aligned, and hold no live data.
        unsafe { os::purge(addr as *mut u8, len) };
        for g in g0..g1 {
            self.dirty[g / 64] &= !(1 << (g % 64));
        }
        self.purged_bytes += len as u64;
    }

    /// Bytes of free memory that are dirty (resident or possibly resident).
    pub(crate) fn dirty_bytes(&self) -> u64 {
        let granules: u32 = self.dirty.iter().map(|w| w.count_ones()).sum();
        u64::from(granules) << GRANULE_ORDER
    }
}
