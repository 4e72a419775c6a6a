//! Multi-threaded stress of the malloc in the style of mimalloc's test-stress.c: threads
//! allocate random sizes (mostly small, some large, a few huge), fill each block with a
//! pattern derived from its address, and hand blocks to other threads through a shared array
//! of slots, so most frees are remote. Every block's pattern is verified before it is freed,
//! and threads are retired and replaced in rounds so thread-exit flushing runs constantly.

use coalesce_host::malloc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// xorshift64*: a deterministic per-thread generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sizes skewed like real programs: mostly tiny, sometimes up to 64 KiB, rarely up to 4 MiB,
/// very rarely huge.
fn random_size(r: &mut Rng) -> usize {
    match r.below(1000) {
        0 => (64 << 20) + r.below(1 << 20) as usize,
        1..=20 => r.below(4 << 20) as usize,
        21..=150 => r.below(64 << 10) as usize,
        _ => r.below(512) as usize,
    }
}

/// A block stores its size in its first word and a pattern derived from its address in the
/// rest of its first and last 64 bytes, so a block handed to another thread can be verified
/// there without side information.
fn fill(p: *mut u8, size: usize) {
    // SAFETY: p is a live block of at least size >= 8 bytes, 8-aligned.
    unsafe { p.cast::<usize>().write(size) };
    for i in pattern_range(size) {
        // SAFETY: i < size.
        unsafe { p.add(i).write(pattern(p, i)) };
    }
}

fn pattern_range(size: usize) -> impl Iterator<Item = usize> {
    (8..size.min(64)).chain(size.saturating_sub(64).max(64)..size)
}

fn pattern(p: *mut u8, i: usize) -> u8 {
    let tag = (p as usize as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (tag >> (i % 8 * 8)) as u8 ^ i as u8
}

fn verify_and_free(p: *mut u8) {
    // SAFETY: p is a live block written by `fill`.
    let size = unsafe { p.cast::<usize>().read() };
    for i in pattern_range(size) {
        // SAFETY: i < size.
        let got = unsafe { p.add(i).read() };
        assert_eq!(
            got,
            pattern(p, i),
            "block {p:p} size {size} byte {i} corrupted"
        );
    }
    assert_eq!(malloc::check_live(p), Ok(unsafe_usable(p)));
    assert!(unsafe_usable(p) >= size);
    // SAFETY: a live block of this allocator, not used afterwards.
    unsafe { malloc::free(p) };
}

fn unsafe_usable(p: *mut u8) -> usize {
    // SAFETY: p is live.
    unsafe { malloc::usable_size(p) }
}

const SLOTS: usize = 4096;

fn worker(seed: u64, shared: &[AtomicUsize], iters: usize) {
    let mut r = Rng(seed | 1);
    let mut mine: Vec<usize> = Vec::new();
    for _ in 0..iters {
        match r.below(10) {
            0..=4 if mine.len() < 2000 => {
                let size = random_size(&mut r).max(8);
                let p = malloc::malloc(size);
                assert!(!p.is_null());
                assert_eq!(p as usize % if size > 8 { 16 } else { 8 }, 0);
                fill(p, size);
                mine.push(p as usize);
            }
            5..=6 if !mine.is_empty() => {
                let p = mine.swap_remove(r.below(mine.len() as u64) as usize);
                verify_and_free(p as *mut u8);
            }
            _ if !mine.is_empty() => {
                // Swap one of ours into a random slot; whatever was there (allocated by some
                // other thread, maybe one that has exited) is ours now: freed here, remotely.
                let p = mine.swap_remove(r.below(mine.len() as u64) as usize);
                let old = shared[r.below(SLOTS as u64) as usize].swap(p, Ordering::AcqRel);
                if old != 0 {
                    mine.push(old);
                }
            }
            _ => {}
        }
    }
    for p in mine {
        verify_and_free(p as *mut u8);
    }
}

#[test]
fn remote_frees_across_generations_of_threads() {
    let shared: Arc<Vec<AtomicUsize>> = Arc::new((0..SLOTS).map(|_| AtomicUsize::new(0)).collect());
    for round in 0..8u64 {
        // Plain spawn + join (not a scope): join waits for the threads' exit, including the
        // pthread-key destructor that flushes their caches.
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || worker(round * 100 + t + 1, &shared, 50_000))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    for slot in shared.iter() {
        let p = slot.swap(0, Ordering::AcqRel);
        if p != 0 {
            verify_and_free(p as *mut u8);
        }
    }
    // Everything is free: once this thread's cache and the transfer slots are drained, every
    // span and block must be back in the page heap, and then back with the OS.
    malloc::purge_all();
    let st = malloc::stats();
    assert_eq!(
        (st.spans, st.large_blocks, st.huge_mappings),
        (0, 0, 0),
        "{st:?}"
    );
    assert_eq!(st.dirty_free_bytes, 0, "{st:?}");
    assert!(st.purged_bytes > 0);
}
