//! Figures measured on a real H100 for the bundled traces (`data/h100-anchors.json`), shown
//! beside the simulated rows as references: `cuda-async` (the driver's closed-source pool,
//! which cannot be simulated) and PyTorch's own allocator, native and with expandable segments.
//!
//! They are measurements, never simulation results: the human table labels them, and they stay
//! out of `--json`.

use serde_json::Value;
use std::sync::OnceLock;

const ANCHORS: &str = include_str!("../../data/h100-anchors.json");

/// The peers with measured figures, in the order rows are shown.
const PEERS: [&str; 3] = ["torch-native", "torch-expandable", "cuda-async"];

/// One measured figure set for one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// The peer's name, as the policy that models it is named (`cuda-async` has no model).
    pub peer: &'static str,
    /// `"<peer> (measured on H100)"`.
    pub label: String,
    pub peak_reserved_bytes: u64,
    /// Peak of live requested bytes of the trace (what a replay reaches without OOM).
    pub peak_requested_bytes: u64,
    /// `cudaMalloc` calls of the live run, where recorded.
    pub segments: Option<u64>,
    /// Allocator cost per op of a measured replay, where one exists.
    pub ns_per_op: Option<f64>,
}

fn anchors() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(ANCHORS).expect("embedded anchors are valid JSON"))
}

/// The measured rows for a trace, if it is one of the bundled H100 traces: its name must match
/// and so must its counts of allocations and trace entries (a user's own trace of the same
/// name gets none).
pub fn measured_for(trace: &str, allocs: u64, events: u64) -> Vec<Measured> {
    let t = &anchors()["traces"][trace];
    let same_workload =
        t["allocs"].as_u64() == Some(allocs) && t["events"].as_u64() == Some(events);
    let Some(peak_requested_bytes) = t["peak_requested_bytes"].as_u64().filter(|_| same_workload)
    else {
        return vec![];
    };
    let device = anchors()["device_short"].as_str().unwrap_or("H100");
    PEERS
        .iter()
        .filter_map(|&peer| {
            let m = &t[peer];
            Some(Measured {
                peer,
                label: format!("{peer} (measured on {device})"),
                peak_reserved_bytes: m["peak_reserved_bytes"].as_u64()?,
                peak_requested_bytes,
                segments: m["segments"].as_u64(),
                ns_per_op: m["ns_per_op"].as_f64(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_traces_have_all_three_peers_and_others_none() {
        for (trace, allocs, events) in [
            ("gpt2_train", 43_091, 129_449),
            ("resnet50_train", 10_686, 32_179),
            ("llama_generate", 544_807, 1_634_472),
        ] {
            let rows = measured_for(trace, allocs, events);
            let peers: Vec<&str> = rows.iter().map(|r| r.peer).collect();
            assert_eq!(peers, PEERS, "{trace}");
            assert!(rows.iter().all(|r| r.label.ends_with("(measured on H100)")));
            assert!(rows[2].ns_per_op.is_some(), "{trace}: cuda-async was timed");
            assert!(measured_for(trace, allocs, events + 1).is_empty());
        }
        assert!(measured_for("my_run", 1, 1).is_empty());
    }
}
