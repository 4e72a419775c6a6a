//! One size-class bin: an ordered set of free chunks keyed by `(size, addr)`.
//!
//! Almost every bin holds a handful of chunks, where a sorted vector (binary search, a short
//! `memmove`) is several times faster than a B-tree. A bin that grows large (many free chunks
//! of similar size, which adversarial workloads produce) switches to a B-tree so every
//! operation stays O(log n); it switches back once small again. The thresholds differ so a bin
//! hovering at the boundary does not flip on every operation.

use std::collections::BTreeMap;

/// Key of a free chunk inside its bin: best fit compares sizes first, addresses break ties.
pub(crate) type FreeKey = (u64, u64);

/// Above this many entries a vector bin becomes a B-tree...
const TO_TREE: usize = 64;
/// ...and below this many a B-tree bin becomes a vector again.
const TO_VEC: usize = 16;

#[derive(Clone, Debug)]
pub(crate) enum Bin {
    /// Sorted by key.
    Vec(Vec<(FreeKey, u32)>),
    Tree(BTreeMap<FreeKey, u32>),
}

impl Default for Bin {
    fn default() -> Self {
        Bin::Vec(Vec::new())
    }
}

impl Bin {
    /// Inserts `key`; returns false if it was present.
    #[inline]
    pub fn insert(&mut self, key: FreeKey, chunk: u32) -> bool {
        match self {
            Bin::Vec(v) => match v.binary_search_by(|e| e.0.cmp(&key)) {
                Ok(_) => false,
                Err(i) => {
                    v.insert(i, (key, chunk));
                    if v.len() > TO_TREE {
                        *self = Bin::Tree(v.drain(..).collect());
                    }
                    true
                }
            },
            Bin::Tree(t) => t.insert(key, chunk).is_none(),
        }
    }

    #[inline]
    pub fn remove(&mut self, key: &FreeKey) -> Option<u32> {
        match self {
            Bin::Vec(v) => {
                let i = v.binary_search_by(|e| e.0.cmp(key)).ok()?;
                Some(v.remove(i).1)
            }
            Bin::Tree(t) => {
                let chunk = t.remove(key)?;
                if t.len() < TO_VEC {
                    *self = Bin::Vec(std::mem::take(t).into_iter().collect());
                }
                Some(chunk)
            }
        }
    }

    /// The smallest entry not below `key`.
    #[inline]
    pub fn at_or_after(&self, key: FreeKey) -> Option<(FreeKey, u32)> {
        match self {
            Bin::Vec(v) => v.get(v.partition_point(|e| e.0 < key)).copied(),
            Bin::Tree(t) => t.range(key..).next().map(|(&k, &c)| (k, c)),
        }
    }

    #[inline]
    pub fn first(&self) -> Option<(FreeKey, u32)> {
        match self {
            Bin::Vec(v) => v.first().copied(),
            Bin::Tree(t) => t.first_key_value().map(|(&k, &c)| (k, c)),
        }
    }

    pub fn last(&self) -> Option<(FreeKey, u32)> {
        match self {
            Bin::Vec(v) => v.last().copied(),
            Bin::Tree(t) => t.last_key_value().map(|(&k, &c)| (k, c)),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        match self {
            Bin::Vec(v) => v.len(),
            Bin::Tree(t) => t.len(),
        }
    }

    /// The first entry not below `key` (in order, at most `limit` looked at) that `pred`
    /// accepts (given the key and the chunk); also returns how many were looked at.
    #[inline]
    pub fn find_from(
        &self,
        key: FreeKey,
        limit: usize,
        mut pred: impl FnMut(FreeKey, u32) -> bool,
    ) -> (Option<(FreeKey, u32)>, usize) {
        let mut seen = 0;
        let mut visit = |(k, c): (FreeKey, u32)| {
            seen += 1;
            pred(k, c).then_some((k, c))
        };
        let hit = match self {
            Bin::Vec(v) => v[v.partition_point(|e| e.0 < key)..]
                .iter()
                .take(limit)
                .find_map(|&e| visit(e)),
            Bin::Tree(t) => t
                .range(key..)
                .take(limit)
                .find_map(|(&k, &c)| visit((k, c))),
        };
        (hit, seen)
    }

    /// Calls `visit` with every entry not below `key`, in order.
    pub fn for_each_from(&self, key: FreeKey, mut visit: impl FnMut(FreeKey, u32)) {
        match self {
            Bin::Vec(v) => v[v.partition_point(|e| e.0 < key)..]
                .iter()
                .for_each(|&(k, c)| visit(k, c)),
            Bin::Tree(t) => t.range(key..).for_each(|(&k, &c)| visit(k, c)),
        }
    }

    /// Entries not below `key`, in order.
    pub fn iter_from(&self, key: FreeKey) -> Box<dyn Iterator<Item = (FreeKey, u32)> + '_> {
        match self {
            Bin::Vec(v) => Box::new(v[v.partition_point(|e| e.0 < key)..].iter().copied()),
            Bin::Tree(t) => Box::new(t.range(key..).map(|(&k, &c)| (k, c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The bin behaves as a BTreeMap through every switch between its two forms.
        #[test]
        fn matches_a_btreemap(ops in prop::collection::vec((any::<bool>(), 0u64..200, 0u64..4), 1..2000)) {
            let (mut bin, mut model) = (Bin::default(), BTreeMap::new());
            for (insert, size, addr) in ops {
                let key = (size, addr);
                if insert {
                    prop_assert_eq!(bin.insert(key, size as u32), model.insert(key, size as u32).is_none());
                } else {
                    prop_assert_eq!(bin.remove(&key), model.remove(&key));
                }
                prop_assert_eq!(bin.len(), model.len());
                prop_assert_eq!(bin.first(), model.first_key_value().map(|(&k, &c)| (k, c)));
                prop_assert_eq!(bin.last(), model.last_key_value().map(|(&k, &c)| (k, c)));
                let probe = (size / 2, addr);
                prop_assert_eq!(bin.at_or_after(probe), model.range(probe..).next().map(|(&k, &c)| (k, c)));
                prop_assert!(bin.iter_from((0, 0)).eq(model.iter().map(|(&k, &c)| (k, c))));
            }
        }
    }
}
