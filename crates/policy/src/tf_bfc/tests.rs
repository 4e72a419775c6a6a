//! TensorFlow's BFC rules, one small hand-made trace each.

use super::chunks::bin_num_for_size;
use crate::{Block, Policy, PolicySpec, build};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DriverCall, StreamId};

const MIB: u64 = 1 << 20;
const S0: StreamId = StreamId(0);

fn setup(capacity: u64, spec: &str) -> (SimDevice, Box<dyn Policy>) {
    let dev = SimDevice::new(SimConfig {
        capacity,
        ..SimConfig::default()
    });
    (dev, build(&PolicySpec::parse(spec).unwrap()).unwrap())
}

fn alloc(p: &mut dyn Policy, dev: &mut dyn Backend, size: u64) -> Block {
    let b = p.alloc(dev, size, S0).unwrap();
    p.check_invariants().unwrap();
    b
}

fn free(p: &mut dyn Policy, dev: &mut dyn Backend, b: Block) {
    p.free(dev, b.addr, S0).unwrap();
    p.check_invariants().unwrap();
}

fn region_sizes(p: &dyn Policy) -> Vec<u64> {
    p.segments().iter().map(|s| s.size / MIB).collect()
}

#[test]
fn bins_are_powers_of_two_from_256_bytes() {
    let bins: Vec<usize> = [256, 511, 512, MIB, 256 * MIB - 256, 256 * MIB, 4 << 30]
        .iter()
        .map(|&s| bin_num_for_size(s))
        .collect();
    assert_eq!(bins, [0, 0, 1, 12, 19, 20, 20]);
}

#[test]
fn requests_round_to_256_bytes() {
    let (mut dev, mut p) = setup(1 << 30, "tf-bfc");
    let a = alloc(p.as_mut(), &mut dev, 1);
    let b = alloc(p.as_mut(), &mut dev, 300);
    assert_eq!((a.size, b.size, b.addr - a.addr), (256, 512, 256));
}

#[test]
fn a_chunk_is_split_only_at_twice_the_request() {
    let (mut dev, mut p) = setup(1 << 30, "tf-bfc");
    let a = alloc(p.as_mut(), &mut dev, MIB);
    let _b = alloc(p.as_mut(), &mut dev, MIB);
    free(p.as_mut(), &mut dev, a);
    let whole = alloc(p.as_mut(), &mut dev, 600 << 10);
    assert_eq!(
        (whole.addr, whole.size),
        (a.addr, MIB),
        "1 MiB < 2 x 600 KiB: not split"
    );
    free(p.as_mut(), &mut dev, whole);
    let half = alloc(p.as_mut(), &mut dev, 512 << 10);
    assert_eq!(half.size, 512 << 10);
}

#[test]
fn waste_of_128_mib_forces_a_split() {
    let (mut dev, mut p) = setup(4 << 30, "tf-bfc");
    let x = alloc(p.as_mut(), &mut dev, 300 * MIB);
    let _y = alloc(p.as_mut(), &mut dev, 212 * MIB);
    free(p.as_mut(), &mut dev, x);
    let padded = alloc(p.as_mut(), &mut dev, 200 * MIB);
    assert_eq!(padded.size, 300 * MIB, "100 MiB of waste is accepted");
    free(p.as_mut(), &mut dev, padded);
    let split = alloc(p.as_mut(), &mut dev, 160 * MIB);
    assert_eq!(split.size, 160 * MIB, "140 MiB of waste is not");
    // fragmentation_fraction replaces the 128 MiB: 5% of 4 GiB is about 205 MiB.
    let (mut dev, mut p) = setup(4 << 30, "tf-bfc:fragmentation_fraction:0.05");
    let x = alloc(p.as_mut(), &mut dev, 300 * MIB);
    let _y = alloc(p.as_mut(), &mut dev, 212 * MIB);
    free(p.as_mut(), &mut dev, x);
    assert_eq!(alloc(p.as_mut(), &mut dev, 160 * MIB).size, 300 * MIB);
}

#[test]
fn regions_double_from_2mib_or_grow_to_fit() {
    let (mut dev, mut p) = setup(80 << 30, "tf-bfc");
    alloc(p.as_mut(), &mut dev, 3 * MIB / 2);
    alloc(p.as_mut(), &mut dev, 3 * MIB / 2);
    alloc(p.as_mut(), &mut dev, 3 * MIB);
    assert_eq!(region_sizes(p.as_ref()), [2, 4, 8]);
    // 100 MiB doubles the next size (16 MiB) up to 128 MiB; the next region stays that size.
    alloc(p.as_mut(), &mut dev, 100 * MIB);
    alloc(p.as_mut(), &mut dev, 100 * MIB);
    assert_eq!(region_sizes(p.as_ref()), [2, 4, 8, 128, 128]);
    alloc(p.as_mut(), &mut dev, 100 * MIB);
    assert_eq!(region_sizes(p.as_ref())[5], 256);
}

#[test]
fn free_chunks_coalesce_within_a_region() {
    let (mut dev, mut p) = setup(1 << 30, "tf-bfc");
    let a = alloc(p.as_mut(), &mut dev, 256 << 10);
    let b = alloc(p.as_mut(), &mut dev, 256 << 10);
    let _c = alloc(p.as_mut(), &mut dev, 256 << 10);
    free(p.as_mut(), &mut dev, b);
    free(p.as_mut(), &mut dev, a);
    let joined = alloc(p.as_mut(), &mut dev, 512 << 10);
    assert_eq!(joined.addr, a.addr);
}

#[test]
fn idle_regions_are_collected_only_when_memory_runs_out() {
    let run = |spec: &str| {
        let (mut dev, mut p) = setup(64 * MIB, spec);
        let a = alloc(p.as_mut(), &mut dev, 10 * MIB);
        free(p.as_mut(), &mut dev, a);
        let b = alloc(p.as_mut(), &mut dev, 30 * MIB);
        free(p.as_mut(), &mut dev, b);
        assert_eq!(region_sizes(p.as_ref()), [16, 32], "cached, not returned");
        let r = p.alloc(&mut dev, 50 * MIB, S0);
        p.check_invariants().unwrap();
        (r, dev.meter().calls.get(DriverCall::MemFree))
    };
    // The new region is 64 MiB, less than twice 50 MiB: handed out whole.
    let (r, frees) = run("tf-bfc");
    assert_eq!((r.unwrap().size, frees), (64 * MIB, 2));
    let (r, frees) = run("tf-bfc:garbage_collection:false");
    assert!(r.unwrap_err().is_out_of_memory());
    assert_eq!(frees, 0);
}

#[test]
fn without_growth_one_region_holds_all_memory() {
    let (mut dev, mut p) = setup(64 * MIB, "tf-bfc:allow_growth:false");
    alloc(p.as_mut(), &mut dev, 1);
    assert_eq!(dev.meter().reserved_bytes, 64 * MIB);
}
