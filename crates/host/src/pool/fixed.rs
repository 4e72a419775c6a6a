//! [`FixedPool`]: a pool of fixed-size blocks.
//!
//! Chunks of blocks are mapped from the OS on demand and kept until the pool drops. A free
//! block holds the link to the next free block in its first word; a per-chunk bitmap of
//! allocated blocks makes `free` reject foreign pointers and double frees instead of
//! corrupting the list.
//!
//! Invariants: a block is on the free list exactly when its bit is clear and it was carved;
//! `allocated` counts set bits.

use crate::os;
use std::ptr::{self, NonNull};

/// Why [`FixedPool::free`] refused a pointer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("{0:#x} is not a block of this pool")]
    Foreign(usize),
    #[error("{0:#x} is already free (double free)")]
    DoubleFree(usize),
}

/// Counters of a [`FixedPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub block_size: usize,
    pub chunks: usize,
    pub capacity: usize,
    pub allocated: usize,
}

struct Chunk {
    base: usize,
    len: usize,
    /// Blocks carved so far (carving is lazy: untouched pages stay untouched).
    carved: usize,
    bits: Vec<u64>,
}

/// A pool of blocks of one size and alignment. See the module docs.
pub struct FixedPool {
    block: usize,
    per_chunk: usize,
    /// Chunks sorted by address.
    chunks: Vec<Chunk>,
    free: *mut u8,
    allocated: usize,
}

impl std::fmt::Debug for FixedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedPool")
            .field("stats", &self.stats())
            .finish()
    }
}

// SAFETY: the pool owns its chunks; the raw free-list pointer points into them.
unsafe impl Send for FixedPool {}

impl FixedPool {
    /// A pool of `block_size`-byte blocks aligned to `align` (a power of two up to a page);
    /// chunks hold `blocks_per_chunk` blocks (at least one page's worth).
    ///
    /// # Panics
    /// If `align` is not a power of two or exceeds the page size.
    pub fn new(block_size: usize, align: usize, blocks_per_chunk: usize) -> FixedPool {
        assert!(
            align.is_power_of_two() && align <= os::PAGE,
            "align must be a power of two <= page"
        );
        let block = block_size
            .max(size_of::<usize>())
            .next_multiple_of(align.max(size_of::<usize>()));
        let per_chunk = blocks_per_chunk.max(os::PAGE / block).max(1);
        FixedPool {
            block,
            per_chunk,
            chunks: Vec::new(),
            free: ptr::null_mut(),
            allocated: 0,
        }
    }

    /// A block, or `None` when the OS refuses memory.
    pub fn alloc(&mut self) -> Option<NonNull<u8>> {
        let p = if !self.free.is_null() {
            let p = self.free;
            // SAFETY: free blocks hold the address of the next free block in their first word.
            self.free = unsafe { p.cast::<*mut u8>().read() };
            p
        } else {
            self.carve()?
        };
        let (c, i) = self.locate(p as usize).expect("block of this pool");
        self.chunks[c].bits[i / 64] |= 1 << (i % 64);
        self.allocated += 1;
        NonNull::new(p)
    }

    fn carve(&mut self) -> Option<*mut u8> {
        let needs_chunk = self.chunks.iter().all(|c| c.carved == c.len / self.block);
        if needs_chunk {
            let len = (self.block * self.per_chunk).next_multiple_of(os::PAGE);
            let base = os::map(len)?.as_ptr() as usize;
            let n = len / self.block;
            let at = self.chunks.partition_point(|c| c.base < base);
            self.chunks.insert(
                at,
                Chunk {
                    base,
                    len,
                    carved: 0,
                    bits: vec![0; n.div_ceil(64)],
                },
            );
        }
        let block = self.block;
        let c = self.chunks.iter_mut().find(|c| c.carved < c.len / block)?;
        c.carved += 1;
        Some((c.base + (c.carved - 1) * block) as *mut u8)
    }

    /// `(chunk index, block index)` of a block start.
    fn locate(&self, addr: usize) -> Option<(usize, usize)> {
        let c = self
            .chunks
            .partition_point(|c| c.base <= addr)
            .checked_sub(1)?;
        let ch = &self.chunks[c];
        let off = addr - ch.base;
        let i = off / self.block;
        (off.is_multiple_of(self.block) && i < ch.carved).then_some((c, i))
    }

    /// Returns a block. Foreign pointers and double frees are reported and change nothing.
    pub fn free(&mut self, p: NonNull<u8>) -> Result<(), PoolError> {
        let addr = p.as_ptr() as usize;
        let (c, i) = self.locate(addr).ok_or(PoolError::Foreign(addr))?;
        let word = &mut self.chunks[c].bits[i / 64];
        if *word & (1 << (i % 64)) == 0 {
            return Err(PoolError::DoubleFree(addr));
        }
        *word &= !(1 << (i % 64));
        // SAFETY: the block is ours, carved, now free, and at least a word long and aligned.
        unsafe { p.as_ptr().cast::<*mut u8>().write(self.free) };
        self.free = p.as_ptr();
        self.allocated -= 1;
        Ok(())
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            block_size: self.block,
            chunks: self.chunks.len(),
            capacity: self.chunks.iter().map(|c| c.len / self.block).sum(),
            allocated: self.allocated,
        }
    }
}

impl Drop for FixedPool {
    fn drop(&mut self) {
        for c in &self.chunks {
            // SAFETY: chunks were mapped by `carve` with this length; blocks die with the pool.
            unsafe { os::unmap(c.base as *mut u8, c.len) };
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
        fn matches_a_set_of_live_blocks(size in 1usize..300, align_log in 0u32..7, ops in prop::collection::vec((0u8..4, any::<usize>()), 1..500)) {
            let align = 1 << align_log;
            let mut pool = FixedPool::new(size, align, 16);
            let mut live = BTreeSet::new();
            let mut dead = vec![];
            for (kind, i) in ops {
                match kind {
                    0 | 1 => {
                        let p = pool.alloc().unwrap();
                        let a = p.as_ptr() as usize;
                        prop_assert_eq!(a % align, 0);
                        prop_assert!(live.iter().all(|&l| a + size <= l || l + size <= a), "overlap");
                        // SAFETY: a fresh block of at least `size` bytes.
                        unsafe { p.as_ptr().write_bytes(0xEE, size) };
                        live.insert(a);
                        dead.retain(|&d| d != a);
                    }
                    2 if !live.is_empty() => {
                        let a = *live.iter().nth(i % live.len()).unwrap();
                        live.remove(&a);
                        prop_assert_eq!(pool.free(NonNull::new(a as *mut u8).unwrap()), Ok(()));
                        dead.push(a);
                    }
                    3 if !dead.is_empty() => {
                        let a = dead[i % dead.len()];
                        prop_assert_eq!(pool.free(NonNull::new(a as *mut u8).unwrap()), Err(PoolError::DoubleFree(a)));
                    }
                    _ => {
                        let x = 0u8;
                        let f = &x as *const u8 as usize;
                        prop_assert_eq!(pool.free(NonNull::new(f as *mut u8).unwrap()), Err(PoolError::Foreign(f)));
                    }
                }
                prop_assert_eq!(pool.stats().allocated, live.len());
            }
        }
    }
}
