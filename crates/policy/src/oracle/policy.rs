//! [`OraclePolicy`]: a plan replayed on a backend. It hands out the planned address for the
//! n-th allocation, maps a one-granule handle when a granule gets its first live block and
//! unmaps and releases it when its last one is freed, so the backend's peak reserved bytes are
//! the plan's figure.

use super::Plan;
use crate::registry::PolicyInfo;
use crate::spec::{PolicySpec, SpecError};
use crate::{Block, Policy, PolicyError, Segment, Usage, grow_error};
use coalesce_backend::{Backend, DevAddr, PhysHandle, StreamId};
use rustc_hash::FxHashMap;

/// The registry entry. The oracle needs the whole trace before the first allocation, which a
/// spec does not carry: front-ends build it with [`OraclePolicy::new`] from the trace's
/// [`plan`](super::plan()); building it by name fails with [`SpecError::NeedsTrace`].
pub const INFO: PolicyInfo = PolicyInfo {
    name: "oracle",
    summary: "offline: places every block knowing when each will be freed (needs the trace's plan)",
    options: &[],
    build,
};

fn build(spec: &PolicySpec) -> Result<Box<dyn Policy>, SpecError> {
    Err(SpecError::NeedsTrace {
        policy: spec.name.clone(),
    })
}

/// A plan replayed on a backend: the trace's allocations must come in the plan's order, each
/// no larger than planned. Not stream-aware: the plan assumes the trace's order is safe.
///
/// Invariants: `count[g]` is the number of live blocks touching granule `g`, and `handles[g]`
/// is mapped at `base + g * granule` exactly when `count[g] > 0`.
#[derive(Debug)]
pub struct OraclePolicy {
    plan: Plan,
    /// The reserved range, taken at the first allocation.
    base: Option<DevAddr>,
    /// Allocations handed out so far: the next one is block `next` of the plan.
    next: usize,
    /// Live blocks: address -> block.
    live: FxHashMap<DevAddr, usize>,
    count: Vec<u32>,
    handles: Vec<Option<PhysHandle>>,
    allocated: u64,
}

impl OraclePolicy {
    pub fn new(plan: Plan) -> Self {
        let granules = (plan.extent / plan.granule) as usize;
        OraclePolicy {
            plan,
            base: None,
            next: 0,
            live: FxHashMap::default(),
            count: vec![0; granules],
            handles: vec![None; granules],
            allocated: 0,
        }
    }

    /// The plan being replayed.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn off_plan(&self, size: u64, reason: String) -> PolicyError {
        PolicyError::OffPlan {
            requested: size,
            reason,
        }
    }

    fn reserve(&mut self, dev: &mut dyn Backend) -> Result<DevAddr, PolicyError> {
        if let Some(base) = self.base {
            return Ok(base);
        }
        let base = dev.address_reserve(self.plan.extent.max(self.plan.granule))?;
        self.base = Some(base);
        Ok(base)
    }

    /// Maps granules `gs` (none mapped), with access; on failure unmaps what it mapped.
    fn map(
        &mut self,
        dev: &mut dyn Backend,
        base: DevAddr,
        gs: &[u64],
        size: u64,
    ) -> Result<(), PolicyError> {
        let g = self.plan.granule;
        for (k, &gr) in gs.iter().enumerate() {
            let mapped = dev.mem_create(g).and_then(|h| {
                dev.mem_map(base + gr * g, h)
                    .map(|()| h)
                    .inspect_err(|_| drop(dev.mem_release(h)))
            });
            match mapped {
                Ok(h) => self.handles[gr as usize] = Some(h),
                Err(e) => {
                    for &undo in &gs[..k] {
                        self.unmap(dev, base, undo)?;
                    }
                    return Err(grow_error(size, e));
                }
            }
        }
        // One set_access per contiguous run of new granules.
        let mut i = 0;
        while i < gs.len() {
            let mut j = i + 1;
            while j < gs.len() && gs[j] == gs[j - 1] + 1 {
                j += 1;
            }
            dev.set_access(base + gs[i] * g, (j - i) as u64 * g)?;
            i = j;
        }
        Ok(())
    }

    fn unmap(&mut self, dev: &mut dyn Backend, base: DevAddr, gr: u64) -> Result<(), PolicyError> {
        let g = self.plan.granule;
        let h = self.handles[gr as usize].take().expect("mapped granule");
        dev.mem_unmap(base + gr * g, g)?;
        dev.mem_release(h)?;
        Ok(())
    }
}

impl Policy for OraclePolicy {
    fn name(&self) -> &str {
        INFO.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        _stream: StreamId,
    ) -> Result<Block, PolicyError> {
        let i = self.next;
        if i >= self.plan.offsets.len() {
            return Err(self.off_plan(size, format!("the plan has {i} allocations")));
        }
        if size > self.plan.sizes[i] {
            let reason = format!(
                "allocation {i} was planned for {} bytes",
                self.plan.sizes[i]
            );
            return Err(self.off_plan(size, reason));
        }
        if dev.granularity() != self.plan.granule {
            let reason = format!(
                "planned for {}-byte granules, the device has {}",
                self.plan.granule,
                dev.granularity()
            );
            return Err(self.off_plan(size, reason));
        }
        let base = self.reserve(dev)?;
        let fresh: Vec<u64> = self
            .plan
            .granules_of(i)
            .filter(|&g| self.count[g as usize] == 0)
            .collect();
        self.map(dev, base, &fresh, size)?;
        for g in self.plan.granules_of(i) {
            self.count[g as usize] += 1;
        }
        let addr = base + self.plan.offsets[i];
        self.live.insert(addr, i);
        self.next += 1;
        self.allocated += self.plan.sizes[i];
        Ok(Block {
            addr,
            size: self.plan.sizes[i],
        })
    }

    fn free(
        &mut self,
        dev: &mut dyn Backend,
        addr: DevAddr,
        _stream: StreamId,
    ) -> Result<(), PolicyError> {
        let i = self
            .live
            .remove(&addr)
            .ok_or(PolicyError::UnknownAddress(addr))?;
        let base = self.base.expect("a live block means a reservation");
        self.allocated -= self.plan.sizes[i];
        for g in self.plan.granules_of(i) {
            self.count[g as usize] -= 1;
            if self.count[g as usize] == 0 {
                self.unmap(dev, base, g)?;
            }
        }
        Ok(())
    }

    /// Memory is unmapped and released as soon as no live block touches it; with nothing live,
    /// the address range goes back too.
    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        if self.live.is_empty()
            && let Some(base) = self.base.take()
        {
            dev.address_free(base, self.plan.extent.max(self.plan.granule))?;
        }
        Ok(())
    }

    fn usage(&self) -> Usage {
        Usage {
            allocated_bytes: self.allocated,
            largest_free_block: 0,
            segments: usize::from(self.base.is_some()),
        }
    }

    fn segments(&self) -> Vec<Segment> {
        let Some(base) = self.base else {
            return vec![];
        };
        let mut blocks: Vec<(DevAddr, u64)> = self
            .live
            .iter()
            .map(|(&a, &i)| (a, self.plan.sizes[i]))
            .collect();
        blocks.sort_unstable();
        vec![Segment {
            addr: base,
            size: self.plan.extent.max(self.plan.granule),
            stream: StreamId(0),
            blocks,
        }]
    }

    fn check_invariants(&self) -> Result<(), String> {
        let mut count = vec![0u32; self.count.len()];
        for &i in self.live.values() {
            for g in self.plan.granules_of(i) {
                count[g as usize] += 1;
            }
        }
        if count != self.count {
            return Err("granule counts differ from the live blocks".into());
        }
        match self
            .count
            .iter()
            .zip(&self.handles)
            .position(|(&c, h)| (c > 0) != h.is_some())
        {
            Some(g) => Err(format!("granule {g}: mapped iff touched is broken")),
            None => Ok(()),
        }
    }
}
