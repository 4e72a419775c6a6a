//! A hierarchical bitset over a slice of words: find-first-set in O(levels) = O(log64 n).
//!
//! Level 0 holds one bit per element; each word of level `l + 1` holds one bit per word of level
//! `l`, set exactly when that word is non-zero. The top level is a single word. A buddy order's
//! free blocks live in one of these, so "any free block of order k?" and "the lowest one" are a
//! handful of word reads, never a scan of a free list.

/// Most levels a bitset may have: 64^6 words = 2^42 elements.
pub(crate) const MAX_LEVELS: usize = 6;

/// Where the levels of one bitset live inside the shared word storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HierLayout {
    /// Word offset of each level, bottom (level 0) first.
    offset: [usize; MAX_LEVELS],
    /// Words in each level.
    words: [usize; MAX_LEVELS],
    levels: usize,
}

impl HierLayout {
    /// Lays out a bitset of `bits` elements starting at word `start`; returns it and the end.
    pub(crate) fn new(bits: u64, start: usize) -> (HierLayout, usize) {
        let mut l = HierLayout::default();
        let mut at = start;
        let mut n = bits.max(1).div_ceil(64) as usize;
        loop {
            assert!(l.levels < MAX_LEVELS, "bitset too large");
            l.offset[l.levels] = at;
            l.words[l.levels] = n;
            l.levels += 1;
            at += n;
            if n == 1 {
                return (l, at);
            }
            n = n.div_ceil(64);
        }
    }

    #[inline]
    pub(crate) fn get(&self, w: &[u64], i: u64) -> bool {
        w[self.offset[0] + (i / 64) as usize] >> (i % 64) & 1 == 1
    }

    /// Sets bit `i`, propagating "non-empty" upwards while words turn non-zero.
    #[inline]
    pub(crate) fn set(&self, w: &mut [u64], mut i: u64) {
        for l in 0..self.levels {
            let word = &mut w[self.offset[l] + (i / 64) as usize];
            let was_zero = *word == 0;
            *word |= 1 << (i % 64);
            if !was_zero {
                return;
            }
            i /= 64;
        }
    }

    /// Clears bit `i`, propagating "empty" upwards while words turn zero.
    #[inline]
    pub(crate) fn clear(&self, w: &mut [u64], mut i: u64) {
        for l in 0..self.levels {
            let word = &mut w[self.offset[l] + (i / 64) as usize];
            *word &= !(1 << (i % 64));
            if *word != 0 {
                return;
            }
            i /= 64;
        }
    }

    /// The lowest set bit, if any.
    #[inline]
    pub(crate) fn first(&self, w: &[u64]) -> Option<u64> {
        let mut i = 0u64;
        for l in (0..self.levels).rev() {
            let word = w[self.offset[l] + i as usize];
            if word == 0 {
                return None;
            }
            i = i * 64 + u64::from(word.trailing_zeros());
        }
        Some(i)
    }

    /// The set bits of level 0, in order (for the invariant checker).
    pub(crate) fn iter_set<'a>(&self, w: &'a [u64]) -> impl Iterator<Item = u64> + 'a {
        let base = self.offset[0];
        let n = self.words[0];
        (0..n).flat_map(move |wi| {
            let word = w[base + wi];
            (0..64u64)
                .filter(move |b| word >> b & 1 == 1)
                .map(move |b| wi as u64 * 64 + b)
        })
    }

    /// Whether every summary bit says exactly "the word below is non-zero".
    pub(crate) fn summaries_consistent(&self, w: &[u64]) -> bool {
        (1..self.levels).all(|l| {
            (0..self.words[l - 1]).all(|wi| {
                let below = w[self.offset[l - 1] + wi] != 0;
                let bit = w[self.offset[l] + wi / 64] >> (wi % 64) & 1 == 1;
                below == bit
            }) && (0..self.words[l] * 64)
                .skip(self.words[l - 1])
                .all(|wi| w[self.offset[l] + wi / 64] >> (wi % 64) & 1 == 0)
        })
    }
}

/// A flat bitset (one level) inside the shared storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FlatLayout {
    offset: usize,
}

impl FlatLayout {
    pub(crate) fn new(bits: u64, start: usize) -> (FlatLayout, usize) {
        (
            FlatLayout { offset: start },
            start + bits.max(1).div_ceil(64) as usize,
        )
    }

    #[inline]
    pub(crate) fn get(&self, w: &[u64], i: u64) -> bool {
        w[self.offset + (i / 64) as usize] >> (i % 64) & 1 == 1
    }

    #[inline]
    pub(crate) fn put(&self, w: &mut [u64], i: u64, on: bool) {
        let word = &mut w[self.offset + (i / 64) as usize];
        if on {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn matches_a_set(bits in 1u64..20_000, ops in prop::collection::vec((any::<bool>(), 0u64..20_000), 1..400)) {
            let (l, end) = HierLayout::new(bits, 3);
            let mut w = vec![0u64; end];
            let mut model = BTreeSet::new();
            for (set, i) in ops {
                let i = i % bits;
                if set { l.set(&mut w, i); model.insert(i); } else { l.clear(&mut w, i); model.remove(&i); }
                prop_assert_eq!(l.first(&w), model.iter().next().copied());
                prop_assert!(l.summaries_consistent(&w));
                prop_assert_eq!(l.get(&w, i), model.contains(&i));
            }
            prop_assert_eq!(l.iter_set(&w).collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
            prop_assert!(w[..3].iter().all(|&x| x == 0), "writes stay inside the layout");
        }
    }
}
