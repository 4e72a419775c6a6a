//! `tf-bfc`: a model of TensorFlow's (XLA/TSL's) BFC allocator on a GPU.
//!
//! Source: openxla/xla `xla/tsl/framework/bfc_allocator.{h,cc}` (TensorFlow's GPU allocator is
//! this class). Rules:
//!
//! - **Rounding**: requests round up to 256 B (`RoundedBytes`); 0 bytes count as 1.
//! - **Best fit** (`FindChunkPtr`): from the request's bin upwards, the first free chunk in
//!   `(size, address)` order that is large enough: the smallest fit, lowest address among
//!   equals. Inside the first bin, smaller chunks are skipped one by one, as TensorFlow does.
//! - **Split** (`ShouldSplitChunk`): when the chunk is at least twice the request, or the waste
//!   would reach 128 MiB (`max_internal_fragmentation_bytes_`, or `fragmentation_fraction` of
//!   the memory limit); else the whole chunk is handed out.
//! - **Free**: immediate coalescing with free neighbours of the same region (`TryToCoalesce`).
//! - **Growth** (`Extend`, `allow_growth`): regions of 2 MiB, doubling after each extension, or
//!   doubled until the request fits; clamped to what the memory limit leaves, backing off by
//!   0.9 if the driver refuses. Without growth, one region of the whole memory limit.
//! - **Garbage collection** (`DeallocateFreeRegions`): only when an allocation would fail, every
//!   region with nothing in use is freed, then `Extend` is retried (TensorFlow's GPU default,
//!   `TF_ENABLE_GPU_GARBAGE_COLLECTION=true`).
//!
//! The memory limit is the device's memory (`--capacity`). TensorFlow's BFC is not
//! stream-aware: a pool wraps it with deferred frees when several streams are in use.

mod alloc;
mod check;
mod chunks;
#[cfg(test)]
mod tests;

use super::registry::PolicyInfo;
use super::spec::PolicySpec;
use super::{Block, Policy, PolicyError, Segment, SpecError, Usage};
use chunks::{ChunkHandle, Chunks, NONE};
use coalesce_backend::{Backend, DevAddr, StreamId};
use rustc_hash::FxHashMap;

pub(super) const INFO: PolicyInfo = PolicyInfo {
    name: "tf-bfc",
    summary: "TensorFlow's BFC: 256 B rounding, 21 power-of-two bins, split at 2x or 128 MiB \
              waste, cudaMalloc regions doubling from 2 MiB, region GC only on OOM",
    options: &[
        (
            "allow_growth",
            "true (default): regions grow from 2 MiB; false: one region of the whole memory",
        ),
        (
            "garbage_collection",
            "true (default): on OOM free every idle region, then grow again",
        ),
        (
            "fragmentation_fraction",
            "(0,1): split when waste reaches this fraction of the memory (default: 128 MiB)",
        ),
    ],
    build: |spec| Ok(Box::new(TfBfc::new(TfBfcConfig::from_spec(spec)?))),
};

const MIB: u64 = 1 << 20;
/// Waste that always justifies a split unless `fragmentation_fraction` is set.
const DEFAULT_MAX_WASTE: u64 = 128 * MIB;

/// TensorFlow's `BFCAllocator::Options` that matter on a GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TfBfcConfig {
    pub allow_growth: bool,
    pub garbage_collection: bool,
    pub fragmentation_fraction: f64,
}

impl TfBfcConfig {
    fn from_spec(spec: &PolicySpec) -> Result<Self, SpecError> {
        let flag = |v: &str| match v {
            "true" | "True" | "1" => Ok(true),
            "false" | "False" | "0" => Ok(false),
            _ => Err(format!("{v:?}: expected true or false")),
        };
        Ok(TfBfcConfig {
            allow_growth: spec.parse_option("allow_growth", true, flag)?,
            garbage_collection: spec.parse_option("garbage_collection", true, flag)?,
            fragmentation_fraction: spec.parse_option("fragmentation_fraction", 0.0, |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|f| *f > 0.0 && *f < 1.0)
                    .ok_or_else(|| format!("{v:?} is not in (0, 1)"))
            })?,
        })
    }
}

/// Limits fixed by the device, known from the first allocation on.
#[derive(Clone, Copy, Debug)]
struct Limits {
    memory_limit: u64,
    max_waste: u64,
}

/// The allocator. See the module docs.
#[derive(Debug)]
pub struct TfBfc {
    config: TfBfcConfig,
    limits: Option<Limits>,
    chunks: Chunks,
    /// In-use chunks by address (TensorFlow indexes every 256 B of a region instead).
    in_use: FxHashMap<DevAddr, ChunkHandle>,
    /// Size of the next region (`curr_region_allocation_bytes_`).
    curr_region_allocation_bytes: u64,
    /// Bytes of all regions (`pool_bytes`).
    pool_bytes: u64,
    /// Bytes of in-use chunks (`bytes_in_use`).
    bytes_in_use: u64,
}

impl TfBfc {
    pub fn new(config: TfBfcConfig) -> Self {
        TfBfc {
            config,
            limits: None,
            chunks: Chunks::default(),
            in_use: FxHashMap::default(),
            curr_region_allocation_bytes: 0,
            pool_bytes: 0,
            bytes_in_use: 0,
        }
    }

    /// The constructor's work, done once the device is known.
    fn limits(&mut self, dev: &dyn Backend) -> Limits {
        if let Some(l) = self.limits {
            return l;
        }
        let memory_limit = dev.total_memory();
        self.curr_region_allocation_bytes = if self.config.allow_growth {
            chunks::rounded_bytes(memory_limit.min(2 * MIB))
        } else {
            chunks::rounded_bytes(memory_limit)
        };
        let max_waste = if self.config.fragmentation_fraction > 0.0 {
            (self.config.fragmentation_fraction * memory_limit as f64) as u64
        } else {
            DEFAULT_MAX_WASTE
        };
        let l = Limits {
            memory_limit,
            max_waste,
        };
        self.limits = Some(l);
        l
    }

    /// `TryToCoalesce` then `InsertFreeChunkIntoBin` for free chunk `h`.
    fn coalesce_and_bin(&mut self, h: ChunkHandle) {
        let mut h = h;
        let next = self.chunks.get(h).next;
        if next != NONE && !self.chunks.get(next).in_use {
            self.chunks.remove_from_bin(next);
            self.chunks.merge(h, next);
        }
        let prev = self.chunks.get(h).prev;
        if prev != NONE && !self.chunks.get(prev).in_use {
            self.chunks.remove_from_bin(prev);
            self.chunks.merge(prev, h);
            h = prev;
        }
        self.chunks.insert_into_bin(h);
    }
}

impl Policy for TfBfc {
    fn name(&self) -> &str {
        INFO.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        _stream: StreamId,
    ) -> Result<Block, PolicyError> {
        self.allocate_raw(dev, size)
    }

    /// `DeallocateRaw`: mark free, coalesce, bin.
    fn free(
        &mut self,
        _dev: &mut dyn Backend,
        addr: DevAddr,
        _stream: StreamId,
    ) -> Result<(), PolicyError> {
        let h = self
            .in_use
            .remove(&addr)
            .ok_or(PolicyError::UnknownAddress(addr))?;
        let c = self.chunks.get_mut(h);
        c.in_use = false;
        c.requested = 0;
        self.bytes_in_use -= c.size;
        self.coalesce_and_bin(h);
        Ok(())
    }

    /// TensorFlow has no `empty_cache`; its region garbage collection (`DeallocateRegions` of
    /// every region with nothing in use) is the nearest thing.
    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        self.deallocate_free_regions(dev)?;
        Ok(())
    }

    fn usage(&self) -> Usage {
        let largest_free_block = self
            .chunks
            .bins
            .iter()
            .rev()
            .find_map(|b| b.last().map(|k| k.0))
            .unwrap_or(0);
        Usage {
            allocated_bytes: self.bytes_in_use,
            largest_free_block,
            segments: self.chunks.regions.len(),
        }
    }

    fn segments(&self) -> Vec<Segment> {
        self.chunks
            .regions
            .iter()
            .map(|r| {
                let mut blocks = vec![];
                let mut h = r.first;
                while h != NONE {
                    let c = self.chunks.get(h);
                    if c.in_use {
                        blocks.push((c.ptr, c.size));
                    }
                    h = c.next;
                }
                Segment {
                    addr: r.ptr,
                    size: r.size,
                    stream: StreamId::default(),
                    blocks,
                }
            })
            .collect()
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.check().map_err(|e| format!("tf-bfc: {e}"))
    }
}
