//! `DevicePool::dump_snapshot` writes a file `coalesce replay` replays: loaded and replayed
//! here with the CLI's own functions, it reproduces the pool's run.

mod common;

use coalesce_backend::StreamId;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_cli::replay::{ReplayConfig, ReplayResult, load_trace, replay_all};
use coalesce_policy::PolicySpec;
use coalesce_pool::{DevicePool, PoolConfig};
use common::scratch;

const MIB: u64 = 1 << 20;

/// A single-stream run over a working set that grows and shrinks; some blocks stay live.
/// Returns the pool and how many blocks are live at the end.
fn run(trace_entries: usize) -> (DevicePool<SimDevice>, u64) {
    let config = PoolConfig {
        policy: PolicySpec::named("bfc-classic"),
        trace_entries,
        ..PoolConfig::default()
    };
    let pool = DevicePool::sim(SimConfig::default(), config).unwrap();
    let mut live = Vec::new();
    for step in 0..3000u64 {
        let size = 512 + (step * 7919) % (8 * MIB);
        live.push(pool.alloc(size, StreamId(0)).unwrap().addr);
        if step % 5 < 3 && live.len() > 1 {
            let victim = live.swap_remove((step as usize * 31) % live.len());
            pool.free(victim, StreamId(0)).unwrap();
        }
    }
    (pool, live.len() as u64)
}

/// Dumps the pool's snapshot and runs what `coalesce replay FILE --policy bfc-classic` runs.
fn replay_snapshot(
    pool: &DevicePool<SimDevice>,
    name: &str,
) -> (coalesce_trace::Trace, ReplayResult) {
    let dir = scratch(name);
    let path = dir.join("snapshot.csv");
    pool.dump_snapshot(&path).unwrap();
    let mut traces = load_trace(&path).expect("the snapshot loads as a trace");
    assert_eq!(traces.len(), 1);
    let config = ReplayConfig {
        sim: SimConfig::default(),
        repeats: 1,
        series_points: 16,
    };
    let mut results = replay_all(&traces, &[PolicySpec::named("bfc-classic")], &config).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    (traces.remove(0), results.remove(0))
}

#[test]
fn a_snapshot_holding_the_whole_run_replays_it_exactly() {
    let (pool, live) = run(100_000);
    let stats = pool.stats().unwrap();
    let (trace, replayed) = replay_snapshot(&pool, "snapshot-whole");
    assert!(trace.warnings.is_empty(), "{:?}", trace.warnings);
    assert_eq!(trace.stats.allocs, stats.num_allocs);
    assert_eq!(trace.stats.live_at_end, live);
    assert_eq!(trace.stats.peak_requested_bytes, stats.peak_requested_bytes);
    assert_eq!(replayed.peak_requested_bytes, stats.peak_requested_bytes);
    assert_eq!(
        replayed.peak_reserved_bytes, stats.peak_reserved_bytes,
        "the same policy on the same requests reserves the same"
    );
    assert_eq!(trace.segments.len(), stats.segments);
}

#[test]
fn a_snapshot_of_a_longer_run_starts_from_the_blocks_live_before_its_ring() {
    let (pool, live) = run(500);
    let stats = pool.stats().unwrap();
    let (trace, replayed) = replay_snapshot(&pool, "snapshot-ring");
    assert!(
        trace.warnings.is_empty(),
        "no free of an unknown block: {:?}",
        trace.warnings
    );
    assert!(
        trace.stats.events < stats.num_allocs,
        "only the ring's events and the preamble"
    );
    assert_eq!(
        trace.stats.live_at_end, live,
        "the replay ends with the pool's live blocks"
    );
    assert!(trace.stats.peak_requested_bytes >= stats.requested_bytes);
    assert!(replayed.peak_requested_bytes <= stats.peak_requested_bytes);
    assert_eq!(replayed.ooms, 0);
}
