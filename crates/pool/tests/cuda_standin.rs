//! `DevicePool<CudaBackend>` on the CUDA driver stand-in: the pool users run, through the real
//! CUDA backend and cudarc, with no GPU.
//!
//! - A bundled trace replays through the CUDA path to the same peaks as on the simulated device.
//! - Faults survived: for every driver function the pool calls, its k-th call fails (out of
//!   memory, invalid value, unknown error) in the middle of a workload whose blocks are filled
//!   through their pointers. The failing request gets an error that says what failed, every live
//!   block keeps its bytes, the pool keeps serving, and once the pool is dropped the stand-in
//!   reports no leak.
//!
//! The stand-in is one per process and its fault switches are global, so the tests here take a
//! lock and run one at a time.

use coalesce_backend::cuda::{CudaBackend, DRIVER_SYMBOLS};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{DriverCall, StreamId};
use coalesce_cuda_standin_loader::{Controls, controls};
use coalesce_policy::PolicySpec;
use coalesce_pool::{DevicePool, PoolConfig, PoolCore, replay};
use std::sync::{Mutex, MutexGuard};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The stand-in's controls and the lock on it, or `None` (said on stderr) without it.
fn standin() -> Option<(&'static Controls, MutexGuard<'static, ()>)> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    match controls() {
        Ok(c) => {
            c.reset();
            Some((c, guard))
        }
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "skipping {}: no CUDA driver stand-in ({e})",
                std::thread::current().name().unwrap_or("test")
            );
            None
        }
    }
}

fn config(policy: &str) -> PoolConfig {
    PoolConfig {
        policy: PolicySpec::parse(policy).unwrap(),
        ..PoolConfig::default()
    }
}

fn cuda_pool(policy: &str) -> DevicePool<CudaBackend> {
    let backend = CudaBackend::new(0).expect("the CUDA backend opens the stand-in");
    assert_eq!(backend.granularity(), 2 * MIB);
    DevicePool::new(backend, config(policy)).unwrap()
}

use coalesce_backend::Backend;

#[test]
fn a_bundled_trace_replays_through_the_cuda_backend_to_the_simulated_peaks() {
    let Some((c, _guard)) = standin() else { return };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../traces/llama_generate.trace.csv.gz"
    );
    let (_, devices) = coalesce_trace::read_trace(std::path::Path::new(path)).unwrap();
    let trace = coalesce_trace::resolve("llama_generate", &devices[0].events);
    for policy in ["coalesce", "torch-native", "torch-expandable"] {
        let leaks_before = c.leak_count();
        let pool = cuda_pool(policy);
        let mut live = Live::default();
        let outcome = replay::run(&mut &pool, &trace, &mut live).unwrap();
        assert_eq!(outcome.ooms, 0);
        let on_cuda = pool.stats().unwrap();
        // The run ends with tensors still live (the model's weights): free them, so the
        // teardown can give everything back.
        for (&addr, &stream) in &live.0 {
            pool.free(addr, stream).unwrap();
        }
        let mut sim = PoolCore::new(SimDevice::new(SimConfig::default()), config(policy)).unwrap();
        replay::run(&mut sim, &trace, &mut ()).unwrap();
        let on_sim = sim.stats();
        assert_eq!(
            (on_cuda.peak_reserved_bytes, on_cuda.peak_requested_bytes),
            (on_sim.peak_reserved_bytes, on_sim.peak_requested_bytes),
            "{policy}: the CUDA path and the simulated device disagree"
        );
        // The same memory calls; event and synchronize counts follow the (real) time streams
        // take on the stand-in, which the simulated clock does not model.
        for kind in DriverCall::ALL
            .into_iter()
            .filter(|k| k.allocates_or_maps())
        {
            assert_eq!(
                on_cuda.driver_calls.get(kind),
                on_sim.driver_calls.get(kind),
                "{policy}: {kind} calls"
            );
        }
        drop(pool);
        assert_eq!(
            c.leak_count(),
            leaks_before,
            "{policy}: {}",
            c.leak_report()
        );
    }
}

/// The blocks a replay left live.
#[derive(Default)]
struct Live(std::collections::BTreeMap<u64, StreamId>);

impl<'p> replay::Hooks<&'p DevicePool<CudaBackend>> for Live {
    fn allocated(
        &mut self,
        _: &mut &'p DevicePool<CudaBackend>,
        _: u32,
        addr: u64,
        _: u64,
        s: StreamId,
    ) {
        self.0.insert(addr, s);
    }
    fn freeing(&mut self, _: &mut &'p DevicePool<CudaBackend>, addr: u64, _: u64, _: StreamId) {
        self.0.remove(&addr);
    }
}

/// A block the workload holds, with the seed of its bytes.
#[derive(Clone, Copy, Debug)]
struct Held {
    addr: u64,
    size: u64,
    seed: u64,
    stream: StreamId,
}

fn byte(seed: u64, i: u64) -> u8 {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)) as u8
        ^ (i >> 8) as u8
}

fn fill(h: &Held) {
    // SAFETY: on the stand-in, device memory is host memory mapped read/write into this
    // process; the block is live and only this test touches it.
    let bytes = unsafe { std::slice::from_raw_parts_mut(h.addr as *mut u8, h.size as usize) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = byte(h.seed, i as u64);
    }
}

fn corrupted(h: &Held) -> usize {
    // SAFETY: as in `fill`.
    let bytes = unsafe { std::slice::from_raw_parts(h.addr as *const u8, h.size as usize) };
    bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b != byte(h.seed, i as u64))
        .count()
}

/// Sizes of the workload: mostly small, some of several granules.
fn size_of(op: u64) -> u64 {
    match op % 7 {
        0 => 2 * MIB + 4 * KIB * (op % 5),
        1 => 4 * MIB + 512,
        2 | 3 => 96 * KIB + 512 * (op % 13),
        _ => 1 + 700 * (op % 37),
    }
}

/// What a fault run saw.
#[derive(Debug, Default)]
struct Run {
    errors: Vec<String>,
    /// Driver functions called after the fault was armed (from the stand-in's counts).
    called: Vec<&'static str>,
}

/// Runs the workload on a fresh pool, arming the fault `(function, k, code)` after `ARM` ops
/// (none: a probe run that only records which driver functions the workload calls).
fn run(c: &Controls, policy: &str, fault: Option<(&str, u64, u32)>) -> Run {
    let counts = || {
        DRIVER_SYMBOLS
            .iter()
            .map(|f| c.calls(f).unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let mut armed_at = Vec::new();
    const OPS: u64 = 160;
    const ARM: u64 = 40;
    // Leaks are counted from here: a failed run before must not fail every run after it.
    let leaks_before = c.leak_count();
    let pool = cuda_pool(policy);
    let owned: Vec<_> = (0..2)
        .map(|_| pool.with_backend(|b| b.create_stream().unwrap()).unwrap())
        .collect();
    let streams: Vec<StreamId> = owned.iter().map(|s| s.id()).collect();
    let mut held: Vec<Held> = Vec::new();
    let mut out = Run::default();
    let what = |op| match fault {
        Some((f, k, code)) => format!("{policy}, {f}#{k} -> {code} at op {op}"),
        None => format!("{policy}, no fault, at op {op}"),
    };
    let check_all = |held: &[Held], op| {
        for h in held {
            assert_eq!(corrupted(h), 0, "{}: block {h:?} changed", what(op));
        }
    };
    let mut errors_checked = 0;
    for op in 0..OPS {
        if op == ARM {
            armed_at = counts();
            if let Some(fault) = fault {
                assert!(c.fail_nth(fault.0, fault.1, fault.2), "arm {fault:?}");
            }
        }
        let stream = streams[(op % 2) as usize];
        // About a dozen blocks live at a time.
        let free_one = !held.is_empty() && (held.len() > 12 || op % 3 == 2);
        if free_one {
            let h = held.swap_remove((op * 7 % held.len() as u64) as usize);
            assert_eq!(
                corrupted(&h),
                0,
                "{}: block {h:?} changed before its free",
                what(op)
            );
            if let Err(e) = pool.free(h.addr, h.stream) {
                out.errors.push(e.to_string());
                // A failed free leaves the block live: it is still the caller's.
                held.push(h);
            }
        } else {
            match pool.alloc(size_of(op), stream) {
                Ok(b) => {
                    let h = Held {
                        addr: b.addr,
                        size: size_of(op),
                        seed: op,
                        stream,
                    };
                    fill(&h);
                    held.push(h);
                }
                Err(e) => out.errors.push(e.to_string()),
            }
        }
        if op == OPS / 2
            && let Err(e) = pool.empty_cache()
        {
            out.errors.push(e.to_string());
        }
        // Every block after each error, and every 32 ops once the fault is armed.
        if op >= ARM && (op % 32 == 0 || out.errors.len() > errors_checked) {
            errors_checked = out.errors.len();
            check_all(&held, op);
        }
    }
    check_all(&held, OPS);
    out.called = DRIVER_SYMBOLS
        .iter()
        .zip(counts().into_iter().zip(armed_at))
        .filter(|(_, (now, then))| now > then)
        .map(|(&f, _)| f)
        .collect();
    // Disarm what did not fire, then the pool must serve again and give everything back.
    c.reset();
    let after = pool
        .alloc(MIB, streams[0])
        .unwrap_or_else(|e| panic!("{}: {e}", what(OPS)));
    pool.free(after.addr, streams[0]).unwrap();
    for h in held.drain(..) {
        pool.free(h.addr, h.stream)
            .unwrap_or_else(|e| panic!("{}: {e}", what(OPS)));
    }
    let stats = pool.stats().unwrap();
    assert_eq!(stats.requested_bytes, 0, "{}", what(OPS));
    pool.with_core(|core| core.teardown())
        .unwrap()
        .unwrap_or_else(|e| panic!("{}: teardown: {e}", what(OPS)));
    for s in owned {
        pool.with_backend(|b| b.destroy_stream(s)).unwrap().unwrap();
    }
    drop(pool);
    assert_eq!(
        c.leak_count(),
        leaks_before,
        "{}: {}",
        what(OPS),
        c.leak_report()
    );
    out
}

/// CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_UNKNOWN.
const CODES: [u32; 3] = [1, 2, 999];

fn faults_survived(policy: &str) {
    let Some((c, _guard)) = standin() else { return };
    // The driver functions the pool calls during the workload, as the stand-in counted them
    // in a run without faults: every one of them gets its faults.
    let functions = run(c, policy, None).called;
    // Every backend call enters the device's context, so the probe cannot miss that one.
    assert!(
        functions.contains(&"cuCtxSetCurrent") && functions.len() > 1,
        "{policy}: the probe saw only {functions:?}"
    );
    let mut fired = 0;
    for &function in &functions {
        for k in [1, 3] {
            for code in CODES {
                assert!(
                    c.calls(function).is_some(),
                    "{function} is not a stand-in export"
                );
                if std::env::var_os("COALESCE_TRACE_FAULTS").is_some() {
                    use std::io::Write;
                    let line = format!("fault run: {policy} {function}#{k} -> {code}");
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
                let r = run(c, policy, Some((function, k, code)));
                for e in &r.errors {
                    assert!(
                        e.contains("out of memory") || e.contains("cu") || e.contains("CUDA"),
                        "{policy}, {function}: the error does not say what failed: {e}"
                    );
                }
                fired += !r.errors.is_empty() as u32;
            }
        }
    }
    assert!(
        fired > 0,
        "{policy}: no injected fault ever reached a caller"
    );
}

#[test]
fn faults_survived_coalesce() {
    faults_survived("coalesce");
}

#[test]
fn faults_survived_torch_expandable() {
    faults_survived("torch-expandable");
}

#[test]
fn faults_survived_torch_native() {
    faults_survived("torch-native");
}
