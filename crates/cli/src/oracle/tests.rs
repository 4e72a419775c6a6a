//! The oracle's policy replayed directly on the generators, and its figures for the record.
//! Every policy against the bound, through the pool, is in `bound_tests.rs`.

use super::*;
use crate::replay::{self, ReplayConfig};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DriverCall, StreamId};
use coalesce_policy::oracle::check_plan;
use coalesce_policy::{Policy, PolicySpec};
use coalesce_trace::synth::GENERATORS;

/// Replays `trace` under `policy` on a simulated device, as the replay engine does with no
/// stream lag; returns the peak reserved bytes and whether classic memory was used.
fn replay_direct(trace: &Trace, policy: &mut dyn Policy) -> (u64, bool) {
    let mut dev = SimDevice::new(SimConfig {
        validate: false,
        ..SimConfig::default()
    });
    let mut addrs = vec![0; trace.stats.allocs as usize];
    for op in &trace.ops {
        match *op {
            Op::Alloc { id, size, stream } => {
                let s = StreamId(trace.streams[stream as usize]);
                addrs[id as usize] = policy.alloc(&mut dev, size, s).unwrap().addr;
            }
            Op::Free { id, stream } => {
                let s = StreamId(trace.streams[stream as usize]);
                policy.free(&mut dev, addrs[id as usize], s).unwrap();
            }
        }
    }
    let m = dev.meter();
    (m.peak_reserved_bytes, m.calls.get(DriverCall::MemAlloc) > 0)
}

fn synthetic(seed: u64) -> Vec<Trace> {
    GENERATORS
        .iter()
        .map(|g| replay::synth_trace(&format!("{}@{seed}", g.name)).unwrap())
        .collect()
}

#[test]
fn the_oracle_policy_reserves_its_plan_on_the_generators() {
    let config = OracleConfig::default();
    for trace in synthetic(2) {
        let input = oracle_input(&trace);
        let p = plan(&input, &config);
        check_plan(&input, &p).unwrap_or_else(|e| panic!("{}: {e}", trace.name));
        let (reserved, classic) = replay_direct(&trace, &mut OraclePolicy::new(p.clone()));
        assert!(!classic);
        assert_eq!(reserved, p.peak_bytes(), "{}", trace.name);
        assert!(
            reserved >= lower_bound(&input, &config).bytes,
            "{}",
            trace.name
        );
    }
}

/// The figures of the report: bound, placement and coalesce's reservation (through the
/// replay engine, as `coalesce replay` measures it) over peak requested, for every bundled
/// trace and every generator at seeds 1-8.
/// `cargo test -p coalesce-cli --release -- --ignored --nocapture oracle_figures_table`
#[test]
#[ignore = "slow: prints the oracle's figures for every trace (run with --release)"]
fn oracle_figures_table() {
    let mut traces = replay::load_traces(&replay::bundled_traces().unwrap()).unwrap();
    for seed in 1..=8 {
        traces.extend(synthetic(seed));
    }
    let config = ReplayConfig {
        sim: SimConfig::default(),
        repeats: 1,
        series_points: 10,
    };
    let spec = PolicySpec::named("coalesce");
    println!(
        "| trace | peak requested | bound | placement | coalesce | coalesce / placement | plan range |"
    );
    println!("|---|---|---|---|---|---|---|");
    for trace in &traces {
        let input = oracle_input(trace);
        let p = plan(&input, &OracleConfig::default());
        check_plan(&input, &p).unwrap_or_else(|e| panic!("{}: {e}", trace.name));
        let (extent, placement) = (p.extent, p.peak_bytes());
        let bound = lower_bound(&input, &OracleConfig::default()).bytes;
        let peak = trace.stats.peak_requested_bytes as f64;
        assert_eq!(input.peak_live_bytes(), trace.stats.peak_requested_bytes);
        let coalesce = replay::replay(trace, &spec, &config, &mut |_| {})
            .unwrap()
            .peak_reserved_bytes;
        assert!(bound <= placement && bound <= coalesce);
        println!(
            "| {} | {:.1} MiB | {:.4}x | {:.4}x | {:.4}x | {:.4} | {:.1} GiB |",
            trace.name,
            peak / (1 << 20) as f64,
            bound as f64 / peak,
            placement as f64 / peak,
            coalesce as f64 / peak,
            coalesce as f64 / placement as f64,
            extent as f64 / (1u64 << 30) as f64,
        );
    }
}
