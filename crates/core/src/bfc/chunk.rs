//! Chunk records, addressed by handle.
//!
//! Chunks live in one vector and refer to their physical neighbours by index, never by pointer
//! (as in TensorFlow's BFC): the structure stays safe Rust, cheap to clone and easy to check.
//! Slots of removed chunks are recycled through a free list.

/// Handle of a chunk inside one [`Bfc`](super::Bfc). Only meaningful for the `Bfc` that made it,
/// and only until that chunk is merged away or its region removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub(crate) u32);

/// "No chunk": the end of a neighbour list, or a vacant slot's region.
pub(crate) const NIL: u32 = u32::MAX;

/// One contiguous piece of a region, entirely in use or entirely free.
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    pub addr: u64,
    pub size: u64,
    /// Bytes the caller asked for (0 when free); `size - requested` is internal fragmentation.
    pub requested: u64,
    /// Free chunks: the largest stamp of the frees that formed it (merging keeps the maximum,
    /// a split keeps it on both sides). In-use chunks: 0.
    pub stamp: u64,
    /// Physical neighbours in address order within the region, or `NIL`.
    pub prev: u32,
    pub next: u32,
    /// Owning region, or `NIL` for a vacant slot.
    pub region: u32,
    pub in_use: bool,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// The vector of chunk records plus a free list of vacant slots.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkArena {
    slots: Vec<Chunk>,
    vacant: Vec<u32>,
}

impl ChunkArena {
    pub fn insert(&mut self, chunk: Chunk) -> u32 {
        debug_assert!(chunk.region != NIL);
        match self.vacant.pop() {
            Some(i) => {
                self.slots[i as usize] = chunk;
                i
            }
            None => {
                let i = u32::try_from(self.slots.len()).expect("more than 2^32 chunks");
                assert!(i != NIL, "more than 2^32 - 1 chunks");
                self.slots.push(chunk);
                i
            }
        }
    }

    pub fn remove(&mut self, i: u32) {
        let c = &mut self.slots[i as usize];
        debug_assert!(c.region != NIL, "double remove of chunk {i}");
        c.region = NIL;
        c.prev = NIL;
        c.next = NIL;
        self.vacant.push(i);
    }

    #[inline]
    pub fn get(&self, i: u32) -> &Chunk {
        &self.slots[i as usize]
    }

    #[inline]
    pub fn get_mut(&mut self, i: u32) -> &mut Chunk {
        &mut self.slots[i as usize]
    }

    /// Live chunks with their handles, in slot order.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Chunk)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, c)| c.region != NIL)
            .map(|(i, c)| (i as u32, c))
    }

    pub fn live_count(&self) -> usize {
        self.slots.len() - self.vacant.len()
    }
}
