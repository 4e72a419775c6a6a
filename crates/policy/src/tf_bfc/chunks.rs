//! Chunks, bins and regions, shaped like TensorFlow's (`xla/tsl/framework/bfc_allocator.h`).
//!
//! - Chunk records live in one vector and name their physical neighbours by handle; unused
//!   handles are recycled (`AllocateChunk`/`DeallocateChunk`).
//! - 21 bins; bin `b` holds free chunks of `[256 << b, 256 << (b+1))` bytes, the last one
//!   everything larger, each an ordered set by `(size, address)` (`ChunkComparator`).
//! - Regions are the driver allocations, sorted by address (TensorFlow sorts by end address,
//!   the same order for disjoint ranges).

use std::collections::BTreeSet;

pub type ChunkHandle = u32;
/// `kInvalidChunkHandle`.
pub const NONE: u32 = u32::MAX;
/// `kMinAllocationBits`: every size is a multiple of 256 bytes.
pub const MIN_ALLOCATION_BITS: u32 = 8;
pub const MIN_ALLOCATION: u64 = 1 << MIN_ALLOCATION_BITS;
/// `kNumBins`.
pub const NUM_BINS: usize = 21;
/// A chunk that is in no bin.
pub const NO_BIN: u8 = u8::MAX;

#[derive(Clone, Debug)]
pub struct Chunk {
    pub ptr: u64,
    pub size: u64,
    /// Bytes asked for while in use (0 when free).
    pub requested: u64,
    pub in_use: bool,
    pub prev: ChunkHandle,
    pub next: ChunkHandle,
    /// The bin holding the chunk, or `NO_BIN` (in use).
    pub bin: u8,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.ptr + self.size
    }
}

/// `BinNumForSize`: `min(20, floor(log2(max(bytes, 256) >> 8)))`.
pub fn bin_num_for_size(bytes: u64) -> usize {
    let v = (bytes >> MIN_ALLOCATION_BITS).max(1);
    ((63 - v.leading_zeros()) as usize).min(NUM_BINS - 1)
}

/// `RoundedBytes`: up to a multiple of 256 bytes.
pub fn rounded_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(MIN_ALLOCATION) * MIN_ALLOCATION
}

/// A driver allocation and the first of its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub ptr: u64,
    pub size: u64,
    pub first: ChunkHandle,
}

/// The chunk vector, the bins and the regions.
#[derive(Clone, Debug)]
pub struct Chunks {
    chunks: Vec<Chunk>,
    unused: Vec<ChunkHandle>,
    pub bins: Vec<BTreeSet<(u64, u64, ChunkHandle)>>,
    pub regions: Vec<Region>,
}

impl Default for Chunks {
    fn default() -> Self {
        Chunks {
            chunks: Vec::new(),
            unused: Vec::new(),
            bins: vec![BTreeSet::new(); NUM_BINS],
            regions: Vec::new(),
        }
    }
}

impl Chunks {
    #[inline]
    pub fn get(&self, h: ChunkHandle) -> &Chunk {
        &self.chunks[h as usize]
    }

    #[inline]
    pub fn get_mut(&mut self, h: ChunkHandle) -> &mut Chunk {
        &mut self.chunks[h as usize]
    }

    /// `AllocateChunk`: a handle for a new chunk record.
    pub fn allocate(&mut self, chunk: Chunk) -> ChunkHandle {
        match self.unused.pop() {
            Some(h) => {
                self.chunks[h as usize] = chunk;
                h
            }
            None => {
                let h = ChunkHandle::try_from(self.chunks.len()).expect("fewer than 2^32 chunks");
                assert!(h != NONE, "fewer than 2^32 - 1 chunks");
                self.chunks.push(chunk);
                h
            }
        }
    }

    /// `DeallocateChunk`.
    pub fn deallocate(&mut self, h: ChunkHandle) {
        self.unused.push(h);
    }

    /// `InsertFreeChunkIntoBin`.
    pub fn insert_into_bin(&mut self, h: ChunkHandle) {
        let (size, ptr) = (self.get(h).size, self.get(h).ptr);
        let b = bin_num_for_size(size);
        self.bins[b].insert((size, ptr, h));
        self.get_mut(h).bin = b as u8;
    }

    /// `RemoveFreeChunkFromBin`.
    pub fn remove_from_bin(&mut self, h: ChunkHandle) {
        let (size, ptr, bin) = (self.get(h).size, self.get(h).ptr, self.get(h).bin);
        let removed = self.bins[bin as usize].remove(&(size, ptr, h));
        debug_assert!(removed, "chunk {ptr:#x} was not in its bin");
        self.get_mut(h).bin = NO_BIN;
    }

    /// `Merge(h1, h2)`: `h1` absorbs its next neighbour `h2`; both are free and out of bins.
    pub fn merge(&mut self, h1: ChunkHandle, h2: ChunkHandle) {
        let c2 = self.get(h2).clone();
        debug_assert_eq!(self.get(h1).next, h2);
        let c1 = self.get_mut(h1);
        c1.size += c2.size;
        c1.next = c2.next;
        if c2.next != NONE {
            self.get_mut(c2.next).prev = h1;
        }
        self.deallocate(h2);
    }

    /// Index of the region starting at `ptr` in the sorted region list.
    pub fn region_index(&self, ptr: u64) -> Result<usize, usize> {
        self.regions.binary_search_by_key(&ptr, |r| r.ptr)
    }

    /// Live chunk handles (for checks).
    pub fn live(&self) -> usize {
        self.chunks.len() - self.unused.len()
    }
}
