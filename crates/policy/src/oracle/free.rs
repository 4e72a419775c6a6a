//! The free bytes of the plan's address line (everything no live block occupies), as maximal
//! ranges indexed by length, so a large block can be placed against its neighbours and share
//! their partly used granules.

use std::collections::{BTreeMap, BTreeSet};

/// The end of the address line (granule-aligned for any granule up to 2^62 bytes): the last
/// free range runs to here.
pub(super) const END: u64 = 1 << 62;

/// Invariant: ranges are disjoint, non-adjacent (merged) and non-empty; together with the live
/// blocks they tile `0..END`; `by_len` indexes exactly the ranges of `by_start`.
#[derive(Debug)]
pub(super) struct FreeRanges {
    by_start: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
}

impl FreeRanges {
    pub fn new() -> Self {
        let mut f = FreeRanges {
            by_start: BTreeMap::new(),
            by_len: BTreeSet::new(),
        };
        f.insert(0, END);
        f
    }

    /// `(start, end)` of the `n` shortest free ranges of at least `size` bytes, and of the last
    /// range (the unbounded one at the end of the used space).
    pub fn candidates(&self, size: u64, n: usize) -> Vec<(u64, u64)> {
        let mut c: Vec<(u64, u64)> = self
            .by_len
            .range((size, 0)..)
            .take(n)
            .map(|&(len, start)| (start, start + len))
            .collect();
        let (&start, &end) = self.by_start.last_key_value().expect("the end is free");
        if !c.contains(&(start, end)) {
            c.push((start, end));
        }
        c
    }

    /// Marks `start..start + size` used; it must be free.
    pub fn take(&mut self, start: u64, size: u64) {
        let (&s, &e) = self
            .by_start
            .range(..=start)
            .next_back()
            .expect("placed in a free range");
        debug_assert!(start + size <= e, "placed outside the free range");
        self.remove(s, e);
        if start > s {
            self.insert(s, start);
        }
        if e > start + size {
            self.insert(start + size, e);
        }
    }

    /// Marks `start..start + size` free again.
    pub fn give(&mut self, start: u64, size: u64) {
        let (mut s, mut e) = (start, start + size);
        if let Some((&ps, &pe)) = self.by_start.range(..start).next_back()
            && pe == start
        {
            self.remove(ps, pe);
            s = ps;
        }
        if let Some(&ne) = self.by_start.get(&e) {
            self.remove(e, ne);
            e = ne;
        }
        self.insert(s, e);
    }

    fn insert(&mut self, s: u64, e: u64) {
        self.by_start.insert(s, e);
        self.by_len.insert((e - s, s));
    }

    fn remove(&mut self, s: u64, e: u64) {
        self.by_start.remove(&s);
        self.by_len.remove(&(e - s, s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_and_merge() {
        let mut f = FreeRanges::new();
        f.take(0, 100);
        f.take(300, 100);
        assert_eq!(f.candidates(150, 4), vec![(100, 300), (400, END)]);
        assert_eq!(f.candidates(250, 4), vec![(400, END)]);
        f.give(0, 100);
        assert_eq!(f.candidates(250, 4), vec![(0, 300), (400, END)]);
        f.give(300, 100);
        assert_eq!(f.candidates(1, 4), vec![(0, END)]);
    }
}
