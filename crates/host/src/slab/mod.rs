//! Typed object caches in the style of the kernel's kmem_cache.
//!
//! # Model
//!
//! A [`SlabCache<T>`] hands out objects of one type, carved from *slabs*: blocks of a page
//! source (a [`HostBuddy`]), aligned to their size so an object finds its slab header by
//! masking its address. Every object is **constructed once**, when its slab is created, by
//! the cache's constructor, and stays constructed while free: `free` does not reset it (as
//! with kmem_cache, the owner returns objects in a reusable state), and destructors run only
//! when a slab is given back. Objects are aligned to (and padded to) a 64-byte cache line.
//!
//! Slabs are on one of three lists: *full*, *partial* or *empty*. Allocation takes from
//! partial slabs first, then empty ones, then creates a slab; an empty slab beyond
//! [`SlabConfig::max_empty_slabs`] goes back to the page source at once.
//!
//! In front sits a per-thread magazine layer ([`magazine`]): the common `alloc`/`free` is a
//! pop/push on the calling thread's magazine with no lock (one atomic bit flip on the slab's
//! alloc bitmap, which also catches double frees).
//!
//! Invariants (checked by [`SlabCache::check_invariants`]): every slab is on the list of its
//! state; a slab's free-index list holds exactly `capacity - in_use` distinct objects, none
//! of them marked allocated; list counts match; objects held by users are marked allocated.

mod layout;
mod magazine;
#[cfg(test)]
mod tests;

use crate::buddy::HostBuddy;
use crate::os::Lock;
use layout::{Geometry, Header, MAGIC, NONE, State};
use magazine::{LocalStats, Sink};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Tuning of a [`SlabCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabConfig {
    /// Bytes per slab (a power of two the page source can serve). Default 64 KiB.
    pub slab_size: usize,
    /// Objects per thread magazine. Default 32.
    pub magazine_size: usize,
    /// Full magazines the depot may hold. Default 8.
    pub depot_magazines: usize,
    /// Empty slabs kept for reuse; more go back to the page source. Default 2.
    pub max_empty_slabs: usize,
}

impl Default for SlabConfig {
    fn default() -> Self {
        SlabConfig {
            slab_size: 64 << 10,
            magazine_size: 32,
            depot_magazines: 8,
            max_empty_slabs: 2,
        }
    }
}

/// Why a cache could not be made or an object not freed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlabError {
    #[error("objects of {size} bytes (align {align}) do not fit slabs of {slab_size} bytes")]
    DoesNotFit {
        size: usize,
        align: usize,
        slab_size: usize,
    },
    #[error("{0:#x} is not an object of this cache")]
    Foreign(usize),
    #[error("{0:#x} is already free (double free)")]
    DoubleFree(usize),
}

/// Per-cache statistics. Allocation counters are gathered from thread magazines in batches,
/// so they may lag by up to a magazine per thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabStats {
    pub name: &'static str,
    pub object_size: usize,
    pub objects_per_slab: usize,
    pub slabs_full: usize,
    pub slabs_partial: usize,
    pub slabs_empty: usize,
    pub slabs_created: u64,
    pub slabs_released: u64,
    pub allocs: u64,
    pub frees: u64,
    /// Allocations served by a magazine without a lock.
    pub magazine_hits: u64,
}

#[derive(Default)]
struct Lists {
    heads: [usize; 3],
    counts: [usize; 3],
    created: u64,
    released: u64,
    allocs: u64,
    frees: u64,
    hits: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Inner<T> {
    id: u64,
    name: &'static str,
    geo: Geometry,
    config: SlabConfig,
    source: Arc<HostBuddy>,
    ctor: Box<dyn Fn() -> T + Send + Sync>,
    lists: Lock<Lists>,
    depot: Lock<Vec<Vec<usize>>>,
    me: Weak<Inner<T>>,
    _owns: PhantomData<T>,
}

/// A typed object cache. See the module docs.
pub struct SlabCache<T: Send + 'static> {
    inner: Arc<Inner<T>>,
}

impl<T: Send + 'static> std::fmt::Debug for SlabCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlabCache")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id)
            .finish()
    }
}

impl<T: Send + 'static> SlabCache<T> {
    /// A cache named `name` whose objects are built by `ctor`, with slabs from `source`.
    pub fn new(
        name: &'static str,
        source: Arc<HostBuddy>,
        config: SlabConfig,
        ctor: impl Fn() -> T + Send + Sync + 'static,
    ) -> Result<SlabCache<T>, SlabError> {
        let (size, align) = (size_of::<T>(), align_of::<T>());
        let geo = Geometry::new(config.slab_size, size, align).ok_or(SlabError::DoesNotFit {
            size,
            align,
            slab_size: config.slab_size,
        })?;
        let inner = Arc::new_cyclic(|me| Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            geo,
            config,
            source,
            ctor: Box::new(ctor),
            lists: Lock::new(Lists::default()),
            depot: Lock::new(Vec::new()),
            me: me.clone(),
            _owns: PhantomData,
        });
        Ok(SlabCache { inner })
    }

    /// A cache whose constructor is `T::default`.
    pub fn with_default(
        name: &'static str,
        source: Arc<HostBuddy>,
        config: SlabConfig,
    ) -> Result<SlabCache<T>, SlabError>
    where
        T: Default,
    {
        SlabCache::new(name, source, config, T::default)
    }

    /// An object (constructed, possibly used before), freed when the box drops.
    pub fn alloc(&self) -> Option<SlabBox<'_, T>> {
        self.alloc_raw().map(|ptr| SlabBox { cache: self, ptr })
    }

    /// An object, to be returned with [`SlabCache::free_raw`]. `None` when the page source
    /// is exhausted.
    pub fn alloc_raw(&self) -> Option<NonNull<T>> {
        let inner = &self.inner;
        let got = magazine::with(
            inner.id,
            || inner.sink(),
            |m| {
                let hit = m.objs.pop();
                let addr = match hit {
                    Some(a) => Some(a),
                    None => inner.refill(&mut m.objs, &mut m.stats),
                }?;
                m.stats.allocs += 1;
                m.stats.hits += u64::from(hit.is_some());
                Some(addr)
            },
        );
        let addr = match got {
            Some(a) => a?,
            // Thread teardown: go straight to the slabs.
            None => {
                let mut v = Vec::new();
                inner.refill_from_slabs(&mut v, 1);
                v.pop()?
            }
        };
        inner.mark(addr, true);
        NonNull::new(addr as *mut T)
    }

    /// Returns an object. Pointers that are not objects of this cache, and objects that are
    /// already free, are reported and change nothing.
    pub fn free_raw(&self, obj: NonNull<T>) -> Result<(), SlabError> {
        let inner = &self.inner;
        let addr = obj.as_ptr() as usize;
        inner.validate(addr)?;
        if !inner.mark(addr, false) {
            return Err(SlabError::DoubleFree(addr));
        }
        let pushed = magazine::with(
            inner.id,
            || inner.sink(),
            |m| {
                m.objs.push(addr);
                m.stats.frees += 1;
                if m.objs.len() >= inner.config.magazine_size {
                    inner.overflow(&mut m.objs, &mut m.stats);
                }
            },
        );
        if pushed.is_none() {
            inner.take_back(
                &mut vec![addr],
                &mut LocalStats {
                    frees: 1,
                    ..LocalStats::default()
                },
            );
        }
        Ok(())
    }

    pub fn stats(&self) -> SlabStats {
        let l = self.inner.lists.lock();
        SlabStats {
            name: self.inner.name,
            object_size: self.inner.geo.stride,
            objects_per_slab: self.inner.geo.capacity,
            slabs_empty: l.counts[State::Empty as usize],
            slabs_partial: l.counts[State::Partial as usize],
            slabs_full: l.counts[State::Full as usize],
            slabs_created: l.created,
            slabs_released: l.released,
            allocs: l.allocs,
            frees: l.frees,
            magazine_hits: l.hits,
        }
    }

    /// Gives this thread's magazine back to the slabs and flushes its counters, so that
    /// statistics and slab states are exact for this thread.
    pub fn flush_thread(&self) {
        let inner = &self.inner;
        magazine::with(
            inner.id,
            || inner.sink(),
            |m| inner.take_back(&mut m.objs, &mut m.stats),
        );
    }

    /// Returns every cached free object it can reach to the slabs — this thread's magazine
    /// and the depot — so empty slabs beyond the limit go back to the page source
    /// (`kmem_cache_shrink`). Other threads' magazines are untouched.
    pub fn shrink(&self) {
        self.flush_thread();
        let parked = std::mem::take(&mut *self.inner.depot.lock());
        for mut m in parked {
            self.inner.take_back(&mut m, &mut LocalStats::default());
        }
    }

    /// Checks the invariants of the module docs.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.check()
    }
}

// SAFETY: objects are handed to one holder at a time; the cache's shared state is behind
// locks and atomics; T: Send lets objects move between threads.
unsafe impl<T: Send + 'static> Sync for Inner<T> {}
// SAFETY: as above.
unsafe impl<T: Send + 'static> Send for Inner<T> {}

impl<T: Send + 'static> Inner<T> {
    fn sink(&self) -> Weak<dyn Sink> {
        self.me.clone()
    }

    fn magic(&self) -> u64 {
        MAGIC ^ self.id
    }

    fn slab_of(&self, addr: usize) -> usize {
        addr & !(self.geo.slab_size - 1)
    }

    /// Checks that `addr` is an object start in a slab of this cache.
    fn validate(&self, addr: usize) -> Result<(), SlabError> {
        if !self.source.contains(addr as *const u8) {
            return Err(SlabError::Foreign(addr));
        }
        let slab = self.slab_of(addr);
        // SAFETY: the whole range of the page source is mapped, so reading the first word of
        // a slab-aligned address inside it is always valid.
        let magic = unsafe { (slab as *const u64).read_volatile() };
        if magic != self.magic() || self.geo.index_of(slab, addr).is_none() {
            return Err(SlabError::Foreign(addr));
        }
        Ok(())
    }

    /// Sets or clears the alloc bit of the object at `addr`; returns whether it changed.
    fn mark(&self, addr: usize, allocated: bool) -> bool {
        let slab = self.slab_of(addr);
        let i = self.geo.index_of(slab, addr).expect("validated object");
        // SAFETY: the bitmap lies inside a live slab of this cache (validated or just taken).
        let word = unsafe { &*self.geo.bits(slab).add(i / 64) };
        let bit = 1u64 << (i % 64);
        let old = if allocated {
            word.fetch_or(bit, Ordering::AcqRel)
        } else {
            word.fetch_and(!bit, Ordering::AcqRel)
        };
        (old & bit != 0) != allocated
    }

    /// Refills an empty magazine from the depot or the slabs; returns one object.
    fn refill(&self, objs: &mut Vec<usize>, stats: &mut LocalStats) -> Option<usize> {
        self.flush_stats(stats);
        if let Some(full) = self.depot.lock().pop() {
            *objs = full;
        } else {
            self.refill_from_slabs(objs, self.config.magazine_size.div_ceil(2));
        }
        objs.pop()
    }

    /// A full magazine: park it in the depot, or give half back to the slabs.
    fn overflow(&self, objs: &mut Vec<usize>, stats: &mut LocalStats) {
        {
            let mut depot = self.depot.lock();
            if depot.len() < self.config.depot_magazines {
                depot.push(std::mem::replace(
                    objs,
                    Vec::with_capacity(self.config.magazine_size),
                ));
                return;
            }
        }
        let keep = objs.len() / 2;
        let mut rest = objs.split_off(keep);
        self.take_back(&mut rest, stats);
    }

    fn flush_stats(&self, s: &mut LocalStats) {
        let mut l = self.lists.lock();
        l.allocs += s.allocs;
        l.frees += s.frees;
        l.hits += s.hits;
        *s = LocalStats::default();
    }

    // -------------------------------------------------------------- slab lists (locked)

    fn refill_from_slabs(&self, out: &mut Vec<usize>, want: usize) {
        let mut l = self.lists.lock();
        while out.len() < want {
            let slab = match (
                l.heads[State::Partial as usize],
                l.heads[State::Empty as usize],
            ) {
                (0, 0) => match self.new_slab(&mut l) {
                    Some(s) => s,
                    None => return,
                },
                (0, e) => e,
                (p, _) => p,
            };
            while out.len() < want {
                match self.take_object(&mut l, slab) {
                    Some(a) => out.push(a),
                    None => break,
                }
            }
        }
    }

    /// A new slab from the page source, all objects constructed, on the empty list.
    fn new_slab(&self, l: &mut Lists) -> Option<usize> {
        let (block, _) = self.source.alloc(self.geo.slab_size)?;
        let slab = block.as_ptr() as usize;
        let g = &self.geo;
        // SAFETY: the block is ours, aligned to slab_size and slab_size bytes long; the
        // geometry keeps header, bitmap, index array and objects inside it and disjoint.
        unsafe {
            g.header(slab).write(Header {
                magic: self.magic(),
                in_use: 0,
                free_head: 0,
                state: State::Empty,
                prev: 0,
                next: 0,
            });
            std::ptr::write_bytes(g.bits(slab) as *mut AtomicU64, 0, g.capacity.div_ceil(64));
            for i in 0..g.capacity {
                let next = if i + 1 < g.capacity {
                    (i + 1) as u16
                } else {
                    NONE
                };
                g.next_free(slab).add(i).write(next);
                (g.object(slab, i) as *mut T).write((self.ctor)());
            }
        }
        self.push(l, slab, State::Empty);
        l.created += 1;
        Some(slab)
    }

    fn take_object(&self, l: &mut Lists, slab: usize) -> Option<usize> {
        let h = self.header(slab);
        if h.free_head == NONE {
            return None;
        }
        let i = h.free_head as usize;
        // SAFETY: i < capacity: the index array is inside the slab.
        h.free_head = unsafe { self.geo.next_free(slab).add(i).read() };
        h.in_use += 1;
        let new_state = if h.free_head == NONE {
            State::Full
        } else {
            State::Partial
        };
        self.move_to(l, slab, new_state);
        Some(self.geo.object(slab, i))
    }

    fn put_object(&self, l: &mut Lists, addr: usize) {
        let slab = self.slab_of(addr);
        let i = self.geo.index_of(slab, addr).expect("object of this cache");
        let h = self.header(slab);
        // SAFETY: i < capacity.
        unsafe { self.geo.next_free(slab).add(i).write(h.free_head) };
        h.free_head = i as u16;
        h.in_use -= 1;
        if h.in_use == 0 {
            self.move_to(l, slab, State::Empty);
            if l.counts[State::Empty as usize] > self.config.max_empty_slabs {
                self.release_slab(l, slab);
            }
        } else {
            self.move_to(l, slab, State::Partial);
        }
    }

    /// Destroys the objects of an empty slab and gives it back to the page source.
    fn release_slab(&self, l: &mut Lists, slab: usize) {
        self.unlink(l, slab);
        self.destroy(slab);
        l.released += 1;
    }

    fn move_to(&self, l: &mut Lists, slab: usize, s: State) {
        if self.header(slab).state != s {
            self.unlink(l, slab);
            self.push(l, slab, s);
        }
    }

    fn push(&self, l: &mut Lists, slab: usize, s: State) {
        let head = l.heads[s as usize];
        let h = self.header(slab);
        (h.state, h.prev, h.next) = (s, 0, head);
        if head != 0 {
            self.header(head).prev = slab;
        }
        l.heads[s as usize] = slab;
        l.counts[s as usize] += 1;
    }

    fn unlink(&self, l: &mut Lists, slab: usize) {
        let h = self.header(slab);
        let (s, prev, next) = (h.state, h.prev, h.next);
        if prev == 0 {
            l.heads[s as usize] = next;
        } else {
            self.header(prev).next = next;
        }
        if next != 0 {
            self.header(next).prev = prev;
        }
        l.counts[s as usize] -= 1;
    }

    fn check(&self) -> Result<(), String> {
        let l = self.lists.lock();
        for s in [State::Empty, State::Partial, State::Full] {
            let (mut slab, mut prev, mut n) = (l.heads[s as usize], 0, 0);
            while slab != 0 {
                let h = self.header(slab);
                if h.magic != self.magic() || h.state != s || h.prev != prev {
                    return Err(format!("slab {slab:#x} on the {s:?} list is inconsistent"));
                }
                self.check_slab(slab, h)?;
                (prev, slab, n) = (slab, h.next, n + 1);
            }
            if n != l.counts[s as usize] {
                return Err(format!(
                    "{s:?} list has {n} slabs, count says {}",
                    l.counts[s as usize]
                ));
            }
        }
        Ok(())
    }

    fn check_slab(&self, slab: usize, h: &Header) -> Result<(), String> {
        let cap = self.geo.capacity;
        let mut seen = vec![false; cap];
        let mut i = h.free_head;
        while i != NONE {
            let ix = i as usize;
            if ix >= cap || seen[ix] {
                return Err(format!("slab {slab:#x}: free list broken at {ix}"));
            }
            seen[ix] = true;
            // SAFETY: the bitmap lies in the live slab.
            let word = unsafe { &*self.geo.bits(slab).add(ix / 64) }.load(Ordering::Acquire);
            if word >> (ix % 64) & 1 == 1 {
                return Err(format!(
                    "slab {slab:#x}: object {ix} is free but marked allocated"
                ));
            }
            // SAFETY: ix < capacity.
            i = unsafe { self.geo.next_free(slab).add(ix).read() };
        }
        let free = seen.iter().filter(|&&b| b).count();
        let expect = match h.state {
            State::Empty => free == cap,
            State::Full => free == 0,
            State::Partial => free > 0 && free < cap,
        };
        if free + h.in_use as usize != cap || !expect {
            return Err(format!(
                "slab {slab:#x}: {free} free + {} in use != {cap} or wrong state {:?}",
                h.in_use, h.state
            ));
        }
        Ok(())
    }
}

impl<T: Send + 'static> Sink for Inner<T> {
    fn take_back(&self, objs: &mut Vec<usize>, stats: &mut LocalStats) {
        self.flush_stats(stats);
        let mut l = self.lists.lock();
        for addr in objs.drain(..) {
            self.put_object(&mut l, addr);
        }
    }
}

/// The parts that need no bounds on `T`, so `Drop` can use them too.
impl<T> Inner<T> {
    // The lists lock (held by every caller, or `&mut self` in drop) makes this `&mut` unique.
    #[allow(clippy::mut_from_ref)]
    fn header(&self, slab: usize) -> &mut Header {
        // SAFETY: `slab` is a live slab of this cache and the caller holds the lists lock,
        // which guards every non-atomic header field.
        unsafe { &mut *self.geo.header(slab) }
    }

    /// Drops every object of a slab and gives the slab back to the page source.
    fn destroy(&self, slab: usize) {
        for i in 0..self.geo.capacity {
            // SAFETY: every object of a slab is constructed and no user holds one (the slab
            // is empty, or the cache is being dropped: `SlabBox` borrows cannot outlive it,
            // raw pointers are the caller's contract).
            unsafe { std::ptr::drop_in_place(self.geo.object(slab, i) as *mut T) };
        }
        self.header(slab).magic = 0;
        let _ = self
            .source
            .free(NonNull::new(slab as *mut u8).expect("slab address"));
    }
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        let heads = self.lists.lock().heads;
        for head in heads {
            let mut slab = head;
            while slab != 0 {
                let next = self.header(slab).next;
                self.destroy(slab);
                slab = next;
            }
        }
    }
}

/// An object of a [`SlabCache`], returned to it on drop.
pub struct SlabBox<'a, T: Send + 'static> {
    cache: &'a SlabCache<T>,
    ptr: NonNull<T>,
}

impl<T: Send + 'static> std::fmt::Debug for SlabBox<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlabBox({:p})", self.ptr)
    }
}

impl<T: Send + 'static> Deref for SlabBox<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the object is constructed and held exclusively by this box.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: Send + 'static> DerefMut for SlabBox<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref; &mut self makes the borrow unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: Send + 'static> Drop for SlabBox<'_, T> {
    fn drop(&mut self) {
        let r = self.cache.free_raw(self.ptr);
        debug_assert!(r.is_ok(), "{r:?}");
    }
}
