//! Per-thread magazines: the lock-free front of every slab cache.
//!
//! Each thread keeps, per cache, a *magazine*: a small stack of free objects. `alloc` pops
//! and `free` pushes without any lock. An empty magazine is refilled from the cache's depot
//! of full magazines (one lock operation) or from its slabs; a full one is parked in the
//! depot or half-emptied into the slabs. At thread exit the magazines go back to their
//! caches (a cache that no longer exists is skipped: its slabs are gone).
//!
//! This is an ordinary library data structure, not part of a global allocator, so it uses a
//! `thread_local!` with a destructor and `Vec`s freely.

use std::cell::RefCell;
use std::sync::Weak;

/// What a magazine needs from its cache, with the object type erased.
pub(crate) trait Sink: Send + Sync {
    /// Takes back free objects (at thread exit or when a magazine overflows).
    fn take_back(&self, objs: &mut Vec<usize>, stats: &mut LocalStats);
}

/// Counters a thread accumulates locally and adds to its cache's totals in batches.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LocalStats {
    pub(crate) allocs: u64,
    pub(crate) frees: u64,
    pub(crate) hits: u64,
}

pub(crate) struct Magazine {
    pub(crate) cache_id: u64,
    pub(crate) sink: Weak<dyn Sink>,
    pub(crate) objs: Vec<usize>,
    pub(crate) stats: LocalStats,
}

impl Drop for Magazine {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.upgrade() {
            sink.take_back(&mut self.objs, &mut self.stats);
        }
    }
}

thread_local! {
    static MAGAZINES: RefCell<Vec<Magazine>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's magazine for `cache_id`, creating it with `sink` if needed.
/// Returns `None` during thread teardown, when the thread-local is gone.
pub(crate) fn with<R>(
    cache_id: u64,
    sink: impl FnOnce() -> Weak<dyn Sink>,
    f: impl FnOnce(&mut Magazine) -> R,
) -> Option<R> {
    MAGAZINES
        .try_with(|mags| {
            let mut mags = mags.borrow_mut();
            let i = match mags.iter().position(|m| m.cache_id == cache_id) {
                Some(i) => i,
                None => {
                    // Drop magazines of caches that are gone before adding one.
                    mags.retain(|m| m.sink.strong_count() > 0);
                    mags.push(Magazine {
                        cache_id,
                        sink: sink(),
                        objs: Vec::new(),
                        stats: LocalStats::default(),
                    });
                    mags.len() - 1
                }
            };
            f(&mut mags[i])
        })
        .ok()
}
