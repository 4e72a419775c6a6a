//! `torch-native` and `torch-expandable`: models of PyTorch's CUDA caching allocator.
//!
//! One model, as in PyTorch, where `expandable_segments` is a setting of the same allocator
//! (`DeviceCachingAllocator` in pytorch/pytorch `c10/cuda/CUDACachingAllocator.cpp`). Rules:
//!
//! - **Rounding** ([`config`]): requests round up to 512 B, or to `roundup_power2_divisions`
//!   steps. Zero-byte requests (PyTorch never calls its allocator for them) count as 1 byte.
//! - **Pools**: rounded sizes up to 1 MiB use the small pool, others the large pool; each pool
//!   indexes its free blocks by `(stream, size, address)` ([`block`]). Blocks never move between
//!   pools or streams.
//! - **Best fit** (`get_free_block`): the first block of the request's stream at or above the
//!   size; an oversize block (>= `max_split_size`) serves only oversize requests, and only if it
//!   is less than `max_non_split_rounding` larger.
//! - **Split** (`should_split`): small pool (or any pool with expandable segments) when the
//!   remainder is at least 512 B; large pool only for requests under `max_split_size` with a
//!   remainder over 1 MiB. The block keeps the low addresses, the remainder stays cached.
//! - **Segments** (`alloc_block`): one `cudaMalloc` of `get_allocation_size`: 2 MiB (small),
//!   20 MiB (large under 10 MiB), else the request rounded to 2 MiB. With expandable segments,
//!   one growing virtual range per pool and stream instead ([`expandable`]).
//! - **Free**: merge with idle neighbours of the same segment and mapping state; memory is never
//!   returned except on the out-of-memory path or `empty_cache`.
//! - **Out of memory**: free oversize cached blocks if `max_split_size` is set, then every
//!   unsplit cached segment (and unmap every free expandable page), retrying after each.
//! - **Streams**: a block freed on another stream than its allocation stream waits for an event
//!   on the freeing stream (PyTorch's `record_stream`), polled at the next allocation.
//!
//! Where the model differs from the real allocator is listed in `docs/peer-models.md`.

mod block;
mod check;
mod config;
mod expandable;
mod free;
mod malloc;
mod release;
#[cfg(test)]
mod tests;

pub use config::TorchConfig;

use super::registry::PolicyInfo;
use super::{Block as Handed, Policy, PolicyError, Segment, Usage};
use block::{BlockArena, BlockId, BlockPool, PoolKind};
use coalesce_backend::{Backend, DevAddr, EventId, PhysHandle, StreamId};
use expandable::ExpandableSegment;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, VecDeque};

pub(super) const NATIVE_INFO: PolicyInfo = PolicyInfo {
    name: "torch-native",
    summary: "PyTorch's CUDA caching allocator: 2 MiB / 20 MiB / rounded cudaMalloc segments, \
              best fit by (stream, size, address), cached until OOM or empty_cache",
    options: config::OPTIONS,
    build: |spec| {
        let config = TorchConfig::from_spec(spec, false)?;
        Ok(Box::new(TorchCaching::new(NATIVE_INFO.name, config)))
    },
};

pub(super) const EXPANDABLE_INFO: PolicyInfo = PolicyInfo {
    name: "torch-expandable",
    summary: "PyTorch with expandable_segments:True: one growing VMM segment per pool and \
              stream, 2 MiB / 20 MiB pages, unmapped only on OOM or empty_cache",
    options: config::OPTIONS,
    build: |spec| {
        let config = TorchConfig::from_spec(spec, true)?;
        Ok(Box::new(TorchCaching::new(EXPANDABLE_INFO.name, config)))
    },
};

/// A `cudaMalloc` segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ClassicSegment {
    size: u64,
    stream: StreamId,
    pool: PoolKind,
}

/// The caching allocator of one device. See the module docs.
#[derive(Debug)]
pub struct TorchCaching {
    name: &'static str,
    config: TorchConfig,
    blocks: BlockArena,
    small: BlockPool,
    large: BlockPool,
    /// Allocated blocks by address.
    active: FxHashMap<DevAddr, BlockId>,
    /// `cudaMalloc` segments by address.
    segments: BTreeMap<DevAddr, ClassicSegment>,
    /// Expandable segments; `NIL`-free indices stay stable, released ones become `None`.
    expandable: Vec<Option<ExpandableSegment>>,
    /// Events recorded at frees on other streams, per stream in record order.
    events: BTreeMap<StreamId, VecDeque<(EventId, BlockId)>>,
    /// Pages unmapped whose `cuMemRelease` failed: released again at the next `empty_cache`,
    /// so a failing driver call loses no memory (not in PyTorch, which aborts).
    orphans: Vec<PhysHandle>,
    /// Bytes held from the device (`total_allocated_memory`).
    reserved: u64,
    /// Bytes of allocated blocks.
    allocated: u64,
}

impl TorchCaching {
    pub fn new(name: &'static str, config: TorchConfig) -> Self {
        TorchCaching {
            name,
            config,
            blocks: BlockArena::default(),
            small: BlockPool::new(PoolKind::Small),
            large: BlockPool::new(PoolKind::Large),
            active: FxHashMap::default(),
            segments: BTreeMap::new(),
            expandable: Vec::new(),
            orphans: Vec::new(),
            events: BTreeMap::new(),
            reserved: 0,
            allocated: 0,
        }
    }

    fn pool(&self, kind: PoolKind) -> &BlockPool {
        match kind {
            PoolKind::Small => &self.small,
            PoolKind::Large => &self.large,
        }
    }

    /// The block arena and one pool, borrowed together.
    fn parts(&mut self, kind: PoolKind) -> (&mut BlockArena, &mut BlockPool) {
        let pool = match kind {
            PoolKind::Small => &mut self.small,
            PoolKind::Large => &mut self.large,
        };
        (&mut self.blocks, pool)
    }

    /// Caches idle block `id` in its pool.
    fn insert_free(&mut self, id: BlockId) {
        let kind = self.blocks.get(id).pool;
        let (blocks, pool) = self.parts(kind);
        pool.insert_free(id, blocks.get_mut(id));
    }

    /// `allowed_memory_maximum` when a memory fraction is set.
    fn allowed_maximum(&self, dev: &dyn Backend) -> Option<u64> {
        self.config
            .per_process_memory_fraction
            .map(|f| (f * dev.total_memory() as f64) as u64)
    }
}

impl Policy for TorchCaching {
    fn name(&self) -> &str {
        self.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        stream: StreamId,
    ) -> Result<Handed, PolicyError> {
        self.malloc(dev, size, stream)
    }

    fn free(
        &mut self,
        dev: &mut dyn Backend,
        addr: DevAddr,
        stream: StreamId,
    ) -> Result<(), PolicyError> {
        self.free_at(dev, addr, stream)
    }

    /// Blocks are reused only on their allocation stream, and a block freed on another stream
    /// only after that stream passed the free.
    fn stream_aware(&self) -> bool {
        true
    }

    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        self.release_cached_blocks(dev)
    }

    fn usage(&self) -> Usage {
        Usage {
            allocated_bytes: self.allocated,
            largest_free_block: self.small.largest().max(self.large.largest()),
            segments: self.segments.len() + self.expandable.iter().flatten().count(),
        }
    }

    /// `cudaMalloc` segments, and one segment per contiguous mapped range of an expandable
    /// segment (as PyTorch's snapshots report them).
    fn segments(&self) -> Vec<Segment> {
        let mut by_addr: BTreeMap<u64, BlockId> = BTreeMap::new();
        for (id, b) in self.blocks.iter() {
            if b.mapped {
                by_addr.insert(b.addr, id);
            }
        }
        let mut out: Vec<Segment> = Vec::new();
        for (&addr, &id) in &by_addr {
            let b = self.blocks.get(id);
            let starts_run = self.blocks.opt(b.prev).is_none_or(|p| !p.mapped);
            if !starts_run {
                continue;
            }
            let mut seg = Segment {
                addr,
                size: 0,
                stream: b.stream,
                blocks: vec![],
            };
            let mut at = id;
            while let Some(c) = self.blocks.opt(at).filter(|c| c.mapped) {
                seg.size += c.size;
                if c.allocated {
                    seg.blocks.push((c.addr, c.size));
                }
                at = c.next;
            }
            out.push(seg);
        }
        out
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.check().map_err(|e| format!("{}: {e}", self.name))
    }
}
