//! `coalesce bench`: every policy on every bundled and synthetic trace, in one run.
//!
//! Per trace and policy: reserved memory against the trace's peak, driver calls per 1000
//! allocations, estimated driver time (calls and bytes times the [`CostTable`]), and the
//! allocator's CPU cost per operation with its ratio to `torch-native` measured in the same
//! run, and (unless `--no-oracle`) its gap to the trace's offline oracle: peak reserved over
//! the oracle's placement and over the bound (see [`crate::replay::Gap`]), with the `oracle`
//! row itself. Then, for the `coalesce` policy, whether each of its goals holds on each trace.

pub mod costs;
pub mod report;

pub use costs::CostTable;

use crate::replay::{self, ReplayConfig, ReplayError, ReplayResult};
use coalesce_policy::PolicySpec;
use coalesce_trace::Trace;

/// The peer CPU costs are compared with.
pub const CPU_PEER: &str = "torch-native";
/// The peer driver time is compared with.
pub const DRIVER_PEER: &str = "torch-expandable";
/// The policy whose goals are checked.
pub const SUBJECT: &str = "coalesce";
/// Goal: peak reserved at most this multiple of peak requested.
pub const RATIO_GOAL: f64 = 1.02;
/// Goal: CPU cost per operation at most this (and below the CPU peer's).
pub const CPU_GOAL_NS: f64 = 100.0;

/// One trace under one policy, with what the bench derives from the replay.
#[derive(Clone, Debug)]
pub struct BenchRow {
    pub result: ReplayResult,
    pub est_driver_us: f64,
    /// `ns_per_op` divided by the CPU peer's on the same trace, in the same run.
    pub cpu_vs_peer: Option<f64>,
}

impl BenchRow {
    pub fn calls_per_1000_allocs(&self) -> f64 {
        self.result.driver_calls.total() as f64 * 1000.0 / self.result.allocs.max(1) as f64
    }
}

/// Whether the subject met its goals on one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Goals {
    pub trace: String,
    pub ratio: f64,
    pub ratio_ok: bool,
    pub ns_per_op: f64,
    pub peer_ns_per_op: Option<f64>,
    pub cpu_ok: bool,
    pub est_driver_us: f64,
    pub peer_driver_us: Option<f64>,
    pub driver_ok: bool,
}

/// The bundled traces plus every synthetic generator at seeds `1..=seeds`. Seed 1 is the
/// one the policy's defaults were chosen on; the others check that the choice generalizes.
pub fn default_traces(seeds: u64) -> Result<Vec<Trace>, String> {
    let mut traces = replay::load_traces(&replay::bundled_traces()?).map_err(|e| e.to_string())?;
    for seed in 1..=seeds {
        for g in coalesce_trace::synth::GENERATORS {
            traces.push(replay::synth_trace(&format!("{}@{seed}", g.name))?);
        }
    }
    Ok(traces)
}

/// Replays every trace under every policy and derives the bench rows; with `with_oracle`,
/// each row carries its gap to the trace's oracle (see [`ReplayResult::gap`]).
pub fn run(
    traces: &[Trace],
    specs: &[PolicySpec],
    config: &ReplayConfig,
    costs: &CostTable,
    with_oracle: bool,
) -> Result<Vec<BenchRow>, ReplayError> {
    let results = replay::replay_all_with_oracle(traces, specs, config, with_oracle)?;
    Ok(rows(results, costs))
}

/// Bench rows from replay results (grouped by trace, as replays return them).
pub fn rows(results: Vec<ReplayResult>, costs: &CostTable) -> Vec<BenchRow> {
    let peer_ns = |trace: &str| {
        results
            .iter()
            .find(|r| r.trace == trace && r.policy == CPU_PEER)
            .map(|r| r.ns_per_op)
    };
    let rows: Vec<BenchRow> = results
        .iter()
        .map(|r| BenchRow {
            est_driver_us: costs.estimate_us(&r.driver_calls, &r.driver_bytes),
            cpu_vs_peer: peer_ns(&r.trace)
                .filter(|&p| p > 0.0)
                .map(|p| r.ns_per_op / p),
            result: r.clone(),
        })
        .collect();
    rows
}

/// The subject's goals on every trace where it ran.
pub fn goals(rows: &[BenchRow]) -> Vec<Goals> {
    let find = |trace: &str, policy: &str| {
        rows.iter()
            .find(|r| r.result.trace == trace && r.result.policy == policy)
    };
    rows.iter()
        .filter(|r| r.result.policy == SUBJECT)
        .map(|r| {
            let cpu_peer = find(&r.result.trace, CPU_PEER).map(|p| p.result.ns_per_op);
            let driver_peer = find(&r.result.trace, DRIVER_PEER).map(|p| p.est_driver_us);
            let ratio = r.result.reserved_ratio();
            Goals {
                trace: r.result.trace.clone(),
                ratio,
                ratio_ok: ratio <= RATIO_GOAL,
                ns_per_op: r.result.ns_per_op,
                peer_ns_per_op: cpu_peer,
                cpu_ok: r.result.ns_per_op <= CPU_GOAL_NS
                    && cpu_peer.is_none_or(|p| r.result.ns_per_op < p),
                est_driver_us: r.est_driver_us,
                peer_driver_us: driver_peer,
                driver_ok: driver_peer.is_none_or(|p| r.est_driver_us <= p),
            }
        })
        .collect()
}
