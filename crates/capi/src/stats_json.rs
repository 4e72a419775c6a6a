//! [`PoolStats`] as the JSON object `coalesce_stats_json` writes.

use coalesce_pool::PoolStats;
use serde_json::{Map, Value, json};

/// Every figure of `s`; `driver_calls` is the total, `driver_calls_by_kind` the breakdown.
pub fn to_json(s: &PoolStats) -> String {
    let by_kind: Map<String, Value> = s
        .driver_calls
        .iter()
        .filter(|&(_, n)| n > 0)
        .map(|(call, n)| (call.name().to_owned(), json!(n)))
        .collect();
    json!({
        "device": s.device,
        "backend": s.backend,
        "policy": s.policy,
        "requested_bytes": s.requested_bytes,
        "peak_requested_bytes": s.peak_requested_bytes,
        "allocated_bytes": s.allocated_bytes,
        "peak_allocated_bytes": s.peak_allocated_bytes,
        "reserved_bytes": s.reserved_bytes,
        "peak_reserved_bytes": s.peak_reserved_bytes,
        "largest_free_block": s.largest_free_block,
        "segments": s.segments,
        "pending_frees": s.pending_frees,
        "num_allocs": s.num_allocs,
        "num_frees": s.num_frees,
        "num_ooms": s.num_ooms,
        "num_alloc_retries": s.num_alloc_retries,
        "num_invalid_frees": s.num_invalid_frees,
        "num_invalid_requests": s.num_invalid_requests,
        "total_allocated_bytes": s.total_allocated_bytes,
        "total_freed_bytes": s.total_freed_bytes,
        "total_requested_bytes": s.total_requested_bytes,
        "total_requested_freed_bytes": s.total_requested_freed_bytes,
        "driver_calls": s.driver_calls.total(),
        "driver_calls_by_kind": by_kind,
        "memory_limit": s.memory_limit,
        "total_memory": s.total_memory,
    })
    .to_string()
}
