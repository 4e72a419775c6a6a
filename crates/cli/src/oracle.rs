//! The offline oracle on resolved traces: what replay and bench show beside each policy's
//! reservation (the best placement found with full knowledge of the future, and a bound no
//! allocator can beat), and the oracle as a replayable policy.
//!
//! The model and proofs are in `coalesce_policy::oracle`. Sizes are the trace's requested
//! sizes; time is the op index of the resolved trace, whose order the oracle assumes is safe
//! for every stream.

use coalesce_backend::sim::SimConfig;
use coalesce_policy::oracle::{
    Figures, OracleConfig, OracleInput, OracleOp, OraclePolicy, Plan, lower_bound, plan,
};
use coalesce_trace::{Op, Trace};

/// The oracle's view of `trace`: every allocation's size and the ops at which it is allocated
/// and freed. Allocations of 0 bytes (and their frees) are left out: the pool refuses them
/// before any policy sees them, so the oracle's plan numbers only the allocations a replay
/// hands to a policy.
pub fn oracle_input(trace: &Trace) -> OracleInput {
    // Oracle block of each trace allocation id; `None` for the ones left out.
    let mut block: Vec<Option<usize>> = Vec::with_capacity(trace.stats.allocs as usize);
    let mut next = 0;
    let ops = trace.ops.iter().filter_map(|op| match *op {
        Op::Alloc { size: 0, .. } => {
            block.push(None);
            None
        }
        Op::Alloc { size, .. } => {
            block.push(Some(next));
            next += 1;
            Some(OracleOp::Alloc { size })
        }
        Op::Free { id, .. } => block[id as usize].map(|b| OracleOp::Free { block: b }),
    });
    OracleInput::from_ops(ops).expect("a resolved trace frees only live allocations, each once")
}

/// The model of the simulated device `sim`: its granularity, and 256-byte alignment (the
/// weakest any policy guarantees).
pub fn oracle_config(sim: &SimConfig) -> OracleConfig {
    OracleConfig {
        granule: sim.granularity,
        ..OracleConfig::default()
    }
}

/// The oracle of one trace, computed once: its figures, and the plan the `oracle` row replays
/// (planning is the expensive part: seconds on the larger bundled traces).
#[derive(Clone, Debug)]
pub struct TraceOracle {
    pub figures: Figures,
    pub plan: Plan,
}

impl TraceOracle {
    pub fn new(trace: &Trace, config: &OracleConfig) -> Self {
        let input = oracle_input(trace);
        let plan = plan(&input, config);
        TraceOracle {
            figures: Figures {
                peak_live_bytes: input.peak_live_bytes(),
                bound_bytes: lower_bound(&input, config).bytes,
                placement_bytes: plan.peak_bytes(),
            },
            plan,
        }
    }

    /// A fresh policy replaying the plan (one per replay pass).
    pub fn policy(&self) -> OraclePolicy {
        OraclePolicy::new(self.plan.clone())
    }
}

/// Bound and placement of `trace` on the default model (2 MiB granules, 256-byte alignment).
pub fn oracle_figures(trace: &Trace) -> Figures {
    oracle_figures_with(trace, &OracleConfig::default())
}

/// Bound and placement of `trace` on the model `config` (e.g. the device's granularity).
pub fn oracle_figures_with(trace: &Trace, config: &OracleConfig) -> Figures {
    TraceOracle::new(trace, config).figures
}

/// The oracle as a policy for `trace`: replaying `trace` through it reserves exactly the
/// placement's figure on a device of `config.granule` granularity. The replay must issue the
/// trace's allocations in order.
pub fn oracle_policy(trace: &Trace, config: &OracleConfig) -> OraclePolicy {
    OraclePolicy::new(plan(&oracle_input(trace), config))
}

#[cfg(test)]
mod bound_tests;
#[cfg(test)]
mod tests;
