//! The purge policy: when free page-heap memory goes back to the OS.
//!
//! Freed spans and large blocks stay mapped and dirty, so reusing them costs no page faults.
//! Each arena keeps two bitmaps over its 8 KiB granules: *dirty* (a free granule that may be
//! resident) and *recent* (freed since the last sweep), and a count of dirty granules. Two
//! rules, both applied on the allocator's slow paths (page-heap allocations and frees; there
//! is no background thread):
//!
//! 1. **Age**: at most once per [`PURGE_INTERVAL_MS`] a sweep `madvise(MADV_DONTNEED)`s every
//!    free granule that is dirty and not recent — memory that stayed free for a whole
//!    interval, i.e. one to two seconds — then clears *recent*. Memory reused within a
//!    second is never purged, so allocate/free churn never pays page faults.
//! 2. **Amount**: when an arena's dirty free memory exceeds the largest of [`DIRTY_MIN`],
//!    an eighth of its memory in use, and the *headroom* (the high-water mark of its memory
//!    in use since the last age sweep minus the memory in use now), the old dirty granules
//!    are purged at once, then the recent ones if that was not enough to get under half the
//!    limit (hysteresis: a sweep frees at least half a limit, so sweeps stay rare). The
//!    headroom term lets a program whose use swings (large buffers freed and allocated
//!    again) keep its pages resident without its resident set ever exceeding the peak of
//!    the last second or two by more than the other terms; rule 1 still returns whatever
//!    stays free for a second.
//!
//! 3. **Fragments**: when a page-heap allocation had to take only clean (never used or
//!    already purged) memory although at least [`FRAGMENT_MIN`] of dirty free memory exists,
//!    that dirty memory is in free blocks too small or misaligned for the request; the dirty
//!    granules of free blocks smaller than the request are purged (rate-limited: only once
//!    the dirty amount has doubled since the last such sweep).
//!
//! [`super::purge_all`] purges every free granule at once. Huge allocations are unmapped on
//! free and never wait.

use super::arena::{GRANULE_ORDER, GRANULES};
use crate::os;
use coalesce_core::buddy::{Buddy, BuddyStorage};

/// Memory free for longer than this (and at most twice this) is returned to the OS.
pub const PURGE_INTERVAL_MS: u64 = 1000;
/// Dirty free memory an arena may always keep (64 MiB); above it, at most 1/8 of in-use.
pub const DIRTY_MIN: usize = 64 << 20;
/// Dirty free memory below which rule 3 never fires (16 MiB).
pub const FRAGMENT_MIN: usize = 16 << 20;
const WORDS: usize = GRANULES / 64;

/// Purge bookkeeping of one arena; lives under the arena's heap lock.
pub(crate) struct PurgeState {
    dirty: [u64; WORDS],
    recent: [u64; WORDS],
    /// Set bits of `dirty`.
    dirty_granules: usize,
    next_sweep_ms: u64,
    /// Most bytes in use since the last age sweep (rule 2's headroom).
    high_water: u64,
    /// Dirty granules left by the last rule-3 sweep.
    dirty_after_fragment_sweep: usize,
    /// Bytes returned to the OS by this arena, for statistics.
    pub(crate) purged_bytes: u64,
}

impl PurgeState {
    pub(crate) const fn new() -> PurgeState {
        PurgeState {
            dirty: [0; WORDS],
            recent: [0; WORDS],
            dirty_granules: 0,
            next_sweep_ms: 0,
            high_water: 0,
            dirty_after_fragment_sweep: 0,
            purged_bytes: 0,
        }
    }

    fn granules(arena_base: usize, addr: usize, size: usize) -> std::ops::Range<usize> {
        let g0 = (addr - arena_base) >> GRANULE_ORDER;
        g0..g0 + (size >> GRANULE_ORDER)
    }

    /// Marks the granules of a block just freed as dirty and recent.
    pub(crate) fn note_freed(&mut self, arena_base: usize, addr: usize, size: usize) {
        let g = Self::granules(arena_base, addr, size);
        self.dirty_granules += set_bits(&mut self.dirty, g.clone());
        set_bits(&mut self.recent, g);
    }

    /// Granules of a block just allocated are no longer free: they leave the dirty count.
    /// Applies rule 3 when the block was entirely clean.
    pub(crate) fn note_allocated<S: BuddyStorage>(
        &mut self,
        buddy: &Buddy<S>,
        arena_base: usize,
        addr: usize,
        size: usize,
    ) {
        let reused = clear_bits(&mut self.dirty, Self::granules(arena_base, addr, size));
        self.dirty_granules -= reused;
        let dirty = self.dirty_granules;
        if reused == 0
            && self.dirty_bytes() >= FRAGMENT_MIN as u64
            && dirty >= 2 * self.dirty_after_fragment_sweep
        {
            self.sweep_below(buddy, arena_base, size);
            self.dirty_after_fragment_sweep = self.dirty_granules;
        }
    }

    /// Applies both rules of the module docs.
    pub(crate) fn maybe_sweep<S: BuddyStorage>(&mut self, buddy: &Buddy<S>, arena_base: usize) {
        let now = os::now_ms();
        let in_use = buddy.in_use_bytes();
        if now >= self.next_sweep_ms {
            self.sweep(buddy, arena_base, false);
            self.next_sweep_ms = now + PURGE_INTERVAL_MS;
            self.high_water = in_use;
        }
        self.high_water = self.high_water.max(in_use);
        let headroom = (self.high_water - in_use) as usize;
        let limit = DIRTY_MIN.max(in_use as usize / 8).max(headroom);
        if self.dirty_bytes() > limit as u64 {
            self.sweep(buddy, arena_base, false);
            if self.dirty_bytes() > (limit / 2) as u64 {
                self.sweep(buddy, arena_base, true);
            }
        }
    }

    /// Purges free dirty granules (all of them with `everything`, else those not recent)
    /// and clears *recent*. The caller holds the heap lock, so no free block is handed out
    /// during the purge.
    pub(crate) fn sweep<S: BuddyStorage>(
        &mut self,
        buddy: &Buddy<S>,
        arena_base: usize,
        everything: bool,
    ) {
        self.purge_free_blocks(buddy, arena_base, everything, usize::MAX);
        self.recent = [0; WORDS];
    }

    /// Rule 3: purges every dirty granule of free blocks smaller than `size` bytes.
    fn sweep_below<S: BuddyStorage>(&mut self, buddy: &Buddy<S>, arena_base: usize, size: usize) {
        self.purge_free_blocks(buddy, arena_base, true, size);
    }

    fn purge_free_blocks<S: BuddyStorage>(
        &mut self,
        buddy: &Buddy<S>,
        arena_base: usize,
        everything: bool,
        below: usize,
    ) {
        for (addr, k) in buddy.free_blocks() {
            if 1usize << k >= below {
                continue;
            }
            let span = Self::granules(arena_base, addr as usize, 1 << k);
            let mut run: Option<usize> = None;
            for g in span.start..=span.end {
                let purgeable = g < span.end && {
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
    }

    fn purge_run(&mut self, arena_base: usize, g0: usize, g1: usize) {
        let addr = arena_base + (g0 << GRANULE_ORDER);
        let len = (g1 - g0) << GRANULE_ORDER;
        // SAFETY: the granules belong to a free buddy block of this arena (the caller iterates
        // free blocks under the heap lock), are page-aligned, and hold no live data.
        unsafe { os::purge(addr as *mut u8, len) };
        self.dirty_granules -= clear_bits(&mut self.dirty, g0..g1);
        self.purged_bytes += len as u64;
    }

    /// Bytes of free memory that are dirty (resident or possibly resident).
    pub(crate) fn dirty_bytes(&self) -> u64 {
        (self.dirty_granules as u64) << GRANULE_ORDER
    }
}

/// Sets bits `r` of `bits`; returns how many were clear. Whole words at a time (a 64 MiB
/// block is 128 words), so large frees stay cheap under the heap lock.
fn set_bits(bits: &mut [u64], r: std::ops::Range<usize>) -> usize {
    update_bits(bits, r, |w, m| {
        let n = ones(m & !*w);
        *w |= m;
        n
    })
}

/// Clears bits `r` of `bits`; returns how many were set.
fn clear_bits(bits: &mut [u64], r: std::ops::Range<usize>) -> usize {
    update_bits(bits, r, |w, m| {
        let n = ones(m & *w);
        *w &= !m;
        n
    })
}

/// `count_ones` with the common all-zero and all-one words first: the baseline x86-64
/// target has no `popcnt` instruction, and whole blocks are mostly uniform words.
#[inline(always)]
fn ones(x: u64) -> usize {
    match x {
        0 => 0,
        u64::MAX => 64,
        _ => x.count_ones() as usize,
    }
}

/// Applies `f(word, mask)` to the words covering bits `r` and sums its results; the full
/// words in the middle get `mask = !0` in a tight loop the compiler vectorises.
#[inline(always)]
fn update_bits(
    bits: &mut [u64],
    r: std::ops::Range<usize>,
    f: impl Fn(&mut u64, u64) -> usize,
) -> usize {
    if r.is_empty() {
        return 0;
    }
    let (w0, w1) = (r.start / 64, (r.end - 1) / 64);
    let head = !0u64 << (r.start % 64);
    let tail = !0u64 >> (63 - (r.end - 1) % 64);
    if w0 == w1 {
        return f(&mut bits[w0], head & tail);
    }
    let mut n = f(&mut bits[w0], head) + f(&mut bits[w1], tail);
    for w in &mut bits[w0 + 1..w1] {
        n += f(w, !0);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_ranges_match_a_bit_by_bit_model() {
        let mut r = 0x2545_f491_4f6c_dd1du64;
        let mut bits = [0u64; 8];
        let mut model = [false; 512];
        for _ in 0..2000 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            let a = (r % 512) as usize;
            let b = a + ((r >> 20) % (513 - a as u64)) as usize;
            let want = model[a..b].iter().filter(|&&x| x != (r & 1 == 1)).count();
            let got = if r & 1 == 1 {
                set_bits(&mut bits, a..b)
            } else {
                clear_bits(&mut bits, a..b)
            };
            assert_eq!(got, want, "{a}..{b}");
            model[a..b].fill(r & 1 == 1);
            for (i, &m) in model.iter().enumerate() {
                assert_eq!(bits[i / 64] >> (i % 64) & 1 == 1, m, "bit {i}");
            }
        }
    }
}
