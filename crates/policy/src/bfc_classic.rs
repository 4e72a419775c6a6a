//! `bfc-classic`: the BFC core over classic driver allocations, TensorFlow style.
//!
//! Regions come from `cuMemAlloc` and grow geometrically: the first is 2 MiB, each new one is
//! twice the previous (or the request doubled up to fit), so a pool of N bytes takes O(log N)
//! driver calls. Chunks never span regions, and regions are never returned except by
//! `empty_cache` (which the pool also runs on out-of-memory before its one retry), which frees
//! the regions with nothing in use.

use super::registry::PolicyInfo;
use super::{Block, Policy, PolicyError, Segment, Usage, grow_error};
use coalesce_backend::{Backend, DevAddr, StreamId};
use coalesce_core::bfc::{Bfc, BfcConfig, BfcError};

pub(super) const INFO: PolicyInfo = PolicyInfo {
    name: "bfc-classic",
    summary: "BFC over cuMemAlloc regions doubling from 2 MiB, never released (TensorFlow-like growth)",
    options: &[],
    build: |_| Ok(Box::new(BfcClassic::new())),
};

const FIRST_REGION: u64 = 2 << 20;

#[derive(Debug)]
pub struct BfcClassic {
    bfc: Bfc,
    /// Size of the next region unless a request needs more.
    next_region: u64,
}

impl BfcClassic {
    pub fn new() -> Self {
        BfcClassic {
            bfc: Bfc::new(BfcConfig::default()),
            next_region: FIRST_REGION,
        }
    }

    /// Adds a region that can hold `rounded` bytes.
    fn grow(&mut self, dev: &mut dyn Backend, rounded: u64) -> Result<(), PolicyError> {
        let mut size = self.next_region;
        let doubled = size < rounded;
        while size < rounded {
            size = size.checked_mul(2).ok_or(PolicyError::TooLarge(rounded))?;
        }
        // Out of memory (or over a cap), back off as TensorFlow's BFC does: halve the region
        // while it still holds the request.
        let addr = loop {
            match dev.mem_alloc(size) {
                Ok(addr) => break addr,
                Err(e) if e.is_out_of_memory() && size / 2 >= rounded.max(FIRST_REGION) => {
                    size /= 2
                }
                Err(e) => return Err(grow_error(rounded, e)),
            }
        };
        self.bfc
            .add_region(addr, size)
            .map_err(|e| PolicyError::Backend(bad_region(e)))?;
        self.next_region = if doubled { size } else { size * 2 };
        Ok(())
    }
}

impl Default for BfcClassic {
    fn default() -> Self {
        Self::new()
    }
}

fn bad_region(e: BfcError) -> coalesce_backend::BackendError {
    coalesce_backend::BackendError::Invalid {
        call: coalesce_backend::DriverCall::MemAlloc,
        reason: e.to_string(),
    }
}

impl Policy for BfcClassic {
    fn name(&self) -> &str {
        INFO.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        _stream: StreamId,
    ) -> Result<Block, PolicyError> {
        if let Some(a) = self.bfc.alloc(size) {
            return Ok(Block {
                addr: a.addr,
                size: a.size,
            });
        }
        let rounded = self.bfc.round(size).ok_or(PolicyError::TooLarge(size))?;
        self.grow(dev, rounded)?;
        let a = self
            .bfc
            .alloc(size)
            .expect("a fresh region fits the request");
        Ok(Block {
            addr: a.addr,
            size: a.size,
        })
    }

    fn free(
        &mut self,
        _dev: &mut dyn Backend,
        addr: DevAddr,
        _stream: StreamId,
    ) -> Result<(), PolicyError> {
        self.bfc
            .free(addr)
            .map(|_| ())
            .map_err(|_| PolicyError::UnknownAddress(addr))
    }

    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        let idle: Vec<_> = self
            .bfc
            .regions()
            .filter(|&r| self.bfc.region_info(r).is_some_and(|i| i.2 == 0))
            .collect();
        for r in idle {
            let (base, _) = self.bfc.remove_region(r).expect("region is idle");
            dev.mem_free(base)?;
        }
        Ok(())
    }

    fn usage(&self) -> Usage {
        let s = self.bfc.stats();
        Usage {
            allocated_bytes: s.in_use_bytes,
            largest_free_block: s.largest_free,
            segments: s.regions,
        }
    }

    fn segments(&self) -> Vec<Segment> {
        let mut segs: Vec<Segment> = self
            .bfc
            .regions()
            .map(|r| {
                let (addr, size, _) = self.bfc.region_info(r).expect("live region");
                let blocks = self
                    .bfc
                    .chunks_of(r)
                    .filter(|c| c.in_use)
                    .map(|c| (c.addr, c.size))
                    .collect();
                Segment {
                    addr,
                    size,
                    stream: StreamId::default(),
                    blocks,
                }
            })
            .collect();
        segs.sort_by_key(|s| s.addr);
        segs
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.bfc.check_invariants().map_err(|e| e.to_string())
    }
}
