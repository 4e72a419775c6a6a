//! The central cache of free large blocks: recently freed large blocks, kept whole (not
//! merged into the buddy) and still resident, so that the next large request of a similar
//! size reuses memory whose pages are already faulted in instead of splitting page-heap
//! memory that was purged or never touched.
//!
//! Policy (the large-block counterpart of jemalloc's dirty decay and mimalloc's purge delay):
//!
//! - a request takes the smallest cached block of at least its size and at most
//!   [`FIT_NUM`]/[`FIT_DEN`] (2) times it (the tail stays unused, and unfaulted if it never was);
//! - the cache holds at most [`SLOTS`] blocks and [`CACHE_BYTES`] bytes: a block that does
//!   not fit evicts the oldest ones to the page heap;
//! - a block cached for more than [`DECAY_MS`] goes to the page heap at the next cache
//!   operation, where the purge policy ([`super::purge`]) returns it to the OS after it stays
//!   free for one to two more seconds (or at once, under that policy's amount rules).
//!
//! So at most [`CACHE_BYTES`] of dirty memory sits here, for at most about [`DECAY_MS`].
//!
//! The cache is one lock: large requests cost page faults in the tens of microseconds when
//! their memory is used, so a short critical section is not what limits them.

use crate::os::{self, Lock};

/// Cached blocks at most.
pub const SLOTS: usize = 32;
/// Cached bytes at most (128 MiB).
pub const CACHE_BYTES: usize = 128 << 20;
/// Age after which a cached block goes back to the page heap.
pub const DECAY_MS: u64 = 1000;
/// A cached block serves requests down to `FIT_DEN / FIT_NUM` of its size.
const FIT_NUM: usize = 4;
const FIT_DEN: usize = 2;

#[derive(Clone, Copy)]
struct Entry {
    addr: usize,
    bytes: usize,
    freed_ms: u64,
}

/// Invariants: `entries[..len]` are the cached blocks, oldest first; `bytes` is their sum.
struct Cache {
    entries: [Entry; SLOTS],
    len: usize,
    bytes: usize,
}

static CACHE: Lock<Cache> = Lock::new(Cache {
    entries: [Entry {
        addr: 0,
        bytes: 0,
        freed_ms: 0,
    }; SLOTS],
    len: 0,
    bytes: 0,
});

/// Blocks the caller must give to the page heap (evicted or decayed), outside the lock.
pub(crate) type Evicted = ([(usize, usize); SLOTS + 1], usize);

impl Cache {
    fn remove(&mut self, i: usize) -> Entry {
        let e = self.entries[i];
        self.entries.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.bytes -= e.bytes;
        e
    }

    /// Moves every block older than [`DECAY_MS`] to `out`.
    fn decay(&mut self, now: u64, out: &mut Evicted) {
        while self.len > 0 && now >= self.entries[0].freed_ms + DECAY_MS {
            let e = self.remove(0);
            out.0[out.1] = (e.addr, e.bytes);
            out.1 += 1;
        }
    }
}

/// Takes a cached block for a request of `bytes`: `(address, block bytes)`, plus the blocks
/// that decayed meanwhile (for the page heap).
pub(crate) fn take(bytes: usize, evicted: &mut Evicted) -> Option<(usize, usize)> {
    let now = os::now_ms();
    let mut c = CACHE.lock();
    c.decay(now, evicted);
    let max = bytes / FIT_DEN * FIT_NUM;
    let best = (0..c.len)
        .filter(|&i| (bytes..=max).contains(&c.entries[i].bytes))
        .min_by_key(|&i| c.entries[i].bytes)?;
    let e = c.remove(best);
    Some((e.addr, e.bytes))
}

/// Caches a freed block; fills `evicted` with the blocks the caller must give to the page
/// heap (older ones pushed out, decayed ones, or this one if it is too large to cache).
pub(crate) fn put(addr: usize, bytes: usize, evicted: &mut Evicted) {
    if bytes > CACHE_BYTES / 2 {
        evicted.0[evicted.1] = (addr, bytes);
        evicted.1 += 1;
        return;
    }
    let now = os::now_ms();
    let mut c = CACHE.lock();
    c.decay(now, evicted);
    while c.len == SLOTS || c.bytes + bytes > CACHE_BYTES {
        let e = c.remove(0);
        evicted.0[evicted.1] = (e.addr, e.bytes);
        evicted.1 += 1;
    }
    let len = c.len;
    c.entries[len] = Entry {
        addr,
        bytes,
        freed_ms: now,
    };
    c.len += 1;
    c.bytes += bytes;
}

/// Empties the cache into `evicted` (for [`super::purge_all`] and tests).
pub(crate) fn drain(evicted: &mut Evicted) {
    let mut c = CACHE.lock();
    while c.len > 0 {
        let e = c.remove(0);
        evicted.0[evicted.1] = (e.addr, e.bytes);
        evicted.1 += 1;
    }
}

/// Bytes cached now.
pub(crate) fn cached_bytes() -> usize {
    CACHE.lock().bytes
}

/// Raw lock/unlock for the `fork` handlers.
pub(crate) fn lock(lock: bool) {
    if lock {
        CACHE.raw_lock();
    } else {
        // SAFETY: paired with the raw_lock in the prepare handler.
        unsafe { CACHE.raw_unlock() };
    }
}
