//! The plan's address space, in granule units: runs of granules taken best fit (or at a given
//! place), given back one granule at a time and merged, so the planned range stays small.

use std::collections::{BTreeMap, BTreeSet};

/// Invariant: free runs are disjoint, non-adjacent, non-empty and end below `top`; every
/// granule at or above `top` is free; `by_len` indexes exactly the runs of `by_start`.
#[derive(Debug, Default)]
pub(super) struct GranuleSpace {
    by_start: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
    top: u64,
}

impl GranuleSpace {
    /// Takes `n` contiguous free granules (best fit, lowest address among equals); returns the
    /// first.
    pub fn take(&mut self, n: u64) -> u64 {
        if let Some(&(len, start)) = self.by_len.range((n, 0)..).next() {
            self.remove(start, len);
            if len > n {
                self.insert(start + n, len - n);
            }
            return start;
        }
        let start = self.top;
        self.bump(start + n);
        start
    }

    /// Takes granules `start..start + n` if they are all free.
    pub fn take_at(&mut self, start: u64, n: u64) -> bool {
        if start >= self.top {
            if start > self.top {
                self.insert(self.top, start - self.top);
            }
            self.bump(start + n);
            return true;
        }
        let Some((&s, &len)) = self.by_start.range(..=start).next_back() else {
            return false;
        };
        if s + len < start + n {
            return false;
        }
        self.remove(s, len);
        if start > s {
            self.insert(s, start - s);
        }
        if s + len > start + n {
            self.insert(start + n, s + len - start - n);
        }
        true
    }

    /// Gives back granule `g` (taken before).
    pub fn give(&mut self, g: u64) {
        let (mut start, mut len) = (g, 1);
        if let Some((&s, &l)) = self.by_start.range(..g).next_back()
            && s + l == g
        {
            self.remove(s, l);
            (start, len) = (s, l + 1);
        }
        if let Some(&l) = self.by_start.get(&(g + 1)) {
            self.remove(g + 1, l);
            len += l;
        }
        if start + len == self.top {
            self.top = start;
        } else {
            self.insert(start, len);
        }
    }

    fn bump(&mut self, top: u64) {
        self.top = top;
    }

    fn insert(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
    }

    fn remove(&mut self, start: u64, len: u64) {
        self.by_start.remove(&start);
        self.by_len.remove(&(len, start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_reused_and_merged() {
        let mut s = GranuleSpace::default();
        assert_eq!(s.take(3), 0);
        assert_eq!(s.take(2), 3);
        s.give(1);
        s.give(0);
        assert_eq!(s.take(3), 5, "only two free granules below the top");
        assert_eq!(s.take(2), 0);
        s.give(4);
        s.give(3);
        assert!(s.take_at(3, 2));
        assert!(!s.take_at(2, 1));
        for g in 0..8 {
            s.give(g);
        }
        assert_eq!(s.top, 0);
        assert!(s.by_start.is_empty() && s.by_len.is_empty());
        assert!(s.take_at(2, 1));
        assert_eq!(s.take(2), 0, "the gap below a placed run is free");
    }
}
