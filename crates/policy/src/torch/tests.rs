//! PyTorch's rules, one small hand-made trace each.

use crate::{Block, Policy, PolicySpec, build};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DriverCall, StreamId};

const MIB: u64 = 1 << 20;
const S0: StreamId = StreamId(0);
const S1: StreamId = StreamId(1);

fn sim(capacity: u64) -> SimDevice {
    SimDevice::new(SimConfig {
        capacity,
        ..SimConfig::default()
    })
}

fn policy(spec: &str) -> Box<dyn Policy> {
    build(&PolicySpec::parse(spec).unwrap()).unwrap()
}

/// Allocates on stream 0 and checks the invariants.
fn alloc(p: &mut dyn Policy, dev: &mut dyn Backend, size: u64) -> Block {
    let b = p.alloc(dev, size, S0).unwrap();
    p.check_invariants().unwrap();
    b
}

fn free(p: &mut dyn Policy, dev: &mut dyn Backend, b: Block) {
    p.free(dev, b.addr, S0).unwrap();
    p.check_invariants().unwrap();
}

fn calls(dev: &SimDevice, call: DriverCall) -> u64 {
    dev.meter().calls.get(call)
}

#[test]
fn a_first_request_gets_the_segment_get_allocation_size_names() {
    for (request, segment) in [
        (1, 2 * MIB),
        (MIB, 2 * MIB),
        (MIB + 1, 20 * MIB),
        (10 * MIB - 512, 20 * MIB),
        (10 * MIB, 10 * MIB),
        (10 * MIB + 1, 12 * MIB),
        // gpt2_train's first segment_alloc row.
        (154_389_504, 155_189_248),
    ] {
        let (mut dev, mut p) = (sim(80 << 30), policy("torch-native"));
        alloc(p.as_mut(), &mut dev, request);
        assert_eq!(dev.meter().reserved_bytes, segment, "request {request}");
        assert_eq!(calls(&dev, DriverCall::MemAlloc), 1);
    }
}

#[test]
fn small_requests_pack_one_2mib_segment_split_at_512_bytes() {
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-native"));
    let a = alloc(p.as_mut(), &mut dev, 1000);
    let b = alloc(p.as_mut(), &mut dev, 3000);
    let c = alloc(p.as_mut(), &mut dev, MIB);
    assert_eq!((a.size, b.size, c.size), (1024, 3072, MIB));
    assert_eq!((b.addr - a.addr, c.addr - b.addr), (1024, 3072));
    assert_eq!(calls(&dev, DriverCall::MemAlloc), 1);
    assert_eq!(p.segments().len(), 1);
}

#[test]
fn large_blocks_split_only_when_more_than_1mib_remains() {
    // 19 MiB in a 20 MiB segment leaves exactly 1 MiB: not split, the block takes all 20 MiB.
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-native"));
    let whole = alloc(p.as_mut(), &mut dev, 19 * MIB);
    assert_eq!(whole.size, 20 * MIB);
    alloc(p.as_mut(), &mut dev, MIB + 512);
    assert_eq!(
        calls(&dev, DriverCall::MemAlloc),
        2,
        "nothing was left to reuse"
    );
    // 512 bytes less leaves 1 MiB + 512: split, and the rest serves the next request.
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-native"));
    let front = alloc(p.as_mut(), &mut dev, 19 * MIB - 512);
    assert_eq!(front.size, 19 * MIB - 512);
    let rest = alloc(p.as_mut(), &mut dev, MIB + 512);
    assert_eq!(rest.addr, front.addr + front.size);
    assert_eq!(calls(&dev, DriverCall::MemAlloc), 1);
}

#[test]
fn best_fit_takes_the_smallest_block_then_the_lowest_address() {
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-native"));
    let blocks: Vec<Block> = [30, 24, 24, 26]
        .iter()
        .map(|&m| alloc(p.as_mut(), &mut dev, m * MIB))
        .collect();
    for &b in &blocks {
        free(p.as_mut(), &mut dev, b);
    }
    let got = alloc(p.as_mut(), &mut dev, 23 * MIB);
    assert_eq!(got.addr, blocks[1].addr.min(blocks[2].addr));
    assert_eq!(got.size, 24 * MIB, "a 1 MiB remainder is not split off");
}

#[test]
fn blocks_merge_within_a_segment_never_across_segments() {
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-native"));
    // Two 12 MiB segments, adjacent in the simulator's address space.
    let a = alloc(p.as_mut(), &mut dev, 12 * MIB);
    let b = alloc(p.as_mut(), &mut dev, 12 * MIB);
    assert_eq!(b.addr, a.addr + a.size);
    free(p.as_mut(), &mut dev, a);
    free(p.as_mut(), &mut dev, b);
    alloc(p.as_mut(), &mut dev, 24 * MIB);
    assert_eq!(calls(&dev, DriverCall::MemAlloc), 3);
    // Inside one 20 MiB segment, freed neighbours merge back into one block.
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-native"));
    let x = alloc(p.as_mut(), &mut dev, 3 * MIB);
    let y = alloc(p.as_mut(), &mut dev, 3 * MIB);
    let _z = alloc(p.as_mut(), &mut dev, 3 * MIB);
    free(p.as_mut(), &mut dev, y);
    free(p.as_mut(), &mut dev, x);
    let joined = alloc(p.as_mut(), &mut dev, 6 * MIB);
    assert_eq!(joined.addr, x.addr);
    assert_eq!(calls(&dev, DriverCall::MemAlloc), 1);
}

#[test]
fn oversize_blocks_serve_only_oversize_requests_within_the_rounding_limit() {
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-native:max_split_size_mb:20"));
    let big = alloc(p.as_mut(), &mut dev, 40 * MIB);
    free(p.as_mut(), &mut dev, big);
    let small = alloc(p.as_mut(), &mut dev, 8 * MIB);
    assert_ne!(
        small.addr, big.addr,
        "an oversize block never serves a small request"
    );
    let reused = alloc(p.as_mut(), &mut dev, 30 * MIB);
    assert_eq!(
        (reused.addr, reused.size),
        (big.addr, 40 * MIB),
        "reused whole, not split"
    );
    free(p.as_mut(), &mut dev, reused);
    let far = alloc(p.as_mut(), &mut dev, 20 * MIB);
    assert_ne!(
        far.addr, big.addr,
        "40 MiB is not within 20 MiB of a 20 MiB request"
    );
}

#[test]
fn out_of_memory_frees_unsplit_cached_segments_then_retries() {
    let (mut dev, mut p) = (sim(64 * MIB), policy("torch-native"));
    let a = alloc(p.as_mut(), &mut dev, 30 * MIB);
    let b = alloc(p.as_mut(), &mut dev, 30 * MIB);
    free(p.as_mut(), &mut dev, a);
    free(p.as_mut(), &mut dev, b);
    let big = alloc(p.as_mut(), &mut dev, 50 * MIB);
    assert!(dev.is_accessible(big.addr, 50 * MIB));
    assert_eq!(calls(&dev, DriverCall::MemFree), 2);
    assert_eq!(dev.meter().reserved_bytes, 50 * MIB);
    // A segment split by a live block stays; the request fails cleanly.
    free(p.as_mut(), &mut dev, big);
    let live = alloc(p.as_mut(), &mut dev, 4 * MIB);
    assert_eq!(live.addr, big.addr);
    assert!(
        p.alloc(&mut dev, 50 * MIB, S0)
            .unwrap_err()
            .is_out_of_memory()
    );
    assert!(dev.is_accessible(live.addr, 4 * MIB));
    assert_eq!(calls(&dev, DriverCall::MemFree), 2);
    p.check_invariants().unwrap();
}

#[test]
fn with_max_split_size_an_oversize_segment_is_freed_first() {
    let (mut dev, mut p) = (sim(60 * MIB), policy("torch-native:max_split_size_mb:20"));
    let big = alloc(p.as_mut(), &mut dev, 40 * MIB);
    let small = alloc(p.as_mut(), &mut dev, 4096);
    free(p.as_mut(), &mut dev, big);
    free(p.as_mut(), &mut dev, small);
    // 19 MiB may not take the 40 MiB block, and its 20 MiB segment does not fit beside it.
    alloc(p.as_mut(), &mut dev, 19 * MIB);
    assert_eq!(
        calls(&dev, DriverCall::MemFree),
        1,
        "only the oversize segment goes"
    );
    assert_eq!(dev.meter().reserved_bytes, 22 * MIB);
}

#[test]
fn garbage_collection_frees_old_segments_before_growing_past_the_threshold() {
    let run = |spec: &str| {
        let (mut dev, mut p) = (sim(400 * MIB), policy(spec));
        let a = alloc(p.as_mut(), &mut dev, 60 * MIB);
        let b = alloc(p.as_mut(), &mut dev, 60 * MIB);
        free(p.as_mut(), &mut dev, a);
        free(p.as_mut(), &mut dev, b);
        alloc(p.as_mut(), &mut dev, 70 * MIB);
        dev.meter().reserved_bytes
    };
    // Allowed: 200 MiB; the threshold 0.5 of it is 100 MiB, and 120 MiB are held.
    let gc = "torch-native:per_process_memory_fraction:0.5,garbage_collection_threshold:0.5";
    assert_eq!(run(gc), 70 * MIB);
    assert_eq!(
        run("torch-native:per_process_memory_fraction:0.5"),
        190 * MIB
    );
    // PyTorch only collects when a memory fraction is set.
    assert_eq!(
        run("torch-native:garbage_collection_threshold:0.5"),
        190 * MIB
    );
}

#[test]
fn the_memory_fraction_caps_reserved_memory() {
    let (mut dev, mut p) = (
        sim(100 * MIB),
        policy("torch-native:per_process_memory_fraction:0.5"),
    );
    let e = p.alloc(&mut dev, 60 * MIB, S0).unwrap_err();
    assert!(e.is_out_of_memory(), "{e}");
    assert_eq!(calls(&dev, DriverCall::MemAlloc), 0);
    alloc(p.as_mut(), &mut dev, 40 * MIB);
}

#[test]
fn blocks_stay_on_their_stream_and_cross_stream_frees_wait_for_the_stream() {
    let mut dev = SimDevice::new(SimConfig {
        stream_lag: 5,
        ..SimConfig::default()
    });
    let mut p = policy("torch-native");
    let a = p.alloc(&mut dev, 4096, S0).unwrap();
    p.free(&mut dev, a.addr, S0).unwrap();
    let other = p.alloc(&mut dev, 4096, S1).unwrap();
    assert_ne!(other.addr, a.addr, "no reuse across streams");
    assert_eq!(calls(&dev, DriverCall::MemAlloc), 2);
    // Freed on stream 1 while allocated on stream 0: reusable on stream 0 once stream 1 passed.
    let b = p.alloc(&mut dev, 4096, S0).unwrap();
    assert_eq!(b.addr, a.addr);
    // Kernels on stream 1 used the block before the free and may still run.
    dev.use_until_now(b.addr, 4096, S1);
    p.free(&mut dev, b.addr, S1).unwrap();
    p.check_invariants().unwrap();
    let early = p.alloc(&mut dev, 4096, S0).unwrap();
    assert_ne!(early.addr, b.addr, "stream 1 may still use the block");
    for _ in 0..6 {
        dev.tick();
    }
    let late = p.alloc(&mut dev, 4096, S0).unwrap();
    assert_eq!(late.addr, b.addr);
    p.check_invariants().unwrap();
}

#[test]
fn expandable_segments_grow_one_range_in_pages() {
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-expandable"));
    let blocks: Vec<Block> = (0..3)
        .map(|_| alloc(p.as_mut(), &mut dev, 8 * MIB))
        .collect();
    assert_eq!(blocks[1].addr, blocks[0].addr + 8 * MIB);
    assert_eq!(blocks[2].addr, blocks[0].addr + 16 * MIB, "grew in place");
    assert_eq!(dev.meter().reserved_bytes, 40 * MIB, "two 20 MiB pages");
    assert_eq!(calls(&dev, DriverCall::AddressReserve), 1);
    assert_eq!(calls(&dev, DriverCall::MemCreate), 2);
    let small = alloc(p.as_mut(), &mut dev, 1000);
    assert_eq!(
        dev.meter().reserved_bytes,
        42 * MIB,
        "the small pool maps 2 MiB pages"
    );
    for b in blocks.into_iter().chain([small]) {
        free(p.as_mut(), &mut dev, b);
    }
    assert_eq!(
        dev.meter().reserved_bytes,
        42 * MIB,
        "nothing is unmapped before empty_cache"
    );
    p.empty_cache(&mut dev).unwrap();
    p.check_invariants().unwrap();
    assert_eq!(dev.meter().reserved_bytes, 0);
    assert_eq!(calls(&dev, DriverCall::MemUnmap), 3);
    assert_eq!(calls(&dev, DriverCall::AddressFree), 2);
}

#[test]
fn expandable_best_fit_prefers_a_hole_to_the_growable_tail() {
    let (mut dev, mut p) = (sim(1 << 30), policy("torch-expandable"));
    let _x = alloc(p.as_mut(), &mut dev, 4 * MIB);
    let y = alloc(p.as_mut(), &mut dev, 8 * MIB);
    let _z = alloc(p.as_mut(), &mut dev, 4 * MIB);
    free(p.as_mut(), &mut dev, y);
    // The 4 MiB tail is the smallest fit, but it could grow into unmapped space.
    let got = alloc(p.as_mut(), &mut dev, 3 * MIB);
    assert_eq!(
        (got.addr, got.size),
        (y.addr, 3 * MIB),
        "split at 512 B granularity"
    );
}

#[test]
fn expandable_out_of_memory_unmaps_free_pages_and_retries() {
    let (mut dev, mut p) = (sim(60 * MIB), policy("torch-expandable"));
    let a = alloc(p.as_mut(), &mut dev, 30 * MIB);
    free(p.as_mut(), &mut dev, a);
    // 40 MiB are mapped; 50 MiB more cannot be, until the free pages go.
    // No release from outside: the policy's own OOM path unmaps the free pages.
    let big = p.alloc(&mut dev, 50 * MIB, S0).unwrap();
    assert!(dev.is_accessible(big.addr, 50 * MIB));
    assert_eq!(dev.meter().reserved_bytes, 60 * MIB);
    p.check_invariants().unwrap();
}

/// Random allocations and frees over three streams with lagging work: whenever a block reuses
/// memory freed on another stream, the simulator's oracle confirms that stream passed the free.
#[test]
fn reuse_is_stream_ordered() {
    use std::collections::BTreeMap;
    for spec in ["torch-native", "torch-expandable"] {
        let mut dev = SimDevice::new(SimConfig {
            stream_lag: 4,
            capacity: 1 << 30,
            ..SimConfig::default()
        });
        let mut p = policy(spec);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut live: Vec<Block> = Vec::new();
        // Freed ranges not reused yet: addr -> (size, freeing stream, event at the free).
        let mut freed = BTreeMap::new();
        let mut cross_stream_reuses = 0;
        for _ in 0..4000 {
            dev.tick();
            if live.is_empty() || next() % 2 == 0 {
                let stream = StreamId(next() % 3);
                let size = [700, 5000, 300_000, 3 * MIB, 12 * MIB][(next() % 5) as usize];
                let b = p.alloc(&mut dev, size, stream).unwrap();
                let overlapping: Vec<u64> = freed
                    .range(..b.addr + b.size)
                    .rev()
                    .take_while(|(a, (s, _, _))| **a + *s > b.addr)
                    .map(|(a, _)| *a)
                    .collect();
                for a in overlapping {
                    let (_, by, event) = freed.remove(&a).unwrap();
                    cross_stream_reuses += usize::from(by != stream);
                    assert!(
                        by == stream || dev.is_ordered_after(stream, event),
                        "{spec}: {:#x} reused on {stream:?} before {by:?} passed its free",
                        b.addr
                    );
                }
                live.push(b);
            } else {
                let b = live.swap_remove((next() % live.len() as u64) as usize);
                let by = StreamId(next() % 3);
                let event = dev.event_record(by).unwrap();
                p.free(&mut dev, b.addr, by).unwrap();
                freed.insert(b.addr, (b.size, by, event));
            }
            p.check_invariants().unwrap();
        }
        assert!(
            cross_stream_reuses > 0,
            "{spec}: the trace never tested the rule"
        );
        eprintln!("{spec}: {cross_stream_reuses} reuses of memory freed on another stream");
    }
}
