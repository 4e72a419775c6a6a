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

/// Runs `f(thread_index, rng)` in chunks of `chunk` calls on `threads` threads released
/// together, each thread until its own clock passed `budget`; returns the mean over threads
/// of wall ns per call. A fixed time rather than a fixed count keeps a slow allocator's row
/// (a 64 MiB malloc can cost microseconds) from taking minutes, without changing the figure.
fn timed_per_call(
    threads: usize,
    budget: std::time::Duration,
    chunk: usize,
    f: impl Fn(usize, &mut Rng) + Sync,
) -> f64 {
    let barrier = Barrier::new(threads);
    let per: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (f, barrier) = (&f, &barrier);
                s.spawn(move || {
                    let mut r = Rng::new(t as u64 + 1);
                    barrier.wait();
                    let start = Instant::now();
                    let mut n = 0usize;
                    loop {
                        for _ in 0..chunk {
                            f(t, &mut r);
                        }
                        n += chunk;
                        if start.elapsed() >= budget {
                            break;
                        }
                    }
                    start.elapsed().as_secs_f64() * 1e9 / n as f64
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    per.iter().sum::<f64>() / per.len() as f64
}

/// (a, t) For each size 2^k, k in `sizes` (the benchmark runs one k per process): every
/// thread runs malloc(size), [writes every byte when `touch`], free, in a loop, for
/// `scale` x 40 ms (80 ms touched). Prints `pair_<k> ns` = wall time per pair on one thread.
/// Without `touch` the figure is the allocator's own cost (no page faults, no memset); with
/// it, what a program that uses its memory pays.
pub fn pairs(threads: usize, scale: f64, sizes: std::ops::RangeInclusive<u32>, touch: bool) {
    for k in sizes {
        let size = 1usize << k;
        let ms = if touch { 80.0 } else { 40.0 } * scale;
        let budget = std::time::Duration::from_secs_f64(ms / 1e3);
        // Clock reads every 256 calls at most, and at least every ~1 MiB touched.
        let chunk = if touch { (1 << 20) / size } else { 256 };
        let ns = timed_per_call(threads, budget, chunk.clamp(1, 256), |_, _| {
            let p = c_malloc(size);
            if touch {
                // SAFETY: p is a fresh block of `size` bytes.
                unsafe { p.write_bytes(0xA5, size) };
            }
            c_free(black_box(p));
        });
        println!("pair_{k} {ns}");
    }
    println!("peak_rss {}", peak_rss());
}

/// A random size, log-uniform in `[lo, hi]` (as many 16..32 B blocks as 16..32 KiB ones):
/// programs allocate many small and a few large blocks, and every size range matters.
fn log_uniform(r: &mut Rng, lo: usize, hi: usize) -> usize {
    let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
    let u = (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((a + (b - a) * u).exp() as usize).clamp(lo, hi)
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
/// malloc blocks of mixed sizes (log-uniform 16 B .. 256 KiB, so small, medium and the
/// bottom of the large ones) and write their first word, consumers read and free them:
/// every free is remote. Prints `ns` per block (wall time / blocks).
pub fn prodcons(pairs: usize, scale: f64) {
    let per = (1_000_000.0 * scale) as usize;
    let rings: Vec<Ring> = (0..pairs).map(|_| Ring::new(256)).collect();
    let secs = timed_threads(2 * pairs, |t| {
        let ring = &rings[t / 2];
        if t % 2 == 0 {
            let mut r = Rng::new(t as u64 + 1);
            for _ in 0..per {
                let size = log_uniform(&mut r, 16, 256 << 10);
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
/// replace a random one with a block of random size (log-uniform 16 B .. 64 KiB: the
/// original's 16..1024 B plus the buffers a server also allocates) per operation, so
/// lifetimes are random too (a block lives until its slot is picked again). After each round the arrays rotate to the next thread, so blocks are
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
                let size = log_uniform(&mut r, 16, 64 << 10);
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

// ------------------------------------------------------------------ (e) cache-scratch

/// (e) Passive false sharing (Hoard's cache-scratch): the main thread allocates one 8-byte
/// object per thread (neighbours in memory under most allocators) and hands them out; each
/// thread frees its object, then `iters` times allocates an 8-byte object, writes it 100
/// times and frees it. An allocator that gives a thread the freed object of another thread
/// (or its neighbour) makes threads write the same cache line. Prints `ns` per iteration.
pub fn scratch(threads: usize, scale: f64) {
    let iters = (500_000.0 * scale) as usize;
    let handed: Vec<AtomicUsize> = (0..threads)
        .map(|_| AtomicUsize::new(c_malloc(8) as usize))
        .collect();
    let secs = timed_threads(threads, |t| {
        c_free(handed[t].load(Ordering::Relaxed) as *mut u8);
        for _ in 0..iters {
            let p = c_malloc(8);
            for i in 0..100u64 {
                // SAFETY: p is a live 8-byte block; volatile so every write reaches memory.
                unsafe { p.cast::<u64>().write_volatile(i) };
            }
            c_free(p);
        }
    });
    println!("scratch {}", secs * 1e9 / iters as f64);
    println!("peak_rss {}", peak_rss());
}

// ------------------------------------------------------------------ (f) large blocks

/// (f) Large allocations: `threads` threads each keep 8 blocks and replace a random one per
/// operation with a block of log-uniform random size in 64 KiB .. 32 MiB, writing one byte
/// per 4 KiB page (so every page is resident, as in a program that fills its buffers).
/// Prints `ns` per operation and `peak_rss`.
pub fn large(threads: usize, scale: f64) {
    const SLOTS: usize = 8;
    let ops = (4_000.0 * scale) as usize;
    let secs = timed_threads(threads, |t| {
        let mut r = Rng::new(t as u64 + 99);
        let mut slots = [std::ptr::null_mut::<u8>(); SLOTS];
        for _ in 0..ops {
            let i = r.below(SLOTS as u64) as usize;
            if !slots[i].is_null() {
                c_free(slots[i]);
            }
            let size = log_uniform(&mut r, 64 << 10, 32 << 20);
            let p = c_malloc(size);
            for off in (0..size).step_by(4096) {
                // SAFETY: inside the fresh block of `size` bytes.
                unsafe { p.add(off).write(1) };
            }
            slots[i] = p;
        }
        for p in slots {
            if !p.is_null() {
                c_free(p);
            }
        }
    });
    println!("large {}", secs * 1e9 / ops as f64);
    println!("peak_rss {}", peak_rss());
}
