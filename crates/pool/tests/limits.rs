//! Limits mean limits, and bad calls are errors that change nothing, for every policy.
//!
//! - A cap set below what the pool holds releases cached memory at once; from then on
//!   reserved memory exceeds the cap only while nothing cached could be released (what live
//!   blocks need: a classic segment stays while one live block pins it), and an allocation
//!   that would take live bytes past the cap fails whatever is cached.
//! - Sizes of 0 and 2^63 are refused with a clear error and counted.

use coalesce_backend::StreamId;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_policy::{PolicySpec, REGISTRY};
use coalesce_pool::{DevicePool, MemoryLimit, PoolConfig, PoolError, PoolStats};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const S0: StreamId = StreamId(0);

fn pool(policy: &str, capacity: u64) -> DevicePool<SimDevice> {
    let sim = SimConfig {
        capacity,
        ..SimConfig::default()
    };
    let config = PoolConfig {
        policy: PolicySpec::named(policy),
        ..PoolConfig::default()
    };
    DevicePool::sim(sim, config).unwrap()
}

/// Holds the cap invariant: reserved above the cap only if releasing the cache frees nothing.
fn check_cap(p: &DevicePool<SimDevice>, cap: Option<u64>, what: &str) {
    let s = p.stats().unwrap();
    let Some(cap) = cap else { return };
    if s.reserved_bytes > cap {
        p.empty_cache().unwrap();
        let after = p.stats().unwrap().reserved_bytes;
        assert_eq!(
            after,
            s.reserved_bytes,
            "{what}: {} bytes reserved over a cap of {cap}, yet {} were releasable",
            s.reserved_bytes,
            s.reserved_bytes - after
        );
    }
}

#[test]
fn a_cap_below_the_cache_releases_it_and_a_big_request_fails_whatever_was_cached() {
    for info in REGISTRY {
        let p = pool(info.name, 4 << 30);
        // Fill a cache of 512 MiB and free it all.
        let blocks: Vec<_> = (0..8).map(|_| p.alloc(64 * MIB, S0).unwrap()).collect();
        let small = p.alloc(MIB, S0).unwrap();
        for b in &blocks {
            p.free(b.addr, S0).unwrap();
        }
        p.set_memory_limit(Some(MemoryLimit::Bytes(64 * MIB)))
            .unwrap();
        // Everything releasable went at once. Policies that map granules get under the cap;
        // classic segments stay while a live block pins them (what live blocks need).
        let cap = Some(64 * MIB);
        check_cap(&p, cap, info.name);
        let maps = matches!(info.name, "coalesce" | "torch-expandable");
        let reserved = p.stats().unwrap().reserved_bytes;
        assert!(
            !maps || reserved <= 64 * MIB,
            "{}: {reserved} bytes still reserved under a 64 MiB cap with 1 MiB live",
            info.name,
        );
        let err = p.alloc(1 << 30, S0).unwrap_err();
        let PoolError::OutOfMemory(report) = &err else {
            panic!("{}: expected out-of-memory, got {err}", info.name)
        };
        assert!(report.limit_reached, "{}: {err}", info.name);
        assert!(
            err.to_string()
                .contains("the memory limit of 67108864 bytes")
        );
        // The pool keeps serving under the cap.
        let b = p.alloc(32 * MIB, S0).unwrap();
        check_cap(&p, cap, info.name);
        p.free(b.addr, S0).unwrap();
        p.free(small.addr, S0).unwrap();
        p.set_memory_limit(None).unwrap();
        p.alloc(1 << 30, S0).unwrap();
    }
}

#[test]
fn sizes_of_zero_and_two_to_the_63_are_refused_counted_and_change_nothing() {
    for info in REGISTRY {
        let p = pool(info.name, 1 << 30);
        let live = p.alloc(MIB, S0).unwrap();
        let before = p.stats().unwrap();
        for size in [0, 1 << 63, u64::MAX] {
            let err = p.alloc(size, S0).unwrap_err();
            assert!(
                matches!(err, PoolError::InvalidSize { requested, .. } if requested == size),
                "{}: {size}: {err}",
                info.name
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("cannot allocate {size} bytes")),
                "{text}"
            );
        }
        let after = p.stats().unwrap();
        assert_eq!(after.num_invalid_requests, 3);
        assert_eq!(
            PoolStats {
                num_invalid_requests: 0,
                ..after
            },
            before,
            "{}",
            info.name
        );
        p.free(live.addr, S0).unwrap();
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u64),
    Free(usize),
    Cap(Option<u64>),
    EmptyCache,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u64..(48 * MIB)).prop_map(Op::Alloc),
        4 => any::<usize>().prop_map(Op::Free),
        1 => proptest::option::of((1u64..256).prop_map(|m| m * MIB)).prop_map(Op::Cap),
        1 => Just(Op::EmptyCache),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random work under caps that come and go, every policy: after every op the cap
    /// invariant holds, every successful allocation kept live bytes under the cap, and the
    /// stats stay consistent.
    #[test]
    fn caps_hold_under_random_work(ops in proptest::collection::vec(op(), 1..160)) {
        for info in REGISTRY {
            let p = pool(info.name, 1 << 30);
            let mut cap = None;
            let mut live = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                let what = format!("{} op {i} {op:?}", info.name);
                match *op {
                    Op::Alloc(size) => match p.alloc(size, S0) {
                        Ok(b) => {
                            live.push(b.addr);
                            let s = p.stats().unwrap();
                            if let Some(cap) = cap {
                                prop_assert!(s.requested_bytes <= cap, "{what}: live past the cap");
                            }
                        }
                        Err(e) => prop_assert!(e.is_out_of_memory(), "{what}: {e}"),
                    },
                    Op::Free(k) if !live.is_empty() => {
                        let addr = live.swap_remove(k % live.len());
                        p.free(addr, S0).unwrap();
                    }
                    Op::Free(_) => {}
                    Op::Cap(c) => {
                        cap = c;
                        p.set_memory_limit(c.map(MemoryLimit::Bytes)).unwrap();
                    }
                    Op::EmptyCache => p.empty_cache().unwrap(),
                }
                p.with_core(|c| c.check_invariants()).unwrap().map_err(TestCaseError::fail)?;
                check_cap(&p, cap, &what);
            }
        }
    }
}
