//! Remote frees at every size-class boundary, with 2, 4 and 8 threads: each thread
//! allocates blocks of every class size, one byte below and one above it (and around the
//! medium/large and large/huge limits), fills them with a pattern derived from the address,
//! and hands them to the next thread of a ring, which keeps some alive for a while and frees
//! the rest. Every block is checked byte by byte (sparsely above 256 KiB) before it is freed
//! and again while other threads allocate, so an object handed out twice, a span carved
//! wrongly at a boundary or a cached block reused while live shows up as a corrupted byte.
//!
//! Its own test binary: the stress test's final "everything went back" check must not see
//! this test's live blocks.

use coalesce_host::malloc::{self, LARGE_MAX, size_class::CLASS_SIZE};
use std::sync::{Barrier, Mutex};

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Every class size, one below and one above, and the limits of the large and huge paths.
fn boundary_sizes() -> Vec<usize> {
    let mut v: Vec<usize> = CLASS_SIZE
        .iter()
        .flat_map(|&s| [s as usize - 1, s as usize, s as usize + 1])
        .collect();
    v.extend([
        2 << 20,
        (32 << 20) - 1,
        (32 << 20) + 1,
        LARGE_MAX,
        LARGE_MAX + 1,
    ]);
    v.retain(|&s| s >= 8);
    v
}

/// The byte offsets checked in a block of `size`: all of them up to 256 KiB, above that the
/// first and last 4 KiB and one byte per 64 KiB (so a 64 MiB block stays cheap and does
/// not make every page resident).
fn offsets(size: usize) -> impl Iterator<Item = usize> {
    let dense = size <= 256 << 10;
    let edge = if dense { size } else { 4096 };
    let sparse = (edge..size.saturating_sub(edge)).step_by(if dense { 1 } else { 64 << 10 });
    (8..edge.min(size))
        .chain(sparse)
        .chain(size.saturating_sub(edge).max(edge)..size)
}

fn pattern(p: usize, i: usize) -> u8 {
    ((p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 8 * 8)) as u8 ^ (i as u8)
}

/// Writes the size into the first word and the pattern into the checked bytes.
fn fill(p: *mut u8, size: usize) {
    // SAFETY: p is a live block of at least `size` >= 8 bytes, 8-aligned.
    unsafe { p.cast::<usize>().write(size) };
    for i in offsets(size) {
        // SAFETY: i < size.
        unsafe { p.add(i).write(pattern(p as usize, i)) };
    }
}

/// Checks the pattern of a block written by `fill`; returns its size.
fn verify(p: usize) -> usize {
    // SAFETY: p is a live block written by `fill`.
    let size = unsafe { (p as *const usize).read() };
    for i in offsets(size) {
        // SAFETY: i < size.
        let got = unsafe { (p as *const u8).add(i).read() };
        assert_eq!(got, pattern(p, i), "block {p:#x} size {size} byte {i}");
    }
    // SAFETY: live.
    assert!(unsafe { malloc::usable_size(p as *const u8) } >= size);
    assert!(malloc::check_live(p as *const u8).is_ok(), "{p:#x}");
    size
}

fn free(p: usize) {
    verify(p);
    // SAFETY: a live block of this allocator, not used afterwards.
    unsafe { malloc::free(p as *mut u8) };
}

fn ring(threads: usize, rounds: usize) {
    let sizes = boundary_sizes();
    let inbox: Vec<Mutex<Vec<usize>>> = (0..threads).map(|_| Mutex::new(Vec::new())).collect();
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (sizes, inbox, barrier) = (&sizes, &inbox, &barrier);
            s.spawn(move || {
                let mut r = Rng(t as u64 * 7919 + threads as u64);
                let mut held: Vec<usize> = Vec::new();
                let next = &inbox[(t + 1) % threads];
                for _ in 0..rounds {
                    let mut order = sizes.clone();
                    for i in (1..order.len()).rev() {
                        order.swap(i, r.below(i as u64 + 1) as usize);
                    }
                    for (n, &size) in order.iter().enumerate() {
                        let p = malloc::malloc(size);
                        assert!(!p.is_null(), "size {size}");
                        fill(p, size);
                        next.lock().unwrap().push(p as usize);
                        if n % 8 == 7 {
                            // Blocks from the previous thread: keep a third alive a while
                            // (re-checked later), free the rest here (remote frees).
                            for q in std::mem::take(&mut *inbox[t].lock().unwrap()) {
                                verify(q);
                                if r.below(3) == 0 {
                                    held.push(q);
                                } else {
                                    free(q);
                                }
                            }
                            while held.len() > 64 {
                                free(held.swap_remove(r.below(held.len() as u64) as usize));
                            }
                        }
                    }
                }
                barrier.wait(); // every block has been handed on
                for q in std::mem::take(&mut *inbox[t].lock().unwrap()) {
                    held.push(q);
                }
                for q in held {
                    free(q);
                }
            });
        }
    });
}

#[test]
fn remote_frees_at_every_class_boundary_with_2_4_and_8_threads() {
    for threads in [2, 4, 8] {
        ring(threads, 2);
    }
}

#[test]
fn boundary_sizes_cover_every_class_and_the_large_limits() {
    let sizes = boundary_sizes();
    for &c in CLASS_SIZE.iter() {
        assert!(sizes.contains(&(c as usize)) && sizes.contains(&(c as usize + 1)));
    }
    assert!(sizes.contains(&(LARGE_MAX + 1)));
    // The sparse offsets still include both ends of every block.
    for &s in sizes.iter().filter(|&&s| s > 8) {
        let o: Vec<usize> = offsets(s).collect();
        assert_eq!(
            (o.first(), o.last()),
            (Some(&8), Some(&(s - 1))),
            "size {s}"
        );
    }
}
