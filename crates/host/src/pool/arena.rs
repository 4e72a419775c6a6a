//! [`Arena`]: bump allocation over OS chunks, freed all at once.
//!
//! Allocation bumps a cursor in the current chunk; a request that does not fit starts a new
//! chunk of twice the previous size (at least the request). Nothing is freed individually:
//! [`Arena::reset`] keeps the largest chunk (hot, for the next round) and unmaps the rest;
//! dropping the arena unmaps everything. Values placed in the arena are never dropped.

use crate::os;
use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

const FIRST_CHUNK: usize = 64 << 10;

/// Counters of an [`Arena`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    pub chunks: usize,
    /// Bytes mapped.
    pub capacity: usize,
    /// Bytes handed out since the last reset (alignment padding included).
    pub used: usize,
}

/// A bump arena. See the module docs. Not `Sync`: one thread allocates at a time.
#[derive(Debug)]
pub struct Arena {
    /// `(base, len)` of every chunk; the last one is current.
    chunks: RefCell<Vec<(usize, usize)>>,
    cursor: Cell<usize>,
    end: Cell<usize>,
    used: Cell<usize>,
}

// SAFETY: the arena owns its chunks; moving it to another thread moves that ownership.
unsafe impl Send for Arena {}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

impl Arena {
    /// An empty arena; the first allocation maps the first chunk.
    pub fn new() -> Arena {
        Arena {
            chunks: RefCell::new(Vec::new()),
            cursor: Cell::new(0),
            end: Cell::new(0),
            used: Cell::new(0),
        }
    }

    /// Memory for `layout`, valid until the next [`Arena::reset`] or drop. `None` when the OS
    /// refuses memory.
    pub fn alloc(&self, layout: Layout) -> Option<NonNull<u8>> {
        let size = layout.size().max(1);
        let start = self.cursor.get().checked_next_multiple_of(layout.align())?;
        if start != 0 && start.checked_add(size)? <= self.end.get() {
            let padding = start - self.cursor.get();
            self.cursor.set(start + size);
            self.used.set(self.used.get() + padding + size);
            return NonNull::new(start as *mut u8);
        }
        self.grow(size, layout.align())
    }

    #[cold]
    fn grow(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let last = self.chunks.borrow().last().map_or(FIRST_CHUNK / 2, |c| c.1);
        let len = (last * 2)
            .max(size.checked_add(align)?)
            .next_multiple_of(os::PAGE);
        let base = os::map(len)?.as_ptr() as usize;
        self.chunks.borrow_mut().push((base, len));
        let start = base.next_multiple_of(align);
        self.cursor.set(start + size);
        self.end.set(base + len);
        self.used.set(self.used.get() + size + (start - base));
        NonNull::new(start as *mut u8)
    }

    /// Moves `value` into the arena. Its destructor will never run.
    // Like bumpalo: each call returns a fresh, disjoint region, so `&self -> &mut` is sound.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_value<T>(&self, value: T) -> Option<&mut T> {
        let p = self.alloc(Layout::new::<T>())?.cast::<T>();
        // SAFETY: fresh, aligned, exclusively ours until reset, which takes &mut self and so
        // ends every borrow handed out here.
        unsafe {
            p.as_ptr().write(value);
            Some(&mut *p.as_ptr())
        }
    }

    /// Copies `src` into the arena.
    #[allow(clippy::mut_from_ref)] // fresh, disjoint region per call, as in alloc_value
    pub fn alloc_slice<T: Copy>(&self, src: &[T]) -> Option<&mut [T]> {
        let p = self.alloc(Layout::for_value(src))?.cast::<T>();
        // SAFETY: as in alloc_value; the regions cannot overlap (the arena's is fresh).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), src.len());
            Some(std::slice::from_raw_parts_mut(p.as_ptr(), src.len()))
        }
    }

    /// Frees everything at once: keeps the largest chunk for reuse, unmaps the others.
    pub fn reset(&mut self) {
        let chunks = self.chunks.get_mut();
        if let Some(keep) = chunks.iter().copied().max_by_key(|c| c.1) {
            for &(base, len) in chunks.iter().filter(|c| **c != keep) {
                // SAFETY: `&mut self` proves no allocation of this arena is borrowed any more.
                unsafe { os::unmap(base as *mut u8, len) };
            }
            *chunks = vec![keep];
            self.cursor.set(keep.0);
            self.end.set(keep.0 + keep.1);
        }
        self.used.set(0);
    }

    pub fn stats(&self) -> ArenaStats {
        let chunks = self.chunks.borrow();
        ArenaStats {
            chunks: chunks.len(),
            capacity: chunks.iter().map(|c| c.1).sum(),
            used: self.used.get(),
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for &(base, len) in self.chunks.get_mut().iter() {
            // SAFETY: mapped by grow with this length; no borrow outlives the arena.
            unsafe { os::unmap(base as *mut u8, len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn allocations_are_aligned_disjoint_and_keep_their_contents(reqs in prop::collection::vec((1usize..5000, 0u32..8), 1..300)) {
            let mut arena = Arena::new();
            for round in 0..2u8 {
                let mut got: Vec<(usize, usize, u8)> = vec![];
                for (i, &(size, align_log)) in reqs.iter().enumerate() {
                    let align = 1usize << align_log;
                    let p = arena.alloc(Layout::from_size_align(size, align).unwrap()).unwrap();
                    let a = p.as_ptr() as usize;
                    prop_assert_eq!(a % align, 0);
                    let fill = (i as u8).wrapping_mul(31) ^ round;
                    // SAFETY: fresh arena memory of `size` bytes.
                    unsafe { p.as_ptr().write_bytes(fill, size) };
                    got.push((a, size, fill));
                }
                got.sort();
                for w in got.windows(2) {
                    prop_assert!(w[0].0 + w[0].1 <= w[1].0, "overlap");
                }
                for &(a, size, fill) in &got {
                    // SAFETY: still-live arena memory.
                    let s = unsafe { std::slice::from_raw_parts(a as *const u8, size) };
                    prop_assert!(s.iter().all(|&b| b == fill));
                }
                let before = arena.stats();
                prop_assert!(before.used >= got.iter().map(|g| g.1).sum::<usize>());
                arena.reset();
                let after = arena.stats();
                prop_assert_eq!((after.chunks, after.used), (1, 0));
            }
        }
    }

    #[test]
    fn values_and_slices() {
        let arena = Arena::new();
        let v = arena.alloc_value([7u64; 100]).unwrap();
        v[3] = 9;
        let s = arena.alloc_slice(b"hello").unwrap();
        s[0] = b'j';
        assert_eq!(&*s, b"jello");
        assert_eq!(v[3] + v[4], 16);
    }
}
