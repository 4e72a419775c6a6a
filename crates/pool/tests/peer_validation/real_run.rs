//! What the real allocator did on the H100, from the bundled traces and the measured anchors.

use coalesce_trace::{Action, Trace, read_trace, resolve};
use std::path::{Path, PathBuf};

/// A `cudaMalloc` the real native allocator made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealSegment {
    /// Id of the allocation that made it (the next `alloc` row after the `segment_alloc` row).
    pub alloc: u32,
    pub addr: u64,
    pub size: u64,
}

/// One bundled trace: the ops to replay and what PyTorch's native allocator did with them.
pub struct RealRun {
    pub trace: Trace,
    /// Address the real allocator gave each allocation, by allocation id.
    pub block_addrs: Vec<u64>,
    pub segments: Vec<RealSegment>,
}

impl RealRun {
    /// Reserved bytes at the end of the real run: no segment was ever freed (no OOM, no
    /// `segment_free` rows), so this is the peak.
    pub fn peak_reserved(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub const TRACES: [&str; 3] = ["gpt2_train", "resnet50_train", "llama_generate"];

pub fn load(name: &str) -> RealRun {
    let path = repo_root().join(format!("traces/{name}.trace.csv.gz"));
    let (_, devices) = read_trace(&path).unwrap_or_else(|e| panic!("{e}"));
    let events = &devices[0].events;
    let trace = resolve(name, events);
    assert_eq!(
        trace.stats.count(Action::SegmentFree),
        0,
        "{name}: the real run freed segments; its peak is not the sum of segment sizes"
    );
    let (mut block_addrs, mut segments) = (Vec::new(), Vec::new());
    for e in events {
        match e.action {
            Action::Alloc => block_addrs.push(e.addr),
            Action::SegmentAlloc => segments.push(RealSegment {
                alloc: block_addrs.len() as u32,
                addr: e.addr,
                size: e.size,
            }),
            _ => {}
        }
    }
    RealRun {
        trace,
        block_addrs,
        segments,
    }
}

/// A figure from `crates/cli/data/h100-anchors.json` (measured on the H100).
pub fn anchor(trace: &str, policy: &str, key: &str) -> u64 {
    let path = repo_root().join("crates/cli/data/h100-anchors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let json: serde_json::Value = serde_json::from_str(&text).expect("anchors are JSON");
    json["traces"][trace][policy][key]
        .as_u64()
        .unwrap_or_else(|| panic!("anchors lack traces.{trace}.{policy}.{key}"))
}
