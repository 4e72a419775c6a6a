//! Nothing lost, proven by bytes: a harness over the C ABI on the CUDA backend, with the
//! stand-in driver in place of `libcuda` (device pointers are host memory there, so every byte
//! of a block can be written and read back through its pointer).
//!
//! Eight threads allocate 512 B to 256 MiB on three streams, fill every block with a pattern
//! derived from its id and offset, verify a block's every byte before freeing it, verify all
//! their live blocks periodically, and hand some blocks to other threads to free. A control
//! thread empties the cache and changes the memory limit in between. A shadow map of live
//! ranges catches any overlap at allocation. The pool remaps and releases idle granules all
//! along (`coalesce`, `torch-expandable`) or carves classic segments (`torch-native`,
//! `bfc-classic`).
//!
//! Each policy runs in a child process (the C ABI reads its policy from the environment once),
//! with `LD_LIBRARY_PATH` pointing at the stand-in; the child is this test binary, running the
//! ignored `harness_child` test.

mod common;

use coalesce::{
    coalesce_empty_cache, coalesce_free, coalesce_last_error, coalesce_malloc,
    coalesce_set_memory_limit, coalesce_stats_json,
};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const MIB: usize = 1 << 20;
const THREADS: usize = 8;
const LIVE_PER_THREAD: usize = 48;
const STREAMS: usize = 3;

/// Runs the harness under `policy` for `ops` operations in a child process on the stand-in.
fn parent(policy: &str, ops: u64) {
    let Some(path) = common::standin_path() else {
        return;
    };
    // A shorter run for quick checks (`COALESCE_HARNESS_SCALE=0.1`); the default is the full one.
    let scale: f64 = std::env::var("COALESCE_HARNESS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let ops = ((ops as f64 * scale) as u64).max(1000);
    let exe = std::env::current_exe().unwrap();
    let o = Command::new(exe)
        .args(["--exact", "harness_child", "--ignored", "--nocapture"])
        .env("LD_LIBRARY_PATH", path)
        .env("COALESCE_BACKEND", "cuda")
        .env("COALESCE_POLICY", policy)
        .env("COALESCE_STANDIN_CAPACITY", (3u64 << 30).to_string())
        .env("COALESCE_STANDIN_STREAM_LAG_MS", "0.2")
        .env("COALESCE_HARNESS_OPS", ops.to_string())
        .env_remove("COALESCE_MEMORY_LIMIT")
        .output()
        .expect("run the harness child");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{policy}: {}", common::text(&o));
    let line = out
        .lines()
        .find(|l| l.starts_with("HARNESS "))
        .unwrap_or_else(|| panic!("{policy}: no HARNESS line: {}", common::text(&o)));
    eprintln!("{policy}: {line}");
    let figures: BTreeMap<&str, u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    assert!(figures["ops"] >= ops, "{policy}: {line}");
    assert_eq!(figures["corrupted_bytes"], 0, "{policy}: {line}");
    assert_eq!(figures["overlaps"], 0, "{policy}: {line}");
    assert!(figures["verified_bytes"] > 0, "{policy}: {line}");
    assert!(figures["remote_frees"] > 0, "{policy}: {line}");
}

#[test]
fn bytes_survive_coalesce() {
    parent("coalesce", 1_000_000);
}

#[test]
fn bytes_survive_torch_expandable() {
    parent("torch-expandable", 1_000_000);
}

#[test]
fn bytes_survive_torch_native() {
    parent("torch-native", 250_000);
}

#[test]
fn bytes_survive_bfc_classic() {
    parent("bfc-classic", 250_000);
}

/// A block as the harness knows it.
#[derive(Clone, Copy, Debug)]
struct Block {
    id: u64,
    ptr: usize,
    size: usize,
    stream: usize,
}

/// The word at `offset` (a multiple of 8) of block `id`.
fn word(id: u64, offset: usize) -> u64 {
    (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (offset as u64).wrapping_mul(0xff51_afd7_ed55_8ccd))
        .rotate_left(17)
}

fn fill(b: &Block) {
    // SAFETY: the block is `size` bytes of host-accessible memory that only this harness
    // writes while it is live (the stand-in maps device memory into the process).
    let bytes = unsafe { std::slice::from_raw_parts_mut(b.ptr as *mut u8, b.size) };
    let (words, tail) = bytes.split_at_mut(b.size / 8 * 8);
    for (i, chunk) in words.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(b.id, i * 8).to_le_bytes());
    }
    let last = word(b.id, b.size / 8 * 8).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// Corrupted bytes of `b`.
fn verify(b: &Block) -> u64 {
    // SAFETY: as in `fill`; the block is live, so no one else writes it.
    let bytes = unsafe { std::slice::from_raw_parts(b.ptr as *const u8, b.size) };
    let (words, tail) = bytes.split_at(b.size / 8 * 8);
    let mut bad = 0;
    for (i, chunk) in words.chunks_exact(8).enumerate() {
        let want = word(b.id, i * 8).to_le_bytes();
        if chunk != want {
            bad += chunk.iter().zip(want).filter(|(a, b)| *a != b).count() as u64;
        }
    }
    let last = word(b.id, b.size / 8 * 8).to_le_bytes();
    bad += tail.iter().zip(last).filter(|(a, b)| **a != *b).count() as u64;
    bad
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Log-uniform in `[lo, hi)`.
    fn log_uniform(&mut self, lo: usize, hi: usize) -> usize {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((a + u * (b - a)).exp() as usize).clamp(lo, hi - 1)
    }

    /// 512 B to 256 MiB, mostly small: a few hundred blocks of 32 MiB and more over a run.
    fn size(&mut self) -> usize {
        match self.next() % 10_000 {
            0 => self.log_uniform(32 * MIB, 256 * MIB),
            1..=9 => self.log_uniform(MIB, 32 * MIB),
            10..=299 => self.log_uniform(16 << 10, MIB),
            _ => self.log_uniform(512, 16 << 10),
        }
    }
}

/// Everything the threads share.
struct Shared {
    /// Live ranges: start -> (end, id).
    shadow: Mutex<BTreeMap<usize, (usize, u64)>>,
    /// Blocks handed to another thread to free.
    handoff: Mutex<Vec<Block>>,
    next_id: AtomicU64,
    ops: AtomicU64,
    corrupted: AtomicU64,
    overlaps: AtomicU64,
    verified: AtomicU64,
    remote_frees: AtomicU64,
    failed_allocs: AtomicU64,
    done: AtomicBool,
    streams: Vec<usize>,
}

impl Shared {
    fn add(&self, b: &Block) {
        let mut s = self.shadow.lock().unwrap();
        let (start, end) = (b.ptr, b.ptr + b.size);
        let before = s.range(..end).next_back().filter(|(_, (e, _))| *e > start);
        if before.is_some() {
            self.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        s.insert(start, (end, b.id));
    }

    fn remove(&self, b: &Block) {
        self.shadow.lock().unwrap().remove(&b.ptr);
    }

    fn check(&self, b: &Block) {
        let bad = verify(b);
        self.verified.fetch_add(b.size as u64, Ordering::Relaxed);
        if bad > 0 {
            eprintln!(
                "block {} at {:#x} ({} bytes): {bad} bytes corrupted",
                b.id, b.ptr, b.size
            );
            self.corrupted.fetch_add(bad, Ordering::Relaxed);
        }
    }

    fn free(&self, b: Block) {
        self.check(&b);
        self.remove(&b);
        coalesce_free(
            b.ptr as *mut c_void,
            b.size,
            0,
            self.streams[b.stream] as *mut c_void,
        );
    }
}

fn worker(t: usize, shared: &Shared, ops: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
    let mut mine: Vec<Option<Block>> = vec![None; LIVE_PER_THREAD];
    let mut n = 0u64;
    while shared.ops.fetch_add(1, Ordering::Relaxed) < ops {
        n += 1;
        let i = (rng.next() % LIVE_PER_THREAD as u64) as usize;
        match mine[i].take() {
            None => {
                let size = rng.size();
                let stream = (rng.next() % STREAMS as u64) as usize;
                let ptr = coalesce_malloc(size, 0, shared.streams[stream] as *mut c_void);
                if ptr.is_null() {
                    // Out of memory under the control thread's limit: fine, nothing lost.
                    shared.failed_allocs.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let b = Block {
                    id: shared.next_id.fetch_add(1, Ordering::Relaxed),
                    ptr: ptr.addr(),
                    size,
                    stream,
                };
                shared.add(&b);
                fill(&b);
                mine[i] = Some(b);
            }
            Some(b) if rng.next().is_multiple_of(8) => shared.handoff.lock().unwrap().push(b),
            Some(b) => shared.free(b),
        }
        // Free what other threads handed over (a free from another thread than the
        // allocating one).
        if n.is_multiple_of(4) {
            let theirs = shared.handoff.lock().unwrap().pop();
            if let Some(b) = theirs {
                shared.remote_frees.fetch_add(1, Ordering::Relaxed);
                shared.free(b);
            }
        }
        if n.is_multiple_of(20_000) {
            mine.iter().flatten().for_each(|b| shared.check(b));
        }
    }
    mine.into_iter().flatten().for_each(|b| shared.free(b));
}

/// Empties the cache and moves the memory limit while the workers run.
fn control(shared: &Shared) {
    let mut rng = Rng(42);
    while !shared.done.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(5));
        match rng.next() % 4 {
            0 => assert_eq!(coalesce_empty_cache(0), 0, "{}", last_error()),
            1 => {
                let limit = (32 + rng.next() % 992) as usize * MIB;
                assert_eq!(coalesce_set_memory_limit(0, limit), 0, "{}", last_error());
            }
            _ => assert_eq!(coalesce_set_memory_limit(0, 0), 0, "{}", last_error()),
        }
    }
    assert_eq!(coalesce_set_memory_limit(0, 0), 0);
}

fn last_error() -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { coalesce_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned()
}

fn stats() -> serde_json::Value {
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { coalesce_stats_json(0, buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n > 0 && n < buf.len(), "stats: {}", last_error());
    serde_json::from_slice(&buf[..n]).unwrap()
}

#[test]
#[ignore = "the byte harness itself: run by the bytes_survive_* tests in a child process, with \
            the stand-in driver on LD_LIBRARY_PATH"]
fn harness_child() {
    let ops: u64 = std::env::var("COALESCE_HARNESS_OPS")
        .expect("run by a bytes_survive_* test")
        .parse()
        .unwrap();
    let streams = common::standin_streams(STREAMS);
    let shared = Arc::new(Shared {
        shadow: Mutex::new(BTreeMap::new()),
        handoff: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(0),
        ops: AtomicU64::new(0),
        corrupted: AtomicU64::new(0),
        overlaps: AtomicU64::new(0),
        verified: AtomicU64::new(0),
        remote_frees: AtomicU64::new(0),
        failed_allocs: AtomicU64::new(0),
        done: AtomicBool::new(false),
        streams,
    });
    std::thread::scope(|s| {
        let c = s.spawn(|| control(&shared));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let shared = &shared;
                s.spawn(move || worker(t, shared, ops))
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        shared.done.store(true, Ordering::Relaxed);
        c.join().unwrap();
    });
    for b in shared.handoff.lock().unwrap().drain(..).collect::<Vec<_>>() {
        shared.free(b);
    }
    let st = stats();
    assert_eq!(st["requested_bytes"], 0, "everything was freed: {st}");
    assert_eq!(st["num_invalid_frees"], 0, "{st}");
    println!(
        "HARNESS ops={} corrupted_bytes={} overlaps={} verified_bytes={} remote_frees={} \
         failed_allocs={} allocs={} ooms={} driver_calls={}",
        shared.ops.load(Ordering::Relaxed).min(ops),
        shared.corrupted.load(Ordering::Relaxed),
        shared.overlaps.load(Ordering::Relaxed),
        shared.verified.load(Ordering::Relaxed),
        shared.remote_frees.load(Ordering::Relaxed),
        shared.failed_allocs.load(Ordering::Relaxed),
        st["num_allocs"],
        st["num_ooms"],
        st["driver_calls"],
    );
}
