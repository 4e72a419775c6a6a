//! The virtual space: one reserved address range, the BFC over it, and the physical backing.
//!
//! Backing a run of unmapped granules takes physical memory from, in order:
//! 1. a spare or idle handle that covers the rest of the run and fits in the unmapped span
//!    there (smallest such): one `cuMemMap` (plus a `cuMemUnmap` if it was idle elsewhere);
//! 2. the largest spare or idle handle smaller than the rest of the run, then continue;
//! 3. new physical memory, one handle sized to the pool's scale (at least the rest of the
//!    run, at most the unmapped span). If spare or idle handles exist (all too large for this
//!    span), they are released first until as many bytes are freed as will be created: reserved
//!    memory never grows while idle memory exists.

use super::granules::{Granules, NONE};
use crate::backend::{Backend, BackendError, DriverCall};
use crate::policy::{PolicyError, grow_error};
use coalesce_core::bfc::{Bfc, BfcConfig, ChunkId};

/// How new physical memory is sized.
#[derive(Clone, Copy, Debug)]
pub(super) struct Growth {
    /// New handles cover at least `pinned / divisor` granules (mapping ahead of need).
    pub divisor: u32,
    /// New handles cover at most `pinned / cap_divisor` granules (at least one): the waste at
    /// peak is a few partly used handles, so handles must stay small next to the pool.
    pub cap_divisor: u32,
    /// During a burst (growth with no free in between, e.g. loading a model) handles may
    /// reach `burst / burst_divisor` granules: memory allocated in a burst is live and packed,
    /// so large handles waste nothing there, and they save most creates of the load phase.
    pub burst_divisor: u32,
    /// ... and never more than this many granules, whatever the request: larger handles
    /// could not be moved once partly in use.
    pub max_granules: u32,
}

#[derive(Debug)]
pub(super) struct Space {
    pub base: u64,
    pub size: u64,
    pub granule: u64,
    pub bfc: Bfc,
    pub granules: Granules,
    growth: Growth,
    /// Granules allocated since the last free.
    burst: u32,
}

impl Space {
    /// Reserves `size` bytes of address space on `dev` (rounded to the granularity).
    pub fn reserve(dev: &mut dyn Backend, size: u64, growth: Growth) -> Result<Space, PolicyError> {
        let granule = dev.granularity();
        let size = size.div_ceil(granule).max(1) * granule;
        let base = dev.address_reserve(size)?;
        let mut bfc = Bfc::new(BfcConfig::default());
        bfc.add_region(base, size).map_err(|e| {
            PolicyError::Backend(BackendError::Invalid {
                call: DriverCall::AddressReserve,
                reason: e.to_string(),
            })
        })?;
        let n = usize::try_from(size / granule).expect("granule count fits usize");
        Ok(Space {
            base,
            size,
            granule,
            bfc,
            granules: Granules::new(n),
            growth,
            burst: 0,
        })
    }

    /// First and last granule overlapping `[addr, addr + size)`.
    #[inline]
    pub fn granule_range(&self, addr: u64, size: u64) -> (u32, u32) {
        let g0 = ((addr - self.base) / self.granule) as u32;
        let g1 = ((addr + size.max(1) - 1 - self.base) / self.granule) as u32;
        (g0, g1)
    }

    #[inline]
    pub fn va(&self, g: u32) -> u64 {
        self.base + g as u64 * self.granule
    }

    /// Live bytes in granules: the pool's scale for sizing new handles.
    fn live_granules(&self) -> u32 {
        (self.bfc.stats().in_use_bytes / self.granule) as u32
    }

    /// Takes chunk `chunk` for `requested` bytes, marks the handles under it busy and backs
    /// whatever is unmapped. On failure the chunk is given back.
    pub fn take(
        &mut self,
        dev: &mut dyn Backend,
        chunk: ChunkId,
        requested: u64,
    ) -> Result<(u64, u64), PolicyError> {
        let a = self.bfc.alloc_chunk(chunk, requested, true);
        let (g0, g1) = self.granule_range(a.addr, a.size);
        let unmapped = self.granules.mark_busy_over(g0, g1);
        self.burst = self
            .burst
            .saturating_add(a.size.div_ceil(self.granule) as u32);
        if unmapped && let Err(e) = self.back(dev, g0, g1, requested) {
            self.give_back(a.addr);
            return Err(e);
        }
        Ok((a.addr, a.size))
    }

    /// Frees the block at `addr`; handles it leaves without live data become idle. Returns
    /// the block's size, or `None` if no block starts there.
    pub fn give_back(&mut self, addr: u64) -> Option<u64> {
        let f = self.bfc.free(addr).ok()?;
        let (g0, g1) = self.granule_range(addr, f.size);
        let (ca, cs) = f.coalesced;
        let free_from = (ca - self.base).div_ceil(self.granule) as u32;
        let free_to = ((ca + cs - self.base) / self.granule) as u32;
        self.granules.mark_idle_over(g0, g1, free_from, free_to);
        self.burst = 0;
        Some(f.size)
    }

    /// Whether `[addr, addr + size)` is entirely mapped already.
    pub fn is_backed(&self, addr: u64, size: u64) -> bool {
        let (g0, g1) = self.granule_range(addr, size);
        self.granules.all_mapped(g0, g1)
    }

    /// Checks the BFC and the mapping table against each other.
    pub fn check(&self) -> Result<(), String> {
        self.bfc.check_invariants().map_err(|e| e.to_string())?;
        let region = self.bfc.regions().next().ok_or("no region")?;
        let free: Vec<(u64, u64)> = self
            .bfc
            .chunks_of(region)
            .filter(|c| !c.in_use)
            .map(|c| (c.addr, c.addr + c.size))
            .collect();
        let (base, granule) = (self.base, self.granule);
        self.granules.check(|g0, g1| {
            let (a, e) = (base + g0 as u64 * granule, base + g1 as u64 * granule);
            let i = free.partition_point(|&(start, _)| start <= a);
            i > 0 && free[i - 1].1 >= e
        })?;
        for (a, e) in self
            .bfc
            .chunks_of(region)
            .filter(|c| c.in_use)
            .map(|c| (c.addr, c.addr + c.size))
        {
            if !self.is_backed(a, e - a) {
                return Err(format!("live block [{a:#x}, {e:#x}) is not fully mapped"));
            }
        }
        Ok(())
    }

    /// The free chunk to serve `rounded` bytes from: the best fit, unless it would need new
    /// backing and one of the next `search` candidates is already backed. Filling mapped but
    /// unused memory first is what keeps partly used handles from being wasted at peak, and
    /// it saves the driver calls of backing. Runs only when the best fit needs backing.
    pub fn choose(&self, rounded: u64, search: usize) -> Option<ChunkId> {
        let best = self.bfc.best_fit(rounded)?;
        let start = self.bfc.chunk(best).addr;
        if self.is_backed(start, rounded) {
            return Some(best);
        }
        let backed = self
            .bfc
            .fits(rounded)
            .skip(1)
            .take(search)
            .find(|&c| self.is_backed(self.bfc.chunk(c).addr, rounded));
        Some(backed.unwrap_or(best))
    }

    /// Maps physical memory under every unmapped granule of `g0..=g1`.
    pub fn back(
        &mut self,
        dev: &mut dyn Backend,
        g0: u32,
        g1: u32,
        requested: u64,
    ) -> Result<(), PolicyError> {
        let mut g = g0;
        while g <= g1 {
            if self.granules.is_mapped(g) {
                g += 1;
                continue;
            }
            let start = g;
            while g <= g1 && !self.granules.is_mapped(g) {
                g += 1;
            }
            let (end, result) = self.back_run(dev, start, g, requested);
            // Whatever was mapped gets access, even when the run could not be completed:
            // mapped memory without access would fault once a later block lands on it.
            if end > start {
                dev.set_access(self.va(start), (end - start) as u64 * self.granule)?;
            }
            result?;
        }
        Ok(())
    }

    /// Maps granules `r0..r1` (all unmapped), possibly more after them. Returns the end of
    /// what was mapped (also on failure) and the outcome.
    fn back_run(
        &mut self,
        dev: &mut dyn Backend,
        r0: u32,
        r1: u32,
        requested: u64,
    ) -> (u32, Result<(), PolicyError>) {
        let mut at = r0;
        while at < r1 {
            let need = r1 - at;
            let span = self
                .granules
                .unmapped_run(at, self.growth.max_granules.max(need));
            let h = match self.reusable(dev, need, span) {
                Ok(Some(h)) => h,
                Ok(None) => match self.create(dev, need, span, requested) {
                    Ok(h) => h,
                    Err(e) => return (at, Err(e)),
                },
                Err(e) => return (at, Err(e)),
            };
            if let Err(e) = dev.mem_map(self.va(at), self.granules.handle(h).phys) {
                return (at, Err(e.into()));
            }
            // It overlaps the block being backed, so it is busy.
            self.granules.set_mapped(h, at, false);
            at += self.granules.handle(h).granules;
        }
        (at, Ok(()))
    }

    /// A spare or idle handle for the rest of a run (`need` granules, `span` unmapped), now
    /// unmapped and ready to map; `None` if none fits.
    fn reusable(
        &mut self,
        dev: &mut dyn Backend,
        need: u32,
        span: u32,
    ) -> Result<Option<u32>, PolicyError> {
        let g = &mut self.granules;
        let pick = match g.spare_fit(need, span) {
            Some(h) => Some(h),
            None => g.idle_fit(need, span).or_else(|| g.largest_below(need)),
        };
        let Some(h) = pick else { return Ok(None) };
        if self.granules.handle(h).at != NONE {
            self.unmap(dev, h)?;
        }
        Ok(Some(h))
    }

    fn unmap(&mut self, dev: &mut dyn Backend, h: u32) -> Result<(), PolicyError> {
        let rec = self.granules.handle(h);
        dev.mem_unmap(self.va(rec.at), rec.granules as u64 * self.granule)?;
        self.granules.set_unmapped(h);
        Ok(())
    }

    /// Creates a handle for the rest of a run, first releasing spare or idle handles (all too
    /// large for this span) so that reserved memory does not grow while they exist.
    fn create(
        &mut self,
        dev: &mut dyn Backend,
        need: u32,
        span: u32,
        requested: u64,
    ) -> Result<u32, PolicyError> {
        // Large enough to map ahead of need, small enough to stay movable.
        let pinned = self.live_granules();
        let burst = self.burst / self.growth.burst_divisor.max(1);
        let ahead = (pinned / self.growth.divisor.max(1)).max(burst);
        let cap = (pinned / self.growth.cap_divisor.max(1))
            .max(burst)
            .clamp(1, self.growth.max_granules);
        let n = ahead.max(need).min(cap).min(span);
        let mut released = 0;
        while released < n {
            let Some(h) = self.granules.largest_reusable() else {
                break;
            };
            released += self.granules.handle(h).granules;
            self.release(dev, h)?;
        }
        let phys = match dev.mem_create(n as u64 * self.granule) {
            // Mapping ahead is optional: on a full device, create just what is needed.
            Err(e) if e.is_out_of_memory() && n > need => dev
                .mem_create(need as u64 * self.granule)
                .map(|p| (p, need)),
            other => other.map(|p| (p, n)),
        };
        let (phys, n) = phys.map_err(|e| grow_error(requested, e))?;
        Ok(self.granules.add_handle(phys, n))
    }

    /// Unmaps (if idle) and releases handle `h`.
    pub fn release(&mut self, dev: &mut dyn Backend, h: u32) -> Result<(), PolicyError> {
        if self.granules.handle(h).at != NONE {
            self.unmap(dev, h)?;
        }
        let phys = self.granules.remove_handle(h);
        dev.mem_release(phys)?;
        Ok(())
    }
}
