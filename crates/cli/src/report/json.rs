//! One JSON object per trace and policy, one per line, for machines.

use crate::replay::ReplayResult;
use serde_json::{Map, Value, json};

/// The oracle's fields (`oracle_*`: the trace's figures; `bound_bytes`, `vs_oracle`,
/// `vs_bound`: this policy's gap, see [`crate::replay::Gap`]) are null where the oracle was not
/// computed.
pub fn replay_line(r: &ReplayResult) -> String {
    let gap = r.gap();
    let calls: Map<String, Value> = r
        .driver_calls
        .iter()
        .map(|(c, n)| (c.name().to_owned(), json!(n)))
        .collect();
    json!({
        "trace": r.trace,
        "policy": r.policy,
        "events": r.events,
        "allocs": r.allocs,
        "ops": r.ops,
        "peak_requested_bytes": r.peak_requested_bytes,
        "peak_reserved_bytes": r.peak_reserved_bytes,
        "peak_allocated_bytes": r.peak_allocated_bytes,
        "reserved_ratio": r.reserved_ratio(),
        "oracle_peak_live_bytes": r.oracle.map(|f| f.peak_live_bytes),
        "oracle_bound_bytes": r.oracle.map(|f| f.bound_bytes),
        "oracle_placement_bytes": r.oracle.map(|f| f.placement_bytes),
        "bound_bytes": gap.map(|g| g.bound_bytes),
        "vs_oracle": gap.map(|g| g.vs_oracle),
        "vs_bound": gap.map(|g| g.vs_bound),
        "driver_calls": calls,
        "driver_calls_total": r.driver_calls.total(),
        "ooms": r.ooms,
        "oom_retries": r.retries,
        "ns_per_op": r.ns_per_op,
        "ns_per_op_runs": r.ns_per_op_runs,
        "wall_s": r.wall_s,
    })
    .to_string()
}
