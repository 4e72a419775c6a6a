//! The memo: objects stored by index so later opcodes can refer to them again.

use super::value::Value;
use rustc_hash::FxHashMap;

/// Indices up to this far past the dense part extend it; beyond, they go to a map, so a
/// hostile `LONG_BINPUT 4294967295` costs one map entry, not 4 billion slots.
const MAX_GAP: u32 = 1 << 16;

/// What a memo index holds.
#[derive(Clone, Debug)]
pub(super) enum Entry {
    /// A finished object.
    Done(Value),
    /// The list or dict at this stack position, still being filled.
    Open(usize),
}

/// Memo storage: dense for the indices picklers write (0, 1, 2, ... in order), sparse beyond.
#[derive(Debug, Default)]
pub(super) struct Memo {
    dense: Vec<Option<Entry>>,
    sparse: FxHashMap<u32, Entry>,
    /// Occupied indices: MEMOIZE stores at this index, as CPython does.
    len: u64,
}

impl Memo {
    pub(super) fn get(&self, idx: u32) -> Option<&Entry> {
        match self.dense.get(idx as usize) {
            Some(slot) => slot.as_ref(),
            None => self.sparse.get(&idx),
        }
    }

    pub(super) fn get_mut(&mut self, idx: u32) -> Option<&mut Entry> {
        match self.dense.get_mut(idx as usize) {
            Some(slot) => slot.as_mut(),
            None => self.sparse.get_mut(&idx),
        }
    }

    /// The index MEMOIZE stores at; `None` once every `u32` index is taken.
    pub(super) fn next_index(&self) -> Option<u32> {
        u32::try_from(self.len).ok()
    }

    pub(super) fn put(&mut self, idx: u32, entry: Entry) {
        let dense_len = self.dense.len() as u32;
        let was_new = if idx < dense_len {
            self.dense[idx as usize].replace(entry).is_none()
        } else if idx - dense_len <= MAX_GAP && self.sparse.is_empty() {
            self.dense.resize(idx as usize, None);
            self.dense.push(Some(entry));
            true
        } else {
            self.sparse.insert(idx, entry).is_none()
        };
        if was_new {
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(i: i64) -> Entry {
        Entry::Done(Value::Int(i))
    }

    fn int_at(m: &Memo, idx: u32) -> Option<i64> {
        match m.get(idx)? {
            Entry::Done(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    #[test]
    fn dense_sparse_and_memoize_index() {
        let mut m = Memo::default();
        m.put(m.next_index().unwrap(), done(10));
        m.put(m.next_index().unwrap(), done(11));
        m.put(5, done(15));
        assert_eq!(m.next_index(), Some(3));
        m.put(u32::MAX, done(99));
        m.put(5, done(16));
        assert_eq!(m.next_index(), Some(4), "overwriting does not count");
        assert_eq!(int_at(&m, 0), Some(10));
        assert_eq!(int_at(&m, 5), Some(16));
        assert_eq!(int_at(&m, u32::MAX), Some(99));
        assert!(m.get(3).is_none());
        assert!(m.get(7).is_none());
        assert!(m.dense.len() < 10);
    }
}
