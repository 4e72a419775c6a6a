//! A space: one reserved virtual range for one stream and one size class, the BFC over it,
//! and the backing of its blocks with physical memory from the shared pool.
//!
//! Backing a run of unmapped granules takes physical memory from, in order:
//! 1. a spare handle that covers the rest of the run within the unmapped span there;
//! 2. an idle handle of such a size whose stream has passed its last use (moved: unmapped
//!    where it was, mapped here);
//! 3. the largest spare, then such idle, handle smaller than the rest of the run;
//! 4. new physical memory, sized by [`Growth`]. If spare or safely idle handles exist (all the
//!    wrong size), they are released first until as many bytes are freed as will be created:
//!    reserved memory does not grow while usable idle memory exists.

use super::fences::Fences;
use super::growth::Growth;
use super::pool::{Handle, Place, Pool};
use crate::backend::{Backend, BackendError, DriverCall, StreamId};
use crate::policy::{PolicyError, Segment, grow_error};
use coalesce_core::bfc::{Bfc, BfcConfig, ChunkId};

/// What the backing path works with.
pub(super) struct Ctx<'a> {
    pub dev: &'a mut dyn Backend,
    pub pool: &'a mut Pool,
    pub fences: &'a mut Fences,
    /// The policy's tick: one per alloc or free.
    pub now: u64,
    /// Live bytes of the whole policy, in granules (the pool's scale).
    pub live_granules: u32,
}

#[derive(Debug)]
pub(super) struct Space {
    pub id: u16,
    pub stream: StreamId,
    /// Serves the small size class (single-granule handles).
    pub small: bool,
    pub base: u64,
    pub size: u64,
    granule: u64,
    pub bfc: Bfc,
    growth: Growth,
    /// Granules allocated since the last free in this space (or, with `load_only_burst`,
    /// since the space was created, until its first free).
    burst: u32,
    /// A free has happened in this space.
    freed: bool,
    load_only_burst: bool,
}

impl Space {
    /// Reserves `size` bytes of address space (rounded to the granularity) for `stream` and
    /// one size class.
    pub fn reserve(
        dev: &mut dyn Backend,
        pool: &mut Pool,
        stream: StreamId,
        small: bool,
        size: u64,
        growth: Growth,
    ) -> Result<Space, PolicyError> {
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
        let id = pool.add_space(
            base,
            usize::try_from(size / granule).expect("granule count fits usize"),
            stream,
        );
        Ok(Space {
            id,
            stream,
            small,
            base,
            size,
            granule,
            bfc,
            growth,
            burst: 0,
            freed: false,
            load_only_burst: false,
        })
    }

    /// With `true`, only growth before the space's first free counts as a burst.
    pub fn set_load_only_burst(&mut self, on: bool) {
        self.load_only_burst = on;
    }

    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        addr.wrapping_sub(self.base) < self.size
    }

    /// First and last granule overlapping `[addr, addr + size)`.
    #[inline]
    fn granule_range(&self, addr: u64, size: u64) -> (u32, u32) {
        let g0 = ((addr - self.base) / self.granule) as u32;
        let g1 = ((addr + size.max(1) - 1 - self.base) / self.granule) as u32;
        (g0, g1)
    }

    #[inline]
    fn va(&self, g: u32) -> u64 {
        self.base + g as u64 * self.granule
    }

    /// Whether `[addr, addr + size)` is entirely mapped.
    #[inline]
    fn is_backed(&self, pool: &Pool, addr: u64, size: u64) -> bool {
        let (g0, g1) = self.granule_range(addr, size);
        pool.all_mapped(self.id, g0, g1)
    }

    /// The free chunk to serve `rounded` bytes from: the best fit, unless it would need new
    /// backing and one of the next `search` candidates is already backed. Filling mapped but
    /// unused memory first keeps partly used handles from being wasted at peak, and saves the
    /// driver calls of backing. Runs only when the best fit needs backing.
    pub fn choose(&self, pool: &Pool, rounded: u64, search: usize) -> Option<ChunkId> {
        let best = self.bfc.best_fit(rounded)?;
        if self.is_backed(pool, self.bfc.chunk(best).addr, rounded) {
            return Some(best);
        }
        let backed = self
            .bfc
            .fits(rounded)
            .skip(1)
            .take(search)
            .find(|&c| self.is_backed(pool, self.bfc.chunk(c).addr, rounded));
        Some(backed.unwrap_or(best))
    }

    /// Takes chunk `chunk` for `requested` bytes, marks the handles under it busy and backs
    /// whatever is unmapped. On failure the chunk is given back. Returns `(addr, size)`.
    pub fn take(
        &mut self,
        ctx: &mut Ctx<'_>,
        chunk: ChunkId,
        requested: u64,
    ) -> Result<(u64, u64), PolicyError> {
        let a = self.bfc.alloc_chunk(chunk, requested, true);
        let (g0, g1) = self.granule_range(a.addr, a.size);
        let unmapped = ctx.pool.mark_busy_over(self.id, g0, g1);
        if !(self.load_only_burst && self.freed) {
            self.burst = self
                .burst
                .saturating_add(a.size.div_ceil(self.granule) as u32);
        }
        if unmapped && let Err(e) = self.back(ctx, g0, g1, requested) {
            self.give_back(ctx.pool, a.addr, ctx.now);
            return Err(e);
        }
        Ok((a.addr, a.size))
    }

    /// Frees the block at `addr` at tick `now`; handles it leaves without live data become
    /// idle. Returns the block's size, or `None` if no block starts there.
    pub fn give_back(&mut self, pool: &mut Pool, addr: u64, now: u64) -> Option<u64> {
        let f = self.bfc.free(addr).ok()?;
        let (g0, g1) = self.granule_range(addr, f.size);
        let (ca, cs) = f.coalesced;
        let free_from = (ca - self.base).div_ceil(self.granule) as u32;
        let free_to = ((ca + cs - self.base) / self.granule) as u32;
        pool.mark_idle_over(self.id, g0, g1, free_from, free_to, now);
        self.burst = 0;
        self.freed = true;
        Some(f.size)
    }

    /// Maps physical memory under every unmapped granule of `g0..=g1`.
    fn back(
        &mut self,
        ctx: &mut Ctx<'_>,
        g0: u32,
        g1: u32,
        requested: u64,
    ) -> Result<(), PolicyError> {
        let mut g = g0;
        while g <= g1 {
            if ctx.pool.all_mapped(self.id, g, g) {
                g += 1;
                continue;
            }
            let start = g;
            while g <= g1 && !ctx.pool.all_mapped(self.id, g, g) {
                g += 1;
            }
            let (end, result) = self.back_run(ctx, start, g, requested);
            // Whatever was mapped gets access, even when the run could not be completed:
            // mapped memory without access would fault once a later block lands on it.
            if end > start {
                ctx.dev
                    .set_access(self.va(start), (end - start) as u64 * self.granule)?;
            }
            result?;
        }
        Ok(())
    }

    /// Maps granules `r0..r1` (all unmapped), possibly more after them. Returns the end of
    /// what was mapped (also on failure) and the outcome.
    fn back_run(
        &mut self,
        ctx: &mut Ctx<'_>,
        r0: u32,
        r1: u32,
        requested: u64,
    ) -> (u32, Result<(), PolicyError>) {
        let mut at = r0;
        while at < r1 {
            let need = r1 - at;
            let span = ctx
                .pool
                .unmapped_run(self.id, at, self.growth.max_granules.max(need));
            let h = match self.reusable(ctx, need, span) {
                Ok(Some(h)) => h,
                Ok(None) => match self.create(ctx, need, span, requested) {
                    Ok(h) => h,
                    Err(e) => return (at, Err(e)),
                },
                Err(e) => return (at, Err(e)),
            };
            if let Err(e) = ctx.dev.mem_map(self.va(at), ctx.pool.handle(h).phys) {
                return (at, Err(e.into()));
            }
            ctx.pool.set_mapped(h, self.id, at);
            at += ctx.pool.handle(h).granules;
        }
        (at, Ok(()))
    }

    /// A spare or idle handle for the rest of a run (`need` granules, `span` unmapped), now
    /// spare and ready to map; `None` if none fits. Prefers, in order: a spare handle that
    /// covers the rest, a safely idle one that does (moved), a smaller spare one, a smaller
    /// safely idle one. If idle handles exist but their streams may still use them, fences are
    /// advanced once and the search retried.
    fn reusable(
        &mut self,
        ctx: &mut Ctx<'_>,
        need: u32,
        span: u32,
    ) -> Result<Option<u32>, PolicyError> {
        let max = span.min(self.growth.max_granules).max(1);
        let want = need.min(max);
        if let Some(h) = ctx.pool.spare_fit(want, max) {
            return Ok(Some(h));
        }
        for attempt in 0..2 {
            let idle = ctx.pool.idle(|rec| rec.granules <= max);
            let safe: Vec<(u32, u32)> = idle
                .iter()
                .copied()
                .filter(|&(_, h)| safe_to_unmap(ctx.pool, ctx.fences, ctx.pool.handle(h)))
                .collect();
            let covering = safe
                .iter()
                .filter(|&&(n, _)| n >= want)
                .min_by_key(|&&(n, h)| (n, ctx.pool.handle(h).idle_since));
            if let Some(&(_, h)) = covering {
                self.unmap(ctx, h)?;
                return Ok(Some(h));
            }
            if let Some(h) = ctx.pool.spare_below(want) {
                return Ok(Some(h));
            }
            if let Some(&(_, h)) = safe.iter().max() {
                self.unmap(ctx, h)?;
                return Ok(Some(h));
            }
            if attempt == 0 && (idle.is_empty() || !self.advance_fences(ctx, &idle)?) {
                break;
            }
        }
        Ok(None)
    }

    /// Records or queries fences on the streams of the given idle handles; returns whether a
    /// retry could now find more of them safe.
    fn advance_fences(
        &mut self,
        ctx: &mut Ctx<'_>,
        idle: &[(u32, u32)],
    ) -> Result<bool, PolicyError> {
        let mut waits: Vec<(StreamId, u64)> = Vec::new();
        for &(_, h) in idle {
            let rec = ctx.pool.handle(h);
            let stream = ctx.pool.stream_of(h);
            if !ctx.fences.passed(stream, rec.idle_since) {
                match waits.iter_mut().find(|w| w.0 == stream) {
                    Some(w) => w.1 = w.1.min(rec.idle_since),
                    None => waits.push((stream, rec.idle_since)),
                }
            }
        }
        let mut progressed = false;
        for (stream, want) in waits {
            progressed |= ctx.fences.advance(ctx.dev, stream, ctx.now, want)?;
        }
        Ok(progressed)
    }

    fn unmap(&mut self, ctx: &mut Ctx<'_>, h: u32) -> Result<(), PolicyError> {
        let (va, size) = ctx.pool.mapping_of(h);
        ctx.dev.mem_unmap(va, size)?;
        ctx.pool.set_unmapped(h);
        Ok(())
    }

    /// Creates a handle for the rest of a run, first releasing spare and safely idle handles
    /// (all unsuitable here) so that reserved memory does not grow while they exist.
    fn create(
        &mut self,
        ctx: &mut Ctx<'_>,
        need: u32,
        span: u32,
        requested: u64,
    ) -> Result<u32, PolicyError> {
        let n =
            self.growth
                .handle_granules(ctx.live_granules, ctx.pool.held(), self.burst, need, span);
        let mut released = 0;
        while released < n {
            let Some((size, h)) = largest_releasable(ctx.pool, ctx.fences) else {
                break;
            };
            released += size;
            release(ctx.dev, ctx.pool, h)?;
        }
        let created = match ctx.dev.mem_create(n as u64 * self.granule) {
            // Mapping ahead is optional: on a full device, create just what is needed.
            Err(e) if e.is_out_of_memory() && n > need => ctx
                .dev
                .mem_create(need as u64 * self.granule)
                .map(|p| (p, need)),
            other => other.map(|p| (p, n)),
        };
        let (phys, n) = created.map_err(|e| grow_error(requested, e))?;
        Ok(ctx.pool.add_handle(phys, n))
    }

    /// The space as one segment with its live blocks.
    pub fn segment(&self) -> Segment {
        let region = self.bfc.regions().next().expect("a space has one region");
        let blocks = self
            .bfc
            .chunks_of(region)
            .filter(|c| c.in_use)
            .map(|c| (c.addr, c.size))
            .collect();
        Segment {
            addr: self.base,
            size: self.size,
            stream: self.stream,
            blocks,
        }
    }

    /// Checks the BFC, this space's mapping table against it, and that live blocks are mapped.
    pub fn check(&self, pool: &Pool) -> Result<(), String> {
        self.bfc.check_invariants().map_err(|e| e.to_string())?;
        let region = self
            .bfc
            .regions()
            .next()
            .ok_or("a space without its region")?;
        let free: Vec<(u64, u64)> = self
            .bfc
            .chunks_of(region)
            .filter(|c| !c.in_use)
            .map(|c| (c.addr, c.addr + c.size))
            .collect();
        let (base, granule) = (self.base, self.granule);
        pool.check_space(self.id, |g0, g1| {
            let (a, e) = (base + g0 as u64 * granule, base + g1 as u64 * granule);
            let i = free.partition_point(|&(start, _)| start <= a);
            i > 0 && free[i - 1].1 >= e
        })?;
        for c in self.bfc.chunks_of(region).filter(|c| c.in_use) {
            if !self.is_backed(pool, c.addr, c.size) {
                return Err(format!(
                    "live block [{:#x}, +{}) is not fully mapped",
                    c.addr, c.size
                ));
            }
        }
        Ok(())
    }
}

/// Whether idle handle `rec` may be unmapped: its stream has passed the free that idled it.
fn safe_to_unmap(pool: &Pool, fences: &Fences, rec: &Handle) -> bool {
    match rec.place {
        Place::Spare => true,
        Place::Mapped { space, .. } => {
            rec.idle && fences.passed(pool.space_stream(space), rec.idle_since)
        }
    }
}

/// The largest spare or safely idle handle: `(granules, slot)`.
fn largest_releasable(pool: &mut Pool, fences: &Fences) -> Option<(u32, u32)> {
    let candidates = pool.idle(|_| true);
    let idle = candidates
        .into_iter()
        .filter(|&(_, h)| safe_to_unmap(pool, fences, pool.handle(h)))
        .max();
    pool.largest_spare().max(idle)
}

/// Unmaps (if mapped; the caller checked it is safe) and releases handle `h`.
pub(super) fn release(dev: &mut dyn Backend, pool: &mut Pool, h: u32) -> Result<(), PolicyError> {
    if pool.handle(h).place != Place::Spare {
        let (va, size) = pool.mapping_of(h);
        dev.mem_unmap(va, size)?;
        pool.set_unmapped(h);
    }
    let phys = pool.remove_handle(h);
    dev.mem_release(phys)?;
    Ok(())
}

/// Releases every spare handle and every idle one whose stream is known to be done with it.
pub(super) fn trim(
    dev: &mut dyn Backend,
    pool: &mut Pool,
    fences: &Fences,
) -> Result<(), PolicyError> {
    while let Some((_, h)) = largest_releasable(pool, fences) {
        release(dev, pool, h)?;
    }
    Ok(())
}
