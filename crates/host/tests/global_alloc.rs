//! The allocator as this test binary's `#[global_allocator]`: the test harness, std's thread
//! machinery, collections and channels all run on it. Blocks cross threads through channels
//! (so `dealloc` runs on another thread than `alloc`), vectors grow through `realloc`, and
//! `fork` is called while other threads allocate.

use coalesce_host::malloc::CoalesceAlloc;
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

#[global_allocator]
static GLOBAL: CoalesceAlloc = CoalesceAlloc;

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 31 + i * 7) as u8)
        .collect()
}

#[test]
fn producer_consumer_boxes_are_freed_remotely_and_intact() {
    let (tx, rx) = mpsc::sync_channel::<(u64, Box<[u8]>)>(256);
    let consumer = std::thread::spawn(move || {
        let mut n = 0;
        for (seed, b) in rx {
            assert_eq!(&*b, &payload(seed, b.len())[..], "block {seed} corrupted");
            n += 1;
        }
        n
    });
    let producers: Vec<_> = (0..3u64)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let seed = t * 1_000_000 + i;
                    let len = [0usize, 7, 24, 100, 1000, 5000, 40_000, 300_000][(i % 8) as usize];
                    tx.send((seed, payload(seed, len).into_boxed_slice()))
                        .unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 60_000);
}

#[test]
fn collections_grow_shrink_and_agree() {
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut h: HashMap<u64, String> = HashMap::new();
                let mut b: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
                for i in 0..30_000u64 {
                    let k = (i * 2_654_435_761 + t) % 5000;
                    if i % 3 == 0 {
                        h.remove(&k);
                        b.remove(&k);
                    } else {
                        h.insert(k, format!("{k}-{}", "x".repeat((k % 50) as usize)));
                        b.entry(k).or_default().push(i);
                    }
                }
                for (k, v) in &h {
                    assert!(v.starts_with(&format!("{k}-")));
                    assert!(b.contains_key(k));
                }
                let mut v: Vec<u64> = Vec::new();
                for i in 0..1_000_000 {
                    v.push(i);
                }
                v.truncate(10);
                v.shrink_to_fit();
                assert_eq!(v, (0..10).collect::<Vec<_>>());
                h.len()
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap() > 0);
    }
}

#[test]
fn fork_while_other_threads_allocate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    let busy: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let mut v = Vec::new();
                while !STOP.load(Ordering::Relaxed) {
                    v.push(vec![1u8; 1000]);
                    v.push(vec![2u8; 100_000]);
                    if v.len() > 100 {
                        v.clear();
                    }
                }
            })
        })
        .collect();
    for _ in 0..50 {
        // SAFETY: the child only allocates, frees and _exits (all async-signal-safe here,
        // because the allocator's fork handlers leave its locks free in the child).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let v: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; i * 500]).collect();
            let ok = v
                .iter()
                .enumerate()
                .all(|(i, b)| b.iter().all(|&x| x == i as u8));
            // SAFETY: terminating the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child failed: {status}"
        );
    }
    STOP.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
}

thread_local! {
    // A TLS value with a destructor that frees memory at thread exit, after the allocator's
    // own thread-exit flush may have run.
    static LATE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[test]
fn thread_local_destructors_may_free_at_thread_exit() {
    let hs: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                LATE.with(|l| l.borrow_mut().extend((0..100).map(|i| vec![7u8; i * 10])));
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
