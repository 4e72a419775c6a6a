//! `coalesce`: the default policy. Best fit with coalescing over virtual ranges, physical memory
//! only under live data, idle physical memory moved before any more is created.
//!
//! # Model
//!
//! ```text
//!  space (stream 0, large)  |==A==|   free   |====B====|      free ...        (BFC over VA)
//!  handles mapped           [h1 ][h2      ]   [h3      ][h4]                   (physical)
//!  space (stream 0, small)  |a|b|c|  free ...                                  (1-granule handles)
//!  pool                     spare: h5, h6        idle: h2 (movable once stream 0 passed its free)
//! ```
//!
//! - A **space** is one reserved virtual range (device memory x `va_factor`) with its own BFC,
//!   for one stream and one size class. Requests up to `small_max` go to the stream's small
//!   space, where handles are single granules, so that long-lived small tensors never pin large
//!   handles. Blocks never cross spaces, so reuse on a stream is immediate and stream-ordered.
//! - All physical memory is in one **pool** ([`pool`]). A handle whose range holds no live block
//!   is *idle*; it is moved (unmapped, mapped elsewhere) or released before any new memory is
//!   created, so reserved memory grows only when every handle holds live data. Moving is
//!   allowed once the handle's stream has passed the free that idled it ([`fences`]).
//! - Handle sizes follow the pool's scale and bursts of growth ([`growth`]); the physical unit is
//!   the device granularity (2 MiB).
//! - Placement is best fit, except that when the best fit would need new backing, an already
//!   backed chunk among the next few candidates is preferred ([`space::Space::choose`]).
//!
//! docs/design.md explains each choice with the measurements behind it.

mod fences;
mod growth;
mod pool;
mod space;
#[cfg(test)]
mod tests;

use super::registry::PolicyInfo;
use super::spec::PolicySpec;
use super::{Block, Policy, PolicyError, Segment, SpecError, Usage};
use coalesce_backend::{Backend, DevAddr, StreamId};
use fences::Fences;
use growth::Growth;
use pool::Pool;
use space::{Ctx, Idle, Rules, Space};

pub(super) const INFO: PolicyInfo = PolicyInfo {
    name: "coalesce",
    summary: "BFC over virtual ranges per stream; physical memory only under live data, moved before more is created",
    options: &[
        (
            "va_factor",
            "virtual range per space, as a multiple of device memory (default 2)",
        ),
        (
            "small_max_kb",
            "requests up to this many KiB get a small-object space of 2 MiB granules (default 1024; 0: off)",
        ),
        (
            "cap_div",
            "new physical handles cover at most live/cap_div granules (default 32)",
        ),
        (
            "ahead_div",
            "new physical handles cover at least live/ahead_div granules (default 128)",
        ),
        (
            "burst_div",
            "during growth with no free in between, handles may reach burst/burst_div granules (default 4)",
        ),
        (
            "max_handle_mb",
            "largest physical handle created, MiB (default 64)",
        ),
        (
            "search",
            "free chunks examined for an already backed one when the best fit is not (default 32)",
        ),
        (
            "waste_permille",
            "above this much held-but-not-live memory (permille of live), new handles are lean (see lean_handle_mb; default 12)",
        ),
        (
            "lean_handle_mb",
            "largest new handle while over the waste budget, MiB (default 4)",
        ),
        (
            "window_fit",
            "a block may land on a backed window inside a free chunk, not only at its start (0/1, default 1)",
        ),
        (
            "lazy_release",
            "before creating, release idle memory only as far as reserved memory would pass its high-water mark; 0: as much as is created (0/1, default 1)",
        ),
        (
            "load_only_burst",
            "only growth before a space's first free counts as a burst (0/1, default 1)",
        ),
    ],
    build,
};

fn number(v: &str) -> Result<u32, String> {
    v.parse::<u32>().map_err(|e| format!("{v:?}: {e}"))
}

fn build(spec: &PolicySpec) -> Result<Box<dyn Policy>, SpecError> {
    Ok(Box::new(Coalesce::new(config_from(spec)?)))
}

/// The configuration `spec`'s options describe (defaults for those it leaves out).
fn config_from(spec: &PolicySpec) -> Result<Config, SpecError> {
    let d = Config::default();
    Ok(Config {
        va_factor: spec.parse_option("va_factor", d.va_factor, number)?.max(1),
        small_max: spec.parse_option("small_max_kb", (d.small_max >> 10) as u32, number)? as u64
            * 1024,
        cap_div: spec.parse_option("cap_div", d.cap_div, number)?.max(1),
        ahead_div: spec.parse_option("ahead_div", d.ahead_div, number)?.max(1),
        burst_div: spec.parse_option("burst_div", d.burst_div, number)?.max(1),
        max_handle: (spec
            .parse_option("max_handle_mb", (d.max_handle >> 20) as u32, number)?
            .max(2) as u64)
            << 20,
        search: spec.parse_option("search", d.search as u32, number)? as usize,
        waste_permille: spec.parse_option("waste_permille", d.waste_permille, number)?,
        load_only_burst: spec.parse_option("load_only_burst", d.load_only_burst as u32, number)?
            != 0,
        lean_handle: (spec
            .parse_option("lean_handle_mb", (d.lean_handle >> 20) as u32, number)?
            .max(2) as u64)
            << 20,
        window_fit: spec.parse_option("window_fit", d.window_fit as u32, number)? != 0,
        lazy_release: spec.parse_option("lazy_release", d.lazy_release as u32, number)? != 0,
    })
}

/// Tunables of the policy (see the option list in [`INFO`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub va_factor: u32,
    pub small_max: u64,
    pub cap_div: u32,
    pub ahead_div: u32,
    pub burst_div: u32,
    pub max_handle: u64,
    pub search: usize,
    pub waste_permille: u32,
    pub load_only_burst: bool,
    pub lean_handle: u64,
    pub window_fit: bool,
    pub lazy_release: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            va_factor: 2,
            small_max: 1 << 20,
            cap_div: 32,
            ahead_div: 128,
            burst_div: 4,
            max_handle: 64 << 20,
            search: 32,
            waste_permille: 12,
            load_only_burst: true,
            lean_handle: 4 << 20,
            window_fit: true,
            lazy_release: true,
        }
    }
}

#[derive(Debug)]
pub struct Coalesce {
    config: Config,
    /// Created with the first allocation, when the granularity is known.
    pool: Option<Pool>,
    fences: Fences,
    spaces: Vec<Space>,
    /// One tick per alloc or free: the clock fences are measured in.
    tick: u64,
    live_bytes: u64,
    /// Reused buffer of idle handles for the backing path (kept to save an allocation per call).
    idle_scratch: Vec<Idle>,
}

impl Coalesce {
    pub fn new(config: Config) -> Self {
        Coalesce {
            config,
            pool: None,
            fences: Fences::default(),
            spaces: Vec::new(),
            tick: 0,
            live_bytes: 0,
            idle_scratch: Vec::new(),
        }
    }

    /// Index of the space for `stream` and size class `small`, reserving it on first use.
    fn space_for(
        &mut self,
        dev: &mut dyn Backend,
        stream: StreamId,
        small: bool,
    ) -> Result<usize, PolicyError> {
        if let Some(i) = self
            .spaces
            .iter()
            .position(|s| s.stream == stream && s.small == small)
        {
            return Ok(i);
        }
        let granule = dev.granularity();
        let max_granules = |bytes: u64| (bytes / granule).max(1) as u32;
        let growth = Growth {
            ahead_div: self.config.ahead_div,
            cap_div: self.config.cap_div,
            burst_div: self.config.burst_div,
            // Small objects pack into single granules: they must never pin large handles.
            max_granules: if small {
                1
            } else {
                max_granules(self.config.max_handle)
            },
            waste_permille: self.config.waste_permille,
            lean_granules: max_granules(self.config.lean_handle),
        };
        let rules = Rules {
            growth,
            load_only_burst: self.config.load_only_burst,
            window_fit: self.config.window_fit,
            lazy_release: self.config.lazy_release,
        };
        let pool = self.pool.get_or_insert_with(|| Pool::new(granule));
        let size = dev
            .total_memory()
            .saturating_mul(self.config.va_factor as u64);
        self.spaces
            .push(Space::reserve(dev, pool, stream, small, size, rules)?);
        Ok(self.spaces.len() - 1)
    }

    /// Idle handles of every space, except those overlapping granules `skip.1..=skip.2` of
    /// space `skip.0`.
    fn idle_handles(&mut self, skip: Option<(usize, u32, u32)>) -> Vec<Idle> {
        let mut idle = std::mem::take(&mut self.idle_scratch);
        idle.clear();
        let Some(pool) = self.pool.as_ref() else {
            return idle;
        };
        // An idle handle is a whole granule or more of mapped memory without live data: with
        // less mapped memory than that beyond what is live, there is none (growth phases).
        if pool.mapped_bytes() < self.live_bytes + pool.granule() {
            return idle;
        }
        for (k, space) in self.spaces.iter().enumerate() {
            let skip = skip.filter(|s| s.0 == k).map(|s| (s.1, s.2));
            space.idle_handles(pool, skip, &mut idle);
        }
        idle
    }
}

impl Policy for Coalesce {
    fn name(&self) -> &str {
        INFO.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        stream: StreamId,
    ) -> Result<Block, PolicyError> {
        self.tick += 1;
        let i = self.space_for(dev, stream, size <= self.config.small_max)?;
        let pool = self.pool.as_ref().expect("created with the first space");
        let space = &self.spaces[i];
        let rounded = space.bfc.round(size).ok_or(PolicyError::TooLarge(size))?;
        let place = space
            .choose(pool, rounded, self.config.search)
            .ok_or(PolicyError::TooLarge(size))?;
        if place.backed {
            // The common case: no physical memory to find.
            let (addr, size) = self.spaces[i].take_backed(place, size);
            self.live_bytes += size;
            return Ok(Block { addr, size });
        }
        let (g0, g1) =
            space.granule_range(space.bfc.chunk(place.chunk).addr + place.offset, rounded);
        let idle = self.idle_handles(Some((i, g0, g1)));
        // The block being backed is live already: memory created for it is not waste.
        let live_granules =
            ((self.live_bytes + rounded) / dev.granularity()).min(u32::MAX as u64) as u32;
        let pool = self.pool.as_mut().expect("created with the first space");
        let mut ctx = Ctx {
            dev,
            pool,
            fences: &mut self.fences,
            idle,
            now: self.tick,
            live_granules,
        };
        let taken = self.spaces[i].take(&mut ctx, place, size);
        self.idle_scratch = ctx.idle;
        let (addr, size) = taken?;
        self.live_bytes += size;
        Ok(Block { addr, size })
    }

    fn free(
        &mut self,
        dev: &mut dyn Backend,
        addr: DevAddr,
        stream: StreamId,
    ) -> Result<(), PolicyError> {
        self.tick += 1;
        let space = self
            .spaces
            .iter_mut()
            .find(|s| s.contains(addr))
            .ok_or(PolicyError::UnknownAddress(addr))?;
        let size = space
            .give_back(addr, self.tick)
            .ok_or(PolicyError::UnknownAddress(addr))?;
        self.live_bytes -= size;
        if stream != space.stream {
            // Freed in another stream's order: make the block's own stream wait for that work,
            // so its fences cover this free too.
            let event = dev.event_record(stream)?;
            dev.stream_wait_event(space.stream, event)?;
            dev.event_release(event);
        }
        Ok(())
    }

    fn stream_aware(&self) -> bool {
        true
    }

    /// Waits for every stream (as PyTorch's `empty_cache` does before unmapping), then releases
    /// all idle and spare physical memory.
    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        if self.pool.is_none() {
            return Ok(());
        }
        dev.device_synchronize()?;
        for stream in self.spaces.iter().map(|s| s.stream) {
            self.fences.mark_done(stream, self.tick);
        }
        let idle = self.idle_handles(None);
        let pool = self.pool.as_mut().expect("checked above");
        let mut ctx = Ctx {
            dev,
            pool,
            fences: &mut self.fences,
            idle,
            now: self.tick,
            live_granules: 0,
        };
        let trimmed = space::trim(&mut ctx);
        self.idle_scratch = ctx.idle;
        trimmed
    }

    /// Empties the cache; with nothing live, also frees every address reservation.
    fn teardown(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        self.empty_cache(dev)?;
        if self.live_bytes > 0 {
            return Ok(());
        }
        while let Some(space) = self.spaces.pop() {
            if let Err(e) = dev.address_free(space.base, space.size) {
                self.spaces.push(space);
                return Err(e.into());
            }
        }
        self.pool = None;
        Ok(())
    }

    fn usage(&self) -> Usage {
        let largest_free_block = self
            .spaces
            .iter()
            .map(|s| s.bfc.largest_free())
            .max()
            .unwrap_or(0);
        Usage {
            allocated_bytes: self.live_bytes,
            largest_free_block,
            segments: self.spaces.len(),
        }
    }

    fn segments(&self) -> Vec<Segment> {
        self.spaces.iter().map(Space::segment).collect()
    }

    fn check_invariants(&self) -> Result<(), String> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        pool.check()?;
        let live: u64 = self.spaces.iter().map(|s| s.bfc.stats().in_use_bytes).sum();
        if live != self.live_bytes {
            return Err(format!(
                "live byte counter {} but spaces hold {live}",
                self.live_bytes
            ));
        }
        self.spaces.iter().try_for_each(|s| s.check(pool))
    }
}
