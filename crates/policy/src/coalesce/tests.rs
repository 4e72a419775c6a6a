//! Tests of what is particular to `coalesce`: moving physical memory, streams that lag behind
//! the host, and the waste it leaves. The contract every policy keeps is in
//! `policy/contract_tests.rs`; these add GPU lag, where mistakes would be memory faults.

use super::*;
use coalesce_backend::DriverCall;
use coalesce_backend::sim::{SimConfig, SimDevice};
use proptest::prelude::*;
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;

fn policy() -> Coalesce {
    Coalesce::new(Config::default())
}

fn sim(capacity: u64, lag: u64) -> SimDevice {
    SimDevice::new(SimConfig {
        capacity,
        stream_lag: lag,
        ..SimConfig::default()
    })
}

/// Frees as a framework does: the stream's kernels using the block were enqueued before the
/// free and may still run, which the simulator then holds against any unmap of that memory.
fn free_as_gpu(
    p: &mut Coalesce,
    dev: &mut SimDevice,
    addr: u64,
    size: u64,
    stream: StreamId,
) -> Result<(), PolicyError> {
    dev.use_until_now(addr, size, stream);
    p.free(dev, addr, stream)
}

fn count(dev: &SimDevice, call: DriverCall) -> u64 {
    dev.meter().calls.get(call)
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: u64,
        stream: u64,
    },
    Free(usize),
    /// Let the GPU run for this many ticks.
    Wait(u64),
    EmptyCache,
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![3 => 1u64..(1 << 20), 3 => (1u64 << 20)..(16 << 20), 1 => (16u64 << 20)..(200 << 20)];
    prop_oneof![
        50 => (size, 0u64..3).prop_map(|(size, stream)| Op::Alloc { size, stream }),
        45 => any::<usize>().prop_map(Op::Free),
        4 => (1u64..40).prop_map(Op::Wait),
        1 => Just(Op::EmptyCache),
    ]
}

/// The default configuration and variants that take the other branch of each rule.
fn config() -> impl Strategy<Value = Config> {
    (
        any::<bool>(),
        any::<bool>(),
        1u32..4,
        prop_oneof![Just(1u32), Just(32)],
    )
        .prop_map(
            |(window_fit, lazy_release, lean_granules, cap_div)| Config {
                window_fit,
                lazy_release,
                lean_handle: lean_granules as u64 * 2 * MIB,
                cap_div,
                ..Config::default()
            },
        )
}

/// Random operations on three streams with the GPU `lag` ticks behind: every block is
/// accessible and disjoint, invariants hold after every step, and no driver call is refused
/// (in particular, no memory a stream may still use is ever unmapped).
fn run_with_lag(config: Config, lag: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut dev = sim(2 << 30, lag);
    let mut p = Coalesce::new(config);
    let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (step, op) in ops.iter().enumerate() {
        dev.tick();
        match *op {
            Op::Alloc { size, stream } => match p.alloc(&mut dev, size, StreamId(stream)) {
                Ok(b) => {
                    prop_assert!(
                        dev.is_accessible(b.addr, size),
                        "step {}: block not accessible",
                        step
                    );
                    if let Some((&a, &(s, _))) = live.range(..b.addr + b.size).next_back() {
                        prop_assert!(a + s <= b.addr, "step {}: overlap", step);
                    }
                    live.insert(b.addr, (b.size, stream));
                }
                Err(e) => prop_assert!(e.is_out_of_memory(), "step {}: {}", step, e),
            },
            Op::Free(n) if !live.is_empty() => {
                let (&addr, &(size, stream)) = live.iter().nth(n % live.len()).unwrap();
                live.remove(&addr);
                free_as_gpu(&mut p, &mut dev, addr, size, StreamId(stream))
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
            }
            Op::Free(_) => {}
            Op::Wait(t) => (0..t).for_each(|_| dev.tick()),
            Op::EmptyCache => p
                .empty_cache(&mut dev)
                .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?,
        }
        p.check_invariants()
            .map_err(|e| TestCaseError::fail(format!("step {step} ({op:?}): {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn streams_lagging_behind_never_see_their_memory_moved(config in config(), lag in prop_oneof![Just(0u64), 1u64..8, 20u64..200], ops in prop::collection::vec(op(), 1..1500)) {
        run_with_lag(config, lag, &ops)?;
    }
}

#[test]
fn idle_memory_moves_to_where_it_is_needed_instead_of_growing() {
    let mut dev = sim(80 << 30, 0);
    let mut p = policy();
    let s = StreamId(0);
    // Past the load phase (a free has happened), handles are sized to the pool, not the burst.
    let warm = p.alloc(&mut dev, 8 * MIB, s).unwrap();
    free_as_gpu(&mut p, &mut dev, warm.addr, warm.size, s).unwrap();
    // Fill 512 MiB with 64 blocks, then free every other one: 256 MiB of holes.
    let blocks: Vec<_> = (0..64)
        .map(|_| p.alloc(&mut dev, 8 * MIB, s).unwrap())
        .collect();
    for b in blocks.iter().step_by(2) {
        free_as_gpu(&mut p, &mut dev, b.addr, b.size, s).unwrap();
    }
    let reserved = dev.meter().reserved_bytes;
    // Blocks too large for any hole: the holes' memory must move under them.
    for _ in 0..10 {
        p.alloc(&mut dev, 20 * MIB, s).unwrap();
        p.check_invariants().unwrap();
    }
    assert!(count(&dev, DriverCall::MemUnmap) > 0, "memory was moved");
    assert!(
        dev.meter().reserved_bytes <= reserved + 8 * MIB,
        "reserved grew from {} to {} MiB although 256 MiB sat idle",
        reserved >> 20,
        dev.meter().reserved_bytes >> 20
    );
}

/// Builds a free chunk whose first half is unmapped and second half mapped, then asks for a
/// block of half its size. Returns where the block went relative to the chunk's halves and
/// the driver calls it took.
fn half_mapped_chunk(config: Config) -> (&'static str, u64) {
    let mut dev = sim(80 << 30, 0);
    let mut p = Coalesce::new(config);
    let s = StreamId(0);
    // Past the load phase, with a pool this small every handle is one granule.
    let warm = p.alloc(&mut dev, 2 * MIB, s).unwrap();
    free_as_gpu(&mut p, &mut dev, warm.addr, warm.size, s).unwrap();
    let a = p.alloc(&mut dev, 8 * MIB, s).unwrap();
    let b = p.alloc(&mut dev, 8 * MIB, s).unwrap();
    let _separator = p.alloc(&mut dev, 8 * MIB, s).unwrap();
    free_as_gpu(&mut p, &mut dev, a.addr, a.size, s).unwrap();
    // Another stream's block takes a's idle granules: a's range is unmapped now.
    p.alloc(&mut dev, 8 * MIB, StreamId(1)).unwrap();
    free_as_gpu(&mut p, &mut dev, b.addr, b.size, s).unwrap();
    let before = dev.meter().calls.memory_calls();
    let block = p.alloc(&mut dev, 8 * MIB, s).unwrap();
    p.check_invariants().unwrap();
    let calls = dev.meter().calls.memory_calls() - before;
    let place = match block.addr {
        x if x == a.addr => "start",
        x if x == b.addr => "mapped half",
        _ => "elsewhere",
    };
    (place, calls)
}

#[test]
fn a_block_lands_on_mapped_memory_inside_a_free_chunk() {
    assert_eq!(
        half_mapped_chunk(Config::default()),
        ("mapped half", 0),
        "no driver call: the chunk's mapped half serves it"
    );
    let (place, calls) = half_mapped_chunk(Config {
        window_fit: false,
        ..Config::default()
    });
    assert_eq!(place, "start");
    assert!(
        calls >= 8,
        "start only: memory moved under the block ({calls} calls)"
    );
}

#[test]
fn idle_memory_is_released_only_to_stay_under_the_high_water_mark() {
    let run = |lazy_release: bool| {
        let mut dev = sim(80 << 30, 0);
        let mut p = Coalesce::new(Config {
            lazy_release,
            ..Config::default()
        });
        let s = StreamId(0);
        let x = p.alloc(&mut dev, 64 * MIB, s).unwrap();
        p.alloc(&mut dev, 64 * MIB, s).unwrap();
        free_as_gpu(&mut p, &mut dev, x.addr, x.size, s).unwrap();
        let peak = dev.meter().peak_reserved_bytes;
        // Small objects need granules of their own; x's large idle handles cannot serve them.
        for _ in 0..12 {
            p.alloc(&mut dev, MIB, s).unwrap();
            assert!(dev.meter().reserved_bytes <= peak, "never above the mark");
            p.check_invariants().unwrap();
        }
        (
            count(&dev, DriverCall::MemRelease),
            count(&dev, DriverCall::MemCreate),
        )
    };
    let (lazy_releases, lazy_creates) = run(true);
    let (eager_releases, eager_creates) = run(false);
    assert_eq!(
        lazy_releases, 1,
        "one idle handle released, to make room under the mark"
    );
    assert!(eager_releases > lazy_releases && eager_creates >= lazy_creates);
}

#[test]
fn memory_a_lagging_stream_may_use_is_not_moved_until_it_has_passed() {
    let mut dev = sim(80 << 30, 1000);
    let mut p = policy();
    let (a, b) = (StreamId(1), StreamId(2));
    let x = p.alloc(&mut dev, 64 * MIB, a).unwrap();
    free_as_gpu(&mut p, &mut dev, x.addr, x.size, a).unwrap();
    let creates = count(&dev, DriverCall::MemCreate);
    // Stream a's kernels may still use x: stream b gets new memory, nothing is unmapped.
    let y = p.alloc(&mut dev, 64 * MIB, b).unwrap();
    assert_eq!(count(&dev, DriverCall::MemUnmap), 0);
    assert!(count(&dev, DriverCall::MemCreate) > creates);
    free_as_gpu(&mut p, &mut dev, y.addr, y.size, b).unwrap();
    // Once the GPU has caught up, idle memory moves instead of growing.
    (0..2000).for_each(|_| dev.tick());
    let creates = count(&dev, DriverCall::MemCreate);
    p.alloc(&mut dev, 128 * MIB, StreamId(3)).unwrap();
    assert!(
        count(&dev, DriverCall::MemUnmap) > 0,
        "idle memory of finished streams moved"
    );
    assert_eq!(
        count(&dev, DriverCall::MemCreate),
        creates,
        "and nothing new was created"
    );
    p.check_invariants().unwrap();
}

#[test]
fn a_free_ordered_on_another_stream_protects_the_memory_until_that_stream_passes() {
    let mut dev = sim(80 << 30, 1000);
    let mut p = policy();
    let x = p.alloc(&mut dev, 64 * MIB, StreamId(1)).unwrap();
    // Freed in stream 2's order (its kernels used the block last).
    free_as_gpu(&mut p, &mut dev, x.addr, x.size, StreamId(2)).unwrap();
    assert_eq!(
        count(&dev, DriverCall::StreamWaitEvent),
        1,
        "stream 1 now waits for stream 2"
    );
    // Any move of x's memory would be refused by the simulator while stream 2 runs.
    p.alloc(&mut dev, 96 * MIB, StreamId(3)).unwrap();
    p.check_invariants().unwrap();
}

#[test]
fn small_requests_never_pin_large_handles() {
    let mut dev = sim(80 << 30, 0);
    let mut p = policy();
    let s = StreamId(0);
    let big = p.alloc(&mut dev, 256 * MIB, s).unwrap();
    let small = p.alloc(&mut dev, 4096, s).unwrap();
    let space_of = |addr: u64| p.spaces.iter().position(|sp| sp.contains(addr)).unwrap();
    assert_ne!(
        space_of(big.addr),
        space_of(small.addr),
        "small objects live in their own space"
    );
    free_as_gpu(&mut p, &mut dev, big.addr, big.size, s).unwrap();
    p.empty_cache(&mut dev).unwrap();
    assert!(
        dev.meter().reserved_bytes <= 2 * MIB,
        "only the small object's granule stays: {}",
        dev.meter().reserved_bytes
    );
}

#[test]
fn out_of_memory_while_backing_leaves_mapped_memory_accessible() {
    // Regression: a run partly mapped before cuMemCreate failed was left without access, and a
    // later block landing there would have faulted.
    let mut dev = sim(96 * MIB, 0);
    let mut p = policy();
    let s = StreamId(0);
    let keep = p.alloc(&mut dev, 40 * MIB, s).unwrap();
    let err = p.alloc(&mut dev, 90 * MIB, s).unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    p.check_invariants().unwrap();
    let again = p.alloc(&mut dev, 30 * MIB, s).unwrap();
    assert!(dev.is_accessible(again.addr, 30 * MIB));
    free_as_gpu(&mut p, &mut dev, keep.addr, keep.size, s).unwrap();
    p.check_invariants().unwrap();
}

#[test]
fn empty_cache_waits_for_streams_then_returns_everything() {
    let mut dev = sim(80 << 30, 500);
    let mut p = policy();
    for stream in 0..3 {
        let b = p
            .alloc(&mut dev, (stream + 1) * 30 * MIB, StreamId(stream))
            .unwrap();
        free_as_gpu(&mut p, &mut dev, b.addr, b.size, StreamId(stream)).unwrap();
    }
    p.empty_cache(&mut dev).unwrap();
    assert_eq!(dev.meter().reserved_bytes, 0);
    assert!(
        count(&dev, DriverCall::Synchronize) >= 1,
        "it synchronized before unmapping"
    );
}

/// Each option's help text names its default (`coalesce policies` prints it): setting every
/// option to that value must give the default configuration, and another value must not.
#[test]
fn documented_defaults_are_the_defaults() {
    for (name, help) in INFO.options {
        let default = help
            .split("default ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .filter(|digits| !digits.is_empty())
            .unwrap_or_else(|| panic!("option {name}: help text names no default: {help}"));
        let spec = PolicySpec::parse(&format!("coalesce:{name}:{default}")).unwrap();
        assert_eq!(
            config_from(&spec).unwrap(),
            Config::default(),
            "option {name}: help says default {default}"
        );
        let default: u32 = default.parse().unwrap();
        // 0/1 switches read any non-zero value as on.
        let other = if help.contains("0/1") {
            1 - default.min(1)
        } else {
            default + 3
        };
        let spec = PolicySpec::parse(&format!("coalesce:{name}:{other}")).unwrap();
        assert_ne!(
            config_from(&spec).unwrap(),
            Config::default(),
            "option {name} set to {other} has no effect on the configuration"
        );
    }
}
