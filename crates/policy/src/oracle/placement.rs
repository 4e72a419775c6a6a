//! The placement: one pass over the trace, each block put where it adds the least granule-time
//! (see the module docs of [`super`] for the heuristic).

use super::compact;
use super::free::{self, FreeRanges};
use super::granules::Granules;
use super::va::GranuleSpace;
use super::{OracleConfig, OracleInput};

/// A placement of every block of a trace, and what it maps over time.
///
/// Invariants (verified by [`super::check_plan`]): blocks live at the same op never overlap;
/// `offsets[i]` is a multiple of `align`; every block lies inside `0..extent`; `mapped[t]` is
/// the number of distinct granules touched by blocks live after op `t`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub granule: u64,
    pub align: u64,
    /// Offset of every block (by allocation index) from the start of the planned range.
    pub offsets: Vec<u64>,
    /// Bytes each block occupies (its size rounded up to `align`).
    pub sizes: Vec<u64>,
    /// Bytes of address range the plan uses (a multiple of `granule`).
    pub extent: u64,
    /// Granules mapped after each op.
    pub mapped: Vec<u32>,
}

impl Plan {
    /// Peak of mapped granules, in bytes: the placement's figure.
    pub fn peak_bytes(&self) -> u64 {
        u64::from(self.mapped.iter().copied().max().unwrap_or(0)) * self.granule
    }

    /// The granules `offset..offset + size` touches, as a range of granule numbers.
    pub fn granules_of(&self, block: usize) -> std::ops::Range<u64> {
        span(self.offsets[block], self.sizes[block], self.granule)
    }
}

fn span(offset: u64, size: u64, granule: u64) -> std::ops::Range<u64> {
    offset / granule..(offset + size).div_ceil(granule)
}

/// A block may keep a granule mapped past its other blocks by at most this fraction of its
/// own lifetime (as a divisor, 2: half). Extending a granule saves granule-time, but a granule kept
/// mapped for one late block is memory a later allocation cannot use: two blocks that die far
/// apart are better in separate granules, each of which is then unmapped with its group.
const EXTEND_DIV: usize = 2;

fn max_extension(now: usize, death: usize) -> usize {
    (death - now) / EXTEND_DIV
}

/// Tail granules examined as the start of a large block, each way around its death op, in
/// the fresh-runs variant.
const TAIL_CANDIDATES: usize = 4;

/// Where the arenas start (far above anything the main space reaches) and how far apart, in
/// bytes. An arena that grows into the next one just stops sharing tails there.
const ARENA_BASE: u64 = 1 << 60;
const ARENA_SPACING: u64 = 1 << 37;

/// Free ranges examined for a block larger than a granule (the shortest that fit).
const LARGE_CANDIDATES: usize = 16;

/// One way of running the greedy pass; [`plan`] runs each and keeps the best.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    /// Blocks up to this many granules' `1/small_div` go into gaps of mapped granules (never
    /// across a granule boundary); larger ones go against neighbours on the address line.
    small_div: u64,
    /// Blocks larger than a granule take fresh granule-aligned runs instead, or start in the
    /// free tail of a granule whose blocks die with them ([`Planner::place_fresh`]).
    fresh_runs: bool,
    /// In the fresh-runs variant, a block that shares no tail starts a new *arena*: a region
    /// of its own far from the others, so that the blocks which later share its tail (those
    /// that die with it) find the granules after it free.
    arenas: bool,
}

/// The variants tried. Which wins depends on the trace: packing mid-sized blocks across
/// granule boundaries wins where many blocks are a sizeable part of a granule (KV caches),
/// fresh runs where blocks that would share a granule die far apart (fragmenter).
const VARIANTS: [Variant; 6] = [
    Variant {
        small_div: 1,
        fresh_runs: false,
        arenas: false,
    },
    Variant {
        small_div: 8,
        fresh_runs: false,
        arenas: false,
    },
    Variant {
        small_div: 1,
        fresh_runs: true,
        arenas: false,
    },
    Variant {
        small_div: u64::MAX,
        fresh_runs: false,
        arenas: false,
    },
    Variant {
        small_div: 1,
        fresh_runs: true,
        arenas: true,
    },
    Variant {
        small_div: 8,
        fresh_runs: true,
        arenas: true,
    },
];

/// Plans a placement of `input` under `config`: the best (lowest peak, then the first) of
/// the greedy passes of `VARIANTS`.
pub fn plan(input: &OracleInput, config: &OracleConfig) -> Plan {
    config.check();
    VARIANTS
        .iter()
        .map(|&v| pass(input, config, v))
        .min_by_key(Plan::peak_bytes)
        .expect("at least one variant")
}

/// One greedy pass over the trace.
fn pass(input: &OracleInput, config: &OracleConfig, variant: Variant) -> Plan {
    let g = config.granule;
    let mut p = Planner {
        input,
        g,
        small_max: g / variant.small_div,
        fresh_runs: variant.fresh_runs,
        arenas: variant.arenas,
        space: GranuleSpace::default(),
        arena_space: GranuleSpace::default(),
        arena_base: ARENA_BASE / g,
        next_arena: ARENA_BASE / g,
        granules: Granules::new(g),
        free: FreeRanges::new(),
    };
    let sizes: Vec<u64> = input
        .blocks
        .iter()
        .map(|b| config.placed_size(b.size))
        .collect();
    let mut offsets = vec![0; input.blocks.len()];
    let mut mapped = Vec::with_capacity(input.ops);
    for (t, ev) in input.events().into_iter().enumerate() {
        match ev {
            Some((i, true)) => {
                offsets[i] = p.place(t, input.death(i), sizes[i]);
            }
            Some((i, false)) => p.release(offsets[i], sizes[i]),
            None => {}
        }
        mapped.push(p.granules.mapped() as u32);
    }
    let extent = compact::compact(&mut offsets, &sizes, g);
    Plan {
        granule: g,
        align: config.align,
        offsets,
        sizes,
        extent,
        mapped,
    }
}

struct Planner<'a> {
    input: &'a OracleInput,
    g: u64,
    small_max: u64,
    fresh_runs: bool,
    arenas: bool,
    /// Granules below `arena_base`.
    space: GranuleSpace,
    /// Granules from `arena_base` up, numbered from 0.
    arena_space: GranuleSpace,
    /// First granule of the arenas.
    arena_base: u64,
    /// Where the next arena starts (a granule number).
    next_arena: u64,
    granules: Granules,
    free: FreeRanges,
}

impl Planner<'_> {
    /// Places a block of `size` bytes allocated at op `now`, dead from op `death`; returns
    /// its offset.
    fn place(&mut self, now: usize, death: usize, size: u64) -> u64 {
        debug_assert!(now < death && death <= self.input.ops);
        let offset = if size <= self.small_max {
            match self.choose_gap(now, death, size) {
                Some(gr) => gr * self.g + self.granules.gap_in(gr, size),
                None => self.space.take(1) * self.g,
            }
        } else if self.fresh_runs && (size > self.g || self.arenas) {
            self.place_fresh(now, death, size)
        } else {
            self.place_large(now, death, size)
        };
        self.free.take(offset, size);
        self.occupy(offset, size, death);
        offset
    }

    /// The mapped granule a block of at most a granule goes to, if any: of the granule
    /// unmapped soonest after the block dies and the one unmapped latest before, the one whose
    /// remaining time is closer to the block's (as a ratio), unless that extends a granule by
    /// more than [`max_extension`]. A granule that outlives the block is always better than a
    /// new one: it costs nothing now, when this op may be the peak.
    fn choose_gap(&self, now: usize, death: usize, size: u64) -> Option<u64> {
        let [after, before] = self.granules.find_gaps(size, death);
        let life = (death - now) as u128;
        let before = before.filter(|&(u, _)| death - u <= max_extension(now, death));
        match (after, before) {
            // (u_a - now) / life > life / (u_b - now): the later granule is further off.
            (Some((ua, _)), Some((ub, b)))
                if (ua - now) as u128 * (ub - now) as u128 > life * life =>
            {
                Some(b)
            }
            (Some((_, a)), _) => Some(a),
            (None, b) => b.map(|(_, g)| g),
        }
    }

    /// A block not placed in a gap: against a neighbour in one of the shortest free ranges
    /// that fit it (or at the end of the used space), where it adds the least granule-time.
    /// Only the first and last granule of a block can be mapped already (a granule inside a
    /// free range touches no live block), so each candidate costs O(1).
    fn place_large(&mut self, now: usize, death: usize, size: u64) -> u64 {
        let life = (death - now) as u64;
        let mut best: Option<((u64, u64, u64), u64)> = None; // ((cost, range length, start), at)
        for (start, end) in self.free.candidates(size, LARGE_CANDIDATES) {
            // Against the left neighbour, or the right one (the last range has none).
            let right = (end < free::END).then_some(end - size);
            for at in std::iter::once(start).chain(right) {
                let granules = span(at, size, self.g);
                let mut cost = (granules.end - granules.start) * life;
                for gr in [granules.start, granules.end - 1] {
                    if self.granules.is_mapped(gr) {
                        cost -= life - death.saturating_sub(self.granules.until(gr)) as u64;
                    }
                    if granules.end - granules.start == 1 {
                        break;
                    }
                }
                let key = (cost, end - start, at);
                if best.is_none_or(|b| key < b.0) {
                    best = Some((key, at));
                }
            }
        }
        let (_, at) = best.expect("the end of the address line is always free");
        for gr in span(at, size, self.g) {
            if !self.granules.is_mapped(gr) {
                let taken = self.take_at(gr, 1);
                debug_assert!(taken, "an unmapped granule is free");
            }
        }
        at
    }

    /// A block larger than a granule (with arenas: any block the gap path does not take), in
    /// the fresh-runs variant: a fresh granule-aligned run (with arenas: a new arena), or from
    /// the free tail of a mapped granule on into free granules after it if that adds less
    /// granule-time: of those tails, the one whose remaining time is closest to the block's
    /// (tails shared by blocks that die together).
    fn place_fresh(&mut self, now: usize, death: usize, size: u64) -> u64 {
        let life = (death - now) as u64;
        let fresh = size.div_ceil(self.g) * life;
        // (remaining-time ratio, cost, granule, tail, run)
        let mut best: Option<(f64, u64, u64, u64, u64)> = None;
        for gr in self.granules.tail_candidates(death, TAIL_CANDIDATES) {
            let tail = self.granules.tail_start(gr).expect("indexed as a tail");
            let run = size.saturating_sub(self.g - tail).div_ceil(self.g);
            let until = self.granules.until(gr);
            let extend = death.saturating_sub(until);
            let cost = run * life + extend as u64;
            // How far the tail's remaining time is from the block's, as a ratio (>= 1).
            let ratio = if until >= death {
                (until - now) as f64 / life as f64
            } else {
                life as f64 / (until - now) as f64
            };
            if cost < fresh
                && extend <= max_extension(now, death)
                && best.is_none_or(|b| (ratio, cost) < (b.0, b.1))
                && (gr + 1..gr + 1 + run).all(|g| !self.granules.is_mapped(g))
            {
                best = Some((ratio, cost, gr, tail, run));
            }
        }
        if let Some((_, _, gr, tail, run)) = best
            && (run == 0 || self.take_at(gr + 1, run))
        {
            return gr * self.g + tail;
        }
        let run = size.div_ceil(self.g);
        if self.arenas {
            let start = self.next_arena;
            self.next_arena += (ARENA_SPACING / self.g).max(run);
            let taken = self.take_at(start, run);
            debug_assert!(taken, "a new arena is free");
            return start * self.g;
        }
        self.space.take(run) * self.g
    }

    /// Takes granules `first..first + n` (all in the main space or all in arenas) if free.
    fn take_at(&mut self, first: u64, n: u64) -> bool {
        match first.checked_sub(self.arena_base) {
            Some(a) => self.arena_space.take_at(a, n),
            None => first + n <= self.arena_base && self.space.take_at(first, n),
        }
    }

    /// Records the block in every granule it touches (address space taken by the caller).
    fn occupy(&mut self, offset: u64, size: u64, death: usize) {
        for gr in span(offset, size, self.g) {
            let base = gr * self.g;
            let start = offset.max(base) - base;
            let end = (offset + size).min(base + self.g) - base;
            self.granules.add(gr, start, end, death);
        }
    }

    /// Frees the block: granules no live block touches any more are unmapped and their
    /// addresses given back.
    fn release(&mut self, offset: u64, size: u64) {
        self.free.give(offset, size);
        for gr in span(offset, size, self.g) {
            let start = offset.max(gr * self.g) - gr * self.g;
            if self.granules.remove(gr, start) {
                match gr.checked_sub(self.arena_base) {
                    Some(a) => self.arena_space.give(a),
                    None => self.space.give(gr),
                }
            }
        }
    }
}
