//! `oracle`: the best reservation an allocator that knows the future can reach, and a lower
//! bound that no allocator can beat, on the VMM model of the `coalesce` policy.
//!
//! # High-level model
//!
//! ```text
//!  time ->     t0   t1   t2   t3   t4          a block is live from its alloc op to its free op
//!  granule 0  [A...A....A][b]                   (2 MiB granules; a granule is charged while
//!  granule 1  [A..A][c c c ]                     some live block touches it)
//!  granule 2  [c c ]     [D....]
//! ```
//!
//! The input ([`OracleInput`]) is a trace reduced to what matters here: for every allocation, in
//! trace order, its size, the op at which it is allocated and the op at which it is freed (or
//! never). Time is the op index; block `i` is *live* at every op `t` with
//! `alloc_i <= t < free_i`, and memory is measured after every op.
//!
//! **The model.** An allocator places block `i` at an address `x_i` that is a multiple of
//! `align` and never changes while the block is live (live data never moves); blocks live at
//! the same op never overlap. Physical memory comes in granules of `granule` bytes, and a
//! granule is charged exactly while some live block touches it. This is the most favourable VMM
//! model: a real policy maps at least every granule under live data (it cannot access memory
//! that is not mapped) and often more (handles larger than a granule, idle memory kept for
//! reuse), so its reserved bytes are at least this model's at every op. The figure of a
//! placement is the peak over ops of `granule x` (granules touched by live blocks).
//!
//! **The bound** ([`lower_bound`]): the peak over ops of the live bytes, each block rounded up
//! to `align`, rounded up to whole granules. Proof: at op `t` the live blocks are pairwise
//! disjoint and each starts at a multiple of `align`, so the block starting at `x_i` leaves the
//! bytes up to the next multiple of `align` to nobody (the next block starts at a multiple of
//! `align` at or after `x_i + size_i`): the live blocks cover disjoint ranges of total length at
//! least `L_t = sum(round_up(size_i, align))`. The touched granules contain those ranges, so
//! there are at least `ceil(L_t / granule)` of them, and the peak is at least the maximum of
//! that over `t`. No refinement that looks at one op alone can do better: packing the live
//! blocks of one op back to back from a granule boundary touches exactly
//! `ceil(L_t / granule)` granules. In particular "a block larger than a granule owns
//! `ceil(size / granule)` granules" is false (two blocks of 1.5 granules fit in three granules),
//! and what is true (it fully covers at least `floor(size / granule) - 1` granules no other
//! block touches) adds nothing at one op. A tighter bound must use that blocks cannot move
//! between ops (dynamic storage allocation); that is not done here.
//!
//! **The placement** ([`plan`]): greedy passes over the trace in order, with each block's free
//! op known, each choosing where a block adds the least *granule-time* (ops that granules stay
//! mapped because of it), a proxy for the peak; [`plan`] keeps the pass with the lowest peak.
//! - *Gap path* (blocks up to one granule, or up to an eighth of one in some passes): the free
//!   gap of an already mapped granule if one fits. Of the granule unmapped soonest at or after
//!   the block's death and the one unmapped latest before it, the one whose remaining time is
//!   closer to the block's as a ratio (blocks that die together share granules), but never
//!   extending a granule's mapping by more than half the block's lifetime (a granule is not
//!   held mapped for one straggler when a later block could have had it). A granule that
//!   outlives the block costs nothing now (this op may be the peak) and beats a new one. Else
//!   a new granule.
//! - *Neighbour path* (the other blocks): against the left or right neighbour in one of the
//!   16 shortest free ranges of the address line that fit, or at the end of the used space,
//!   wherever the block adds the least granule-time: a block shares its first and last
//!   granules with its neighbours, so blocks packed back to back waste nothing but at the
//!   ends of runs.
//! - *Fresh-runs passes*: blocks larger than a granule start in the free tail of a mapped
//!   granule and run on into free granules after it, when that adds less granule-time than a
//!   fresh granule-aligned run; of the tails that qualify, the one whose remaining time is
//!   closest to the block's (tails shared by blocks that die together). The free tail of a
//!   run is a gap that small blocks can fill. With *arenas*, a block that shares no tail
//!   starts a region of its own far from the others (and blocks above an eighth of a granule
//!   take this path too), so the blocks that die with it find the granules after it free:
//!   blocks that die together end up side by side and free whole granules when they go.
//!
//! The six passes (`placement::VARIANTS`): gap path up to a granule, neighbour path above;
//! the same with the gap path up to 1/8 granule; neighbour path for every block; fresh runs;
//! fresh runs with arenas, from a granule or from 1/8 granule. Each wins on some traces
//! (arenas on the fragmenter, whose neighbours die far apart; packing across granule
//! boundaries where many blocks are a sizeable part of a granule, as KV caches). A plan is
//! finally compacted: runs of granules blocks touch are moved back to back (`compact.rs`).
//!
//! New granules come from a best-fit free list of granule runs (`va.rs`) and blocks of the
//! neighbour path from a byte-level free list (`free.rs`), so addresses are reused; arenas are
//! not, so with them the planned range ([`Plan::extent`], what [`OraclePolicy`] reserves)
//! grows with what they hold over the trace. [`check_plan`] verifies a plan independently (no overlap of live blocks, the
//! per-op count of mapped granules), and [`OraclePolicy`] replays a plan on a backend.
//!
//! **Streams.** The oracle assumes that the trace's order is safe: a block freed at op `t` may
//! be reused by any allocation after `t` on any stream, as in the replay's default model with no
//! stream lag. It is not stream-aware; pools wrap it with deferred frees where needed.

mod bound;
mod check;
mod compact;
mod free;
mod granules;
mod placement;
mod policy;
#[cfg(test)]
mod tests;
mod va;

pub use bound::{Bound, lower_bound};
pub use check::check_plan;
pub use placement::{Plan, plan};
pub use policy::{INFO, OraclePolicy};

/// The model's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OracleConfig {
    /// Physical granule in bytes (a power of two): the unit memory is charged in.
    pub granule: u64,
    /// Every block starts at a multiple of this (a power of two, at most `granule`).
    pub align: u64,
}

impl Default for OracleConfig {
    /// 2 MiB granules (an H100's VMM granularity) and CUDA's 256-byte alignment, the weakest
    /// guarantee any policy gives (the bound must hold for all of them).
    fn default() -> Self {
        OracleConfig {
            granule: 2 << 20,
            align: 256,
        }
    }
}

impl OracleConfig {
    /// `size` as the model places it: at least one byte, rounded up to `align`.
    pub fn placed_size(&self, size: u64) -> u64 {
        size.max(1).next_multiple_of(self.align)
    }

    fn check(&self) {
        assert!(
            self.granule.is_power_of_two()
                && self.align.is_power_of_two()
                && self.align <= self.granule,
            "granule and align must be powers of two, align <= granule: {self:?}"
        );
    }
}

/// One allocation of a trace: its requested size and the ops at which it is allocated and
/// freed. Invariant (checked by [`OracleInput::from_ops`]): `alloc < free <= ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub size: u64,
    pub alloc: usize,
    /// `None`: never freed (live until the end of the trace).
    pub free: Option<usize>,
}

/// One operation, as [`OracleInput::from_ops`] reads a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleOp {
    /// Allocates the next block (blocks are numbered 0, 1, ... in allocation order).
    Alloc { size: u64 },
    /// Frees block `block`.
    Free { block: usize },
}

/// A trace as the oracle sees it. Invariant: every op is an alloc or a free of exactly one
/// block, allocations are numbered in op order, and each block is freed at most once, after
/// its allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OracleInput {
    /// Number of ops in the trace (ops are numbered `0..ops`).
    pub ops: usize,
    /// Every allocation, in trace order.
    pub blocks: Vec<Lifetime>,
}

impl OracleInput {
    /// Reads a trace's operations in order. Fails on a free of a block that is not live.
    pub fn from_ops(ops: impl IntoIterator<Item = OracleOp>) -> Result<Self, String> {
        let mut input = OracleInput::default();
        for (t, op) in ops.into_iter().enumerate() {
            match op {
                OracleOp::Alloc { size } => input.blocks.push(Lifetime {
                    size,
                    alloc: t,
                    free: None,
                }),
                OracleOp::Free { block } => match input.blocks.get_mut(block) {
                    Some(b) if b.free.is_none() => b.free = Some(t),
                    Some(_) => return Err(format!("op {t}: block {block} freed twice")),
                    None => return Err(format!("op {t}: free of block {block}, not allocated")),
                },
            }
            input.ops = t + 1;
        }
        Ok(input)
    }

    /// The op before which block `i` is dead again (`ops` if it is never freed).
    pub fn death(&self, i: usize) -> usize {
        self.blocks[i].free.unwrap_or(self.ops)
    }

    /// What happens at each op: `(block, is_alloc)`.
    fn events(&self) -> Vec<Option<(usize, bool)>> {
        let mut at = vec![None; self.ops];
        for (i, b) in self.blocks.iter().enumerate() {
            at[b.alloc] = Some((i, true));
            if let Some(f) = b.free {
                at[f] = Some((i, false));
            }
        }
        at
    }

    /// Peak over ops of the live requested bytes.
    pub fn peak_live_bytes(&self) -> u64 {
        bound::peak_live(self, |s| s).0
    }
}

/// The oracle's figures for one trace, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figures {
    /// Peak of live requested bytes.
    pub peak_live_bytes: u64,
    /// No allocator on the model can reserve less at its peak.
    pub bound_bytes: u64,
    /// Peak reservation of the oracle's placement.
    pub placement_bytes: u64,
}

/// The bound and the placement's figure for `input`.
pub fn figures(input: &OracleInput, config: &OracleConfig) -> Figures {
    Figures {
        peak_live_bytes: input.peak_live_bytes(),
        bound_bytes: lower_bound(input, config).bytes,
        placement_bytes: plan(input, config).peak_bytes(),
    }
}
