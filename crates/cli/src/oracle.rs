//! The offline oracle on resolved traces: what replay and bench show beside each policy's
//! reservation (the best placement found with full knowledge of the future, and a bound no
//! allocator can beat), and the oracle as a replayable policy.
//!
//! The model and proofs are in `coalesce_policy::oracle`. Sizes are the trace's requested
//! sizes; time is the op index of the resolved trace, whose order the oracle assumes is safe
//! for every stream.

use coalesce_policy::oracle::{
    Figures, OracleConfig, OracleInput, OracleOp, OraclePolicy, lower_bound, plan,
};
use coalesce_trace::{Op, Trace};

/// The oracle's view of `trace`: every allocation's size and the ops at which it is allocated
/// and freed.
pub fn oracle_input(trace: &Trace) -> OracleInput {
    OracleInput::from_ops(trace.ops.iter().map(|op| match *op {
        Op::Alloc { size, .. } => OracleOp::Alloc { size },
        Op::Free { id, .. } => OracleOp::Free { block: id as usize },
    }))
    .expect("a resolved trace frees only live allocations, each once")
}

/// Bound and placement of `trace` on the default model (2 MiB granules, 256-byte alignment).
pub fn oracle_figures(trace: &Trace) -> Figures {
    oracle_figures_with(trace, &OracleConfig::default())
}

/// Bound and placement of `trace` on the model `config` (e.g. the device's granularity).
pub fn oracle_figures_with(trace: &Trace, config: &OracleConfig) -> Figures {
    let input = oracle_input(trace);
    Figures {
        peak_live_bytes: input.peak_live_bytes(),
        bound_bytes: lower_bound(&input, config).bytes,
        placement_bytes: plan(&input, config).peak_bytes(),
    }
}

/// The oracle as a policy for `trace`: replaying `trace` through it reserves exactly the
/// placement's figure on a device of `config.granule` granularity. The replay must issue the
/// trace's allocations in order.
pub fn oracle_policy(trace: &Trace, config: &OracleConfig) -> OraclePolicy {
    OraclePolicy::new(plan(&oracle_input(trace), config))
}

#[cfg(test)]
mod tests;
