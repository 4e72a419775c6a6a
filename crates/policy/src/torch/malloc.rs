//! The allocation path (`DeviceCachingAllocator::malloc` and the functions it calls).

use super::block::{Block, BlockId, NIL, PoolKind};
use super::config::{MIN_BLOCK, SMALL_SIZE, allocation_size};
use super::{ClassicSegment, TorchCaching};
use crate::{Block as Handed, PolicyError};
use coalesce_backend::{Backend, BackendError, DriverCall, StreamId};

/// A request after rounding.
#[derive(Clone, Copy, Debug)]
pub(super) struct Request {
    /// Rounded size.
    pub size: u64,
    pub stream: StreamId,
    pub pool: PoolKind,
    /// Size of a new segment for it.
    pub alloc_size: u64,
}

/// What growing the pool gave: a block, or the device's (or the memory fraction's)
/// out-of-memory error. Other backend failures are `Err` of the enclosing result.
pub(super) type Grown = Result<BlockId, BackendError>;

impl TorchCaching {
    /// `malloc`: cached block, else a new segment, else release cache and retry, else OOM.
    pub(super) fn malloc(
        &mut self,
        dev: &mut dyn Backend,
        orig_size: u64,
        stream: StreamId,
    ) -> Result<Handed, PolicyError> {
        if !self.events.is_empty() {
            self.process_events(dev)?;
        }
        let size = self.config.round_size(orig_size.max(1));
        let pool = if size <= SMALL_SIZE {
            PoolKind::Small
        } else {
            PoolKind::Large
        };
        let req = Request {
            size,
            stream,
            pool,
            alloc_size: allocation_size(size),
        };
        let id = match self.get_free_block(&req) {
            Some(id) => id,
            None => self.grow(dev, &req).map_err(|e| match e {
                PolicyError::OutOfMemory { source, .. } => PolicyError::OutOfMemory {
                    requested: orig_size,
                    source,
                },
                e => e,
            })?,
        };
        let split = self.should_split(id, size);
        Ok(self.alloc_found_block(id, &req, orig_size, split))
    }

    /// The slow path of `malloc`: collect garbage, grow, release cached blocks and retry.
    fn grow(&mut self, dev: &mut dyn Backend, req: &Request) -> Result<BlockId, PolicyError> {
        if self.config.garbage_collection_threshold > 0.0 && self.allowed_maximum(dev).is_some() {
            self.garbage_collect_cached_blocks(dev)?;
        }
        let mut grown = self.alloc_block(dev, req)?;
        if grown.is_err() && self.release_available_cached_blocks(dev, req)? {
            grown = self.alloc_block(dev, req)?;
        }
        if grown.is_err() {
            self.release_cached_blocks(dev)?;
            grown = self.alloc_block(dev, req)?;
        }
        grown.map_err(|source| PolicyError::OutOfMemory {
            requested: req.size,
            source,
        })
    }

    /// `get_free_block`: best fit by `(stream, size, address)` under the oversize rules.
    fn get_free_block(&mut self, req: &Request) -> Option<BlockId> {
        let gc = self.config.garbage_collection_threshold > 0.0
            && self.config.per_process_memory_fraction.is_some();
        let expandable = self.config.expandable_segments;
        let (max_split, max_rounding) = (
            self.config.max_split_size,
            self.config.max_non_split_rounding,
        );
        let (blocks, pool) = self.parts(req.pool);
        if gc {
            pool.get_free_blocks_call_count += 1;
        }
        let mut candidates = pool
            .blocks
            .range((req.stream, req.size, 0)..)
            .take_while(|(k, _)| k.0 == req.stream)
            .map(|(_, &id)| id);
        let mut id = candidates.next()?;
        if expandable {
            // A free block followed by unmapped space counts as big as it could grow, so a
            // block that cannot grow is preferred while the scan finds smaller such sizes.
            let grow_size = |id: BlockId| {
                let b = blocks.get(id);
                b.size
                    + blocks
                        .opt(b.next)
                        .filter(|n| !n.mapped)
                        .map_or(0, |n| n.size)
            };
            while blocks.get(id).expandable != NIL {
                match candidates.next() {
                    Some(next) if grow_size(next) < grow_size(id) => id = next,
                    _ => break,
                }
            }
        }
        let b = blocks.get(id);
        if req.size < max_split && b.size >= max_split {
            return None;
        }
        if req.size >= max_split && b.size >= req.size.saturating_add(max_rounding) {
            return None;
        }
        pool.remove_free(b);
        Some(id)
    }

    /// `should_split`: whether the remainder of block `id` after `size` bytes stays cached.
    fn should_split(&self, id: BlockId, size: u64) -> bool {
        let b = self.blocks.get(id);
        let remaining = b.size - size;
        if b.pool == PoolKind::Small || self.config.expandable_segments {
            remaining >= MIN_BLOCK
        } else {
            size < self.config.max_split_size && remaining > SMALL_SIZE
        }
    }

    /// `alloc_found_block`: hands out block `id` (taken out of its pool), split if asked.
    fn alloc_found_block(
        &mut self,
        mut id: BlockId,
        req: &Request,
        orig_size: u64,
        split: bool,
    ) -> Handed {
        if split {
            let rest = id;
            let r = self.blocks.get(rest);
            let front = Block {
                size: req.size,
                requested: 0,
                next: rest,
                allocated: false,
                pending_events: 0,
                gc_count_base: 0,
                ..*r
            };
            let prev = r.prev;
            id = self.blocks.insert(front);
            if prev != NIL {
                self.blocks.get_mut(prev).next = id;
            }
            let r = self.blocks.get_mut(rest);
            r.prev = id;
            r.addr += req.size;
            r.size -= req.size;
            self.insert_free(rest);
        }
        let b = self.blocks.get_mut(id);
        b.allocated = true;
        b.requested = orig_size;
        let handed = Handed {
            addr: b.addr,
            size: b.size,
        };
        self.allocated += b.size;
        self.active.insert(b.addr, id);
        handed
    }

    /// `alloc_block`: a new segment (or expandable pages) for the request.
    pub(super) fn alloc_block(
        &mut self,
        dev: &mut dyn Backend,
        req: &Request,
    ) -> Result<Grown, PolicyError> {
        if let Some(max) = self.allowed_maximum(dev)
            && self.reserved + req.alloc_size > max
        {
            return Ok(Err(BackendError::OutOfMemory {
                call: DriverCall::MemAlloc,
                requested: req.alloc_size,
                free: max.saturating_sub(self.reserved),
            }));
        }
        if self.config.expandable_segments {
            return self.try_allocate_expandable_block(dev, req);
        }
        let addr = match dev.mem_alloc(req.alloc_size) {
            Ok(addr) => addr,
            Err(e) if e.is_out_of_memory() => return Ok(Err(e)),
            Err(e) => return Err(e.into()),
        };
        self.reserved += req.alloc_size;
        self.segments.insert(
            addr,
            ClassicSegment {
                size: req.alloc_size,
                stream: req.stream,
                pool: req.pool,
            },
        );
        let id = self.blocks.insert(Block {
            addr,
            size: req.alloc_size,
            requested: 0,
            stream: req.stream,
            pool: req.pool,
            prev: NIL,
            next: NIL,
            allocated: false,
            pending_events: 0,
            mapped: true,
            expandable: NIL,
            gc_count_base: 0,
        });
        Ok(Ok(id))
    }
}
