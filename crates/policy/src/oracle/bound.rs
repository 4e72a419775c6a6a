//! The lower bound: peak live bytes (each block rounded up to the alignment) in whole granules.
//! The proof is in the module docs of [`super`].

use super::{OracleConfig, OracleInput};

/// A lower bound on the peak reservation of any allocator on the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// `granule x max_t ceil(L_t / granule)`, `L_t` the aligned live bytes after op `t`.
    pub bytes: u64,
    /// First op after which the bound is reached (0 for an empty trace).
    pub at_op: usize,
}

/// The bound for `input` under `config` (see the module docs for the proof).
pub fn lower_bound(input: &OracleInput, config: &OracleConfig) -> Bound {
    config.check();
    let (live, at_op) = peak_live(input, |s| config.placed_size(s));
    Bound {
        bytes: live.next_multiple_of(config.granule),
        at_op,
    }
}

/// Peak over ops of the sum of `weight(size)` over live blocks, and the first op reaching it.
pub(super) fn peak_live(input: &OracleInput, weight: impl Fn(u64) -> u64) -> (u64, usize) {
    let mut delta = vec![0i128; input.ops + 1];
    for (i, b) in input.blocks.iter().enumerate() {
        let w = i128::from(weight(b.size));
        delta[b.alloc] += w;
        delta[input.death(i)] -= w;
    }
    let (mut live, mut peak, mut at) = (0i128, 0i128, 0);
    for (t, d) in delta.iter().take(input.ops).enumerate() {
        live += d;
        if live > peak {
            (peak, at) = (live, t);
        }
    }
    (peak as u64, at)
}
