//! The mapped granules of a plan being built: which blocks touch each one, until when it stays
//! mapped, and an index of the granules with room left, by the size of their largest gap and
//! the op at which they would be unmapped.

use rustc_hash::FxHashMap;
use std::collections::BTreeSet;

/// A mapped granule. Invariant: `used` is sorted, its ranges are disjoint, non-empty and inside
/// `0..granule`; `until` is the largest death op of the blocks in `used`.
#[derive(Debug, Default)]
struct Granule {
    /// `(start, end, death op)` of the live blocks touching the granule, offsets inside it.
    used: Vec<(u64, u64, usize)>,
    until: usize,
    /// Index keys the granule is filed under (so they can be removed).
    gap_key: Option<(u32, usize)>,
    tail_key: Option<usize>,
}

/// Every mapped granule, by granule number, and the indexes for placement.
#[derive(Debug)]
pub(super) struct Granules {
    size: u64,
    slots: FxHashMap<u64, Granule>,
    /// `by_gap[c]`: `(until, granule)` of granules whose largest gap `g` has `ilog2(g) == c`.
    by_gap: Vec<BTreeSet<(usize, u64)>>,
    /// `(until, granule)` of granules with free space at their end (a tail).
    tails: BTreeSet<(usize, u64)>,
}

/// How many index entries of the size class of a request are examined for a fit before
/// giving up on that class (larger classes always fit).
const SCAN: usize = 16;

impl Granules {
    pub fn new(size: u64) -> Self {
        Granules {
            size,
            slots: FxHashMap::default(),
            by_gap: (0..64).map(|_| BTreeSet::new()).collect(),
            tails: BTreeSet::new(),
        }
    }

    /// Granules mapped now.
    pub fn mapped(&self) -> usize {
        self.slots.len()
    }

    pub fn is_mapped(&self, g: u64) -> bool {
        self.slots.contains_key(&g)
    }

    /// When granule `g` (mapped) is unmapped unless more blocks land in it.
    pub fn until(&self, g: u64) -> usize {
        self.get(g).until
    }

    /// Offset of the free tail of granule `g`, if it has one.
    pub fn tail_start(&self, g: u64) -> Option<u64> {
        let end = self.get(g).used.last().map_or(0, |u| u.1);
        (end < self.size).then_some(end)
    }

    /// Mapped granules with a gap of at least `size` bytes: the one unmapped soonest at or
    /// after `death`, and the one unmapped latest before it, as `(until, granule)`.
    pub fn find_gaps(&self, size: u64, death: usize) -> [Option<(usize, u64)>; 2] {
        let class = size.ilog2() as usize;
        let mut after: Option<(usize, u64)> = None;
        let mut before: Option<(usize, u64)> = None;
        for (c, set) in self.by_gap.iter().enumerate().skip(class) {
            let fits = |&&(_, g): &&(usize, u64)| c > class || self.largest_gap(g).1 >= size;
            if let Some(&e) = set.range((death, 0)..).take(SCAN).find(fits)
                && after.is_none_or(|a| e < a)
            {
                after = Some(e);
            }
            if let Some(&e) = set.range(..(death, 0)).rev().take(SCAN).find(fits)
                && before.is_none_or(|b| e > b)
            {
                before = Some(e);
            }
        }
        [after, before]
    }

    /// Mapped granules with a free tail, unmapped soonest at or after `death` first, then those
    /// unmapped before it, latest first: at most `n` of each.
    pub fn tail_candidates(&self, death: usize, n: usize) -> Vec<u64> {
        let after = self.tails.range((death, 0)..).take(n);
        let before = self.tails.range(..(death, 0)).rev().take(n);
        after.chain(before).map(|&(_, g)| g).collect()
    }

    /// The start of the best-fitting gap of at least `size` bytes in granule `g`.
    pub fn gap_in(&self, g: u64, size: u64) -> u64 {
        self.gaps(g)
            .filter(|&(_, len)| len >= size)
            .min_by_key(|&(start, len)| (len, start))
            .expect("find_gap found a gap")
            .0
    }

    /// Records a block at `start..end` (offsets in granule `g`) dying at `death`; maps the
    /// granule if it was not. Returns whether it was newly mapped.
    pub fn add(&mut self, g: u64, start: u64, end: u64, death: usize) -> bool {
        let new = !self.slots.contains_key(&g);
        if new {
            self.slots.insert(g, Granule::default());
        }
        self.unindex(g);
        let gr = self.slots.get_mut(&g).expect("mapped");
        let at = gr.used.partition_point(|u| u.0 < start);
        debug_assert!(at == 0 || gr.used[at - 1].1 <= start, "overlap in {g}");
        debug_assert!(
            at == gr.used.len() || end <= gr.used[at].0,
            "overlap in {g}"
        );
        gr.used.insert(at, (start, end, death));
        gr.until = gr.until.max(death);
        self.index(g);
        new
    }

    /// Removes the block at offset `start` of granule `g`. Returns whether the granule is
    /// unmapped now (no live block touches it).
    pub fn remove(&mut self, g: u64, start: u64) -> bool {
        self.unindex(g);
        let gr = self.slots.get_mut(&g).expect("block's granule is mapped");
        let at = gr
            .used
            .binary_search_by_key(&start, |u| u.0)
            .expect("block recorded in its granule");
        gr.used.remove(at);
        if gr.used.is_empty() {
            self.slots.remove(&g);
            return true;
        }
        gr.until = gr.used.iter().map(|u| u.2).max().expect("non-empty");
        self.index(g);
        false
    }

    fn get(&self, g: u64) -> &Granule {
        self.slots.get(&g).expect("granule is mapped")
    }

    /// `(start, len)` of every free gap of granule `g`.
    fn gaps(&self, g: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let used = &self.get(g).used;
        let starts = std::iter::once(0).chain(used.iter().map(|u| u.1));
        let ends = used.iter().map(|u| u.0).chain(std::iter::once(self.size));
        starts
            .zip(ends)
            .filter(|(s, e)| e > s)
            .map(|(s, e)| (s, e - s))
    }

    fn largest_gap(&self, g: u64) -> (u64, u64) {
        self.gaps(g)
            .max_by_key(|&(s, l)| (l, u64::MAX - s))
            .unwrap_or((0, 0))
    }

    fn index(&mut self, g: u64) {
        let (_, gap) = self.largest_gap(g);
        let tail = self.tail_start(g).is_some();
        let gr = self.slots.get_mut(&g).expect("mapped");
        let until = gr.until;
        if gap > 0 {
            let class = gap.ilog2();
            gr.gap_key = Some((class, until));
            self.by_gap[class as usize].insert((until, g));
        }
        if tail {
            gr.tail_key = Some(until);
            self.tails.insert((until, g));
        }
    }

    fn unindex(&mut self, g: u64) {
        let Some(gr) = self.slots.get_mut(&g) else {
            return;
        };
        if let Some((class, until)) = gr.gap_key.take() {
            self.by_gap[class as usize].remove(&(until, g));
        }
        if let Some(until) = gr.tail_key.take() {
            self.tails.remove(&(until, g));
        }
    }
}
