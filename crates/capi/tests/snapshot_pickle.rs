//! The pool's snapshot in PyTorch's pickle format: `coalesce replay` replays it to the pool's
//! state, Python unpickles it with PyTorch's invariants holding, and where torch is installed
//! `torch.cuda._memory_viz` reads and plots it.

mod common;

use coalesce::snapshot_to_pickle;
use coalesce_backend::StreamId;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_cli::replay::{ReplayConfig, load_trace, replay_all};
use coalesce_policy::PolicySpec;
use coalesce_pool::{DevicePool, PoolConfig};
use common::{repo_root, scratch, text};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// A run on two streams whose working set grows and shrinks; returns the pool and its live
/// blocks.
fn run() -> (DevicePool<SimDevice>, Vec<u64>) {
    let config = PoolConfig {
        policy: PolicySpec::named("bfc-classic"),
        ..PoolConfig::default()
    };
    let pool = DevicePool::sim(SimConfig::default(), config).unwrap();
    let mut live = Vec::new();
    for step in 0..2000u64 {
        let size = 512 + (step * 7919) % (8 * MIB);
        live.push(pool.alloc(size, StreamId(step % 2)).unwrap().addr);
        if step % 5 < 3 && live.len() > 1 {
            let victim = live.swap_remove((step as usize * 31) % live.len());
            pool.free(victim, StreamId(0)).unwrap();
        }
    }
    (pool, live)
}

fn write(pool: &DevicePool<SimDevice>, path: &Path) {
    let doc = snapshot_to_pickle(&pool.snapshot().unwrap(), "bfc-classic");
    let file = std::fs::File::create(path).unwrap();
    coalesce_trace::write_snapshot_pickle(&doc, file).unwrap();
}

#[test]
fn coalesce_replay_replays_the_pickle_to_the_pools_state() {
    let (pool, live) = run();
    let stats = pool.stats().unwrap();
    let dir = scratch("snapshot-pickle-replay");
    let path = dir.join("snapshot.pickle");
    write(&pool, &path);
    let traces = load_trace(&path).expect("the pickle loads as a trace");
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.stats.allocs, stats.num_allocs);
    assert_eq!(t.stats.live_at_end, live.len() as u64);
    let config = ReplayConfig {
        sim: SimConfig::default(),
        repeats: 1,
        series_points: 16,
    };
    let r = replay_all(&traces, &[PolicySpec::named("bfc-classic")], &config).unwrap();
    assert_eq!(r[0].peak_requested_bytes, stats.peak_requested_bytes);
    let _ = std::fs::remove_dir_all(dir);
}

/// The Python side: python/tests/check_snapshot_pickle.py checks PyTorch's invariants with
/// plain `pickle`, then runs `torch.cuda._memory_viz` on it when torch is importable.
#[test]
fn python_and_torchs_memory_viz_read_the_pickle() {
    if Command::new("python3").arg("--version").output().is_err() {
        common::skip("no python3");
        return;
    }
    let (pool, live) = run();
    let stats = pool.stats().unwrap();
    let dir = scratch("snapshot-pickle-python");
    let path = dir.join("snapshot.pickle");
    write(&pool, &path);
    let mut python = Command::new("python3");
    // Where torch was installed for this check (CI: `pip install --no-deps torch` into a venv;
    // its CUDA libraries are not needed, `_memory_viz` is pure Python).
    if let Some(site) = std::env::var_os("COALESCE_TORCH_SITE") {
        python.env("PYTHONPATH", site);
    }
    let o = python
        .arg(repo_root().join("python/tests/check_snapshot_pickle.py"))
        .arg(&path)
        .arg(live.len().to_string())
        .arg(stats.reserved_bytes.to_string())
        .output()
        .expect("run python3");
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("pickle ok"), "{}", text(&o));
    if !stdout.contains("memory_viz ok") {
        common::skip(&format!(
            "torch is not installed (set COALESCE_TORCH_SITE to a site-packages holding it), so \
             torch.cuda._memory_viz was not run on the pickle ({})",
            stdout.lines().find(|l| l.contains("torch")).unwrap_or("")
        ));
    }
    let _ = std::fs::remove_dir_all(dir);
}
