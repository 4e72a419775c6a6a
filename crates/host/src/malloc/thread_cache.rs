//! Per-thread caches: the lock-free fast path of `malloc` and `free`.
//!
//! Each thread owns one [`ThreadCache`]: per size class a LIFO list of free objects linked
//! through their first word. `malloc` pops, `free` pushes — whichever thread allocated the
//! object, so a free from another thread takes no lock either. A list that runs dry takes a
//! batch from the central list; one that grows past two batches gives its top batch back.
//! Both are single lock operations per batch. The same holds for the medium classes (40 KiB
//! .. 1 MiB); their lists also share a byte budget ([`MEDIUM_CACHE_BYTES`]), so a thread
//! never sits on more than that much medium memory. A few freed large blocks are kept too
//! ([`LARGE_CACHE_BYTES`]), so malloc/free loops of large sizes do not split and merge
//! page-heap blocks every time.
//!
//! # Thread-local state inside a malloc
//!
//! The only thread-local is one pointer-sized slot without a destructor ([`super::tls`]: an
//! initial-exec TLS variable, or a `const` `thread_local!`); it never registers anything and
//! never allocates, so it is safe when this allocator *is* the C `malloc` (LD_PRELOAD).
//! Its states:
//! - null: not initialised yet; the first call runs [`init_thread`];
//! - [`DEAD`]: initialising (re-entrancy guard) or the thread's cache was already flushed at
//!   thread exit; calls go straight to the central lists, under their locks;
//! - otherwise: the thread's cache.
//!
//! Caches come from an mmapped pool, never from the heap. Thread exit is observed through a
//! pthread key (see [`crate::os::ThreadExitKey`]): its destructor marks the slot DEAD, gives
//! every cached object back to the central lists and returns the cache to the pool.

use super::central::{self, Chain};
use super::size_class::{CLASS_SIZE, FIRST_MEDIUM, NUM_CLASSES, batch_size};
use super::span::Node;
use super::tls;
use crate::os::{self, Lock, ThreadExitKey};
use std::ffi::c_void;
use std::ptr;
use std::sync::OnceLock;

/// The slot value of a thread that must use the central lists directly.
const DEAD: usize = 1;

/// The thread's slot (see [`super::tls`]).
struct Cache;
impl Cache {
    #[inline(always)]
    fn get(&self) -> *mut ThreadCache {
        tls::get()
    }
    #[inline(always)]
    fn set(&self, p: *mut ThreadCache) {
        tls::set(p)
    }
}
static CACHE: Cache = Cache;

#[derive(Clone, Copy)]
#[repr(C)]
struct List {
    /// Top object; meaningless when `len == 0` (lists are not null-terminated).
    head: *mut Node,
    len: u32,
    /// Length above which a batch goes back to the central list.
    max: u32,
}

/// Large blocks a thread keeps for reuse.
const LARGE_SLOTS: usize = 4;
/// Bytes of the large blocks a thread keeps together (so also the largest block it keeps);
/// the rest goes to the central span cache.
pub const LARGE_CACHE_BYTES: usize = 16 << 20;
/// Bytes of medium objects a thread's lists may hold together; a free that goes above it
/// gives batches back until the lists hold at most three quarters of it.
pub const MEDIUM_CACHE_BYTES: usize = 4 << 20;

/// One thread's cache of free objects, by size class, and of a few large blocks.
#[repr(C)]
pub(crate) struct ThreadCache {
    lists: [List; NUM_CLASSES],
    /// Bytes of the objects on the medium lists (`lists[FIRST_MEDIUM..]`).
    medium_bytes: usize,
    /// `(address, bytes)` of cached large blocks; address 0 = empty slot.
    large: [(usize, usize); LARGE_SLOTS],
    large_bytes: usize,
    /// Round-robin victim for eviction.
    large_next: usize,
    /// Link in the pool of unused caches.
    pool_next: *mut ThreadCache,
}

// ------------------------------------------------------------------ fast paths

/// Allocates an object of `class`; null only when the OS refuses memory.
#[inline]
pub(crate) fn alloc(class: usize) -> *mut u8 {
    let tc = CACHE.get();
    if tc as usize > DEAD {
        // SAFETY: a non-sentinel slot points at this thread's live cache, used only by it.
        let t = unsafe { &mut *tc };
        let l = &mut t.lists[class];
        if l.len != 0 {
            let n = l.head;
            // SAFETY: the first `len` nodes of the list are free objects owned by this cache.
            l.head = unsafe { (*n).next };
            l.len -= 1;
            if class >= FIRST_MEDIUM {
                t.medium_bytes -= CLASS_SIZE[class] as usize;
            }
            return n.cast();
        }
        return refill(t, class);
    }
    alloc_slow(tc, class)
}

/// Frees an object of `class`.
///
/// # Safety
/// `p` is a live object of `class` allocated by this allocator and not used afterwards.
#[inline]
pub(crate) unsafe fn free(p: *mut u8, class: usize) {
    let tc = CACHE.get();
    if tc as usize > DEAD {
        // SAFETY: as in `alloc`.
        let t = unsafe { &mut *tc };
        let l = &mut t.lists[class];
        let n = p.cast::<Node>();
        // SAFETY: p is a dead object of at least 8 bytes, now owned by this cache.
        unsafe { (*n).next = l.head };
        l.head = n;
        l.len += 1;
        // Every slow action is a tail call, so the small-object path needs no saved
        // registers (a push and pop of three of them cost ~1 ns per free).
        if class >= FIRST_MEDIUM {
            t.medium_bytes += CLASS_SIZE[class] as usize;
            if t.medium_bytes > MEDIUM_CACHE_BYTES || t.lists[class].len > t.lists[class].max {
                return freed_medium(t, class);
            }
            return;
        }
        if l.len > l.max {
            release_batch(t, class);
        }
        return;
    }
    // SAFETY: caller contract.
    unsafe { free_slow(tc, p, class) }
}

// ------------------------------------------------------------------ large blocks

/// A cached large block of at least `bytes` and at most `bytes * 5 / 4` bytes (the best
/// fit), if this thread has one, with its size. Large blocks are aligned to the next power
/// of two of their size, so any block that is large enough is aligned enough.
#[inline]
pub(crate) fn take_large(bytes: usize) -> Option<(*mut u8, usize)> {
    let tc = CACHE.get();
    if tc as usize <= DEAD {
        return None;
    }
    // SAFETY: this thread's live cache.
    let tc = unsafe { &mut *tc };
    let slot = tc
        .large
        .iter_mut()
        .filter(|s| s.0 != 0 && s.1 >= bytes && s.1 <= bytes + bytes / 4)
        .min_by_key(|s| s.1)?;
    let (addr, size) = std::mem::take(slot);
    tc.large_bytes -= size;
    Some((addr as *mut u8, size))
}

/// Offers a freed large block to this thread's cache. Returns the blocks the caller must give
/// back to the page heap: the block itself if it was not kept, or a block evicted for it.
pub(crate) fn keep_large(addr: usize, bytes: usize) -> Option<(usize, usize)> {
    let tc = CACHE.get();
    if tc as usize <= DEAD || bytes > LARGE_CACHE_BYTES {
        return Some((addr, bytes));
    }
    // SAFETY: this thread's live cache.
    let tc = unsafe { &mut *tc };
    let mut evicted = None;
    let i = match tc.large.iter().position(|s| s.0 == 0) {
        Some(i) if tc.large_bytes + bytes <= LARGE_CACHE_BYTES => i,
        _ => {
            let i = tc.large_next % LARGE_SLOTS;
            tc.large_next += 1;
            if tc.large[i].0 != 0 {
                evicted = Some(tc.large[i]);
                tc.large_bytes -= tc.large[i].1;
            }
            i
        }
    };
    if tc.large_bytes + bytes > LARGE_CACHE_BYTES {
        // Still over budget after one eviction: keep the cache as it is.
        tc.large[i] = evicted.unwrap_or((0, 0));
        tc.large_bytes += tc.large[i].1;
        return Some((addr, bytes));
    }
    tc.large[i] = (addr, bytes);
    tc.large_bytes += bytes;
    evicted
}

// ------------------------------------------------------------------ batch transfers

/// Fills the empty list of `class` with a batch from the central list; returns one object.
#[cold]
fn refill(t: &mut ThreadCache, class: usize) -> *mut u8 {
    let chain = central::take(class, batch_size(class));
    if chain.len == 0 {
        return ptr::null_mut();
    }
    let l = &mut t.lists[class];
    // SAFETY: the chain's first `len` nodes are linked free objects now owned by us.
    l.head = unsafe { (*chain.head).next };
    l.len = chain.len - 1;
    if class >= FIRST_MEDIUM {
        t.medium_bytes += l.len as usize * CLASS_SIZE[class] as usize;
    }
    chain.head.cast()
}

/// Gives the top batch of the list of `class` back to the central list.
#[cold]
fn release_batch(t: &mut ThreadCache, class: usize) {
    let l = &mut t.lists[class];
    let n = batch_size(class).min(l.len);
    if class >= FIRST_MEDIUM {
        t.medium_bytes -= n as usize * CLASS_SIZE[class] as usize;
    }
    // SAFETY: a list of `len` objects; we detach the first `n` of them.
    unsafe { central::give(class, detach(l, n)) };
}

/// A medium object was pushed on its list (and counted in `medium_bytes`), and the list
/// is past its limit or the medium lists past their byte budget.
#[cold]
fn freed_medium(t: &mut ThreadCache, class: usize) {
    if t.lists[class].len > t.lists[class].max {
        release_batch(t, class);
    }
    if t.medium_bytes > MEDIUM_CACHE_BYTES {
        trim_medium(t, class);
    }
}

/// The medium lists hold more than [`MEDIUM_CACHE_BYTES`]: gives batches back, first from
/// `class` (the list just freed into), then from the largest classes, until they hold at
/// most three quarters of it (hysteresis, so the next frees do not trim again at once).
#[cold]
fn trim_medium(t: &mut ThreadCache, class: usize) {
    let target = MEDIUM_CACHE_BYTES / 4 * 3;
    for c in std::iter::once(class).chain((FIRST_MEDIUM..NUM_CLASSES).rev()) {
        while t.medium_bytes > target && t.lists[c].len > 0 {
            release_batch(t, c);
        }
    }
}

/// Detaches the top `n` (1..=len) objects of `l` as a chain.
///
/// # Safety
/// `l` is a valid list owned by the caller.
unsafe fn detach(l: &mut List, n: u32) -> Chain {
    let head = l.head;
    let mut tail = head;
    for _ in 1..n {
        // SAFETY: fewer than `len` links are followed, all inside the list.
        tail = unsafe { (*tail).next };
    }
    l.len -= n;
    if l.len != 0 {
        // SAFETY: `tail` is a node of the list with `len` more nodes after it.
        l.head = unsafe { (*tail).next };
    }
    Chain { head, tail, len: n }
}

// ------------------------------------------------------------------ slow paths

#[cold]
fn alloc_slow(tc: *mut ThreadCache, class: usize) -> *mut u8 {
    if tc.is_null() {
        let tc = init_thread();
        if !tc.is_null() {
            return alloc(class);
        }
    }
    central::take(class, 1).head.cast()
}

#[cold]
unsafe fn free_slow(tc: *mut ThreadCache, p: *mut u8, class: usize) {
    if tc.is_null() && !init_thread().is_null() {
        // SAFETY: caller contract, unchanged.
        return unsafe { free(p, class) };
    }
    let mut chain = Chain::EMPTY;
    // SAFETY: caller contract: p is a dead object of `class`.
    unsafe {
        chain.push(p.cast());
        central::give(class, chain);
    }
}

static KEY: OnceLock<ThreadExitKey> = OnceLock::new();

/// Gives this thread a cache; null if it must use the central lists (re-entered while
/// initialising, after thread exit, or when no cache could be mapped).
#[cold]
fn init_thread() -> *mut ThreadCache {
    if !CACHE.get().is_null() {
        return ptr::null_mut();
    }
    CACHE.set(DEAD as *mut ThreadCache);
    super::fork::register_once();
    let Some(key) = KEY.get().or_else(|| {
        let k = ThreadExitKey::new(on_thread_exit)?;
        Some(KEY.get_or_init(|| k))
    }) else {
        return ptr::null_mut();
    };
    let tc = pool_take();
    if tc.is_null() {
        return tc;
    }
    // SAFETY: the cache stays this thread's until the destructor gives it back.
    unsafe { key.set(tc.cast()) };
    CACHE.set(tc);
    tc
}

/// pthread key destructor: runs at thread exit with the thread's cache.
unsafe extern "C" fn on_thread_exit(p: *mut c_void) {
    CACHE.set(DEAD as *mut ThreadCache);
    let tc = p.cast::<ThreadCache>();
    // SAFETY: the key's value is the cache this thread owned; nobody else uses it.
    unsafe { flush(tc) };
    pool_give(tc);
}

/// Gives every cached object of `tc` back to the central lists.
///
/// # Safety
/// `tc` is a live cache not used concurrently.
unsafe fn flush(tc: *mut ThreadCache) {
    // SAFETY: caller contract.
    let t = unsafe { &mut *tc };
    for slot in &mut t.large {
        let (addr, bytes) = std::mem::take(slot);
        if addr != 0 {
            super::large::release(addr, bytes);
        }
    }
    t.large_bytes = 0;
    for class in 0..NUM_CLASSES {
        while t.lists[class].len > 0 {
            release_batch(t, class);
        }
    }
    debug_assert_eq!(t.medium_bytes, 0);
}

/// Flushes the calling thread's cache (tests and statistics use it to settle counts).
pub fn flush_current_thread() {
    let tc = CACHE.get();
    if tc as usize > DEAD {
        // SAFETY: this thread's live cache, used by nobody else.
        unsafe { flush(tc) };
    }
}

// ------------------------------------------------------------------ pool of caches

struct Pool {
    free: *mut ThreadCache,
    bump: usize,
    end: usize,
}
// SAFETY: the pool's pointers are mmapped caches only followed under the lock.
unsafe impl Send for Pool {}

static POOL: Lock<Pool> = Lock::new(Pool {
    free: ptr::null_mut(),
    bump: 0,
    end: 0,
});
const POOL_CHUNK: usize = 64 * 1024;

fn pool_take() -> *mut ThreadCache {
    let size = std::mem::size_of::<ThreadCache>().next_multiple_of(64);
    let mut p = POOL.lock();
    let tc = if !p.free.is_null() {
        let tc = p.free;
        // SAFETY: caches on the pool list are unused and were initialised by us.
        p.free = unsafe { (*tc).pool_next };
        tc
    } else {
        if p.bump + size > p.end {
            let Some(chunk) = os::map(POOL_CHUNK) else {
                return ptr::null_mut();
            };
            p.bump = chunk.as_ptr() as usize;
            p.end = p.bump + POOL_CHUNK;
        }
        let tc = p.bump as *mut ThreadCache;
        p.bump += size;
        tc
    };
    let mut lists = [List {
        head: ptr::null_mut(),
        len: 0,
        max: 0,
    }; NUM_CLASSES];
    for (c, l) in lists.iter_mut().enumerate() {
        l.max = 2 * batch_size(c);
    }
    // SAFETY: tc is a suitably aligned, unused slot of a pool chunk.
    unsafe {
        tc.write(ThreadCache {
            lists,
            medium_bytes: 0,
            large: [(0, 0); LARGE_SLOTS],
            large_bytes: 0,
            large_next: 0,
            pool_next: ptr::null_mut(),
        })
    };
    tc
}

fn pool_give(tc: *mut ThreadCache) {
    let mut p = POOL.lock();
    // SAFETY: tc is an emptied cache no thread uses any more.
    unsafe { (*tc).pool_next = p.free };
    p.free = tc;
}

/// Raw lock/unlock of the pool, for the `fork` handlers.
pub(crate) fn lock_pool(lock: bool) {
    if lock {
        POOL.raw_lock();
    } else {
        // SAFETY: paired with the raw_lock in the prepare handler.
        unsafe { POOL.raw_unlock() };
    }
}
