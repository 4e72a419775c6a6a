//! The workloads, run inside a child process whose `malloc` is the allocator under test
//! (glibc, or a peer / coalesce loaded with `LD_PRELOAD`). They call the C `malloc`/`free`
//! directly; the harness's own bookkeeping is allocated before the clock starts.
//!
//! Every workload prints lines `name value` to stdout: times in nanoseconds per operation,
//! and `peak_rss` in bytes (from `getrusage`), which the driver parses.

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// C `malloc`, hidden from the optimiser: LLVM knows malloc/free and would otherwise delete
/// a malloc-memset-free sequence whose result is never read.
#[inline(never)]
fn c_malloc(size: usize) -> *mut u8 {
    // SAFETY: plain C malloc.
    black_box(unsafe { libc::malloc(black_box(size)).cast() })
}

#[inline(never)]
fn c_free(p: *mut u8) {
    // SAFETY: p came from c_malloc and is not used afterwards.
    unsafe { libc::free(black_box(p).cast()) }
}

/// xorshift64*.
#[derive(Debug)]
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Peak resident set size of this process in bytes.
pub fn peak_rss() -> u64 {
    // SAFETY: getrusage writes into a zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

/// Runs `f(thread_index)` on `threads` threads released together by a barrier; returns the
/// wall seconds from the first thread's start to the last thread's end, each measured by the
/// thread itself (a coordinator's clock would include its own wake-up latency).
fn timed_threads(threads: usize, f: impl Fn(usize) + Sync) -> f64 {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    f(t);
                    (start, Instant::now())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    (last - first).as_secs_f64()
}

// ------------------------------------------------------------------ (a) malloc/touch/free

/// (a) For each size 2^k, k in `sizes` (the benchmark runs one k per process): every thread
/// runs malloc(size), writes every byte, free, in a loop. Prints `pair_<k> ns` = wall time
/// per pair on one thread.
pub fn pairs(threads: usize, scale: f64, sizes: std::ops::RangeInclusive<u32>) {
    for k in sizes {
        let size = 1usize << k;
        // About 64 MiB touched per thread, at least 20k and at most 2M pairs.
        let iters = ((((64usize << 20) / size).clamp(20_000, 2_000_000)) as f64 * scale).max(100.0)
            as usize;
        let secs = timed_threads(threads, |_| {
            for _ in 0..iters {
                let p = c_malloc(size);
                // SAFETY: p is a fresh block of `size` bytes.
                unsafe { p.write_bytes(0xA5, size) };
                c_free(black_box(p));
            }
        });
        println!("pair_{k} {}", secs * 1e9 / iters as f64);
    }
    println!("peak_rss {}", peak_rss());
}

// ------------------------------------------------------------------ (b) producer/consumer

/// A bounded single-producer single-consumer ring of pointers (no allocation after `new`).
struct Ring {
    slots: Vec<AtomicUsize>,
    head: AtomicUsize,
    tail: AtomicUsize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            slots: (0..cap).map(|_| AtomicUsize::new(0)).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }
    fn push(&self, v: usize) {
        let t = self.tail.load(Ordering::Relaxed);
        while t - self.head.load(Ordering::Acquire) == self.slots.len() {
            std::thread::yield_now();
        }
        self.slots[t % self.slots.len()].store(v, Ordering::Relaxed);
        self.tail.store(t + 1, Ordering::Release);
    }
    fn pop(&self) -> usize {
        let h = self.head.load(Ordering::Relaxed);
        while self.tail.load(Ordering::Acquire) == h {
            std::thread::yield_now();
        }
        let v = self.slots[h % self.slots.len()].load(Ordering::Relaxed);
        self.head.store(h + 1, Ordering::Release);
        v
    }
}

/// (b) `pairs` producer threads each feed one consumer thread through a ring; producers
/// malloc blocks of 16..=1024 bytes and write them, consumers read and free them, so every
/// free is remote. Prints `ns` per block (wall time / blocks).
pub fn prodcons(pairs: usize, scale: f64) {
    let per = (2_000_000.0 * scale) as usize;
    let rings: Vec<Ring> = (0..pairs).map(|_| Ring::new(4096)).collect();
    let secs = timed_threads(2 * pairs, |t| {
        let ring = &rings[t / 2];
        if t % 2 == 0 {
            let mut r = Rng::new(t as u64 + 1);
            for _ in 0..per {
                let size = 16 + r.below(1009) as usize;
                let p = c_malloc(size);
                // SAFETY: fresh block of `size` >= 16 bytes.
                unsafe { p.cast::<usize>().write(size) };
                ring.push(p as usize);
            }
        } else {
            let mut sum = 0usize;
            for _ in 0..per {
                let p = ring.pop() as *mut u8;
                // SAFETY: written by the producer before publishing.
                sum = sum.wrapping_add(unsafe { p.cast::<usize>().read() });
                c_free(p);
            }
            black_box(sum);
        }
    });
    println!("prodcons {}", secs * 1e9 / (per * pairs) as f64);
    println!("peak_rss {}", peak_rss());
}

// ------------------------------------------------------------------ (c) larson

/// (c) Larson-style server: `threads` threads each own an array of `slots` blocks and
/// replace a random one with a block of random size (16..=1024 bytes, like the original)
/// per operation. After each round the arrays rotate to the next thread, so blocks are
/// freed by other threads than the ones that allocated them. Prints `ns` per op per thread.
pub fn larson(threads: usize, scale: f64) {
    const SLOTS: usize = 1000;
    let rounds = 10;
    let ops = (200_000.0 * scale) as usize;
    let arrays: Vec<Vec<AtomicUsize>> = (0..threads)
        .map(|_| (0..SLOTS).map(|_| AtomicUsize::new(0)).collect())
        .collect();
    let mut total = 0.0;
    for round in 0..rounds {
        total += timed_threads(threads, |t| {
            let a = &arrays[(t + round) % threads];
            let mut r = Rng::new((round * 131 + t) as u64 + 7);
            for _ in 0..ops {
                let i = r.below(SLOTS as u64) as usize;
                let size = 16 + r.below(1009) as usize;
                let p = c_malloc(size);
                // SAFETY: fresh block of at least 16 bytes.
                unsafe { p.write_bytes(i as u8, 16) };
                let old = a[i].swap(p as usize, Ordering::Relaxed);
                if old != 0 {
                    c_free(old as *mut u8);
                }
            }
        });
    }
    for a in &arrays {
        for s in a {
            let p = s.swap(0, Ordering::Relaxed);
            if p != 0 {
                c_free(p as *mut u8);
            }
        }
    }
    println!("larson {}", total * 1e9 / (ops * rounds) as f64);
    println!("peak_rss {}", peak_rss());
}

// ------------------------------------------------------------------ (d) fragmentation

/// (d) Fragmentation: a program that goes through phases. Each phase allocates 160 MiB in
/// objects of one size range, then frees 90% of them at random (a cache that keeps its hot
/// tenth); the next phase's sizes differ, so it can only reuse the freed memory if the
/// allocator can give it to other sizes. Phases: 16-64 B, 64-512 B, 512 B-4 KiB, 4-32 KiB,
/// 32-256 KiB, then a final phase of 16-64 B again. Prints `ns` per operation and `peak_rss`
/// (the figure compared).
pub fn fragmentation(scale: f64) {
    let phases: [(usize, usize); 6] = [
        (16, 64),
        (64, 512),
        (512, 4096),
        (4096, 32768),
        (32768, 262144),
        (16, 64),
    ];
    let budget = (160.0 * scale) as usize * (1 << 20);
    let mut r = Rng::new(42);
    let mut survivors: Vec<*mut u8> = Vec::with_capacity(budget / 16);
    let mut batch: Vec<*mut u8> = Vec::with_capacity(budget / 16);
    let mut ops = 0usize;
    let start = Instant::now();
    for (lo, hi) in phases {
        let mut bytes = 0;
        batch.clear();
        while bytes < budget {
            let size = lo + r.below((hi - lo) as u64) as usize;
            let p = c_malloc(size);
            // SAFETY: fresh block of `size` bytes.
            unsafe { p.write_bytes(1, size) };
            batch.push(p);
            bytes += size;
        }
        ops += batch.len();
        for &p in &batch {
            if r.below(10) == 0 {
                survivors.push(p);
            } else {
                c_free(p);
            }
        }
        ops += batch.len();
        if std::env::var_os("COALESCE_BENCH_TRACE").is_some() {
            eprintln!(
                "phase {lo}-{hi}: rss {} MiB, peak {} MiB",
                coalesce_host::os::rss_bytes().unwrap_or(0) >> 20,
                peak_rss() >> 20
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss();
    for p in survivors {
        c_free(p);
    }
    println!("frag {}", secs * 1e9 / ops as f64);
    println!("peak_rss {rss}");
}
