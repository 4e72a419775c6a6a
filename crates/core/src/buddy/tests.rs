//! Tests of the buddy core: hand-made cases for split, merge and errors, and a property test that
//! runs the bitmap buddy beside a reference model made of sorted free lists and compares every
//! placement, every error and the counters, checking invariants after every step.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn checked<S: BuddyStorage>(b: &Buddy<S>) {
    if let Err(e) = b.check_invariants() {
        panic!("{e}");
    }
}

#[test]
fn splits_down_and_merges_back() {
    let mut b = Buddy::new(0x1000_0000, 1 << 20, 12, 20).unwrap();
    assert_eq!(b.stats().largest_free, 1 << 20);
    let (a, size) = b.alloc(5000).unwrap();
    assert_eq!(
        (a, size),
        (0x1000_0000, 8192),
        "rounded up to the next power of two"
    );
    checked(&b);
    // Splitting 1 MiB down to 8 KiB leaves one free block at each order 13..=19.
    assert_eq!(b.stats().free_blocks, 7);
    assert_eq!(b.stats().largest_free, 1 << 19);
    let (c, _) = b.alloc(4096).unwrap();
    assert_eq!(
        c,
        0x1000_0000 + 8192,
        "lowest free block of the smallest fitting order"
    );
    assert_eq!(b.free(a), Ok(8192));
    assert_eq!(b.free(c), Ok(4096));
    checked(&b);
    let s = b.stats();
    assert_eq!(
        (s.free_blocks, s.largest_free, s.in_use_bytes),
        (1, 1 << 20, 0)
    );
    assert_eq!(s.peak_in_use_bytes, 8192 + 4096);
}

#[test]
fn double_free_and_foreign_addresses_are_errors() {
    let mut b = Buddy::new(1 << 30, 1 << 16, 12, 16).unwrap();
    let (a, _) = b.alloc(8192).unwrap();
    assert_eq!(
        b.free(a + 4096),
        Err(BuddyError::NotAllocated(a + 4096)),
        "inside a block"
    );
    assert_eq!(
        b.free(5),
        Err(BuddyError::NotAllocated(5)),
        "below the range"
    );
    assert_eq!(
        b.free((1 << 30) + (1 << 16)),
        Err(BuddyError::NotAllocated((1 << 30) + (1 << 16)))
    );
    b.free(a).unwrap();
    assert_eq!(b.free(a), Err(BuddyError::NotAllocated(a)), "double free");
    checked(&b);
}

#[test]
fn ranges_that_are_not_powers_of_two_are_tiled_and_never_merge_past_the_end() {
    // 13 units of 4 KiB, plus a 100-byte tail that can never be handed out.
    let mut b = Buddy::new(0, 13 * 4096 + 100, 12, 15).unwrap();
    checked(&b);
    assert_eq!(b.size(), 13 * 4096);
    assert_eq!(
        b.free_blocks().collect::<Vec<_>>(),
        vec![(12 * 4096, 12), (8 * 4096, 14), (0, 15)]
    );
    let mut got = vec![];
    while let Some((a, s)) = b.alloc(4096) {
        got.push(a);
        assert_eq!(s, 4096);
    }
    assert_eq!(got.len(), 13);
    for a in got {
        b.free(a).unwrap();
        checked(&b);
    }
    assert_eq!(b.stats().free_blocks, 3);
}

#[test]
fn exact_allocations_give_their_tail_back() {
    let mut b = Buddy::new(0, 1 << 20, 12, 20).unwrap();
    let (a, size) = b.alloc_exact(5 * 4096 - 100).unwrap();
    assert_eq!(
        (a, size),
        (0, 5 * 4096),
        "rounded to whole units, not to 32 KiB"
    );
    checked(&b);
    assert_eq!(b.stats().in_use_bytes, 5 * 4096);
    // The tail (units 5, 6-7) is free and reusable.
    assert_eq!(b.alloc(4096), Some((5 * 4096, 4096)));
    assert_eq!(b.alloc(8192), Some((6 * 4096, 8192)));
    assert_eq!(
        b.free_exact(a, 3 * 4096),
        Err(BuddyError::NotAllocated(a)),
        "wrong size"
    );
    assert_eq!(
        b.free(a + 4 * 4096),
        Ok(4096),
        "parts are ordinary blocks underneath"
    );
    assert_eq!(
        b.free_exact(a, 5 * 4096),
        Err(BuddyError::NotAllocated(a)),
        "a part is gone"
    );
    b.free(a).unwrap();
    checked(&b);
}

#[test]
fn too_large_and_bad_configs() {
    let mut b = Buddy::new(0, 1 << 20, 12, 18).unwrap();
    assert_eq!(
        b.alloc((1 << 18) + 1),
        None,
        "larger than the largest order"
    );
    assert!(b.alloc(1 << 18).is_some());
    assert!(matches!(
        Buddy::new(0, 1 << 20, 13, 12),
        Err(BuddyError::BadConfig(_))
    ));
    assert!(matches!(
        Buddy::new(0, 100, 12, 13),
        Err(BuddyError::BadConfig(_))
    ));
    assert!(matches!(
        Buddy::new(u64::MAX - 10, 1 << 20, 12, 13),
        Err(BuddyError::BadConfig(_))
    ));
    let need = Buddy::<Vec<u64>>::storage_words(1 << 20, 12, 20).unwrap();
    let short = Buddy::with_storage(0, 1 << 20, 12, 20, vec![0u64; need - 1]);
    assert!(matches!(short, Err(BuddyError::StorageTooSmall { .. })));
}

#[test]
fn is_free_sees_blocks_inside_larger_free_blocks() {
    let mut b = Buddy::new(0, 1 << 16, 12, 16).unwrap();
    assert!(b.is_free(4096, 12), "inside the single free 64 KiB block");
    let (a, _) = b.alloc(4096).unwrap();
    assert!(!b.is_free(a, 12));
    assert!(!b.is_free(0, 13), "half of it is in use");
    assert!(b.is_free(8192, 13));
    b.free(a).unwrap();
    assert!(b.is_free(0, 16));
}

// ---------------------------------------------------------------------- reference model

/// The textbook buddy: one sorted set of free offsets per order, live blocks in a map.
struct Model {
    size: u64,
    min: u32,
    max: u32,
    free: BTreeMap<u32, BTreeSet<u64>>,
    live: BTreeMap<u64, u32>,
}

impl Model {
    fn new(size: u64, min: u32, max: u32) -> Model {
        let mut m = Model {
            size: size >> min << min,
            min,
            max,
            free: BTreeMap::new(),
            live: BTreeMap::new(),
        };
        let mut off = 0;
        while off < m.size {
            let k = (min..=max)
                .rev()
                .find(|&k| off % (1 << k) == 0 && off + (1 << k) <= m.size)
                .unwrap();
            m.free.entry(k).or_default().insert(off);
            off += 1 << k;
        }
        m
    }

    fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        let k = (self.min..=self.max).find(|&k| 1u64 << k >= size.max(1))?;
        let j = (k..=self.max).find(|j| self.free.get(j).is_some_and(|s| !s.is_empty()))?;
        let off = self.free.get_mut(&j).unwrap().pop_first().unwrap();
        for i in (k..j).rev() {
            self.free.entry(i).or_default().insert(off + (1 << i));
        }
        self.live.insert(off, k);
        Some((off, 1 << k))
    }

    /// Reference for `alloc_exact`: the power-of-two block, then the head re-recorded as one
    /// live block per set bit of the rounded size, the tail freed unit by aligned unit.
    fn alloc_exact(&mut self, size: u64) -> Option<(u64, u64)> {
        let unit = 1u64 << self.min;
        let keep = size.max(1).div_ceil(unit) * unit;
        let (off, block) = self.alloc(size)?;
        self.live.remove(&off);
        let mut at = off;
        for b in (0..64).rev().filter(|b| keep >> b & 1 == 1) {
            self.live.insert(at, b);
            at += 1 << b;
        }
        while at < off + block {
            let j = at.trailing_zeros();
            self.free.entry(j).or_default().insert(at);
            at += 1 << j;
        }
        Some((off, keep))
    }

    fn free(&mut self, off: u64) -> Option<u64> {
        let k = self.live.remove(&off)?;
        let (mut off, mut j) = (off, k);
        while j < self.max {
            let buddy = off ^ (1 << j);
            if !self.free.entry(j).or_default().remove(&buddy) {
                break;
            }
            off = off.min(buddy);
            j += 1;
        }
        self.free.entry(j).or_default().insert(off);
        Some(1 << k)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u64),
    AllocExact(u64),
    /// Free the i-th live block (mod count).
    Free(usize),
    /// Free an address that may or may not be a live block start.
    FreeRaw(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..70_000).prop_map(Op::Alloc),
        2 => (0u64..70_000).prop_map(Op::AllocExact),
        4 => any::<usize>().prop_map(Op::Free),
        1 => (0u64..300_000).prop_map(Op::FreeRaw),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn matches_the_reference_model(
        units in 1u64..200,
        tail in 0u64..4096,
        min in 9u32..13,
        span in 0u32..6,
        base_units in 0u64..4,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let max = min + span;
        let size = (units << min) + tail % (1 << min);
        let base = base_units << max;
        let mut b = Buddy::new(base, size, min, max).unwrap();
        let mut m = Model::new(size, min, max);
        let mut live: Vec<u64> = vec![];
        for op in ops {
            match op {
                Op::Alloc(n) => {
                    let got = b.alloc(n);
                    let want = m.alloc(n).map(|(o, s)| (base + o, s));
                    prop_assert_eq!(got, want);
                    if let Some((a, s)) = got {
                        prop_assert!(s >= n && (a - base) % s == 0);
                        live.push(a);
                    }
                }
                Op::AllocExact(n) => {
                    let got = b.alloc_exact(n);
                    let want = m.alloc_exact(n).map(|(o, s)| (base + o, s));
                    prop_assert_eq!(got, want);
                    if let Some((a, s)) = got {
                        prop_assert!(s >= n && s % (1 << min) == 0 && s - n.max(1) < 1 << min);
                        // Freed as its parts (the same API a caller would misuse).
                        live.extend(m.live.range(a - base..a - base + s).map(|(&o, _)| base + o));
                    }
                }
                Op::Free(i) if !live.is_empty() => {
                    let a = live.swap_remove(i % live.len());
                    prop_assert_eq!(b.free(a).ok(), m.free(a - base));
                }
                Op::Free(_) => {}
                Op::FreeRaw(x) => {
                    let a = base + x;
                    let want = m.free(x).ok_or(BuddyError::NotAllocated(a));
                    prop_assert_eq!(b.free(a), want);
                    live.retain(|&l| l != a);
                }
            }
            checked(&b);
            let s = b.stats();
            prop_assert_eq!(s.in_use_bytes, m.live.values().map(|&k| 1u64 << k).sum::<u64>());
            prop_assert_eq!(s.used_blocks, m.live.len() as u64);
            prop_assert_eq!(s.free_blocks, m.free.values().map(|f| f.len() as u64).sum::<u64>());
            let largest = m.free.iter().filter(|(_, f)| !f.is_empty()).map(|(k, _)| 1u64 << k).max().unwrap_or(0);
            prop_assert_eq!(s.largest_free, largest);
        }
    }
}
