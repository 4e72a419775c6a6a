//! One JSON object per trace and policy, one per line, for machines.

use crate::replay::ReplayResult;
use serde_json::{Map, Value, json};

pub fn replay_line(r: &ReplayResult) -> String {
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
