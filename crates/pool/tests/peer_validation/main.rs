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
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_policy::{PolicySpec, REGISTRY};
use coalesce_pool::replay::{self, Hooks};
use coalesce_pool::{PoolConfig, PoolCore};
use coalesce_trace::{Op, Trace};
use real_run::{RealRun, TRACES, anchor, load};
use trace_device::TraceDevice;

/// Tells the trace device which allocation is being replayed, and keeps every address.
struct Record {
    addrs: Vec<u64>,
}

impl Hooks<PoolCore<TraceDevice>> for Record {
    fn before(&mut self, pool: &mut PoolCore<TraceDevice>, _i: usize, op: &Op) {
        if let Op::Alloc { id, .. } = *op {
            pool.backend_mut().alloc = id;
        }
    }
    fn allocated(
        &mut self,
        _: &mut PoolCore<TraceDevice>,
        id: u32,
        addr: u64,
        _: u64,
        _: coalesce_backend::StreamId,
    ) {
        self.addrs[id as usize] = addr;
    }
}

fn pool<D: Backend>(spec: &str, dev: D) -> PoolCore<D> {
    let config = PoolConfig {
        policy: PolicySpec::parse(spec).unwrap(),
        ..PoolConfig::default()
    };
    PoolCore::new(dev, config).unwrap()
}

/// Replays `trace` under `spec` through the pool, with the pool's replay loop; checks the
/// pool's and the policy's invariants at the end.
fn replay_with<D: Backend, H: Hooks<PoolCore<D>>>(
    spec: &str,
    dev: D,
    trace: &Trace,
    hooks: &mut H,
) -> PoolCore<D> {
    let mut pool = pool(spec, dev);
    let outcome = replay::run(&mut pool, trace, hooks).unwrap_or_else(|e| panic!("{spec}: {e}"));
    assert_eq!(outcome.ooms, 0, "{spec} on {}: out of memory", trace.name);
    pool.check_invariants().unwrap();
    pool
}

fn replay(spec: &str, trace: &Trace) -> PoolCore<SimDevice> {
    replay_with(spec, SimDevice::new(SimConfig::default()), trace, &mut ())
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
    let dev = TraceDevice::new(SimDevice::new(SimConfig::default()), &run.segments);
    let mut record = Record {
        addrs: vec![u64::MAX; run.trace.stats.allocs as usize],
    };
    let pool = replay_with("torch-native", dev, &run.trace, &mut record);
    let (dev, addrs) = (pool.backend(), record.addrs);
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
        let peak = replay("torch-expandable", &run.trace)
            .stats()
            .peak_reserved_bytes;
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
            let peak = replay(p.name, &run.trace).stats().peak_reserved_bytes;
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
