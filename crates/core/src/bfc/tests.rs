//! Tests of the BFC core: hand-made cases for each rule, and property tests that run the
//! allocator beside a naive reference model and compare every placement.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const MIB: u64 = 1 << 20;

fn bfc() -> Bfc {
    Bfc::new(BfcConfig::default())
}

fn checked(b: &Bfc) {
    if let Err(e) = b.check_invariants() {
        panic!("{e}");
    }
}

#[test]
fn rounds_to_alignment_and_splits_exactly() {
    let mut b = bfc();
    b.add_region(1 << 40, 4 * MIB).unwrap();
    let a = b.alloc(1).unwrap();
    assert_eq!((a.addr, a.size), (1 << 40, 512));
    let c = b.alloc(513).unwrap();
    assert_eq!((c.addr, c.size), ((1 << 40) + 512, 1024));
    let z = b.alloc(0).unwrap();
    assert_eq!(
        z.size, 512,
        "zero bytes take one unit so the address is unique"
    );
    checked(&b);
    let s = b.stats();
    assert_eq!(s.in_use_bytes, 2048);
    assert_eq!(s.requested_bytes, 514);
    assert_eq!(s.in_use_chunks, 3);
    assert_eq!(s.free_chunks, 1);
    assert_eq!(s.largest_free, 4 * MIB - 2048);
}

#[test]
fn best_fit_prefers_smallest_then_lowest_address() {
    let mut b = bfc();
    b.add_region(0, 64 * MIB).unwrap();
    // Carve holes of 3 MiB, 1 MiB, 2 MiB, 1 MiB separated by in-use guards.
    let mut holes = vec![];
    for size in [3 * MIB, MIB, 2 * MIB, MIB] {
        holes.push(b.alloc(size).unwrap());
        b.alloc(512).unwrap();
    }
    for h in &holes {
        b.free(h.addr).unwrap();
    }
    checked(&b);
    assert_eq!(
        b.alloc(MIB).unwrap().addr,
        holes[1].addr,
        "smallest fit, lowest address"
    );
    assert_eq!(
        b.alloc(MIB).unwrap().addr,
        holes[3].addr,
        "next equal-size hole"
    );
    assert_eq!(
        b.alloc(MIB + 512).unwrap().addr,
        holes[2].addr,
        "2 MiB hole beats 3 MiB"
    );
    checked(&b);
}

#[test]
fn fits_lists_candidates_in_best_fit_order() {
    let mut b = bfc();
    b.add_region(0, 64 * MIB).unwrap();
    let mut holes = vec![];
    for size in [3 * MIB, MIB, 2 * MIB, MIB] {
        holes.push(b.alloc(size).unwrap());
        b.alloc(512).unwrap();
    }
    for h in &holes {
        b.free(h.addr).unwrap();
    }
    let order: Vec<u64> = b.fits(MIB).map(|c| b.chunk(c).addr).collect();
    let tail = b.fits(MIB).last().map(|c| b.chunk(c).size).unwrap();
    assert_eq!(
        order[..4],
        [holes[1].addr, holes[3].addr, holes[2].addr, holes[0].addr]
    );
    assert_eq!(order.len(), 5, "the four holes, then the free tail");
    assert!(tail > 50 * MIB);
    assert_eq!(b.fits(MIB).next(), b.best_fit(MIB));
    let second = b
        .best_fit_where(MIB, 10, |addr, _| addr != holes[1].addr)
        .map(|c| b.chunk(c).addr);
    assert_eq!(second, Some(holes[3].addr), "best fit among the accepted");
    assert_eq!(
        b.best_fit_where(MIB, 2, |addr, _| addr == holes[0].addr),
        None,
        "beyond the limit"
    );
    assert_eq!(
        b.best_fit_where(MIB, 4, |addr, _| addr == holes[0].addr)
            .map(|c| b.chunk(c).addr),
        Some(holes[0].addr)
    );
    assert_eq!(b.fits(100 * MIB).count(), 0);
}

#[test]
fn free_coalesces_with_both_neighbours() {
    let mut b = bfc();
    let r = b.add_region(1 << 30, 3 * MIB).unwrap();
    let x = b.alloc(MIB).unwrap();
    let y = b.alloc(MIB).unwrap();
    let z = b.alloc(MIB).unwrap();
    b.free(x.addr).unwrap();
    b.free(z.addr).unwrap();
    assert_eq!(b.stats().free_chunks, 2);
    let f = b.free(y.addr).unwrap();
    assert_eq!(f.coalesced, (1 << 30, 3 * MIB));
    assert_eq!(b.stats().free_chunks, 1);
    assert_eq!(b.chunks_of(r).count(), 1);
    checked(&b);
}

#[test]
fn stamps_survive_splits_and_merge_to_the_maximum() {
    let mut b = bfc();
    b.add_region(0, 8 * MIB).unwrap();
    let x = b.alloc(MIB).unwrap();
    let y = b.alloc(MIB).unwrap();
    let z = b.alloc(MIB).unwrap();
    b.free_stamped(x.addr, 7).unwrap();
    b.free_stamped(z.addr, 3).unwrap();
    let stamps = |b: &Bfc| {
        b.free_chunks(1)
            .map(|c| (c.addr, c.stamp))
            .collect::<Vec<_>>()
    };
    // z merged with the untouched tail (stamp 0): max is 3.
    assert_eq!(stamps(&b), vec![(0, 7), (2 * MIB, 3)]);
    let f = b.free_stamped(y.addr, 5).unwrap();
    assert_eq!(f.coalesced, (0, 8 * MIB));
    assert_eq!(stamps(&b), vec![(0, 7)], "merged: the largest stamp");
    let a = b.alloc(MIB).unwrap();
    assert_eq!(b.allocated(a.addr).unwrap().stamp, 0);
    assert_eq!(
        stamps(&b),
        vec![(MIB, 7)],
        "the remainder of a split keeps the stamp"
    );
    checked(&b);
}

#[test]
fn chunks_of_different_regions_never_merge() {
    let mut b = bfc();
    b.add_region(0, MIB).unwrap();
    b.add_region(MIB, MIB).unwrap(); // adjacent address range, separate region
    assert_eq!(b.stats().free_chunks, 2);
    assert_eq!(b.largest_free(), MIB);
    assert!(
        b.alloc(MIB + 512).is_none(),
        "no allocation may span two regions"
    );
    checked(&b);
}

#[test]
fn double_free_and_foreign_pointers_are_errors() {
    let mut b = bfc();
    b.add_region(0, MIB).unwrap();
    let a = b.alloc(1000).unwrap();
    assert_eq!(
        b.free(a.addr + 512),
        Err(BfcError::NotAllocated(a.addr + 512))
    );
    b.free(a.addr).unwrap();
    assert_eq!(b.free(a.addr), Err(BfcError::NotAllocated(a.addr)));
    checked(&b);
}

#[test]
fn tensorflow_split_rule() {
    let rule = SplitRule::TensorFlow {
        max_waste: 128 * MIB,
    };
    assert!(
        rule.should_split(2 * MIB, MIB),
        "chunk >= 2x request splits"
    );
    assert!(
        !rule.should_split(2 * MIB - 512, MIB),
        "below 2x keeps the slack"
    );
    let mut b = Bfc::new(BfcConfig {
        alignment: 256,
        split: rule,
    });
    b.add_region(0, 3 * MIB).unwrap();
    let a = b.alloc(2 * MIB).unwrap();
    assert_eq!(a.size, 3 * MIB, "1 MiB of slack is kept, not split off");
    assert_eq!(b.allocated(a.addr).unwrap().requested, 2 * MIB);
    checked(&b);
}

#[test]
fn tensorflow_split_rule_caps_waste() {
    let rule = SplitRule::TensorFlow {
        max_waste: 128 * MIB,
    };
    assert!(
        !rule.should_split(1000 * MIB, 900 * MIB),
        "100 MiB of waste is accepted"
    );
    assert!(
        rule.should_split(1100 * MIB, 900 * MIB),
        "200 MiB of waste is split off"
    );
}

#[test]
fn min_remainder_rule_keeps_small_slack() {
    let mut b = Bfc::new(BfcConfig {
        alignment: 512,
        split: SplitRule::MinRemainder(MIB + 512),
    });
    b.add_region(0, 2 * MIB).unwrap();
    let a = b.alloc(MIB).unwrap();
    assert_eq!(
        a.size,
        2 * MIB,
        "a 1 MiB remainder is not worth keeping under this rule"
    );
    b.free(a.addr).unwrap();
    let a = b.alloc(MIB - 512).unwrap();
    assert_eq!(a.size, MIB - 512, "a remainder of 1 MiB + 512 B is kept");
    checked(&b);
}

#[test]
fn regions_grow_shrink_and_are_removed_only_when_free() {
    let mut b = bfc();
    let r = b.add_region(1 << 40, 2 * MIB).unwrap();
    let a = b.alloc(2 * MIB).unwrap();
    b.grow_region(r, 2 * MIB).unwrap();
    checked(&b);
    let c = b.alloc(2 * MIB).unwrap();
    assert_eq!(
        c.addr,
        (1 << 40) + 2 * MIB,
        "growth appends after an in-use tail"
    );
    b.free(c.addr).unwrap();
    b.grow_region(r, MIB).unwrap();
    assert_eq!(b.stats().free_chunks, 1, "growth merges with a free tail");
    b.shrink_region(r, MIB).unwrap();
    checked(&b);
    assert!(matches!(
        b.remove_region(r),
        Err(BfcError::RegionInUse(_, _))
    ));
    b.free(a.addr).unwrap();
    assert_eq!(b.remove_region(r), Ok((1 << 40, 4 * MIB)));
    assert_eq!(
        b.stats(),
        BfcStats {
            peak_in_use_bytes: 4 * MIB,
            num_allocs: 2,
            ..BfcStats::default()
        }
    );
    checked(&b);
}

#[test]
fn bad_regions_are_rejected() {
    let mut b = bfc();
    b.add_region(0, MIB).unwrap();
    assert!(b.add_region(MIB / 2, MIB).is_err(), "overlap");
    assert!(b.add_region(MIB + 1, MIB).is_err(), "misaligned");
    assert!(b.add_region(2 * MIB, 0).is_err(), "empty");
    assert!(b.add_region(u64::MAX - 511, 1024).is_err(), "overflow");
    assert!(b.grow_region(RegionId(7), MIB).is_err(), "no such region");
    checked(&b);
}

#[test]
fn removed_region_slots_are_reused() {
    let mut b = bfc();
    let r0 = b.add_region(0, MIB).unwrap();
    b.add_region(MIB, MIB).unwrap();
    b.remove_region(r0).unwrap();
    let r2 = b.add_region(8 * MIB, MIB).unwrap();
    assert_eq!(r2, r0);
    assert_eq!(b.regions().count(), 2);
    checked(&b);
}

// ---------------------------------------------------------------------------------------------
// Reference model: live allocations in a BTreeMap; free space derived by scanning the gaps.

/// The obvious, slow implementation of the same contract.
struct Model {
    align: u64,
    split: SplitRule,
    /// base -> size
    regions: BTreeMap<u64, u64>,
    /// addr -> (size, requested)
    live: BTreeMap<u64, (u64, u64)>,
}

impl Model {
    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = vec![];
        for (&base, &size) in &self.regions {
            let mut at = base;
            for (&a, &(s, _)) in self.live.range(base..base + size) {
                if a > at {
                    gaps.push((at, a - at));
                }
                at = a + s;
            }
            if at < base + size {
                gaps.push((at, base + size - at));
            }
        }
        gaps
    }

    fn alloc(&mut self, req: u64) -> Option<(u64, u64)> {
        let rounded = req.max(1).div_ceil(self.align) * self.align;
        let (addr, gap) = self
            .gaps()
            .into_iter()
            .filter(|g| g.1 >= rounded)
            .min_by_key(|&(a, s)| (s, a))?;
        let size = if self.split.should_split(gap, rounded) {
            rounded
        } else {
            gap
        };
        self.live.insert(addr, (size, req));
        Some((addr, size))
    }

    /// `req` bytes placed `frac`/65535 of the way into the `pick`-th fitting gap (in best-fit
    /// order), aligned down; the tail beyond the block is always split off.
    fn alloc_at(&mut self, req: u64, pick: usize, frac: u16) -> Option<(usize, u64, u64, u64)> {
        let rounded = req.max(1).div_ceil(self.align) * self.align;
        let mut fits: Vec<(u64, u64)> =
            self.gaps().into_iter().filter(|g| g.1 >= rounded).collect();
        fits.sort_by_key(|&(a, s)| (s, a));
        let k = pick % fits.len().max(1);
        let &(addr, gap) = fits.get(k)?;
        let offset = (gap - rounded) * frac as u64 / u16::MAX as u64 / self.align * self.align;
        self.live.insert(addr + offset, (rounded, req));
        Some((k, offset, addr + offset, rounded))
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u64),
    /// Allocate inside the n-th fitting free chunk, at a fraction of its slack
    /// ([`Bfc::alloc_chunk_at`]).
    AllocAt(u64, usize, u16),
    /// Free the n-th live allocation (modulo the count).
    Free(usize),
    /// Free an address that is not allocated.
    BadFree(u64),
    AddRegion(u64),
    /// Remove the n-th region if it is entirely free.
    RemoveRegion(usize),
    GrowRegion(usize, u64),
    ShrinkRegion(usize, u64),
}

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..4096,
        3 => 4096u64..(256 << 10),
        2 => (256u64 << 10)..(4 * MIB),
        1 => (4 * MIB)..(24 * MIB),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        32 => size_strategy().prop_map(Op::Alloc),
        8 => (size_strategy(), any::<usize>(), any::<u16>()).prop_map(|(s, n, f)| Op::AllocAt(s, n, f)),
        40 => any::<usize>().prop_map(Op::Free),
        1 => any::<u64>().prop_map(Op::BadFree),
        2 => (1u64..64).prop_map(|m| Op::AddRegion(m * MIB)),
        2 => any::<usize>().prop_map(Op::RemoveRegion),
        1 => (any::<usize>(), 1u64..8).prop_map(|(r, m)| Op::GrowRegion(r, m * MIB)),
        1 => (any::<usize>(), 1u64..8).prop_map(|(r, m)| Op::ShrinkRegion(r, m * 512)),
    ]
}

fn split_strategy() -> impl Strategy<Value = SplitRule> {
    prop_oneof![
        Just(SplitRule::MinRemainder(512)),
        Just(SplitRule::MinRemainder(MIB + 512)),
        Just(SplitRule::TensorFlow { max_waste: 8 * MIB }),
        Just(SplitRule::Never),
    ]
}

/// Runs `ops` on a `Bfc` and on the model; every placement, error and counter must agree,
/// and the invariants must hold after every step.
fn run_against_model(split: SplitRule, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut b = Bfc::new(BfcConfig {
        alignment: 512,
        split,
    });
    let mut m = Model {
        align: 512,
        split,
        regions: BTreeMap::new(),
        live: BTreeMap::new(),
    };
    let mut region_ids: BTreeMap<u64, RegionId> = BTreeMap::new();
    let mut next_base = 1u64 << 40;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Alloc(size) => {
                let got = b.alloc(size).map(|a| (a.addr, a.size));
                prop_assert_eq!(got, m.alloc(size), "step {}: alloc({})", step, size);
            }
            Op::AllocAt(size, pick, frac) => {
                if let Some((k, offset, addr, rounded)) = m.alloc_at(size, pick, frac) {
                    let chunk = b
                        .fits(rounded)
                        .nth(k)
                        .expect("the model's gap is a free chunk");
                    let a = b.alloc_chunk_at(chunk, offset, size);
                    prop_assert_eq!((a.addr, a.size), (addr, rounded), "step {}: alloc_at", step);
                }
            }
            Op::Free(n) if !m.live.is_empty() => {
                let (&addr, &(size, req)) = m.live.iter().nth(n % m.live.len()).unwrap();
                m.live.remove(&addr);
                let f = b
                    .free(addr)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                prop_assert_eq!((f.size, f.requested), (size, req));
            }
            Op::Free(_) => {}
            Op::BadFree(addr) => {
                if !m.live.contains_key(&addr) {
                    prop_assert_eq!(b.free(addr), Err(BfcError::NotAllocated(addr)));
                }
            }
            Op::AddRegion(size) => {
                // Regions far apart, so growth never collides with a neighbour.
                let id = b.add_region(next_base, size).unwrap();
                m.regions.insert(next_base, size);
                region_ids.insert(next_base, id);
                next_base += 1 << 32;
            }
            Op::RemoveRegion(n) if !m.regions.is_empty() => {
                let (&base, &size) = m.regions.iter().nth(n % m.regions.len()).unwrap();
                let busy = m.live.range(base..base + size).next().is_some();
                let got = b.remove_region(region_ids[&base]);
                prop_assert_eq!(got.is_ok(), !busy, "step {}: remove_region", step);
                if !busy {
                    m.regions.remove(&base);
                    region_ids.remove(&base);
                }
            }
            Op::GrowRegion(n, extra) if !m.regions.is_empty() => {
                let (&base, size) = m.regions.iter_mut().nth(n % region_ids.len()).unwrap();
                b.grow_region(region_ids[&base], extra).unwrap();
                *size += extra;
            }
            Op::ShrinkRegion(n, bytes) if !m.regions.is_empty() => {
                let (&base, &size) = m.regions.iter().nth(n % region_ids.len()).unwrap();
                let tail_free = m
                    .gaps()
                    .iter()
                    .find(|g| g.0 + g.1 == base + size)
                    .map_or(0, |g| g.1);
                let got = b.shrink_region(region_ids[&base], bytes);
                prop_assert_eq!(got.is_ok(), tail_free > bytes, "step {}: shrink", step);
                if tail_free > bytes {
                    m.regions.insert(base, size - bytes);
                }
            }
            Op::RemoveRegion(_) | Op::GrowRegion(..) | Op::ShrinkRegion(..) => {}
        }
        b.check_invariants()
            .map_err(|e| TestCaseError::fail(format!("step {step} ({op:?}): {e}")))?;
        let s = b.stats();
        let gaps = m.gaps();
        prop_assert_eq!(s.in_use_bytes, m.live.values().map(|v| v.0).sum::<u64>());
        prop_assert_eq!(s.requested_bytes, m.live.values().map(|v| v.1).sum::<u64>());
        prop_assert_eq!(s.free_chunks, gaps.len(), "free chunks are maximal gaps");
        prop_assert_eq!(s.largest_free, gaps.iter().map(|g| g.1).max().unwrap_or(0));
        prop_assert_eq!(s.region_bytes, m.regions.values().sum::<u64>());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    /// 10^5 random operations per case against the reference model.
    #[test]
    fn matches_reference_model_long(split in split_strategy(), ops in prop::collection::vec(op_strategy(), 100_000)) {
        run_against_model(split, &ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Many short sequences: more starting states, and failures shrink to a few ops.
    #[test]
    fn matches_reference_model_short(split in split_strategy(), ops in prop::collection::vec(op_strategy(), 1..200)) {
        run_against_model(split, &ops)?;
    }
}
