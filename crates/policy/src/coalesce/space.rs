//! A space: one reserved virtual range for one stream and one size class, the BFC over it,
//! and the backing of its blocks with physical memory from the shared pool.
//!
//! Allocation and free touch only the BFC and the mapped bitmap; physical memory is dealt with
//! on the rare path where a block lands on unmapped granules. Backing a run of them takes
//! physical memory from, in order:
//! 1. a spare handle that covers the rest of the run within the unmapped span there;
//! 2. an idle handle of such a size whose stream has passed its last use (moved: unmapped where
//!    it was, mapped here);
//! 3. the largest spare, then such idle, handle smaller than the rest of the run;
//! 4. new physical memory, sized by [`Growth`]. If spare or safely idle handles exist (all the
//!    wrong size) and creating would raise reserved memory above its high-water mark, they are
//!    released first, as far as needed to stay at the mark: the peak does not grow while
//!    usable idle memory exists, and below the peak the cache is kept (no release-and-create
//!    churn).

use super::fences::Fences;
use super::growth::Growth;
use super::pool::{Place, Pool};
use crate::{PolicyError, Segment, grow_error};
use coalesce_backend::{Backend, BackendError, DriverCall, StreamId};
use coalesce_core::bfc::{Bfc, BfcConfig, ChunkId};

/// An idle handle: mapped inside a free chunk of some space, movable once its stream has
/// passed `stamp` (the tick of the last free in that chunk).
#[derive(Clone, Copy, Debug)]
pub(super) struct Idle {
    pub handle: u32,
    pub granules: u32,
    pub stream: StreamId,
    pub stamp: u64,
}

/// What the backing path works with.
pub(super) struct Ctx<'a> {
    pub dev: &'a mut dyn Backend,
    pub pool: &'a mut Pool,
    pub fences: &'a mut Fences,
    /// Idle handles of every space (none overlapping the block being backed), as found before
    /// backing began; entries are removed as they are used.
    pub idle: Vec<Idle>,
    /// The policy's tick: one per alloc or free.
    pub now: u64,
    /// Live bytes of the whole policy (including the block being backed), in granules.
    pub live_granules: u32,
}

impl Ctx<'_> {
    fn safe(&self, i: &Idle) -> bool {
        self.fences.passed(i.stream, i.stamp)
    }

    /// Removes and returns the best safe idle handle among those `pick` ranks highest.
    fn take_idle(
        &mut self,
        eligible: impl Fn(&Idle) -> bool,
        rank: impl Fn(&Idle) -> (u32, u64),
    ) -> Option<Idle> {
        let best = (0..self.idle.len())
            .filter(|&k| eligible(&self.idle[k]) && self.safe(&self.idle[k]))
            .max_by_key(|&k| rank(&self.idle[k]))?;
        Some(self.idle.swap_remove(best))
    }
}

/// Where a block goes: `offset` bytes into free chunk `chunk`; `backed` if every
/// granule under it is mapped.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placement {
    pub chunk: ChunkId,
    pub offset: u64,
    pub backed: bool,
}

/// How a space places blocks and sizes physical memory: the policy's [`super::Config`],
/// resolved per space.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rules {
    pub growth: Growth,
    /// Only growth before the space's first free counts as a burst.
    pub load_only_burst: bool,
    /// A block may land on a backed window anywhere inside a free chunk, not only at its start.
    pub window_fit: bool,
    /// Before creating, release idle memory only as far as reserved memory would otherwise
    /// pass its high-water mark (otherwise: as much as is created).
    pub lazy_release: bool,
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
    rules: Rules,
    /// Granules allocated in the current burst (see [`Growth`]).
    burst: u32,
    /// A free has happened in this space.
    freed: bool,
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
        rules: Rules,
    ) -> Result<Space, PolicyError> {
        let granule = dev.granularity();
        // Granule indexes are u32: 2^32 granules of 2 MiB is 8 PiB, beyond any GPU's range.
        let granules = size.div_ceil(granule).clamp(1, u32::MAX as u64);
        let size = granules * granule;
        let base = dev.address_reserve(size)?;
        let mut bfc = Bfc::new(BfcConfig::default());
        if let Err(e) = bfc.add_region(base, size) {
            // A backend handing out an unaligned range: give it back, report it.
            let _ = dev.address_free(base, size);
            return Err(PolicyError::Backend(BackendError::Invalid {
                call: DriverCall::AddressReserve,
                reason: e.to_string(),
            }));
        }
        let id = pool.add_space(base, granules as u32);
        Ok(Space {
            id,
            stream,
            small,
            base,
            size,
            granule,
            bfc,
            rules,
            burst: 0,
            freed: false,
        })
    }

    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        addr.wrapping_sub(self.base) < self.size
    }

    /// First and last granule overlapping `[addr, addr + size)`.
    #[inline]
    pub fn granule_range(&self, addr: u64, size: u64) -> (u32, u32) {
        let g0 = ((addr - self.base) / self.granule) as u32;
        let g1 = ((addr + size.max(1) - 1 - self.base) / self.granule) as u32;
        (g0, g1)
    }

    #[inline]
    fn va(&self, g: u32) -> u64 {
        self.base + g as u64 * self.granule
    }

    #[inline]
    fn is_backed(&self, pool: &Pool, addr: u64, size: u64) -> bool {
        let (g0, g1) = self.granule_range(addr, size);
        pool.all_mapped(self.id, g0, g1)
    }

    /// Where to serve `rounded` bytes: a free chunk and an offset into it, and whether that
    /// place is backed already. The best fit at its start, unless that would need backing and
    /// one of the next `search` candidates has a backed window (anywhere inside it, so a block
    /// that outgrew its predecessor's hole still lands on the hole's mapped granules). Filling
    /// mapped but unused memory first keeps partly used handles from being wasted at peak, and
    /// saves the driver calls of backing.
    #[inline]
    pub fn choose(&self, pool: &Pool, rounded: u64, search: usize) -> Option<Placement> {
        let best = self.bfc.best_fit(rounded)?;
        if self.is_backed(pool, self.bfc.chunk(best).addr, rounded) {
            return Some(Placement {
                chunk: best,
                offset: 0,
                backed: true,
            });
        }
        let mut offset = 0;
        let backed = if self.rules.window_fit {
            self.bfc.best_fit_where(rounded, search + 1, |addr, size| {
                self.backed_offset(pool, addr, size, rounded)
                    .map(|o| offset = o)
                    .is_some()
            })
        } else {
            self.bfc.best_fit_where(rounded, search + 1, |addr, _| {
                self.is_backed(pool, addr, rounded)
            })
        };
        Some(match backed {
            Some(chunk) => Placement {
                chunk,
                offset,
                backed: true,
            },
            None => Placement {
                chunk: best,
                offset: 0,
                backed: false,
            },
        })
    }

    /// The offset of the first window of `rounded` bytes inside the free chunk at `addr` of
    /// `size` bytes whose granules are all mapped (0 when the chunk's start is such a window).
    fn backed_offset(&self, pool: &Pool, addr: u64, size: u64, rounded: u64) -> Option<u64> {
        let (g0, g1) = self.granule_range(addr, size);
        let end = addr + size;
        let mut g = g0;
        while let Some((r0, r1)) = pool.mapped_run(self.id, g, g1 + 1) {
            let lo = self.va(r0).max(addr);
            let hi = self.va(r1).min(end);
            if hi >= lo + rounded {
                return Some(lo - addr);
            }
            g = r1;
        }
        None
    }

    /// Takes the backed place `p` for `requested` bytes. Returns `(addr, size)`.
    #[inline]
    pub fn take_backed(&mut self, p: Placement, requested: u64) -> (u64, u64) {
        let a = self.bfc.alloc_chunk_at(p.chunk, p.offset, requested);
        self.note_growth(a.size);
        (a.addr, a.size)
    }

    /// Takes place `p` for `requested` bytes and backs what is unmapped under it. On failure
    /// the block is given back. Returns `(addr, size)`.
    pub fn take(
        &mut self,
        ctx: &mut Ctx<'_>,
        p: Placement,
        requested: u64,
    ) -> Result<(u64, u64), PolicyError> {
        let a = self.bfc.alloc_chunk_at(p.chunk, p.offset, requested);
        self.note_growth(a.size);
        let (g0, g1) = self.granule_range(a.addr, a.size);
        if let Err(e) = self.back(ctx, g0, g1, requested) {
            self.give_back(a.addr, ctx.now);
            return Err(e);
        }
        Ok((a.addr, a.size))
    }

    fn note_growth(&mut self, bytes: u64) {
        if !(self.rules.load_only_burst && self.freed) {
            self.burst = self
                .burst
                .saturating_add(bytes.div_ceil(self.granule) as u32);
        }
    }

    /// Frees the block at `addr` at tick `now`. Returns its size, or `None` if no block starts
    /// there.
    #[inline]
    pub fn give_back(&mut self, addr: u64, now: u64) -> Option<u64> {
        let f = self.bfc.free_stamped(addr, now).ok()?;
        self.burst = 0;
        self.freed = true;
        Some(f.size)
    }

    /// Adds the idle handles of this space (those entirely within a free chunk), except those
    /// overlapping granules `skip`, to `out`.
    pub fn idle_handles(&self, pool: &Pool, skip: Option<(u32, u32)>, out: &mut Vec<Idle>) {
        // An idle handle is a whole granule or more of mapped memory without live data: a space
        // with less mapped memory than that beyond what is live has none.
        if pool.space_mapped_bytes(self.id) < self.bfc.stats_in_use_bytes() + self.granule {
            return;
        }
        self.bfc.for_each_free(self.granule, |c| {
            let from = (c.addr - self.base).div_ceil(self.granule) as u32;
            let to = ((c.addr + c.size - self.base) / self.granule) as u32;
            pool.handles_within(self.id, from, to, |h| {
                let rec = pool.handle(h);
                let Place::Mapped { at, .. } = rec.place else {
                    return;
                };
                if skip.is_some_and(|(g0, g1)| at <= g1 && g0 < at + rec.granules) {
                    return;
                }
                out.push(Idle {
                    handle: h,
                    granules: rec.granules,
                    stream: self.stream,
                    stamp: c.stamp,
                });
            });
        });
    }

    /// Maps physical memory under every unmapped granule of `g0..=g1`.
    fn back(
        &mut self,
        ctx: &mut Ctx<'_>,
        g0: u32,
        g1: u32,
        requested: u64,
    ) -> Result<(), PolicyError> {
        // All new mappings of this block get access in one call: between runs lie only whole
        // mappings that have access already, so the range from the first new mapping to the
        // end of the last one is a valid `cuMemSetAccess` range.
        let (mut first, mut last_end) = (None, 0);
        let mut result = Ok(());
        let mut mapped = Vec::new();
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
            let (end, run) = self.back_run(ctx, start, g, requested, &mut mapped);
            if end > start {
                first.get_or_insert(start);
                last_end = end;
            }
            if run.is_err() {
                result = run;
                break;
            }
        }
        // Whatever was mapped gets access, even when backing failed part way: mapped memory
        // without access would fault once a later block lands on it.
        if let Some(first) = first {
            let va = self.va(first);
            let size = (last_end - first) as u64 * self.granule;
            if let Err(e) = ctx.dev.set_access(va, size) {
                // Without access the new mappings must go: unmapped, their handles are spare
                // again and the failure loses nothing.
                for h in mapped {
                    unmap(ctx.dev, ctx.pool, h)?;
                }
                return Err(e.into());
            }
        }
        result
    }

    /// Maps granules `r0..r1` (all unmapped), possibly more after them, adding each handle
    /// it maps to `mapped`. Returns the end of what was mapped (also on failure) and the
    /// outcome.
    fn back_run(
        &mut self,
        ctx: &mut Ctx<'_>,
        r0: u32,
        r1: u32,
        requested: u64,
        mapped: &mut Vec<u32>,
    ) -> (u32, Result<(), PolicyError>) {
        let mut at = r0;
        while at < r1 {
            let need = r1 - at;
            let span = ctx
                .pool
                .unmapped_run(self.id, at, self.rules.growth.max_granules.max(need));
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
            mapped.push(h);
            at += ctx.pool.handle(h).granules;
        }
        (at, Ok(()))
    }

    /// A spare or idle handle for the rest of a run (`need` granules, `span` unmapped), now
    /// spare and ready to map; `None` if none fits. Prefers, in order: a spare handle that
    /// covers the rest, a safely idle one that does (moved; the smallest, then the longest
    /// idle), a smaller spare one, the largest smaller safely idle one. If idle handles exist
    /// but their streams may still use them, fences are advanced once and the search retried.
    fn reusable(
        &mut self,
        ctx: &mut Ctx<'_>,
        need: u32,
        span: u32,
    ) -> Result<Option<u32>, PolicyError> {
        let max = span.min(self.rules.growth.max_granules).max(1);
        let want = need.min(max);
        if let Some(h) = ctx.pool.spare_fit(want, max) {
            return Ok(Some(h));
        }
        for attempt in 0..2 {
            let covering = ctx.take_idle(
                |i| (want..=max).contains(&i.granules),
                |i| (u32::MAX - i.granules, u64::MAX - i.stamp),
            );
            if let Some(i) = covering {
                unmap(ctx.dev, ctx.pool, i.handle)?;
                return Ok(Some(i.handle));
            }
            if let Some(h) = ctx.pool.spare_below(want) {
                return Ok(Some(h));
            }
            if let Some(i) =
                ctx.take_idle(|i| i.granules < want, |i| (i.granules, u64::MAX - i.stamp))
            {
                unmap(ctx.dev, ctx.pool, i.handle)?;
                return Ok(Some(i.handle));
            }
            if attempt == 0 && !advance_fences(ctx)? {
                break;
            }
        }
        Ok(None)
    }

    /// Creates a handle for the rest of a run, first releasing spare and safely idle handles
    /// (all unsuitable here) so that reserved memory does not pass its high-water mark while
    /// they exist.
    fn create(
        &mut self,
        ctx: &mut Ctx<'_>,
        need: u32,
        span: u32,
        requested: u64,
    ) -> Result<u32, PolicyError> {
        let n = self.rules.growth.handle_granules(
            ctx.live_granules,
            ctx.pool.held(),
            self.burst,
            need,
            span,
        );

        // Below reserved memory's high-water mark keeping idle memory costs no peak, and a
        // release now would only be followed by another create when it is needed again.
        let excess = if self.rules.lazy_release {
            (ctx.pool.held() + n as u64).saturating_sub(ctx.pool.peak_held())
        } else {
            n as u64
        };
        let mut released = 0u64;
        while released < excess {
            let Some(freed) = release_largest(ctx)? else {
                break;
            };
            released += freed as u64;
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

    /// Checks the BFC, this space's mapping, and that every live block is mapped.
    pub fn check(&self, pool: &Pool) -> Result<(), String> {
        self.bfc.check_invariants().map_err(|e| e.to_string())?;
        pool.check_space(self.id)?;
        let region = self
            .bfc
            .regions()
            .next()
            .ok_or("a space without its region")?;
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

fn unmap(dev: &mut dyn Backend, pool: &mut Pool, h: u32) -> Result<(), PolicyError> {
    let (va, size) = pool.mapping_of(h);
    dev.mem_unmap(va, size)?;
    pool.set_unmapped(h);
    Ok(())
}

/// Records or queries fences on the streams whose idle handles are not yet known safe;
/// returns whether some may be now.
fn advance_fences(ctx: &mut Ctx<'_>) -> Result<bool, PolicyError> {
    let mut waits: Vec<(StreamId, u64)> = Vec::new();
    for i in ctx
        .idle
        .iter()
        .filter(|i| !ctx.fences.passed(i.stream, i.stamp))
    {
        match waits.iter_mut().find(|w| w.0 == i.stream) {
            Some(w) => w.1 = w.1.min(i.stamp),
            None => waits.push((i.stream, i.stamp)),
        }
    }
    let mut progressed = false;
    for (stream, want) in waits {
        progressed |= ctx.fences.advance(ctx.dev, stream, ctx.now, want)?;
    }
    Ok(progressed)
}

/// Unmaps (if mapped) and releases the largest spare or safely idle handle; returns its
/// granules, or `None` if there is none.
fn release_largest(ctx: &mut Ctx<'_>) -> Result<Option<u32>, PolicyError> {
    let spare = ctx.pool.largest_spare();
    let idle = (0..ctx.idle.len())
        .filter(|&k| ctx.safe(&ctx.idle[k]))
        .max_by_key(|&k| ctx.idle[k].granules);
    let h = match (spare, idle) {
        (Some((n, h)), Some(k)) if n >= ctx.idle[k].granules => h,
        (_, Some(k)) => {
            let i = ctx.idle.swap_remove(k);
            unmap(ctx.dev, ctx.pool, i.handle)?;
            i.handle
        }
        (Some((_, h)), None) => h,
        (None, None) => return Ok(None),
    };
    let n = ctx.pool.handle(h).granules;
    // Released first, forgotten after: a failed `cuMemRelease` leaves the handle spare (it is
    // unmapped by now), to be released by a later trim, never lost.
    ctx.dev.mem_release(ctx.pool.handle(h).phys)?;
    ctx.pool.remove_handle(h);
    Ok(Some(n))
}

/// Releases every spare handle and every safely idle one in `ctx.idle`.
pub(super) fn trim(ctx: &mut Ctx<'_>) -> Result<(), PolicyError> {
    while release_largest(ctx)?.is_some() {}
    Ok(())
}
