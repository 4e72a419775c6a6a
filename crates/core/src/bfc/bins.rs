//! The free-chunk index: size-class bins, each an ordered set of `(size, addr)`.
//!
//! Bins are size classes with four bins per power of two (measured in alignment units), so a
//! bin's chunks differ in size by at most 25%. Inside a bin chunks are ordered by size, then
//! address. A bitmap of non-empty bins finds the next bin that can serve a request without
//! visiting empty ones. Best fit is therefore exact and O(log n): a `range` seek in the first
//! candidate bin, else the smallest entry of the next non-empty bin.

use super::bin::Bin;
pub(crate) use super::bin::FreeKey;

pub(crate) const NUM_BINS: usize = 256;
const WORDS: usize = NUM_BINS / 64;
/// log2 of the number of bins per power of two.
const SUB_BITS: u32 = 2;

/// Size class of a chunk of `units` alignment units (`units >= 1`). Monotonic in `units`.
#[inline]
pub(crate) fn bin_index(units: u64) -> usize {
    debug_assert!(units > 0);
    let msb = 63 - units.leading_zeros();
    if msb < SUB_BITS {
        units as usize
    } else {
        let sub = (units >> (msb - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        (((msb - SUB_BITS + 1) << SUB_BITS) as u64 + sub) as usize
    }
}

#[derive(Clone, Debug)]
pub(crate) struct FreeBins {
    bins: Vec<Bin>,
    nonempty: [u64; WORDS],
    /// log2 of the allocator's alignment: sizes are binned in alignment units.
    shift: u32,
}

impl FreeBins {
    pub fn new(shift: u32) -> Self {
        FreeBins {
            bins: vec![Bin::default(); NUM_BINS],
            nonempty: [0; WORDS],
            shift,
        }
    }

    #[inline]
    pub fn bin_for(&self, size: u64) -> usize {
        bin_index(size >> self.shift)
    }

    pub fn insert(&mut self, size: u64, addr: u64, chunk: u32) {
        let b = self.bin_for(size);
        let fresh = self.bins[b].insert((size, addr), chunk);
        debug_assert!(fresh, "free chunk at {addr:#x} inserted twice");
        self.nonempty[b / 64] |= 1 << (b % 64);
    }

    pub fn remove(&mut self, size: u64, addr: u64) -> u32 {
        let b = self.bin_for(size);
        let bin = &mut self.bins[b];
        let chunk = bin
            .remove(&(size, addr))
            .expect("free chunk missing from its bin");
        if bin.is_empty() {
            self.nonempty[b / 64] &= !(1 << (b % 64));
        }
        chunk
    }

    /// The smallest free chunk of at least `size` bytes, lowest address among equals.
    pub fn best_fit(&self, size: u64) -> Option<(FreeKey, u32)> {
        let first = self.bin_for(size);
        if let Some(hit) = self.bins[first].at_or_after((size, 0)) {
            return Some(hit);
        }
        let b = self.next_nonempty(first + 1)?;
        self.bins[b].first()
    }

    /// Free chunks of at least `size` bytes in best-fit order: `(size, addr)` ascending.
    pub fn fits(&self, size: u64) -> impl Iterator<Item = (FreeKey, u32)> + '_ {
        let first = self.bin_for(size);
        let in_first = self.bins[first].iter_from((size, 0));
        let later = (first + 1..NUM_BINS)
            .filter(|&b| self.bin_is_marked(b))
            .flat_map(move |b| self.bins[b].iter_from((0, 0)));
        in_first.chain(later)
    }

    /// The first free chunk of at least `size` bytes, in best-fit order and among the first
    /// `limit` such chunks, that `pred` accepts (given `(size, addr)` and the chunk). No
    /// allocation, no boxing: callers use it on the allocation path.
    pub fn find_fit(
        &self,
        size: u64,
        limit: usize,
        mut pred: impl FnMut(FreeKey, u32) -> bool,
    ) -> Option<(FreeKey, u32)> {
        let first = self.bin_for(size);
        let (hit, mut seen) = self.bins[first].find_from((size, 0), limit, &mut pred);
        if hit.is_some() {
            return hit;
        }
        let mut b = first + 1;
        while seen < limit {
            b = self.next_nonempty(b)?;
            let (hit, n) = self.bins[b].find_from((0, 0), limit - seen, &mut pred);
            if hit.is_some() {
                return hit;
            }
            seen += n;
            b += 1;
        }
        None
    }

    /// Calls `visit` with every free chunk of at least `size` bytes (smallest first).
    pub fn for_each_at_least(&self, size: u64, mut visit: impl FnMut(FreeKey, u32)) {
        let first = self.bin_for(size);
        self.bins[first].for_each_from((size, 0), &mut visit);
        let mut b = first + 1;
        while let Some(next) = self.next_nonempty(b) {
            self.bins[next].for_each_from((0, 0), &mut visit);
            b = next + 1;
        }
    }

    /// The largest free chunk (highest address among equals).
    pub fn largest(&self) -> Option<(FreeKey, u32)> {
        let b = self.last_nonempty()?;
        self.bins[b].last()
    }

    /// Every free chunk with its bin: for invariant checks.
    pub fn entries(&self) -> impl Iterator<Item = (usize, FreeKey, u32)> + '_ {
        self.bins
            .iter()
            .enumerate()
            .flat_map(|(b, bin)| bin.iter_from((0, 0)).map(move |(k, c)| (b, k, c)))
    }

    pub fn bin_is_marked(&self, b: usize) -> bool {
        self.nonempty[b / 64] & (1 << (b % 64)) != 0
    }

    pub fn bin_len(&self, b: usize) -> usize {
        self.bins[b].len()
    }

    fn next_nonempty(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        if w >= WORDS {
            return None;
        }
        let mut bits = self.nonempty[w] & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            if w == WORDS {
                return None;
            }
            bits = self.nonempty[w];
        }
    }

    fn last_nonempty(&self) -> Option<usize> {
        (0..WORDS)
            .rev()
            .find(|&w| self.nonempty[w] != 0)
            .map(|w| w * 64 + 63 - self.nonempty[w].leading_zeros() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_index_is_monotonic_and_bounded() {
        let mut prev = 0;
        for units in 1..100_000u64 {
            let b = bin_index(units);
            assert!(b >= prev, "bin_index not monotonic at {units}");
            prev = b;
        }
        for shift in 17..64u32 {
            let b = bin_index(1u64 << shift);
            assert!(b >= prev, "bin_index not monotonic at 2^{shift}");
            prev = b;
        }
        assert!(bin_index(u64::MAX) < NUM_BINS);
    }

    #[test]
    fn bins_span_at_most_a_quarter_octave() {
        // Within one bin, the largest size is < 1.25x the smallest (for sizes >= 4 units).
        for units in 4..10_000u64 {
            let b = bin_index(units);
            let hi = (units..).take_while(|&u| bin_index(u) == b).last().unwrap();
            let lo = (1..=units)
                .rev()
                .take_while(|&u| bin_index(u) == b)
                .last()
                .unwrap();
            assert!(hi * 4 < lo * 5, "bin {b}: {lo}..={hi}");
        }
    }

    #[test]
    fn best_fit_crosses_bins_and_breaks_ties_by_address() {
        let mut f = FreeBins::new(9);
        f.insert(4096, 0x9000, 1);
        f.insert(4096, 0x1000, 2);
        f.insert(1 << 20, 0x100000, 3);
        assert_eq!(f.best_fit(4096), Some(((4096, 0x1000), 2)));
        assert_eq!(f.best_fit(4097), Some(((1 << 20, 0x100000), 3)));
        assert_eq!(f.best_fit((1 << 20) + 512), None);
        assert_eq!(f.largest(), Some(((1 << 20, 0x100000), 3)));
        assert_eq!(f.remove(4096, 0x1000), 2);
        assert_eq!(f.best_fit(512), Some(((4096, 0x9000), 1)));
        f.remove(4096, 0x9000);
        f.remove(1 << 20, 0x100000);
        assert_eq!(f.best_fit(512), None);
        assert_eq!(f.largest(), None);
    }
}
