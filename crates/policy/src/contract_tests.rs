//! One contract, every policy (as RMM's `mr_ref_test` runs one suite over every resource).
//!
//! Random operations run on a [`SimDevice`] beside a shadow map of live blocks. After every
//! step: blocks are aligned, at least as large as asked, really mapped and accessible on the
//! device, never overlapping another live block; the policy's own invariants hold; its
//! `allocated_bytes` matches. Bad frees are reported. Once everything is freed, `empty_cache`
//! gives every byte back to the driver. Out-of-memory is a clean error the policy survives.

use super::{PolicyError, PolicySpec, REGISTRY, build};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, StreamId};
use proptest::prelude::*;
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: u64,
        stream: u64,
    },
    /// Free the n-th live block (modulo the count) on the stream it was allocated on.
    Free(usize),
    BadFree(u64),
    EmptyCache,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        4 => 1u64..8192,
        3 => 8192u64..(2 * MIB),
        2 => (2 * MIB)..(24 * MIB),
        1 => (24 * MIB)..(300 * MIB),
    ];
    prop_oneof![
        50 => (size, 0u64..3).prop_map(|(size, stream)| Op::Alloc { size, stream }),
        45 => any::<usize>().prop_map(Op::Free),
        2 => any::<u64>().prop_map(Op::BadFree),
        3 => Just(Op::EmptyCache),
    ]
}

/// Live blocks: addr -> (size handed out, requested, stream).
type Shadow = BTreeMap<u64, (u64, u64, u64)>;

/// The alignment every block must have: CUDA's guarantee for `cudaMalloc` (256 B), which
/// TensorFlow's BFC keeps by rounding to 256 B. PyTorch's 512 B is a multiple of it.
const MIN_ALIGNMENT: u64 = 256;

fn check_block(
    dev: &SimDevice,
    live: &Shadow,
    addr: u64,
    size: u64,
    requested: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        addr % MIN_ALIGNMENT,
        0,
        "block {:#x} not {}-aligned",
        addr,
        MIN_ALIGNMENT
    );
    prop_assert!(
        size >= requested,
        "block of {} bytes for a request of {}",
        size,
        requested
    );
    prop_assert!(
        dev.is_accessible(addr, requested.max(1)),
        "block {:#x}+{} not accessible",
        addr,
        requested
    );
    if let Some((&a, &(s, _, _))) = live.range(..addr + size.max(1)).next_back() {
        prop_assert!(
            a + s <= addr,
            "block {:#x}+{} overlaps live block {:#x}+{}",
            addr,
            size,
            a,
            s
        );
    }
    Ok(())
}

fn run_contract(spec: &PolicySpec, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut dev = SimDevice::new(SimConfig {
        capacity: 1 << 30,
        ..SimConfig::default()
    });
    let mut policy = build(spec).unwrap();
    let mut live = Shadow::new();
    for (step, op) in ops.iter().enumerate() {
        dev.tick();
        match *op {
            Op::Alloc { size, stream } => match policy.alloc(&mut dev, size, StreamId(stream)) {
                Ok(b) => {
                    check_block(&dev, &live, b.addr, b.size, size)?;
                    live.insert(b.addr, (b.size, size, stream));
                }
                Err(e) => prop_assert!(
                    e.is_out_of_memory(),
                    "step {}: alloc({}) failed: {}",
                    step,
                    size,
                    e
                ),
            },
            Op::Free(n) if !live.is_empty() => {
                let (&addr, &(_, _, stream)) = live.iter().nth(n % live.len()).unwrap();
                live.remove(&addr);
                policy
                    .free(&mut dev, addr, StreamId(stream))
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                prop_assert_eq!(
                    policy.free(&mut dev, addr, StreamId(stream)),
                    Err(PolicyError::UnknownAddress(addr))
                );
            }
            Op::Free(_) => {}
            Op::BadFree(addr) if !live.contains_key(&addr) => {
                prop_assert_eq!(
                    policy.free(&mut dev, addr, StreamId(0)),
                    Err(PolicyError::UnknownAddress(addr))
                );
            }
            Op::BadFree(_) => {}
            Op::EmptyCache => policy
                .empty_cache(&mut dev)
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
        }
        policy
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("{} step {step} ({op:?}): {e}", spec)))?;
        prop_assert_eq!(
            policy.usage().allocated_bytes,
            live.values().map(|v| v.0).sum::<u64>()
        );
        for (&addr, &(size, requested, _)) in &live {
            prop_assert!(
                dev.is_accessible(addr, requested.max(1)),
                "live block {:#x}+{} lost its memory",
                addr,
                size
            );
        }
    }
    for (addr, (_, _, stream)) in std::mem::take(&mut live) {
        policy.free(&mut dev, addr, StreamId(stream)).unwrap();
    }
    policy.empty_cache(&mut dev).unwrap();
    prop_assert_eq!(
        dev.meter().reserved_bytes,
        0,
        "{}: empty_cache with nothing live must give every byte back",
        spec
    );
    Ok(())
}

fn every_policy() -> impl Strategy<Value = PolicySpec> {
    proptest::sample::select(
        REGISTRY
            .iter()
            .map(|p| PolicySpec::named(p.name))
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_policy_keeps_the_contract(spec in every_policy(), ops in prop::collection::vec(op_strategy(), 1..3000)) {
        run_contract(&spec, &ops)?;
    }
}

#[test]
fn out_of_memory_is_a_clean_error_and_the_policy_survives() {
    for p in REGISTRY {
        let mut dev = SimDevice::new(SimConfig {
            capacity: 64 * MIB,
            ..SimConfig::default()
        });
        let mut policy = build(&PolicySpec::named(p.name)).unwrap();
        let small = policy.alloc(&mut dev, MIB, StreamId(0)).unwrap();
        let err = policy.alloc(&mut dev, 100 * MIB, StreamId(0)).unwrap_err();
        assert!(err.is_out_of_memory(), "{}: {err}", p.name);
        policy.check_invariants().unwrap();
        let again = policy.alloc(&mut dev, 4 * MIB, StreamId(0)).unwrap();
        policy.free(&mut dev, small.addr, StreamId(0)).unwrap();
        policy.free(&mut dev, again.addr, StreamId(0)).unwrap();
        policy.check_invariants().unwrap();
    }
}

#[test]
fn recovery_releases_cached_memory_before_failing() {
    for p in REGISTRY {
        let mut dev = SimDevice::new(SimConfig {
            capacity: 64 * MIB,
            ..SimConfig::default()
        });
        let mut policy = build(&PolicySpec::named(p.name)).unwrap();
        // Fill and free: the memory stays cached in pooling policies.
        let blocks: Vec<_> = (0..6)
            .map(|_| policy.alloc(&mut dev, 8 * MIB, StreamId(0)).unwrap())
            .collect();
        for b in &blocks {
            policy.free(&mut dev, b.addr, StreamId(0)).unwrap();
        }
        // A request that fits the device once the cache is released (the pool's recovery:
        // release, then retry once).
        let big = match policy.alloc(&mut dev, 60 * MIB, StreamId(0)) {
            Ok(b) => b,
            Err(e) if e.is_out_of_memory() => {
                policy.empty_cache(&mut dev).unwrap();
                policy.alloc(&mut dev, 60 * MIB, StreamId(0))
            }
            .unwrap_or_else(|e| panic!("{}: {e}", p.name)),
            Err(e) => panic!("{}: {e}", p.name),
        };
        assert!(dev.is_accessible(big.addr, 60 * MIB));
        policy.check_invariants().unwrap();
    }
}
