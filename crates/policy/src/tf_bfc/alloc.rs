//! The allocation path: `AllocateRawInternal`, `FindChunkPtr`, `SplitChunk`, `Extend` and
//! `DeallocateFreeRegions`.

use super::TfBfc;
use super::chunks::{
    Chunk, ChunkHandle, MIN_ALLOCATION, NO_BIN, NONE, NUM_BINS, Region, bin_num_for_size,
    rounded_bytes,
};
use crate::{Block, PolicyError};
use coalesce_backend::{Backend, BackendError, DriverCall};

/// `kBackpedalFactor`: after a refused driver allocation, try 90% of the size.
const BACKPEDAL: f64 = 0.9;

impl TfBfc {
    /// `AllocateRawInternal`: find a chunk; else extend; else collect free regions and extend.
    pub(super) fn allocate_raw(
        &mut self,
        dev: &mut dyn Backend,
        num_bytes: u64,
    ) -> Result<Block, PolicyError> {
        let limits = self.limits(dev);
        let num_bytes = num_bytes.max(1);
        let rounded = rounded_bytes(num_bytes);
        let bin = bin_num_for_size(rounded);
        if let Some(b) = self.find_chunk_ptr(bin, rounded, num_bytes, limits.max_waste) {
            return Ok(b);
        }
        let mut refused = match self.extend(dev, rounded)? {
            Ok(()) => {
                if let Some(b) = self.find_chunk_ptr(bin, rounded, num_bytes, limits.max_waste) {
                    return Ok(b);
                }
                None
            }
            Err(e) => Some(e),
        };
        if self.config.garbage_collection && self.regions_to_collect(rounded).is_some() {
            self.deallocate_free_regions(dev)?;
            match self.extend(dev, rounded)? {
                Ok(()) => {
                    if let Some(b) = self.find_chunk_ptr(bin, rounded, num_bytes, limits.max_waste)
                    {
                        return Ok(b);
                    }
                }
                Err(e) => refused = Some(e),
            }
        }
        Err(PolicyError::OutOfMemory {
            requested: num_bytes,
            source: refused.unwrap_or(BackendError::OutOfMemory {
                call: DriverCall::MemAlloc,
                requested: rounded,
                free: limits.memory_limit - self.pool_bytes,
            }),
        })
    }

    /// `FindChunkPtr`: scans the bins from `bin` up, each in `(size, address)` order, for the
    /// first chunk of at least `rounded` bytes; splits it if worth it and marks it in use.
    fn find_chunk_ptr(
        &mut self,
        bin: usize,
        rounded: u64,
        num_bytes: u64,
        max_waste: u64,
    ) -> Option<Block> {
        let h = (bin..NUM_BINS).find_map(|b| {
            self.chunks.bins[b]
                .iter()
                .find(|&&(size, _, _)| size >= rounded)
                .map(|&(_, _, h)| h)
        })?;
        self.chunks.remove_from_bin(h);
        let size = self.chunks.get(h).size;
        // `ShouldSplitChunk`.
        if size >= rounded * 2 || size - rounded >= max_waste {
            self.split_chunk(h, rounded);
        }
        let c = self.chunks.get_mut(h);
        c.in_use = true;
        c.requested = num_bytes;
        self.bytes_in_use += c.size;
        self.in_use.insert(c.ptr, h);
        Some(Block {
            addr: c.ptr,
            size: c.size,
        })
    }

    /// `SplitChunk`: chunk `h` keeps `num_bytes`; the rest becomes a free, binned chunk.
    fn split_chunk(&mut self, h: ChunkHandle, num_bytes: u64) {
        let c = self.chunks.get(h).clone();
        let rest = self.chunks.allocate(Chunk {
            ptr: c.ptr + num_bytes,
            size: c.size - num_bytes,
            requested: 0,
            in_use: false,
            prev: h,
            next: c.next,
            bin: NO_BIN,
        });
        if c.next != NONE {
            self.chunks.get_mut(c.next).prev = rest;
        }
        let c = self.chunks.get_mut(h);
        c.size = num_bytes;
        c.next = rest;
        self.chunks.insert_into_bin(rest);
    }

    /// `Extend`: a new region large enough for `rounded` bytes. `Ok(Err)` when the memory
    /// limit or the driver refuses.
    fn extend(
        &mut self,
        dev: &mut dyn Backend,
        rounded: u64,
    ) -> Result<Result<(), BackendError>, PolicyError> {
        let limit = self.limits(dev).memory_limit;
        let available = (limit - self.pool_bytes) / MIN_ALLOCATION * MIN_ALLOCATION;
        if rounded > available {
            return Ok(Err(BackendError::OutOfMemory {
                call: DriverCall::MemAlloc,
                requested: rounded,
                free: available,
            }));
        }
        let mut increased = false;
        while rounded > self.curr_region_allocation_bytes {
            self.curr_region_allocation_bytes *= 2;
            increased = true;
        }
        let mut bytes = self.curr_region_allocation_bytes.min(available);
        let ptr = loop {
            match dev.mem_alloc(bytes) {
                Ok(ptr) => break ptr,
                Err(e) if e.is_out_of_memory() => {
                    let mut smaller = rounded_bytes((bytes as f64 * BACKPEDAL) as u64);
                    if smaller >= bytes {
                        smaller = bytes - MIN_ALLOCATION;
                    }
                    if smaller < rounded {
                        return Ok(Err(e));
                    }
                    bytes = smaller;
                }
                Err(e) => return Err(e.into()),
            }
        };
        if !increased {
            self.curr_region_allocation_bytes *= 2;
        }
        self.pool_bytes += bytes;
        let h = self.chunks.allocate(Chunk {
            ptr,
            size: bytes,
            requested: 0,
            in_use: false,
            prev: NONE,
            next: NONE,
            bin: NO_BIN,
        });
        let at = self
            .chunks
            .region_index(ptr)
            .expect_err("the driver returned a live region's address");
        self.chunks.regions.insert(
            at,
            Region {
                ptr,
                size: bytes,
                first: h,
            },
        );
        self.chunks.insert_into_bin(h);
        Ok(Ok(()))
    }

    /// The regions with no chunk in use, if freeing them could make room for `rounded` bytes
    /// (`DeallocateFreeRegions`' test).
    fn regions_to_collect(&self, rounded: u64) -> Option<Vec<usize>> {
        let idle: Vec<usize> = (0..self.chunks.regions.len())
            .filter(|&i| self.region_is_idle(i))
            .collect();
        let free: u64 = idle.iter().map(|&i| self.chunks.regions[i].size).sum();
        let limit = self.limits.map_or(0, |l| l.memory_limit);
        (free > 0 && rounded <= limit - self.pool_bytes + free).then_some(idle)
    }

    fn region_is_idle(&self, i: usize) -> bool {
        let mut h = self.chunks.regions[i].first;
        while h != NONE {
            if self.chunks.get(h).in_use {
                return false;
            }
            h = self.chunks.get(h).next;
        }
        true
    }

    /// `DeallocateRegions` of every region with nothing in use; returns the bytes freed.
    pub(super) fn deallocate_free_regions(
        &mut self,
        dev: &mut dyn Backend,
    ) -> Result<u64, PolicyError> {
        let mut freed = 0;
        let mut i = 0;
        while i < self.chunks.regions.len() {
            if !self.region_is_idle(i) {
                i += 1;
                continue;
            }
            let r = self.chunks.regions.remove(i);
            let mut h = r.first;
            while h != NONE {
                let next = self.chunks.get(h).next;
                self.chunks.remove_from_bin(h);
                self.chunks.deallocate(h);
                h = next;
            }
            dev.mem_free(r.ptr)?;
            self.pool_bytes -= r.size;
            freed += r.size;
        }
        Ok(freed)
    }
}
