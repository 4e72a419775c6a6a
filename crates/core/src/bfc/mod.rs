//! Best fit with coalescing (BFC) over abstract address ranges.
//!
//! # High-level model
//!
//! A [`Bfc`] manages *regions*: contiguous address ranges `[base, base + size)` that its owner
//! obtained somewhere (a simulated device, `cuMemAlloc`, a reserved virtual range, OS pages) and
//! handed over with [`Bfc::add_region`]. The `Bfc` never touches the memory; it only decides
//! which addresses to hand out.
//!
//! ```text
//!   region 0                                   region 1
//!   |--used--|------free------|--used--|       |-------------free-------------|
//!    chunk a   chunk b          chunk c          chunk d
//!   prev/next links join physical neighbours of one region; bins index b and d.
//! ```
//!
//! Invariants (checked by [`Bfc::check_invariants`] after every step in tests):
//! 1. Every byte of every region belongs to exactly one chunk; the chunks of a region are linked
//!    in address order through `prev`/`next`, without gaps or overlap. Regions never overlap.
//! 2. A chunk is entirely in use or entirely free. Addresses and sizes are multiples of the
//!    alignment.
//! 3. No two physically adjacent chunks are both free: a freed chunk is merged with free
//!    neighbours at once (immediate coalescing). Chunks of different regions never merge.
//! 4. Every free chunk is in exactly one bin, the one for its size, under the key
//!    `(size, addr)`; bins hold nothing else. Every in-use chunk is in the address map.
//! 5. The running counters (bytes in use, free, requested, chunk counts) match the chunks.
//!
//! # Allocation
//!
//! A request is rounded up to the alignment (512 B by default; 0 bytes count as one unit).
//! [`Bfc::alloc`] takes the **best fit**: the smallest free chunk that is large enough, the
//! lowest address among equal sizes, found in O(log n) (see [`bins`]). The chunk is then split
//! according to the [`SplitRule`]: the remainder becomes a new free chunk when it is worth
//! keeping, otherwise the whole chunk is handed out and the slack is counted as internal
//! fragmentation (`size - requested`).
//!
//! Policies that need their own rules (PyTorch's oversize limits, stream pools, ...) use the
//! two halves separately: [`Bfc::best_fit`] to look, [`Bfc::alloc_chunk`] to take.

mod bin;
mod bins;
mod check;
mod chunk;
mod region;
mod stats;
#[cfg(test)]
mod tests;

pub use check::InvariantViolation;
pub use chunk::ChunkId;
pub use region::RegionId;
pub use stats::BfcStats;

use crate::align::checked_align_up;
use bins::FreeBins;
use chunk::{Chunk, ChunkArena, NIL};
use region::Region;
use rustc_hash::FxHashMap;

/// When the remainder of a chunk is worth keeping as a free chunk of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitRule {
    /// Split whenever the remainder is at least this many bytes (a multiple of the alignment).
    /// `MinRemainder(alignment)` always splits exactly: no internal fragmentation at all.
    MinRemainder(u64),
    /// TensorFlow's rule: split when the chunk is at least twice the request, or when the
    /// remainder would reach `max_waste` bytes (128 MiB in TensorFlow).
    TensorFlow { max_waste: u64 },
    /// Never split: a chunk is always handed out whole.
    Never,
}

impl SplitRule {
    /// Whether a free chunk of `chunk_size` bytes should be split to serve `rounded` bytes.
    #[inline]
    pub fn should_split(self, chunk_size: u64, rounded: u64) -> bool {
        let remainder = chunk_size - rounded;
        match self {
            SplitRule::MinRemainder(min) => remainder >= min.max(1),
            SplitRule::TensorFlow { max_waste } => {
                remainder > 0 && (chunk_size >= rounded.saturating_mul(2) || remainder >= max_waste)
            }
            SplitRule::Never => false,
        }
    }
}

/// Configuration of a [`Bfc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BfcConfig {
    /// Power of two; every address and size is a multiple of it. Default 512 B (as PyTorch).
    pub alignment: u64,
    /// Default [`SplitRule::MinRemainder`] of one alignment unit: always split exactly.
    pub split: SplitRule,
}

impl Default for BfcConfig {
    fn default() -> Self {
        BfcConfig {
            alignment: 512,
            split: SplitRule::MinRemainder(512),
        }
    }
}

/// A chunk handed out by [`Bfc::alloc`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub addr: u64,
    /// Bytes the chunk really occupies (>= the rounded request).
    pub size: u64,
    pub region: RegionId,
}

/// What [`Bfc::free`] released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freed {
    /// Size of the chunk that was in use.
    pub size: u64,
    /// Bytes that had been requested for it.
    pub requested: u64,
    pub region: RegionId,
    /// The free chunk after coalescing with free neighbours: `(addr, size)`.
    pub coalesced: (u64, u64),
}

/// Read-only view of one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub addr: u64,
    pub size: u64,
    pub requested: u64,
    /// Free chunks: the largest stamp of the frees that formed it (see [`Bfc::free_stamped`]).
    pub stamp: u64,
    pub in_use: bool,
    pub region: RegionId,
}

/// Errors of the structural operations. Allocation failure is not an error: `alloc` returns
/// `None` and the owner decides whether to add a region.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BfcError {
    #[error(
        "address {0:#x} is not the start of an allocated chunk (double free or foreign pointer)"
    )]
    NotAllocated(u64),
    #[error("region [{base:#x}, +{size}) is invalid: {why}")]
    BadRegion {
        base: u64,
        size: u64,
        why: &'static str,
    },
    #[error("region {0:?} still has {1} bytes in use")]
    RegionInUse(RegionId, u64),
    #[error("region {0:?} does not exist")]
    NoSuchRegion(RegionId),
    #[error("request of {0} bytes is too large")]
    TooLarge(u64),
}

/// Best-fit-with-coalescing allocator over abstract address ranges. See the module docs.
#[derive(Clone, Debug)]
pub struct Bfc {
    config: BfcConfig,
    chunks: ChunkArena,
    bins: FreeBins,
    regions: Vec<Option<Region>>,
    /// In-use chunks by start address.
    in_use: FxHashMap<u64, u32>,
    stats: BfcStats,
}

impl Bfc {
    /// A `Bfc` with no regions yet.
    ///
    /// # Panics
    /// If the alignment is not a power of two, or a `MinRemainder` is not a multiple of it.
    pub fn new(config: BfcConfig) -> Self {
        assert!(
            config.alignment.is_power_of_two(),
            "alignment must be a power of two"
        );
        if let SplitRule::MinRemainder(m) = config.split {
            assert!(
                m % config.alignment == 0,
                "MinRemainder must be a multiple of the alignment"
            );
        }
        Bfc {
            config,
            chunks: ChunkArena::default(),
            bins: FreeBins::new(config.alignment.trailing_zeros()),
            regions: Vec::new(),
            in_use: FxHashMap::default(),
            stats: BfcStats::default(),
        }
    }

    pub fn config(&self) -> &BfcConfig {
        &self.config
    }

    /// `size` rounded up to the alignment (0 counts as one unit); `None` on overflow.
    #[inline]
    pub fn round(&self, size: u64) -> Option<u64> {
        checked_align_up(size.max(1), self.config.alignment)
    }

    // ------------------------------------------------------------------ allocation

    /// Best fit for `size` bytes with the configured split rule; `None` if no free chunk fits.
    pub fn alloc(&mut self, size: u64) -> Option<Allocation> {
        let rounded = self.round(size)?;
        let chunk = self.best_fit(rounded)?;
        let split = self
            .config
            .split
            .should_split(self.chunks.get(chunk.0).size, rounded);
        Some(self.alloc_chunk(chunk, size, split))
    }

    /// The best free chunk for `rounded` bytes (already rounded): smallest fit, lowest address.
    #[inline]
    pub fn best_fit(&self, rounded: u64) -> Option<ChunkId> {
        self.bins.best_fit(rounded).map(|(_, c)| ChunkId(c))
    }

    /// Free chunks that can hold `rounded` bytes, best fit first (the order [`Bfc::best_fit`]
    /// would choose them in). Lazy: take only as many as needed.
    pub fn fits(&self, rounded: u64) -> impl Iterator<Item = ChunkId> + '_ {
        self.bins.fits(rounded).map(|(_, c)| ChunkId(c))
    }

    /// The first of the `limit` best-fitting free chunks for `rounded` bytes (in best-fit
    /// order) that `pred` accepts, given its address and size. For policies that prefer some
    /// placements (already backed memory, say) without giving up best fit among them.
    #[inline]
    pub fn best_fit_where(
        &self,
        rounded: u64,
        limit: usize,
        mut pred: impl FnMut(u64, u64) -> bool,
    ) -> Option<ChunkId> {
        self.bins
            .find_fit(rounded, limit, |(size, addr), _| pred(addr, size))
            .map(|(_, c)| ChunkId(c))
    }

    /// Calls `visit` with every free chunk of at least `min` bytes, smallest first. Unlike
    /// [`Bfc::free_chunks`] it allocates nothing.
    pub fn for_each_free(&self, min: u64, mut visit: impl FnMut(ChunkInfo)) {
        self.bins
            .for_each_at_least(min.max(self.config.alignment), |_, c| visit(self.info(c)));
    }

    /// Free chunks of at least `min` bytes, in best-fit order (smallest first).
    pub fn free_chunks(&self, min: u64) -> impl Iterator<Item = ChunkInfo> + '_ {
        self.bins
            .fits(min.max(self.config.alignment))
            .map(|(_, c)| self.info(c))
    }

    /// Marks free chunk `id` in use for a request of `requested` bytes. With `split`, only the
    /// rounded request is taken and the remainder stays free.
    ///
    /// # Panics
    /// If the chunk is not free or too small (a caller bug, not an input error).
    pub fn alloc_chunk(&mut self, id: ChunkId, requested: u64, split: bool) -> Allocation {
        let rounded = self.round(requested).expect("request overflow");
        let c = self.chunks.get(id.0);
        assert!(
            !c.in_use && c.size >= rounded,
            "alloc_chunk on a chunk that cannot serve it"
        );
        let (addr, size) = (c.addr, c.size);
        self.bins.remove(size, addr);
        if split {
            self.alloc_chunk_unbinned(id, requested, rounded)
        } else {
            self.mark_in_use(id, requested)
        }
    }

    /// Takes free chunk `id`, already out of its bin, for `requested` (`rounded` after
    /// rounding) bytes, splitting off the remainder.
    fn alloc_chunk_unbinned(&mut self, id: ChunkId, requested: u64, rounded: u64) -> Allocation {
        if self.chunks.get(id.0).size > rounded {
            self.split_tail(id.0, rounded);
        }
        self.mark_in_use(id, requested)
    }

    /// Marks free, un-binned chunk `id` in use for `requested` bytes.
    fn mark_in_use(&mut self, id: ChunkId, requested: u64) -> Allocation {
        let c = self.chunks.get_mut(id.0);
        let addr = c.addr;
        c.in_use = true;
        c.requested = requested;
        c.stamp = 0;
        let (size, region) = (c.size, c.region);
        self.in_use.insert(addr, id.0);
        self.regions_mut(region).in_use_bytes += size;
        self.stats.on_alloc(size, requested);
        Allocation {
            addr,
            size,
            region: RegionId(region),
        }
    }

    /// Like [`Bfc::alloc_chunk`] with splitting, but the block starts `offset` bytes into the
    /// free chunk; the bytes before it stay a free chunk (with the chunk's stamp). For owners
    /// that know a better place inside a chunk than its start (memory already backed, say).
    ///
    /// # Panics
    /// If the chunk is not free, `offset` is not a multiple of the alignment, or the request
    /// does not fit after `offset` (a caller bug, not an input error).
    pub fn alloc_chunk_at(&mut self, id: ChunkId, offset: u64, requested: u64) -> Allocation {
        if offset == 0 {
            return self.alloc_chunk(id, requested, true);
        }
        let rounded = self.round(requested).expect("request overflow");
        let c = self.chunks.get(id.0);
        assert!(
            !c.in_use
                && offset.is_multiple_of(self.config.alignment)
                && offset.checked_add(rounded).is_some_and(|end| end <= c.size),
            "alloc_chunk_at outside a free chunk"
        );
        let (addr, size) = (c.addr, c.size);
        self.bins.remove(size, addr);
        self.split_tail(id.0, offset);
        self.bins.insert(offset, addr, id.0);
        let rest = self.chunks.get(id.0).next;
        self.bins.remove(size - offset, addr + offset);
        self.alloc_chunk_unbinned(ChunkId(rest), requested, rounded)
    }

    /// Cuts free, un-binned chunk `i` to `keep` bytes; the tail becomes a new free chunk.
    /// The tail needs no coalescing: `i` was free, so its next neighbour is in use (or absent).
    fn split_tail(&mut self, i: u32, keep: u64) {
        let c = self.chunks.get(i);
        let tail = Chunk {
            addr: c.addr + keep,
            size: c.size - keep,
            requested: 0,
            stamp: c.stamp,
            prev: i,
            next: c.next,
            region: c.region,
            in_use: false,
        };
        let (tail_addr, tail_size, next, region) = (tail.addr, tail.size, tail.next, tail.region);
        let t = self.chunks.insert(tail);
        self.chunks.get_mut(i).size = keep;
        self.chunks.get_mut(i).next = t;
        if next != NIL {
            self.chunks.get_mut(next).prev = t;
        } else {
            self.regions_mut(region).last = t;
        }
        self.bins.insert(tail_size, tail_addr, t);
        self.stats.free_chunks += 1;
    }

    // ------------------------------------------------------------------ free

    /// Frees the chunk that starts at `addr` and coalesces it with free neighbours.
    pub fn free(&mut self, addr: u64) -> Result<Freed, BfcError> {
        self.free_stamped(addr, 0)
    }

    /// Like [`Bfc::free`], stamping the free chunk with `stamp` (a time, say). The coalesced
    /// chunk keeps the largest stamp of what it merged, as TensorFlow's `freed_at_count`: an
    /// owner can tell how recently any part of a free chunk was in use.
    pub fn free_stamped(&mut self, addr: u64, stamp: u64) -> Result<Freed, BfcError> {
        let i = self
            .in_use
            .remove(&addr)
            .ok_or(BfcError::NotAllocated(addr))?;
        let c = self.chunks.get_mut(i);
        c.in_use = false;
        c.stamp = stamp;
        let (size, requested, region) = (c.size, c.requested, c.region);
        c.requested = 0;
        self.regions_mut(region).in_use_bytes -= size;
        self.stats.on_free(size, requested);
        self.stats.free_chunks += 1;
        let mut i = i;
        let next = self.chunks.get(i).next;
        if next != NIL && !self.chunks.get(next).in_use {
            self.unbin(next);
            self.merge_next(i);
        }
        let prev = self.chunks.get(i).prev;
        if prev != NIL && !self.chunks.get(prev).in_use {
            self.unbin(prev);
            self.merge_next(prev);
            i = prev;
        }
        let c = self.chunks.get(i);
        let coalesced = (c.addr, c.size);
        self.bins.insert(c.size, c.addr, i);
        Ok(Freed {
            size,
            requested,
            region: RegionId(region),
            coalesced,
        })
    }

    fn unbin(&mut self, i: u32) {
        let c = self.chunks.get(i);
        self.bins.remove(c.size, c.addr);
    }

    /// Absorbs the next neighbour of free chunk `i` (both free, neither binned).
    fn merge_next(&mut self, i: u32) {
        let n = self.chunks.get(i).next;
        let (n_size, n_next, region, n_stamp) = {
            let nc = self.chunks.get(n);
            (nc.size, nc.next, nc.region, nc.stamp)
        };
        let c = self.chunks.get_mut(i);
        c.size += n_size;
        c.stamp = c.stamp.max(n_stamp);
        c.next = n_next;
        if n_next != NIL {
            self.chunks.get_mut(n_next).prev = i;
        } else {
            self.regions_mut(region).last = i;
        }
        self.chunks.remove(n);
        self.stats.free_chunks -= 1;
    }

    // ------------------------------------------------------------------ regions

    /// Adds `[base, base + size)` as a new region, entirely free.
    ///
    /// Fails if the range is empty, misaligned, overflows, or overlaps an existing region.
    pub fn add_region(&mut self, base: u64, size: u64) -> Result<RegionId, BfcError> {
        self.validate_new_range(base, size)?;
        let slot = self
            .regions
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.regions.len());
        let r = u32::try_from(slot).map_err(|_| BfcError::BadRegion {
            base,
            size,
            why: "too many regions",
        })?;
        let chunk = Chunk {
            addr: base,
            size,
            requested: 0,
            stamp: 0,
            prev: NIL,
            next: NIL,
            region: r,
            in_use: false,
        };
        let c = self.chunks.insert(chunk);
        let region = Region {
            base,
            size,
            first: c,
            last: c,
            in_use_bytes: 0,
        };
        if slot == self.regions.len() {
            self.regions.push(Some(region));
        } else {
            self.regions[slot] = Some(region);
        }
        self.bins.insert(size, base, c);
        self.stats.regions += 1;
        self.stats.region_bytes += size;
        self.stats.free_chunks += 1;
        Ok(RegionId(r))
    }

    fn validate_new_range(&self, base: u64, size: u64) -> Result<(), BfcError> {
        let bad = |why| Err(BfcError::BadRegion { base, size, why });
        let a = self.config.alignment;
        if size == 0 {
            return bad("empty");
        }
        if !base.is_multiple_of(a) || !size.is_multiple_of(a) {
            return bad("not aligned to the allocator's alignment");
        }
        let Some(end) = base.checked_add(size) else {
            return bad("overflows the address space");
        };
        if self
            .regions
            .iter()
            .flatten()
            .any(|r| base < r.end() && r.base < end)
        {
            return bad("overlaps an existing region");
        }
        Ok(())
    }

    /// Appends `[end, end + extra)` to region `id` (for address ranges that grow in place,
    /// such as a virtual reservation being mapped further). The new bytes are free and merge
    /// with a free last chunk.
    pub fn grow_region(&mut self, id: RegionId, extra: u64) -> Result<(), BfcError> {
        let r = self.region(id)?;
        let (base, end, last) = (r.base, r.end(), r.last);
        self.validate_new_range(end, extra).map_err(|e| match e {
            BfcError::BadRegion { why, .. } => BfcError::BadRegion {
                base,
                size: extra,
                why,
            },
            e => e,
        })?;
        let last_chunk = self.chunks.get(last);
        if last_chunk.in_use {
            let tail = Chunk {
                addr: end,
                size: extra,
                requested: 0,
                stamp: 0,
                prev: last,
                next: NIL,
                region: id.0,
                in_use: false,
            };
            let t = self.chunks.insert(tail);
            self.chunks.get_mut(last).next = t;
            self.regions_mut(id.0).last = t;
            self.bins.insert(extra, end, t);
            self.stats.free_chunks += 1;
        } else {
            self.unbin(last);
            let c = self.chunks.get_mut(last);
            c.size += extra;
            let (size, addr) = (c.size, c.addr);
            self.bins.insert(size, addr, last);
        }
        self.regions_mut(id.0).size += extra;
        self.stats.region_bytes += extra;
        Ok(())
    }

    /// Removes `bytes` from the end of region `id`; the region's last chunk must be free and at
    /// least that large, and the region must keep at least one byte (use [`Bfc::remove_region`]).
    pub fn shrink_region(&mut self, id: RegionId, bytes: u64) -> Result<(), BfcError> {
        let r = self.region(id)?;
        let (base, size, last) = (r.base, r.size, r.last);
        let c = self.chunks.get(last);
        if bytes == 0 || !bytes.is_multiple_of(self.config.alignment) || c.in_use || c.size <= bytes
        {
            return Err(BfcError::BadRegion {
                base,
                size,
                why: "shrink needs a larger free tail",
            });
        }
        self.unbin(last);
        let c = self.chunks.get_mut(last);
        c.size -= bytes;
        let (csize, caddr) = (c.size, c.addr);
        self.bins.insert(csize, caddr, last);
        self.regions_mut(id.0).size -= bytes;
        self.stats.region_bytes -= bytes;
        Ok(())
    }

    /// Removes region `id`, which must be entirely free; returns its `(base, size)`.
    pub fn remove_region(&mut self, id: RegionId) -> Result<(u64, u64), BfcError> {
        let r = self.region(id)?;
        if r.in_use_bytes != 0 {
            return Err(BfcError::RegionInUse(id, r.in_use_bytes));
        }
        let (base, size, first) = (r.base, r.size, r.first);
        debug_assert_eq!(
            self.chunks.get(first).size,
            size,
            "a free region is one chunk"
        );
        self.unbin(first);
        self.chunks.remove(first);
        self.stats.free_chunks -= 1;
        self.regions[id.0 as usize] = None;
        self.stats.regions -= 1;
        self.stats.region_bytes -= size;
        Ok((base, size))
    }

    fn region(&self, id: RegionId) -> Result<&Region, BfcError> {
        self.regions
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(BfcError::NoSuchRegion(id))
    }

    fn regions_mut(&mut self, r: u32) -> &mut Region {
        self.regions[r as usize]
            .as_mut()
            .expect("chunk of a removed region")
    }

    // ------------------------------------------------------------------ queries

    /// `(base, size, bytes in use)` of a region.
    pub fn region_info(&self, id: RegionId) -> Option<(u64, u64, u64)> {
        self.region(id)
            .ok()
            .map(|r| (r.base, r.size, r.in_use_bytes))
    }

    /// Live regions in slot order.
    pub fn regions(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.regions
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_some())
            .map(|(i, _)| RegionId(i as u32))
    }

    /// The chunks of a region in address order.
    pub fn chunks_of(&self, id: RegionId) -> impl Iterator<Item = ChunkInfo> + '_ {
        let mut next = self.region(id).map(|r| r.first).unwrap_or(NIL);
        std::iter::from_fn(move || {
            if next == NIL {
                return None;
            }
            let i = next;
            next = self.chunks.get(i).next;
            Some(self.info(i))
        })
    }

    pub fn chunk(&self, id: ChunkId) -> ChunkInfo {
        self.info(id.0)
    }

    fn info(&self, i: u32) -> ChunkInfo {
        let c = self.chunks.get(i);
        ChunkInfo {
            addr: c.addr,
            size: c.size,
            requested: c.requested,
            stamp: c.stamp,
            in_use: c.in_use,
            region: RegionId(c.region),
        }
    }

    /// The in-use chunk starting at `addr`.
    pub fn allocated(&self, addr: u64) -> Option<ChunkInfo> {
        self.in_use.get(&addr).map(|&i| self.info(i))
    }

    /// Size of the largest free chunk (0 if none).
    pub fn largest_free(&self) -> u64 {
        self.bins.largest().map_or(0, |((size, _), _)| size)
    }

    /// Bytes in use (O(1); [`Bfc::stats`] also computes the largest free chunk).
    #[inline]
    pub fn stats_in_use_bytes(&self) -> u64 {
        self.stats.in_use_bytes
    }

    /// Counters; `largest_free` is computed on demand.
    pub fn stats(&self) -> BfcStats {
        BfcStats {
            largest_free: self.largest_free(),
            ..self.stats
        }
    }
}
