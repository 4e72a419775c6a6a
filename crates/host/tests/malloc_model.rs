//! The malloc API against a reference model: a map of live blocks with their requested size,
//! alignment and fill byte. After every operation, every live block must still hold its fill
//! (no overlap, no corruption), be aligned, report a usable size of at least its request and
//! pass `check_live`; freed large and huge blocks, interior and foreign pointers must fail it.

use coalesce_host::malloc::{self, PointerError};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
enum Op {
    Malloc(usize),
    Aligned(usize, u32),
    Calloc(usize, usize),
    Realloc(usize, usize),
    Free(usize),
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        40 => 0usize..1100,
        15 => 1000usize..40_000,
        5 => 30_000usize..3_000_000,
        1 => Just(malloc::LARGE_MAX + 4096),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => size().prop_map(Op::Malloc),
        2 => (size(), 0u32..14).prop_map(|(s, a)| Op::Aligned(s, a)),
        1 => (0usize..64, 0usize..300).prop_map(|(n, s)| Op::Calloc(n, s)),
        2 => (any::<usize>(), size()).prop_map(|(i, s)| Op::Realloc(i, s)),
        4 => any::<usize>().prop_map(Op::Free),
    ]
}

struct Live {
    size: usize,
    align: usize,
    fill: u8,
}

fn fill(p: *mut u8, size: usize, byte: u8) {
    // SAFETY: p is a live block of at least `size` bytes.
    unsafe { p.write_bytes(byte, size) };
}

/// Whether the block still holds its fill: every byte of blocks up to 64 KiB, the first and
/// last 16 KiB of larger ones (the model checks all live blocks after every step).
fn holds(p: usize, l: &Live) -> bool {
    // SAFETY: p is a live block of at least l.size bytes.
    let s = unsafe { std::slice::from_raw_parts(p as *const u8, l.size) };
    let edge = if l.size <= 1 << 16 { l.size } else { 1 << 14 };
    s[..edge]
        .iter()
        .chain(&s[l.size - edge..])
        .all(|&b| b == l.fill)
}

fn check(live: &BTreeMap<usize, Live>) -> Result<(), TestCaseError> {
    let mut prev_end = 0;
    for (&p, l) in live {
        prop_assert!(p >= prev_end, "blocks overlap at {p:#x}");
        prop_assert_eq!(p % l.align, 0);
        prop_assert!(holds(p, l), "block {:#x} ({} bytes) corrupted", p, l.size);
        let usable = malloc::check_live(p as *const u8);
        prop_assert!(matches!(usable, Ok(u) if u >= l.size), "{:?}", usable);
        prop_assert!(
            l.size == 0 || malloc::check_live((p + 1) as *const u8).is_err() || l.size < 2
        );
        prev_end = p + l.size;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn malloc_matches_model(ops in prop::collection::vec(op(), 1..200)) {
        let mut live: BTreeMap<usize, Live> = BTreeMap::new();
        let mut next_fill = 1u8;
        let mut fill_byte = || { next_fill = next_fill.wrapping_add(37) | 1; next_fill };
        for op in ops {
            match op {
                Op::Malloc(size) => {
                    let p = malloc::malloc(size);
                    prop_assert!(!p.is_null());
                    let f = fill_byte();
                    fill(p, size, f);
                    live.insert(p as usize, Live { size, align: if size > 8 { 16 } else { 8 }, fill: f });
                }
                Op::Aligned(size, a) => {
                    let align = 1usize << a;
                    let p = malloc::malloc_aligned(size, align);
                    prop_assert!(!p.is_null());
                    let f = fill_byte();
                    fill(p, size, f);
                    live.insert(p as usize, Live { size, align, fill: f });
                }
                Op::Calloc(n, s) => {
                    let p = malloc::calloc(n, s);
                    prop_assert!(!p.is_null());
                    let l = Live { size: n * s, align: 8, fill: 0 };
                    prop_assert!(holds(p as usize, &l), "calloc memory not zeroed");
                    live.insert(p as usize, l);
                }
                Op::Realloc(i, size) if !live.is_empty() => {
                    let p = *live.keys().nth(i % live.len()).unwrap();
                    let old = live.remove(&p).unwrap();
                    // SAFETY: p is live; after realloc only the returned pointer is used.
                    let q = unsafe { malloc::realloc(p as *mut u8, size) };
                    prop_assert!(!q.is_null());
                    let kept = Live { size: old.size.min(size), align: 8, fill: old.fill };
                    prop_assert!(holds(q as usize, &kept), "realloc lost the contents");
                    fill(q, size, old.fill);
                    live.insert(q as usize, Live { size, align: 8, fill: old.fill });
                }
                Op::Free(i) if !live.is_empty() => {
                    let p = *live.keys().nth(i % live.len()).unwrap();
                    live.remove(&p);
                    // Huge blocks are unmapped at once; freed large blocks may stay in the
                    // thread's large-block cache (still allocated in the page heap).
                    let huge = malloc::check_live(p as *const u8).unwrap() > malloc::LARGE_MAX;
                    // SAFETY: p is live and forgotten by the model.
                    unsafe { malloc::free(p as *mut u8) };
                    if huge {
                        prop_assert_eq!(malloc::check_live(p as *const u8), Err(PointerError::NotOurs(p)), "freed huge block still live");
                    }
                }
                _ => {}
            }
            check(&live)?;
        }
        for (p, _) in live {
            // SAFETY: every remaining block is live.
            unsafe { malloc::free(p as *mut u8) };
        }
    }
}

#[test]
fn foreign_and_interior_pointers_are_rejected_and_ignored() {
    let on_stack = 5u64;
    let foreign = &on_stack as *const u64 as *const u8;
    assert_eq!(
        malloc::check_live(foreign),
        Err(PointerError::NotOurs(foreign as usize))
    );
    // SAFETY: free ignores pointers it does not own.
    unsafe { malloc::free(foreign as *mut u8) };
    let p = malloc::malloc(100);
    assert_eq!(
        malloc::check_live(p.wrapping_add(16)),
        Err(PointerError::Interior(p as usize + 16))
    );
    // Medium objects (up to 1 MiB) are objects of a span, like small ones.
    let medium = malloc::malloc(1 << 20);
    assert_eq!(
        malloc::check_live(medium.wrapping_add(4096)),
        Err(PointerError::Interior(medium as usize + 4096))
    );
    // Inside a large block only its first granule is mapped.
    let big = malloc::malloc(2 << 20);
    assert_eq!(
        malloc::check_live(big.wrapping_add(1 << 20)),
        Err(PointerError::NotOurs(big as usize + (1 << 20)))
    );
    // SAFETY: all three are live.
    unsafe {
        malloc::free(p);
        malloc::free(medium);
        malloc::free(big);
    }
}

#[test]
fn alignment_up_to_a_gigabyte_and_overflow() {
    for a in [
        1usize,
        8,
        16,
        64,
        4096,
        8192,
        1 << 16,
        1 << 21,
        1 << 27,
        1 << 30,
    ] {
        for size in [0usize, 1, 100, 5000, 70_000] {
            let p = malloc::malloc_aligned(size, a);
            assert!(
                !p.is_null() && (p as usize).is_multiple_of(a),
                "size {size} align {a}"
            );
            // SAFETY: live.
            unsafe { malloc::free(p) };
        }
    }
    assert!(
        malloc::calloc(usize::MAX / 2, 3).is_null(),
        "calloc overflow"
    );
    assert!(
        malloc::malloc(usize::MAX - 100).is_null(),
        "impossible size"
    );
}
