//! Slab cache tests: a property test against a reference model (a map of live objects) with
//! the invariant checker after every step, constructor/destructor accounting, and a
//! multi-threaded test whose frees are mostly remote.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;

const TAG: u64 = 0xC0FF_EE00_D15E_A5E5;

/// An object whose constructor leaves a tag and whose `uses` survives free/alloc cycles.
struct Obj {
    tag: u64,
    uses: u64,
    _pad: [u8; 40],
}

fn source() -> Arc<HostBuddy> {
    Arc::new(HostBuddy::new(64 << 20, 12, 22).unwrap())
}

fn small_config() -> SlabConfig {
    SlabConfig {
        slab_size: 8192,
        magazine_size: 4,
        depot_magazines: 2,
        max_empty_slabs: 1,
    }
}

fn obj_cache(src: Arc<HostBuddy>) -> SlabCache<Obj> {
    SlabCache::new("obj", src, small_config(), || Obj {
        tag: TAG,
        uses: 0,
        _pad: [0; 40],
    })
    .unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Alloc,
    Free(usize),
    DoubleFree(usize),
    Foreign(usize),
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Alloc),
        5 => any::<usize>().prop_map(Op::Free),
        1 => any::<usize>().prop_map(Op::DoubleFree),
        1 => any::<usize>().prop_map(Op::Foreign),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_the_reference_model(ops in prop::collection::vec(op(), 1..400)) {
        let cache = obj_cache(source());
        let mut live: BTreeMap<usize, u64> = BTreeMap::new();
        let mut freed: Vec<usize> = vec![];
        for op in ops {
            match op {
                Op::Alloc => {
                    let p = cache.alloc_raw().unwrap();
                    let a = p.as_ptr() as usize;
                    prop_assert_eq!(a % 64, 0, "cache-line aligned");
                    prop_assert!(!live.contains_key(&a), "handed out twice");
                    // SAFETY: a live object of the cache, held only here.
                    let o = unsafe { &mut *p.as_ptr() };
                    prop_assert_eq!(o.tag, TAG, "constructed once, state kept");
                    o.uses += 1;
                    live.insert(a, o.uses);
                    freed.retain(|&f| f != a);
                }
                Op::Free(i) if !live.is_empty() => {
                    let a = *live.keys().nth(i % live.len()).unwrap();
                    live.remove(&a);
                    prop_assert_eq!(cache.free_raw(NonNull::new(a as *mut Obj).unwrap()), Ok(()));
                    freed.push(a);
                }
                Op::DoubleFree(i) if !freed.is_empty() => {
                    let a = freed[i % freed.len()];
                    prop_assert_eq!(cache.free_raw(NonNull::new(a as *mut Obj).unwrap()), Err(SlabError::DoubleFree(a)));
                }
                Op::Foreign(i) => {
                    let x = 7u64;
                    let bad = [&x as *const u64 as usize, live.keys().next().map_or(64, |a| a + 8)][i % 2];
                    prop_assert_eq!(cache.free_raw(NonNull::new(bad as *mut Obj).unwrap()), Err(SlabError::Foreign(bad)));
                }
                Op::Flush => cache.flush_thread(),
                _ => {}
            }
            prop_assert!(cache.check_invariants().is_ok(), "{:?}", cache.check_invariants());
        }
        cache.flush_thread();
        let s = cache.stats();
        prop_assert_eq!(s.allocs - s.frees, live.len() as u64);
        prop_assert_eq!(s.slabs_created - s.slabs_released, (s.slabs_full + s.slabs_partial + s.slabs_empty) as u64);
        prop_assert!(s.slabs_empty <= 1);
        let held = (s.slabs_full + s.slabs_partial) * s.objects_per_slab;
        prop_assert!(held >= live.len());
        for a in live.keys() {
            prop_assert_eq!(cache.free_raw(NonNull::new(*a as *mut Obj).unwrap()), Ok(()));
        }
    }
}

#[test]
fn constructors_run_once_per_object_and_destructors_when_slabs_go() {
    static BUILT: AtomicUsize = AtomicUsize::new(0);
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    struct Counted(#[allow(dead_code)] u64);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
    let src = source();
    {
        let cache = SlabCache::new("counted", src.clone(), small_config(), || {
            BUILT.fetch_add(1, Ordering::Relaxed);
            Counted(1)
        })
        .unwrap();
        let per_slab = cache.stats().objects_per_slab;
        let objs: Vec<_> = (0..per_slab * 3).map(|_| cache.alloc().unwrap()).collect();
        let created = cache.stats().slabs_created as usize;
        assert!(created >= 3);
        assert_eq!(
            BUILT.load(Ordering::Relaxed),
            per_slab * created,
            "constructed once, at slab creation"
        );
        drop(objs);
        cache.shrink();
        cache.check_invariants().unwrap();
        let s = cache.stats();
        assert_eq!(
            (s.slabs_full, s.slabs_partial, s.slabs_empty),
            (0, 0, 1),
            "one empty slab kept"
        );
        assert_eq!(
            s.slabs_released as usize,
            created - 1,
            "the rest went back to the page source"
        );
        assert_eq!(DROPPED.load(Ordering::Relaxed), per_slab * (created - 1));
        // Reuse does not construct again.
        let again: Vec<_> = (0..per_slab / 2).map(|_| cache.alloc().unwrap()).collect();
        assert_eq!(BUILT.load(Ordering::Relaxed), per_slab * created);
        drop(again);
    }
    assert_eq!(
        DROPPED.load(Ordering::Relaxed),
        BUILT.load(Ordering::Relaxed),
        "dropping the cache destroys the rest"
    );
    assert_eq!(
        src.stats().in_use_bytes,
        0,
        "all slabs back in the page source"
    );
}

#[test]
fn objects_larger_than_a_slab_are_rejected() {
    let r = SlabCache::<[u8; 10000]>::new("big", source(), small_config(), || [0; 10000]);
    assert!(matches!(r, Err(SlabError::DoesNotFit { .. })));
}

#[test]
fn remote_frees_from_many_threads_keep_the_cache_consistent() {
    let cache = Arc::new(obj_cache(source()));
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (cache, tx, rx) = (cache.clone(), tx.clone(), rx.clone());
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    let p = cache.alloc_raw().unwrap();
                    // SAFETY: held exclusively until sent.
                    assert_eq!(unsafe { (*p.as_ptr()).tag }, TAG);
                    if (i + t) % 3 == 0 {
                        cache.free_raw(p).unwrap();
                    } else {
                        tx.send(p.as_ptr() as usize).unwrap();
                    }
                    let received = if i % 2 == 0 {
                        rx.lock().unwrap().try_recv().ok()
                    } else {
                        None
                    };
                    if let Some(a) = received {
                        cache
                            .free_raw(NonNull::new(a as *mut Obj).unwrap())
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for t in threads {
        t.join().unwrap();
    }
    for a in rx.lock().unwrap().try_iter() {
        cache
            .free_raw(NonNull::new(a as *mut Obj).unwrap())
            .unwrap();
    }
    cache.shrink();
    cache.check_invariants().unwrap();
    let s = cache.stats();
    assert_eq!(s.allocs, 80_000);
    assert_eq!(s.frees, 80_000);
    assert!(s.magazine_hits > 0);
    // Every object is back in its slab: all slabs are empty, at most one kept.
    assert_eq!((s.slabs_full, s.slabs_partial), (0, 0));
    assert!(s.slabs_empty <= 1);
}
