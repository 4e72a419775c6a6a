//! `cuda-malloc`: one classic driver allocation per request, freed at once.
//!
//! The reference point at both ends: reserved memory equals live memory (1.0x), and every
//! allocation and free is a driver call (the worst case for driver time).

use super::registry::PolicyInfo;
use super::{Block, Policy, PolicyError, Segment, Usage, grow_error};
use coalesce_backend::{Backend, DevAddr, StreamId};
use rustc_hash::FxHashMap;

pub(super) const INFO: PolicyInfo = PolicyInfo {
    name: "cuda-malloc",
    summary: "cuMemAlloc per request, cuMemFree at once: 1.0x reserved, one driver call per op",
    options: &[],
    build: |_| Ok(Box::new(CudaMalloc::default())),
};

#[derive(Debug, Default)]
pub struct CudaMalloc {
    /// addr -> (size, stream)
    live: FxHashMap<DevAddr, (u64, StreamId)>,
    allocated: u64,
}

impl Policy for CudaMalloc {
    fn name(&self) -> &str {
        INFO.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        stream: StreamId,
    ) -> Result<Block, PolicyError> {
        let size = size.max(1);
        let addr = dev.mem_alloc(size).map_err(|e| grow_error(size, e))?;
        self.live.insert(addr, (size, stream));
        self.allocated += size;
        Ok(Block { addr, size })
    }

    fn free(
        &mut self,
        dev: &mut dyn Backend,
        addr: DevAddr,
        _stream: StreamId,
    ) -> Result<(), PolicyError> {
        let (size, _) = self
            .live
            .remove(&addr)
            .ok_or(PolicyError::UnknownAddress(addr))?;
        self.allocated -= size;
        // cudaFree synchronizes the device, so the block's last use is over before it goes.
        dev.mem_free(addr)?;
        Ok(())
    }

    /// `cuMemFree` synchronizes the device, so no stream can still use a freed block.
    fn stream_aware(&self) -> bool {
        true
    }

    fn empty_cache(&mut self, _dev: &mut dyn Backend) -> Result<(), PolicyError> {
        Ok(())
    }

    fn usage(&self) -> Usage {
        Usage {
            allocated_bytes: self.allocated,
            largest_free_block: 0,
            segments: self.live.len(),
        }
    }

    fn segments(&self) -> Vec<Segment> {
        let mut segs: Vec<Segment> = self
            .live
            .iter()
            .map(|(&addr, &(size, stream))| Segment {
                addr,
                size,
                stream,
                blocks: vec![(addr, size)],
            })
            .collect();
        segs.sort_by_key(|s| s.addr);
        segs
    }

    fn check_invariants(&self) -> Result<(), String> {
        let sum: u64 = self.live.values().map(|v| v.0).sum();
        if sum != self.allocated {
            return Err(format!(
                "allocated counter {} != sum of live blocks {sum}",
                self.allocated
            ));
        }
        Ok(())
    }
}
