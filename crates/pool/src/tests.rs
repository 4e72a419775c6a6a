//! The pool on the simulated device: exact stats, errors, the cap, OOM recovery, stream-ordered
//! reuse checked against the simulator's hazard oracle, snapshots, and many threads at once.

use super::*;
use coalesce_backend::StreamId;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{DriverCall, EventId};
use coalesce_policy::Block;
use coalesce_policy::REGISTRY;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const MIB: u64 = 1 << 20;

fn pool_with(policy: &str, sim: SimConfig) -> DevicePool<SimDevice> {
    let config = PoolConfig {
        policy: PolicySpec::named(policy),
        ..PoolConfig::default()
    };
    DevicePool::sim(sim, config).unwrap()
}

fn small_device(capacity: u64, stream_lag: u64) -> SimConfig {
    SimConfig {
        capacity,
        stream_lag,
        ..SimConfig::default()
    }
}

fn pool(policy: &str) -> DevicePool<SimDevice> {
    pool_with(policy, small_device(1 << 30, 0))
}

const S0: StreamId = StreamId(0);

#[test]
fn stats_count_requested_allocated_and_reserved_bytes() {
    let p = pool("bfc-classic");
    let a = p.alloc(1000, S0).unwrap();
    let b = p.alloc(3 * MIB, S0).unwrap();
    let s = p.stats().unwrap();
    assert_eq!(
        (s.requested_bytes, s.peak_requested_bytes),
        (1000 + 3 * MIB, 1000 + 3 * MIB)
    );
    assert_eq!(s.allocated_bytes, a.size + b.size);
    assert!(s.requested_bytes <= s.allocated_bytes && s.allocated_bytes <= s.reserved_bytes);
    p.free(b.addr, S0).unwrap();
    let s = p.stats().unwrap();
    assert_eq!(s.requested_bytes, 1000);
    assert_eq!(s.peak_requested_bytes, 1000 + 3 * MIB, "the peak stays");
    assert_eq!(s.allocated_bytes, a.size);
    assert_eq!((s.num_allocs, s.num_frees, s.num_ooms), (2, 1, 0));
    assert_eq!(
        (s.total_allocated_bytes, s.total_freed_bytes),
        (a.size + b.size, b.size),
        "lifetime totals of block bytes"
    );
    assert_eq!(
        (s.total_requested_bytes, s.total_requested_freed_bytes),
        (1000 + 3 * MIB, 3 * MIB),
        "lifetime totals of requested bytes"
    );
    assert_eq!(
        (s.backend.as_str(), s.policy.as_str()),
        ("sim", "bfc-classic")
    );
    p.reset_peak_stats().unwrap();
    let s = p.stats().unwrap();
    assert_eq!(s.peak_requested_bytes, 1000);
    assert_eq!(s.peak_reserved_bytes, s.reserved_bytes);
}

#[test]
fn bad_frees_are_errors_that_change_nothing() {
    let p = pool("bfc-classic");
    let a = p.alloc(4096, S0).unwrap();
    p.free(a.addr, S0).unwrap();
    let before = p.stats().unwrap();
    let err = p.free(a.addr, S0).unwrap_err();
    assert!(
        matches!(err, PoolError::UnknownAddress(x) if x == a.addr),
        "{err}"
    );
    assert!(err.to_string().contains("double free or foreign pointer"));
    assert!(matches!(
        p.free(0x1234, S0),
        Err(PoolError::UnknownAddress(0x1234))
    ));
    let after = p.stats().unwrap();
    assert_eq!(after.num_invalid_frees, 2, "both bad frees are counted");
    assert_eq!(
        PoolStats {
            num_invalid_frees: 0,
            ..after
        },
        before,
        "nothing else changed"
    );
}

#[test]
fn the_memory_limit_refuses_growth_before_the_driver_and_the_pool_keeps_working() {
    let p = pool("bfc-classic");
    p.set_memory_limit(Some(MemoryLimit::Bytes(64 * MIB)))
        .unwrap();
    let small = p.alloc(MIB, S0).unwrap();
    let err = p.alloc(100 * MIB, S0).unwrap_err();
    let PoolError::OutOfMemory(report) = &err else {
        panic!("expected OOM, got {err}")
    };
    assert!(report.limit_reached);
    assert_eq!(report.requested, 100 * MIB);
    assert_eq!(report.memory_limit, Some(64 * MIB));
    let text = err.to_string();
    for needle in [
        "out of memory on device 0: cannot allocate 104857600 bytes (100.00 MiB)",
        "largest free block",
        "is free but unusable for this request",
        "free on the device",
        "the memory limit of 67108864 bytes (64.00 MiB) is reached",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    let s = p.stats().unwrap();
    assert_eq!((s.num_ooms, s.num_alloc_retries), (1, 1));
    assert!(s.reserved_bytes <= 64 * MIB);
    let after = p.alloc(4 * MIB, S0).unwrap();
    p.free(small.addr, S0).unwrap();
    p.free(after.addr, S0).unwrap();
    p.set_memory_limit(None).unwrap();
    p.alloc(100 * MIB, S0).unwrap();
}

#[test]
fn a_fraction_limit_is_a_share_of_the_device() {
    let p = pool("cuda-malloc");
    p.set_memory_limit(Some(MemoryLimit::Fraction(0.25)))
        .unwrap();
    assert_eq!(p.stats().unwrap().memory_limit, Some(256 * MIB));
    let err = p
        .set_memory_limit(Some(MemoryLimit::Fraction(1.5)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid memory limit: fraction 1.5 is not in (0, 1]"
    );
}

#[test]
fn out_of_memory_releases_the_cache_and_retries_once() {
    for info in REGISTRY {
        let p = pool_with(info.name, small_device(64 * MIB, 0));
        let blocks: Vec<_> = (0..6).map(|_| p.alloc(8 * MIB, S0).unwrap()).collect();
        for b in &blocks {
            p.free(b.addr, S0).unwrap();
        }
        let big = p.alloc(60 * MIB, S0);
        assert!(big.is_ok(), "{}: {}", info.name, big.unwrap_err());
        assert_eq!(p.stats().unwrap().num_ooms, 0, "{}", info.name);
        let err = p.alloc(60 * MIB, S0).unwrap_err();
        assert!(err.is_out_of_memory(), "{}: {err}", info.name);
        assert!(!err.to_string().contains("memory limit"), "{err}");
    }
}

/// Ticks the simulated clock.
fn tick(p: &DevicePool<SimDevice>, n: u64) {
    p.with_backend(|d| (0..n).for_each(|_| d.tick())).unwrap();
}

#[test]
fn a_block_freed_on_one_stream_waits_before_another_stream_reuses_it() {
    let p = pool_with("bfc-classic", small_device(1 << 30, 5));
    let (s1, s2) = (StreamId(1), StreamId(2));
    let warm = p.alloc(MIB, s2).unwrap(); // a second stream is in use
    let x = p.alloc(MIB, s1).unwrap();
    // Kernels on s1 used x before the free and may still be running.
    p.with_backend(|d| d.use_until_now(x.addr, MIB, s1))
        .unwrap();
    p.free(x.addr, s1).unwrap();
    assert_eq!(
        p.stats().unwrap().pending_frees,
        1,
        "held until s1 passes the free"
    );
    let y = p.alloc(MIB, s2).unwrap();
    assert_ne!(y.addr, x.addr, "s1 may still use x");
    tick(&p, 5);
    let z = p.alloc(MIB, s2).unwrap();
    assert_eq!(p.stats().unwrap().pending_frees, 0);
    assert_eq!(z.addr, x.addr, "once s1 is past the free, x is reused");
    for b in [warm, y, z] {
        p.free(b.addr, s2).unwrap();
    }
}

#[test]
fn one_stream_or_a_stream_aware_policy_frees_at_once() {
    let p = pool_with("bfc-classic", small_device(1 << 30, 5));
    let x = p.alloc(MIB, S0).unwrap();
    p.free(x.addr, S0).unwrap();
    assert_eq!(
        p.alloc(MIB, S0).unwrap().addr,
        x.addr,
        "same stream: in order"
    );
    let q = pool_with("cuda-malloc", small_device(1 << 30, 5));
    let a = q.alloc(MIB, StreamId(1)).unwrap();
    q.alloc(MIB, StreamId(2)).unwrap();
    q.free(a.addr, StreamId(1)).unwrap();
    let s = q.stats().unwrap();
    assert_eq!(s.pending_frees, 0);
    assert_eq!(s.driver_calls.get(DriverCall::EventRecord), 0);
}

#[test]
fn empty_cache_completes_held_frees_and_returns_everything() {
    let p = pool_with("bfc-classic", small_device(1 << 30, 1000));
    let blocks: Vec<_> = (0..8)
        .map(|i| p.alloc((i + 1) * MIB, StreamId(i % 2)).unwrap())
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        p.with_backend(|d| d.use_until_now(b.addr, b.size, StreamId(i as u64 % 2)))
            .unwrap();
        p.free(b.addr, StreamId(i as u64 % 2)).unwrap();
    }
    assert!(p.stats().unwrap().pending_frees > 0);
    p.empty_cache().unwrap();
    let s = p.stats().unwrap();
    assert_eq!((s.pending_frees, s.reserved_bytes), (0, 0));
    assert!(s.driver_calls.get(DriverCall::Synchronize) >= 1);
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: u64, stream: u64 },
    Free(usize),
    Tick(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        5 => (1u64..(4 * MIB), 0u64..3).prop_map(|(size, stream)| Op::Alloc { size, stream }),
        4 => any::<usize>().prop_map(Op::Free),
        2 => (1u64..4).prop_map(Op::Tick),
    ];
    // A single-stream prefix first, so the switch to deferred frees is exercised too.
    (
        prop::collection::vec(
            (1u64..MIB).prop_map(|size| Op::Alloc { size, stream: 0 }),
            0..20,
        ),
        prop::collection::vec(op, 1..400),
    )
        .prop_map(|(mut a, b)| {
            a.extend(b);
            a
        })
}

/// A range freed on a stream, with an event the test recorded at the free (same tick as the
/// pool's own), to ask the oracle about later reuse.
struct Freed {
    addr: u64,
    size: u64,
    stream: StreamId,
    event: EventId,
}

fn check_reuse(
    p: &DevicePool<SimDevice>,
    freed: &[Freed],
    b: Block,
    stream: StreamId,
) -> Result<(), TestCaseError> {
    for f in freed {
        let overlaps = f.addr < b.addr + b.size && b.addr < f.addr + f.size;
        if overlaps && f.stream != stream {
            let ordered = p
                .with_backend(|d| d.is_ordered_after(stream, f.event))
                .unwrap();
            prop_assert!(
                ordered,
                "block {:#x}+{} handed to {:?} while {:?} may still use it",
                b.addr,
                b.size,
                stream,
                f.stream
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// No block reaches another stream before the stream that freed it has passed the free.
    #[test]
    fn cross_stream_reuse_is_always_ordered(ops in ops(), lag in 0u64..6) {
        let p = pool_with("bfc-classic", small_device(1 << 30, lag));
        let mut live: Vec<(Block, StreamId, u64)> = vec![];
        let mut freed: Vec<Freed> = vec![];
        for op in ops {
            match op {
                Op::Alloc { size, stream } => {
                    let s = StreamId(stream);
                    let b = p.alloc(size, s).unwrap();
                    check_reuse(&p, &freed, b, s)?;
                    live.push((b, s, size));
                }
                Op::Free(n) if !live.is_empty() => {
                    let (b, s, _) = live.swap_remove(n % live.len());
                    // The stream's kernels used the block before the free.
                    p.with_backend(|d| d.use_until_now(b.addr, b.size, s)).unwrap();
                    p.free(b.addr, s).unwrap();
                    let event = p.with_backend(|d| d.event_record(s)).unwrap().unwrap();
                    freed.push(Freed { addr: b.addr, size: b.size, stream: s, event });
                }
                Op::Free(_) => {}
                Op::Tick(n) => tick(&p, n),
            }
        }
        let s = p.stats().unwrap();
        prop_assert_eq!(s.requested_bytes, live.iter().map(|l| l.2).sum::<u64>());
        prop_assert_eq!(s.allocated_bytes, live.iter().map(|l| l.0.size).sum::<u64>());
    }
}

#[test]
fn many_threads_allocate_and_free_without_sharing_a_block() {
    const THREADS: u64 = 8;
    const OPS: usize = 3000;
    for info in REGISTRY {
        let p = Arc::new(pool(info.name));
        // Shadow of live blocks: inserted after alloc returns, removed before free is called,
        // so two entries overlapping means the pool handed out memory twice.
        let shadow = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (p, shadow) = (Arc::clone(&p), Arc::clone(&shadow));
                std::thread::spawn(move || {
                    let stream = StreamId(t % 3);
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                    let mut mine: Vec<Block> = vec![];
                    for _ in 0..OPS {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if mine.len() < 32 && (!rng.is_multiple_of(3) || mine.is_empty()) {
                            let size = 1 + rng % (2 * MIB);
                            let b = p.alloc(size, stream).unwrap();
                            let mut sh = shadow.lock().unwrap();
                            if let Some((&a, &s)) = sh.range(..b.addr + b.size).next_back() {
                                assert!(
                                    a + s <= b.addr,
                                    "{:#x}+{} overlaps {a:#x}+{s}",
                                    b.addr,
                                    b.size
                                );
                            }
                            sh.insert(b.addr, b.size);
                            mine.push(b);
                        } else {
                            let b = mine.swap_remove((rng % mine.len() as u64) as usize);
                            shadow.lock().unwrap().remove(&b.addr);
                            p.free(b.addr, stream).unwrap();
                        }
                    }
                    for b in mine {
                        shadow.lock().unwrap().remove(&b.addr);
                        p.free(b.addr, stream).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = p.stats().unwrap();
        assert_eq!(
            (s.requested_bytes, s.allocated_bytes),
            (0, 0),
            "{}",
            info.name
        );
        assert_eq!(s.num_allocs, s.num_frees, "{}", info.name);
        assert!(s.num_allocs >= THREADS * OPS as u64 / 2, "{}", info.name);
        p.empty_cache().unwrap();
        assert_eq!(p.stats().unwrap().reserved_bytes, 0, "{}", info.name);
    }
}

#[test]
fn a_snapshot_lists_segments_and_replays_to_the_live_blocks() {
    let config = PoolConfig {
        policy: PolicySpec::named("bfc-classic"),
        trace_entries: 16,
        ..PoolConfig::default()
    };
    let p = DevicePool::sim(small_device(1 << 30, 0), config).unwrap();
    let mut live = BTreeMap::new();
    for i in 0..100u64 {
        let b = p.alloc(1000 + i * 4096, S0).unwrap();
        live.insert(b.addr, 1000 + i * 4096);
        if i % 3 == 0 {
            let (&addr, _) = live.iter().nth((i / 3) as usize % live.len()).unwrap();
            live.remove(&addr);
            p.free(addr, S0).unwrap();
        }
    }
    let snap = p.snapshot().unwrap();
    assert_eq!(snap.trace.len(), 16, "the ring keeps the last 16 events");
    assert!(!snap.segments.is_empty());
    // Replaying the preamble and the ring gives exactly the live blocks.
    let mut replayed = BTreeMap::new();
    for e in snap.live_before_trace.iter().chain(&snap.trace) {
        match e.action {
            TraceAction::Alloc => assert!(replayed.insert(e.addr, e.size).is_none()),
            TraceAction::FreeCompleted => assert!(replayed.remove(&e.addr).is_some()),
            TraceAction::FreeRequested => {}
        }
    }
    assert_eq!(replayed, live);
    let blocks: usize = snap.segments.iter().map(|s| s.blocks.len()).sum();
    assert_eq!(blocks, live.len(), "segments hold exactly the live blocks");
}
