//! Giving memory back: the out-of-memory path (`release_available_cached_blocks`,
//! `release_cached_blocks`), `empty_cache`, and `garbage_collect_cached_blocks`.

use super::TorchCaching;
use super::block::{BlockId, BlockPool, NIL, PoolKind};
use super::malloc::Request;
use crate::PolicyError;
use coalesce_backend::Backend;

impl TorchCaching {
    /// `release_available_cached_blocks`: with `max_split_size` set, frees one cached oversize
    /// segment large enough for the request, else oversize segments largest first until their
    /// bytes would cover it. Returns whether to retry.
    ///
    /// With expandable segments this is skipped (PyTorch would `cudaFree` a mapped block there,
    /// which its own assertion forbids); `release_cached_blocks` unmaps pages instead.
    pub(super) fn release_available_cached_blocks(
        &mut self,
        dev: &mut dyn Backend,
        req: &Request,
    ) -> Result<bool, PolicyError> {
        let max_split = self.config.max_split_size;
        if max_split == u64::MAX || self.config.expandable_segments {
            return Ok(false);
        }
        let key_size = req.size.max(max_split);
        let pool = self.pool(req.pool);
        let fits = pool
            .blocks
            .range((req.stream, key_size, 0)..)
            .next()
            .filter(|(k, _)| k.0 == req.stream)
            .map(|(_, &id)| id);
        if let Some(id) = fits {
            self.release_block(dev, id)?;
            return Ok(true);
        }
        // Largest first: walk down from just below the key while blocks are oversize.
        let oversize: Vec<(u64, BlockId)> = pool
            .blocks
            .range(..(req.stream, key_size, 0))
            .rev()
            .take_while(|(k, _)| k.0 == req.stream && k.1 >= max_split)
            .map(|(k, &id)| (k.1, id))
            .collect();
        let mut released = 0;
        for (size, id) in oversize {
            if released >= key_size {
                break;
            }
            released += size;
            self.release_block(dev, id)?;
        }
        Ok(released >= key_size)
    }

    /// `release_cached_blocks`: waits for pending events, then frees every cached block that is
    /// a whole `cudaMalloc` segment and unmaps the free pages of expandable segments.
    pub(super) fn release_cached_blocks(
        &mut self,
        dev: &mut dyn Backend,
    ) -> Result<(), PolicyError> {
        self.synchronize_and_free_events(dev)?;
        self.release_orphans(dev);
        self.release_blocks(dev, PoolKind::Large)?;
        self.release_blocks(dev, PoolKind::Small)
    }

    /// `release_blocks` of one pool.
    fn release_blocks(&mut self, dev: &mut dyn Backend, kind: PoolKind) -> Result<(), PolicyError> {
        let cached: Vec<BlockId> = self.pool(kind).blocks.values().copied().collect();
        let mut to_unmap = Vec::new();
        for id in cached {
            let b = self.blocks.get(id);
            if b.expandable != NIL {
                to_unmap.push(id);
            } else if !b.is_split() {
                self.release_block(dev, id)?;
            }
        }
        for id in to_unmap {
            self.unmap_block(dev, id)?;
            if !self.blocks.get(id).is_split() {
                self.release_expandable_segment(dev, id)?;
            }
        }
        Ok(())
    }

    /// `release_block`: `cudaFree` of cached block `id`, a whole segment.
    pub(super) fn release_block(
        &mut self,
        dev: &mut dyn Backend,
        id: BlockId,
    ) -> Result<(), PolicyError> {
        let b = *self.blocks.get(id);
        debug_assert!(
            !b.is_split() && b.expandable == NIL,
            "only whole cudaMalloc segments are freed"
        );
        dev.mem_free(b.addr)?;
        self.reserved -= b.size;
        self.segments.remove(&b.addr);
        let (blocks, pool) = self.parts(b.pool);
        pool.remove_free(&b);
        blocks.remove(id);
        Ok(())
    }

    /// `garbage_collect_cached_blocks`: above `garbage_collection_threshold` of the allowed
    /// memory, frees unsplit large cached segments at least as old as the average (age counts
    /// `get_free_block` calls since caching), repeating until enough is reclaimed. No device
    /// synchronization, unlike `release_cached_blocks`.
    pub(super) fn garbage_collect_cached_blocks(
        &mut self,
        dev: &mut dyn Backend,
    ) -> Result<(), PolicyError> {
        let Some(max) = self.allowed_maximum(dev) else {
            return Ok(());
        };
        let threshold = (self.config.garbage_collection_threshold * max as f64) as u64;
        if self.reserved <= threshold {
            return Ok(());
        }
        let target = self.reserved - threshold;
        let clock = self.large.get_free_blocks_call_count;
        let age = |b: &super::block::Block| clock - b.gc_count_base;
        let freeable =
            |pool: &BlockPool, blocks: &super::block::BlockArena| -> Vec<(BlockId, u64)> {
                pool.blocks
                    .values()
                    .map(|&id| (id, blocks.get(id)))
                    .filter(|(_, b)| !b.is_split() && b.expandable == NIL)
                    .map(|(id, b)| (id, age(b)))
                    .collect()
            };
        let mut candidates = freeable(&self.large, &self.blocks);
        let mut total_age: u64 = candidates.iter().map(|c| c.1).sum();
        let mut reclaimed = 0;
        let mut freed_any = true;
        while reclaimed < target && freed_any && !candidates.is_empty() {
            let threshold_age = total_age as f64 / candidates.len() as f64;
            freed_any = false;
            let mut kept = Vec::with_capacity(candidates.len());
            for (id, a) in candidates {
                if a as f64 >= threshold_age {
                    freed_any = true;
                    reclaimed += self.blocks.get(id).size;
                    total_age -= a;
                    self.release_block(dev, id)?;
                } else {
                    kept.push((id, a));
                }
            }
            candidates = kept;
        }
        Ok(())
    }
}
