//! The peer models against what the real allocators did on an H100 (issue 4).
//!
//! Targets are the real allocators' figures: the `segment_alloc` rows of each bundled trace
//! (PyTorch's native allocator recorded every `cudaMalloc` it made, and where it placed every
//! block) and the measured peaks in `crates/cli/data/h100-anchors.json`. To print the
//! validation table of `docs/peer-models.md`:
//!
//! ```sh
//! cargo test -p coalesce-pool --test peer_validation -- --nocapture
//! ```

mod real_run;
mod trace_device;

use coalesce_backend::Backend;
use coalesce_backend::StreamId;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_policy::{PolicySpec, REGISTRY, alloc_with_recovery, build};
use coalesce_trace::{Op, Trace};
use real_run::{RealRun, TRACES, anchor, load};
use trace_device::TraceDevice;

/// Replays `trace` under `spec` on `dev`; `before_alloc` sees each allocation id first.
/// Returns the address handed to each allocation.
fn replay<D: Backend>(
    spec: &str,
    dev: &mut D,
    trace: &Trace,
    mut before_alloc: impl FnMut(&mut D, u32),
) -> Vec<u64> {
    let mut policy = build(&PolicySpec::parse(spec).unwrap()).unwrap();
    let streams: Vec<StreamId> = trace.streams.iter().map(|&s| StreamId(s)).collect();
    let mut addrs = vec![u64::MAX; trace.stats.allocs as usize];
    for (i, op) in trace.ops.iter().enumerate() {
        match *op {
            Op::Alloc { id, size, stream } => {
                before_alloc(dev, id);
                let (block, _) =
                    alloc_with_recovery(policy.as_mut(), dev, size, streams[stream as usize])
                        .unwrap_or_else(|e| panic!("{spec} on {}: op {i}: {e}", trace.name));
                addrs[id as usize] = block.addr;
            }
            Op::Free { id, stream } => policy
                .free(dev, addrs[id as usize], streams[stream as usize])
                .unwrap_or_else(|e| panic!("{spec} on {}: op {i}: {e}", trace.name)),
        }
    }
    policy.check_invariants().unwrap();
    addrs
}

fn error(model: u64, real: u64) -> f64 {
    (model as f64 - real as f64) / real as f64
}

/// What the native model did with one trace, next to the real run.
struct NativeOutcome {
    peak_reserved: u64,
    segments: usize,
    /// Real segments the model made during the same allocation with the same size.
    segments_matched: usize,
    /// The length of the longest prefix of real segments matched in order.
    segments_prefix: usize,
    /// Allocations placed at the address PyTorch gave them.
    blocks_at_real_addr: usize,
}

fn replay_native(run: &RealRun) -> NativeOutcome {
    let mut dev = TraceDevice::new(SimDevice::new(SimConfig::default()), &run.segments);
    let addrs = replay("torch-native", &mut dev, &run.trace, |d, id| d.alloc = id);
    let mut matched: Vec<usize> = dev.made.iter().filter_map(|m| m.2).collect();
    let segments_prefix = matched
        .iter()
        .enumerate()
        .take_while(|&(i, &m)| i == m)
        .count();
    matched.sort_unstable();
    matched.dedup();
    NativeOutcome {
        peak_reserved: dev.meter().peak_reserved_bytes,
        segments: dev.made.len(),
        segments_matched: matched.len(),
        segments_prefix,
        blocks_at_real_addr: addrs
            .iter()
            .zip(&run.block_addrs)
            .filter(|(a, b)| a == b)
            .count(),
    }
}

#[test]
fn torch_native_reproduces_pytorchs_segments_and_peak() {
    for name in TRACES {
        let run = load(name);
        let real_peak = run.peak_reserved();
        assert_eq!(
            real_peak,
            anchor(name, "torch-native", "peak_reserved_bytes"),
            "{name}: the trace's segments and the live run disagree"
        );
        let real_segments = run.segments.len();
        let m = replay_native(&run);
        eprintln!(
            "{name}: torch-native peak reserved {} vs real {real_peak} ({:+.3}%), segments {} vs \
             {real_segments}, {} real segments reproduced (first {} in order), {} of {} blocks \
             at the real address",
            m.peak_reserved,
            100.0 * error(m.peak_reserved, real_peak),
            m.segments,
            m.segments_matched,
            m.segments_prefix,
            m.blocks_at_real_addr,
            run.block_addrs.len(),
        );
        assert!(
            error(m.peak_reserved, real_peak).abs() <= 0.02,
            "{name}: peak reserved {} is not within 2% of the real {real_peak}",
            m.peak_reserved
        );
        assert!(
            error(m.segments as u64, real_segments as u64).abs() <= 0.05,
            "{name}: {} segments, not within 5% of the real {real_segments}",
            m.segments
        );
        assert!(
            m.segments_matched as f64 >= 0.95 * real_segments as f64,
            "{name}: only {} of {real_segments} real segments reproduced",
            m.segments_matched
        );
        assert!(
            m.blocks_at_real_addr as f64 >= 0.95 * run.block_addrs.len() as f64,
            "{name}: only {} of {} blocks placed where PyTorch placed them",
            m.blocks_at_real_addr,
            run.block_addrs.len()
        );
    }
}

#[test]
fn torch_expandable_peak_matches_the_h100() {
    for name in TRACES {
        let run = load(name);
        let real = anchor(name, "torch-expandable", "peak_reserved_bytes");
        let mut dev = SimDevice::new(SimConfig::default());
        replay("torch-expandable", &mut dev, &run.trace, |_, _| {});
        let peak = dev.meter().peak_reserved_bytes;
        eprintln!(
            "{name}: torch-expandable peak reserved {peak} vs real {real} ({:+.3}%)",
            100.0 * error(peak, real)
        );
        assert!(
            error(peak, real).abs() <= 0.03,
            "{name}: peak reserved {peak} is not within 3% of the real {real}"
        );
    }
}

/// Every registered policy replays every bundled trace without error, never reserving less
/// than is live.
#[test]
fn every_policy_replays_every_bundled_trace() {
    for name in TRACES {
        let run = load(name);
        for p in REGISTRY {
            let mut dev = SimDevice::new(SimConfig::default());
            replay(p.name, &mut dev, &run.trace, |_, _| {});
            let peak = dev.meter().peak_reserved_bytes;
            eprintln!("{name}: {} peak reserved {peak}", p.name);
            assert!(
                peak >= run.trace.stats.peak_requested_bytes,
                "{name}: {} reserved {peak} < requested {}",
                p.name,
                run.trace.stats.peak_requested_bytes
            );
        }
    }
}
