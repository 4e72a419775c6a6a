//! Expandable segments (PyTorch's Note [Expandable Segments]).
//!
//! Per pool and stream, a virtual range of 1 1/8 x the device's memory is reserved once; physical
//! memory is created and mapped in pages (2 MiB small pool, 20 MiB large pool; one handle per
//! page, so single pages can be unmapped later) when a request needs it, at the lowest address
//! where it fits. The unmapped rest of a segment is an unmapped block; a free block just before
//! it can grow into it. Free pages are unmapped only by `release_cached_blocks` (empty_cache,
//! out-of-memory), after synchronizing the segment's stream, and a segment with nothing mapped
//! gives its reservation back.

use super::TorchCaching;
use super::block::{Block, BlockId, BlockPool, NIL, PoolKind};
use super::config::{LARGE_BUFFER, SMALL_BUFFER};
use super::malloc::{Grown, Request};
use crate::PolicyError;
use coalesce_backend::{Backend, BackendError, PhysHandle, StreamId};

/// One reserved virtual range and the pages mapped into it (`ExpandableSegment`).
#[derive(Clone, Debug)]
pub(super) struct ExpandableSegment {
    pub base: u64,
    /// Page (`segment_size_`): 2 MiB for the small pool, 20 MiB for the large pool.
    pub page: u64,
    pub stream: StreamId,
    pub pool: PoolKind,
    /// Mapped page handles by page index; the vector covers the whole reservation.
    pub handles: Vec<Option<PhysHandle>>,
}

impl ExpandableSegment {
    pub fn size(&self) -> u64 {
        self.handles.len() as u64 * self.page
    }

    pub fn mapped_bytes(&self) -> u64 {
        self.handles.iter().flatten().count() as u64 * self.page
    }

    /// `map`: creates and maps the pages covering `[addr, addr + size)` (`addr` page-aligned,
    /// pages unmapped) and makes them accessible; returns the mapped `(addr, size)`, or the
    /// out-of-memory error. Any failure undoes the call's work first (unmaps and releases what
    /// it created), so a failing driver call leaves no page mapped without access and no
    /// handle behind.
    fn map(
        &mut self,
        dev: &mut dyn Backend,
        addr: u64,
        size: u64,
        orphans: &mut Vec<PhysHandle>,
    ) -> Result<Result<(u64, u64), BackendError>, PolicyError> {
        let begin = (addr - self.base) / self.page;
        let end = (addr + size - self.base).div_ceil(self.page);
        for i in begin..end {
            debug_assert!(self.handles[i as usize].is_none(), "page {i} mapped twice");
            match dev.mem_create(self.page) {
                Ok(h) => self.handles[i as usize] = Some(h),
                Err(e) => {
                    self.undo(dev, begin..i, begin..begin, orphans);
                    return if e.is_out_of_memory() {
                        Ok(Err(e))
                    } else {
                        Err(e.into())
                    };
                }
            }
        }
        for i in begin..end {
            let h = self.handles[i as usize].expect("created above");
            if let Err(e) = dev.mem_map(self.base + i * self.page, h) {
                self.undo(dev, begin..end, begin..i, orphans);
                return Err(e.into());
            }
        }
        let range = (self.base + begin * self.page, (end - begin) * self.page);
        if let Err(e) = dev.set_access(range.0, range.1) {
            self.undo(dev, begin..end, begin..end, orphans);
            return Err(e.into());
        }
        Ok(Ok(range))
    }

    /// Undoes part of a `map`: unmaps pages `mapped` and releases the handles of `created`.
    /// A release that fails leaves its handle in `orphans`; a page that cannot be unmapped
    /// keeps its handle (it stays mapped, and is unmapped with the segment later).
    fn undo(
        &mut self,
        dev: &mut dyn Backend,
        created: std::ops::Range<u64>,
        mapped: std::ops::Range<u64>,
        orphans: &mut Vec<PhysHandle>,
    ) {
        let mut stuck = Vec::new();
        for i in mapped {
            if dev.mem_unmap(self.base + i * self.page, self.page).is_err() {
                stuck.push(i);
            }
        }
        for i in created.filter(|i| !stuck.contains(i)) {
            if let Some(h) = self.handles[i as usize].take()
                && dev.mem_release(h).is_err()
            {
                orphans.push(h);
            }
        }
    }

    /// `unmap`: unmaps and releases the pages entirely inside `[addr, addr + size)`, after
    /// the stream has finished with them; returns the unmapped `(addr, size)` (size 0: none).
    /// A failing `cuMemUnmap` ends the call with the pages before it unmapped (the rest stays
    /// mapped and cached); a failing `cuMemRelease` leaves its handle in `orphans`.
    fn unmap(
        &mut self,
        dev: &mut dyn Backend,
        addr: u64,
        size: u64,
        orphans: &mut Vec<PhysHandle>,
    ) -> Result<(u64, u64), PolicyError> {
        let begin = (addr - self.base).div_ceil(self.page);
        let end = (addr + size - self.base) / self.page;
        if begin >= end {
            return Ok((addr, 0));
        }
        dev.stream_synchronize(self.stream)?;
        let start = self.base + begin * self.page;
        for i in begin..end {
            let h = self.handles[i as usize].expect("mapped page");
            if let Err(e) = dev.mem_unmap(self.base + i * self.page, self.page) {
                if i == begin {
                    return Err(e.into());
                }
                return Ok((start, (i - begin) * self.page));
            }
            self.handles[i as usize] = None;
            if dev.mem_release(h).is_err() {
                orphans.push(h);
            }
        }
        Ok((start, (end - begin) * self.page))
    }
}

impl TorchCaching {
    /// The expandable segment of block `id`, and the orphan list its calls may add to.
    fn segment_mut(&mut self, id: BlockId) -> (&mut ExpandableSegment, &mut Vec<PhysHandle>) {
        let s = self.blocks.get(id).expandable;
        let seg = self.expandable[s as usize]
            .as_mut()
            .expect("block of a live expandable segment");
        (seg, &mut self.orphans)
    }

    /// Releases the handles a failed `cuMemRelease` left behind; keeps those that fail again.
    pub(super) fn release_orphans(&mut self, dev: &mut dyn Backend) {
        self.orphans.retain(|&h| dev.mem_release(h).is_err());
    }

    /// `try_allocate_expandable_block`: maps enough pages at the lowest address where the
    /// request fits (free and unmapped space together) and returns the block, taken out of its
    /// pool.
    pub(super) fn try_allocate_expandable_block(
        &mut self,
        dev: &mut dyn Backend,
        req: &Request,
    ) -> Result<Grown, PolicyError> {
        let mut candidate = self.find_expandable_block(dev, req)?;
        if !self.blocks.get(candidate).mapped {
            let size = self.blocks.get(candidate).size.min(req.size);
            if let Err(e) = self.map_block(dev, candidate, size)? {
                return Ok(Err(e));
            }
        }
        while self.blocks.get(candidate).size < req.size {
            // free -> unmapped: map the missing part of the next block, which absorbs this one.
            let remaining = req.size - self.blocks.get(candidate).size;
            let next = self.blocks.get(candidate).next;
            let size = self.blocks.get(next).size.min(remaining);
            if let Err(e) = self.map_block(dev, next, size)? {
                return Ok(Err(e));
            }
            candidate = next;
        }
        let (blocks, pool) = self.parts(req.pool);
        pool.remove_free(blocks.get(candidate));
        Ok(Ok(candidate))
    }

    /// `find_expandable_block`: the lowest-addressed unmapped block of the request's pool and
    /// stream (or the idle block just before it) from which enough free and unmapped space
    /// follows; else a new segment.
    fn find_expandable_block(
        &mut self,
        dev: &mut dyn Backend,
        req: &Request,
    ) -> Result<BlockId, PolicyError> {
        let blocks = &self.blocks;
        let idle = |id: BlockId| blocks.opt(id).is_some_and(Block::is_idle);
        let has_room = |mut id: BlockId| {
            let mut bytes = 0;
            while bytes < req.size && idle(id) {
                bytes += blocks.get(id).size;
                id = blocks.get(id).next;
            }
            bytes >= req.size
        };
        let found = self
            .pool(req.pool)
            .unmapped
            .range((req.stream, 0)..)
            .take_while(|(k, _)| k.0 == req.stream)
            .map(|(_, &id)| {
                let prev = blocks.get(id).prev;
                if idle(prev) { prev } else { id }
            })
            .find(|&id| has_room(id));
        if let Some(id) = found {
            return Ok(id);
        }
        self.new_expandable_segment(dev, req)
    }

    /// Reserves a new segment for the request's pool and stream: one unmapped block.
    fn new_expandable_segment(
        &mut self,
        dev: &mut dyn Backend,
        req: &Request,
    ) -> Result<BlockId, PolicyError> {
        let page = match req.pool {
            PoolKind::Small => SMALL_BUFFER,
            PoolKind::Large => LARGE_BUFFER,
        };
        let total = dev.total_memory();
        let pages = (total + total / 8).div_ceil(page).max(1);
        let base = dev.address_reserve(pages * page)?;
        let index = match self.expandable.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.expandable.push(None);
                self.expandable.len() - 1
            }
        };
        self.expandable[index] = Some(ExpandableSegment {
            base,
            page,
            stream: req.stream,
            pool: req.pool,
            handles: vec![None; pages as usize],
        });
        let id = self.blocks.insert(Block {
            addr: base,
            size: pages * page,
            requested: 0,
            stream: req.stream,
            pool: req.pool,
            prev: NIL,
            next: NIL,
            allocated: false,
            pending_events: 0,
            mapped: false,
            expandable: index as u32,
            gc_count_base: 0,
        });
        let (blocks, pool) = self.parts(req.pool);
        pool.unmapped
            .insert(BlockPool::addr_key(blocks.get(id)), id);
        Ok(id)
    }

    /// `map_block`: maps the first `size` bytes (rounded up to pages) of unmapped block
    /// `to_map`; the rest stays an unmapped block after it. The mapped block merges with idle
    /// mapped neighbours and is cached.
    fn map_block(
        &mut self,
        dev: &mut dyn Backend,
        to_map: BlockId,
        size: u64,
    ) -> Result<Result<(), BackendError>, PolicyError> {
        let addr = self.blocks.get(to_map).addr;
        let (seg, orphans) = self.segment_mut(to_map);
        let outcome = seg.map(dev, addr, size, orphans)?;
        let (_, mapped) = match outcome {
            Ok(range) => range,
            Err(e) => return Ok(Err(e)),
        };
        let b = *self.blocks.get(to_map);
        self.parts(b.pool).1.remove_any(&b);
        self.blocks.get_mut(to_map).mapped = true;
        if mapped < b.size {
            let rest = self.blocks.insert(Block {
                addr: b.addr + mapped,
                size: b.size - mapped,
                prev: to_map,
                ..b
            });
            if b.next != NIL {
                self.blocks.get_mut(b.next).prev = rest;
            }
            let m = self.blocks.get_mut(to_map);
            m.next = rest;
            m.size = mapped;
            let (blocks, pool) = self.parts(b.pool);
            pool.unmapped
                .insert(BlockPool::addr_key(blocks.get(rest)), rest);
        }
        let (prev, next) = (self.blocks.get(to_map).prev, self.blocks.get(to_map).next);
        self.try_merge(to_map, prev);
        self.try_merge(to_map, next);
        self.insert_free(to_map);
        self.reserved += mapped;
        Ok(Ok(()))
    }

    /// `unmap_block`: unmaps the whole pages inside cached block `id`; what is left of the block
    /// on either side stays cached, and the unmapped block merges with unmapped neighbours.
    pub(super) fn unmap_block(
        &mut self,
        dev: &mut dyn Backend,
        id: BlockId,
    ) -> Result<(), PolicyError> {
        let b = *self.blocks.get(id);
        let (seg, orphans) = self.segment_mut(id);
        let (at, unmapped) = seg.unmap(dev, b.addr, b.size, orphans)?;
        if unmapped == 0 {
            return Ok(());
        }
        self.parts(b.pool).1.remove_free(&b);
        let before = at - b.addr;
        if before > 0 {
            let piece = self.blocks.insert(Block {
                size: before,
                next: id,
                ..b
            });
            if b.prev != NIL {
                self.blocks.get_mut(b.prev).next = piece;
            }
            self.blocks.get_mut(id).prev = piece;
            self.insert_free(piece);
        }
        let after = b.size - before - unmapped;
        if after > 0 {
            let next = self.blocks.get(id).next;
            let piece = self.blocks.insert(Block {
                addr: at + unmapped,
                size: after,
                prev: id,
                next,
                ..b
            });
            if next != NIL {
                self.blocks.get_mut(next).prev = piece;
            }
            self.blocks.get_mut(id).next = piece;
            self.insert_free(piece);
        }
        let m = self.blocks.get_mut(id);
        m.addr = at;
        m.size = unmapped;
        m.mapped = false;
        let (prev, next) = (m.prev, m.next);
        self.try_merge(id, prev);
        self.try_merge(id, next);
        let (blocks, pool) = self.parts(b.pool);
        pool.unmapped
            .insert(BlockPool::addr_key(blocks.get(id)), id);
        self.reserved -= unmapped;
        Ok(())
    }

    /// `release_expandable_segment`: block `id` is a whole, unmapped segment; gives its
    /// reservation back.
    pub(super) fn release_expandable_segment(
        &mut self,
        dev: &mut dyn Backend,
        id: BlockId,
    ) -> Result<(), PolicyError> {
        let b = *self.blocks.get(id);
        let slot = &mut self.expandable[b.expandable as usize];
        let seg = slot.as_ref().expect("live expandable segment");
        debug_assert!(!b.mapped && b.addr == seg.base && b.size == seg.size());
        // Freed first, forgotten after: a failing `cuMemAddressFree` keeps the segment (all
        // unmapped, reusable) for a later release.
        dev.address_free(seg.base, seg.size())?;
        *slot = None;
        let (blocks, pool) = self.parts(b.pool);
        pool.remove_any(&b);
        blocks.remove(id);
        Ok(())
    }
}
