//! Blocks and block pools, with the data structures PyTorch uses.
//!
//! As in `CUDACachingAllocator.cpp`: a block is a piece of a segment, linked to its physical
//! neighbours (`prev`/`next`); each pool keeps its free blocks in an ordered set keyed by
//! `(stream, size, address)` (`BlockComparatorSize`, a `std::set` there, a `BTreeMap` here) and
//! the unmapped blocks of expandable segments keyed by `(stream, address)`
//! (`BlockComparatorAddress`). Blocks live in an arena and refer to each other by index instead
//! of by pointer.

use coalesce_backend::StreamId;
use std::collections::BTreeMap;

/// Index of a block in the [`BlockArena`].
pub type BlockId = u32;
/// No block: the end of a neighbour list, or "not an expandable segment".
pub const NIL: u32 = u32::MAX;

/// Which pool a block belongs to: requests up to 1 MiB are small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Small,
    Large,
}

/// One piece of a segment (PyTorch's `Block`).
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub addr: u64,
    pub size: u64,
    /// Bytes asked for while allocated (for snapshots); 0 when free.
    pub requested: u64,
    /// The allocation stream: the block is only ever reused on it.
    pub stream: StreamId,
    pub pool: PoolKind,
    /// Physical neighbours in the same segment, or `NIL`.
    pub prev: BlockId,
    pub next: BlockId,
    pub allocated: bool,
    /// Events on other streams still to pass before the freed block may be reused
    /// (`event_count`); such a block is in no set and merges with nothing.
    pub pending_events: u32,
    /// Backed by physical memory; only blocks of expandable segments can be unmapped.
    pub mapped: bool,
    /// Index of the expandable segment holding the block, or `NIL` for a `cudaMalloc` segment.
    pub expandable: u32,
    /// `get_free_blocks_call_count` of the pool when the block was cached (GC age).
    pub gc_count_base: u64,
}

impl Block {
    /// Part of a larger segment (`is_split`).
    pub fn is_split(&self) -> bool {
        self.prev != NIL || self.next != NIL
    }

    pub fn end(&self) -> u64 {
        self.addr + self.size
    }

    /// Free for reuse or merging: not allocated and no event pending.
    pub fn is_idle(&self) -> bool {
        !self.allocated && self.pending_events == 0
    }
}

/// Block records with recycled slots.
#[derive(Clone, Debug, Default)]
pub struct BlockArena {
    slots: Vec<Block>,
    vacant: Vec<BlockId>,
    live: usize,
}

impl BlockArena {
    pub fn insert(&mut self, block: Block) -> BlockId {
        self.live += 1;
        match self.vacant.pop() {
            Some(id) => {
                self.slots[id as usize] = block;
                id
            }
            None => {
                let id = BlockId::try_from(self.slots.len()).expect("fewer than 2^32 blocks");
                assert!(id != NIL, "fewer than 2^32 - 1 blocks");
                self.slots.push(block);
                id
            }
        }
    }

    pub fn remove(&mut self, id: BlockId) {
        self.live -= 1;
        self.vacant.push(id);
    }

    #[inline]
    pub fn get(&self, id: BlockId) -> &Block {
        &self.slots[id as usize]
    }

    #[inline]
    pub fn get_mut(&mut self, id: BlockId) -> &mut Block {
        &mut self.slots[id as usize]
    }

    /// The neighbour `id` if it exists, else `None`.
    #[inline]
    pub fn opt(&self, id: BlockId) -> Option<&Block> {
        (id != NIL).then(|| self.get(id))
    }

    /// Live blocks with their ids (O(slots); for checks and snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (BlockId, &Block)> + '_ {
        let mut vacant = vec![false; self.slots.len()];
        for &v in &self.vacant {
            vacant[v as usize] = true;
        }
        self.slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| !vacant[*i])
            .map(|(i, b)| (i as BlockId, b))
    }

    pub fn live(&self) -> usize {
        self.live
    }
}

/// Key of a free mapped block: `(stream, size, address)`.
pub type SizeKey = (StreamId, u64, u64);
/// Key of an unmapped block: `(stream, address)`.
pub type AddrKey = (StreamId, u64);

/// A pool of cached blocks (PyTorch's `BlockPool`).
#[derive(Clone, Debug)]
pub struct BlockPool {
    pub kind: PoolKind,
    /// Free, mapped, event-free blocks: the best-fit index.
    pub blocks: BTreeMap<SizeKey, BlockId>,
    /// Unmapped address space of expandable segments.
    pub unmapped: BTreeMap<AddrKey, BlockId>,
    /// Calls of `get_free_block` while GC is active: the clock blocks age by.
    pub get_free_blocks_call_count: u64,
}

impl BlockPool {
    pub fn new(kind: PoolKind) -> Self {
        BlockPool {
            kind,
            blocks: BTreeMap::new(),
            unmapped: BTreeMap::new(),
            get_free_blocks_call_count: 0,
        }
    }

    pub fn size_key(b: &Block) -> SizeKey {
        (b.stream, b.size, b.addr)
    }

    pub fn addr_key(b: &Block) -> AddrKey {
        (b.stream, b.addr)
    }

    /// Caches a free block (`insert_into_blocks`): it starts ageing now.
    pub fn insert_free(&mut self, id: BlockId, b: &mut Block) {
        b.gc_count_base = self.get_free_blocks_call_count;
        let fresh = self.blocks.insert(Self::size_key(b), id).is_none();
        debug_assert!(fresh, "block {:#x} cached twice", b.addr);
    }

    pub fn remove_free(&mut self, b: &Block) {
        let found = self.blocks.remove(&Self::size_key(b)).is_some();
        debug_assert!(found, "block {:#x} was not cached", b.addr);
    }

    /// Removes a block from whichever set holds it (by its mapped state).
    pub fn remove_any(&mut self, b: &Block) {
        if b.mapped {
            self.remove_free(b);
        } else {
            let found = self.unmapped.remove(&Self::addr_key(b)).is_some();
            debug_assert!(found, "unmapped block {:#x} was not indexed", b.addr);
        }
    }

    /// The largest cached block of any stream (O(streams · log n)).
    pub fn largest(&self) -> u64 {
        let mut best = 0;
        let mut upper = self.blocks.keys().next_back().copied();
        while let Some((stream, size, _)) = upper {
            best = best.max(size);
            upper = self
                .blocks
                .range(..(stream, 0, 0))
                .next_back()
                .map(|(k, _)| *k);
        }
        best
    }
}
