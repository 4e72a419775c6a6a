//! The buddy policy's rules on small hand-made traces.

use crate::{Block, Policy, PolicySpec, build};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DriverCall, StreamId};

const MIB: u64 = 1 << 20;
const S0: StreamId = StreamId(0);

fn setup(capacity: u64) -> (SimDevice, Box<dyn Policy>) {
    let dev = SimDevice::new(SimConfig {
        capacity,
        ..SimConfig::default()
    });
    (dev, build(&PolicySpec::named("buddy")).unwrap())
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

#[test]
fn blocks_are_powers_of_two_aligned_to_their_size() {
    let (mut dev, mut p) = setup(256 * MIB);
    let a = alloc(p.as_mut(), &mut dev, 1);
    let b = alloc(p.as_mut(), &mut dev, 3 * MIB);
    let c = alloc(p.as_mut(), &mut dev, 5000);
    assert_eq!((a.size, b.size, c.size), (512, 4 * MIB, 8192));
    assert_eq!(b.addr % (4 * MIB), 0);
    assert_eq!(
        c.addr,
        a.addr + 8192,
        "lowest free block of the smallest order"
    );
    assert_eq!(b.addr, a.addr + 4 * MIB);
    // One page under the small blocks, two under the 4 MiB one.
    assert_eq!(dev.meter().reserved_bytes, 6 * MIB);
}

#[test]
fn a_freed_block_merges_with_its_buddy() {
    let (mut dev, mut p) = setup(256 * MIB);
    let a = alloc(p.as_mut(), &mut dev, MIB);
    let b = alloc(p.as_mut(), &mut dev, MIB);
    assert_eq!(b.addr, a.addr + MIB, "the buddy of a");
    free(p.as_mut(), &mut dev, a);
    let big = alloc(p.as_mut(), &mut dev, 2 * MIB);
    assert_ne!(big.addr, a.addr, "a's buddy is still in use: no merge");
    free(p.as_mut(), &mut dev, b);
    let merged = alloc(p.as_mut(), &mut dev, 2 * MIB);
    assert_eq!(
        merged.addr, a.addr,
        "a and b merged back into one 2 MiB block"
    );
}

#[test]
fn pages_stay_mapped_until_empty_cache() {
    let (mut dev, mut p) = setup(256 * MIB);
    let a = alloc(p.as_mut(), &mut dev, 6 * MIB);
    assert_eq!(
        dev.meter().reserved_bytes,
        8 * MIB,
        "6 MiB take an 8 MiB block"
    );
    free(p.as_mut(), &mut dev, a);
    assert_eq!(dev.meter().reserved_bytes, 8 * MIB);
    let again = alloc(p.as_mut(), &mut dev, 8 * MIB);
    assert_eq!(
        dev.meter().calls.get(DriverCall::MemCreate),
        4,
        "reused its pages"
    );
    free(p.as_mut(), &mut dev, again);
    p.empty_cache(&mut dev).unwrap();
    assert_eq!(dev.meter().reserved_bytes, 0);
    assert_eq!(dev.meter().calls.get(DriverCall::AddressFree), 1);
}

#[test]
fn requests_beyond_the_device_are_out_of_memory() {
    let (mut dev, mut p) = setup(48 * MIB);
    // 48 MiB round up to a 64 MiB range; a 40 MiB request needs a 64 MiB block of memory.
    let e = p.alloc(&mut dev, 40 * MIB, S0).unwrap_err();
    assert!(e.is_out_of_memory(), "{e}");
    assert_eq!(
        dev.meter().reserved_bytes,
        0,
        "the partial mapping was taken back"
    );
    p.check_invariants().unwrap();
    alloc(p.as_mut(), &mut dev, 32 * MIB);
}
