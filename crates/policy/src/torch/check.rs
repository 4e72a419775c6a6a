//! The allocator's invariants, as code (O(blocks · log blocks); tests run it after every step).
//!
//! 1. The blocks of every segment tile it in address order through `prev`/`next`, with the
//!    segment's stream, pool and segment index; every live block belongs to one segment.
//! 2. No two neighbours are both idle (free, no pending event) in the same mapping state.
//! 3. Idle mapped blocks are exactly the entries of their pool's size index, unmapped blocks
//!    exactly the entries of its unmapped index, allocated blocks exactly the address map;
//!    blocks waiting for events are in none of them.
//! 4. Blocks are multiples of 512 B; mapped blocks lie on mapped pages, unmapped ones on
//!    unmapped pages, page-aligned; small-pool `cudaMalloc` segments are 2 MiB.
//! 5. The counters of allocated and reserved bytes match the blocks and pages.

use super::TorchCaching;
use super::block::{BlockId, BlockPool, NIL, PoolKind};
use super::config::{MIN_BLOCK, SMALL_BUFFER};
use coalesce_backend::StreamId;
use std::collections::HashMap;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Where a segment starts and what its blocks must share.
struct SegmentSpan {
    addr: u64,
    size: u64,
    stream: StreamId,
    pool: PoolKind,
    expandable: u32,
}

impl TorchCaching {
    pub(super) fn check(&self) -> Result<(), String> {
        let by_addr: HashMap<u64, BlockId> =
            self.blocks.iter().map(|(id, b)| (b.addr, id)).collect();
        ensure!(
            by_addr.len() == self.blocks.live(),
            "two blocks share an address"
        );
        let mut walked = 0;
        for span in self.spans() {
            walked += self.check_segment(&span, &by_addr)?;
        }
        ensure!(
            walked == self.blocks.live(),
            "{} live blocks but {walked} in segments",
            self.blocks.live()
        );
        self.check_indexes()?;
        self.check_counters()
    }

    fn spans(&self) -> Vec<SegmentSpan> {
        let classic = self.segments.iter().map(|(&addr, s)| SegmentSpan {
            addr,
            size: s.size,
            stream: s.stream,
            pool: s.pool,
            expandable: NIL,
        });
        let expandable = self.expandable.iter().enumerate().filter_map(|(i, s)| {
            let s = s.as_ref()?;
            Some(SegmentSpan {
                addr: s.base,
                size: s.size(),
                stream: s.stream,
                pool: s.pool,
                expandable: i as u32,
            })
        });
        classic.chain(expandable).collect()
    }

    /// Invariants 1, 2 and 4 for one segment; returns its block count.
    fn check_segment(
        &self,
        span: &SegmentSpan,
        by_addr: &HashMap<u64, BlockId>,
    ) -> Result<usize, String> {
        let (mut at, mut prev, mut count) = (span.addr, NIL, 0);
        let mut id = *by_addr
            .get(&span.addr)
            .ok_or_else(|| format!("segment {:#x} has no first block", span.addr))?;
        let end = span.addr + span.size;
        if span.expandable == NIL && span.pool == PoolKind::Small {
            ensure!(
                span.size == SMALL_BUFFER,
                "small segment {:#x} of {} bytes",
                span.addr,
                span.size
            );
        }
        while id != NIL {
            let b = self.blocks.get(id);
            ensure!(
                b.addr == at,
                "gap or overlap at {:#x} (expected {at:#x})",
                b.addr
            );
            ensure!(b.prev == prev, "block {:#x}: broken prev link", b.addr);
            ensure!(
                b.stream == span.stream && b.pool == span.pool && b.expandable == span.expandable,
                "block {:#x} disagrees with its segment {:#x}",
                b.addr,
                span.addr
            );
            ensure!(
                b.size > 0 && b.size.is_multiple_of(MIN_BLOCK),
                "block {:#x} has size {}",
                b.addr,
                b.size
            );
            if let Some(p) = self.blocks.opt(prev) {
                ensure!(
                    !(p.is_idle() && b.is_idle() && p.mapped == b.mapped),
                    "idle neighbours {:#x} and {:#x} were not merged",
                    p.addr,
                    b.addr
                );
            }
            self.check_pages(id)?;
            at = b.end();
            (prev, id) = (id, b.next);
            count += 1;
        }
        ensure!(
            at == end,
            "segment {:#x} ends at {at:#x}, not {end:#x}",
            span.addr
        );
        Ok(count)
    }

    /// Invariant 4 for the pages under block `id` of an expandable segment.
    fn check_pages(&self, id: BlockId) -> Result<(), String> {
        let b = self.blocks.get(id);
        let Some(seg) = self
            .expandable
            .get(b.expandable as usize)
            .and_then(Option::as_ref)
        else {
            ensure!(b.mapped, "cudaMalloc block {:#x} unmapped", b.addr);
            return Ok(());
        };
        let first = (b.addr - seg.base) / seg.page;
        let last = (b.end() - 1 - seg.base) / seg.page;
        if !b.mapped {
            ensure!(
                (b.addr - seg.base).is_multiple_of(seg.page),
                "unmapped block {:#x} not page-aligned",
                b.addr
            );
            ensure!(!b.allocated, "unmapped block {:#x} allocated", b.addr);
        }
        for page in first..=last {
            ensure!(
                seg.handles[page as usize].is_some() == b.mapped,
                "block {:#x} (mapped: {}) lies on page {page} of the wrong state",
                b.addr,
                b.mapped
            );
        }
        Ok(())
    }

    /// Invariant 3.
    fn check_indexes(&self) -> Result<(), String> {
        let (mut cached, mut unmapped, mut active) = (0, 0, 0);
        for (id, b) in self.blocks.iter() {
            let pool = self.pool(b.pool);
            if b.allocated {
                active += 1;
                ensure!(
                    self.active.get(&b.addr) == Some(&id),
                    "allocated block {:#x} not in the address map",
                    b.addr
                );
            } else if !b.mapped {
                unmapped += 1;
                ensure!(
                    pool.unmapped.get(&BlockPool::addr_key(b)) == Some(&id),
                    "unmapped block {:#x} not indexed",
                    b.addr
                );
            } else if b.pending_events == 0 {
                cached += 1;
                ensure!(
                    pool.blocks.get(&BlockPool::size_key(b)) == Some(&id),
                    "free block {:#x} not cached under (stream, size, addr)",
                    b.addr
                );
            }
        }
        let pools = [&self.small, &self.large];
        ensure!(
            cached == pools.iter().map(|p| p.blocks.len()).sum::<usize>(),
            "a pool caches blocks that are not free"
        );
        ensure!(
            unmapped == pools.iter().map(|p| p.unmapped.len()).sum::<usize>(),
            "a pool indexes unmapped blocks that do not exist"
        );
        ensure!(
            active == self.active.len(),
            "the address map holds blocks that are not allocated"
        );
        for pool in pools {
            for &id in pool.blocks.values().chain(pool.unmapped.values()) {
                ensure!(
                    self.blocks.get(id).pool == pool.kind,
                    "block {:#x} is indexed in the wrong pool",
                    self.blocks.get(id).addr
                );
            }
        }
        Ok(())
    }

    /// Invariant 5.
    fn check_counters(&self) -> Result<(), String> {
        let allocated: u64 = self
            .blocks
            .iter()
            .filter(|(_, b)| b.allocated)
            .map(|(_, b)| b.size)
            .sum();
        ensure!(
            allocated == self.allocated,
            "allocated counter {} != {allocated} in allocated blocks",
            self.allocated
        );
        let reserved = self.segments.values().map(|s| s.size).sum::<u64>()
            + self
                .expandable
                .iter()
                .flatten()
                .map(|s| s.mapped_bytes())
                .sum::<u64>();
        ensure!(
            reserved == self.reserved,
            "reserved counter {} != {reserved} in segments and pages",
            self.reserved
        );
        Ok(())
    }
}
