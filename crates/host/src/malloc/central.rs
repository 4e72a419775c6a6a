//! Central free lists: one per size class, shared by all threads, behind one lock each.
//!
//! Thread caches move objects here and back in *batches* ([`batch_size`] objects linked through
//! their first word). A full batch is parked whole in the class's transfer slots (tcmalloc's
//! transfer cache), so a batch freed by a consumer thread reaches a producer thread in O(1)
//! under the lock. Only when the slots are full or empty do objects go back to, or come from,
//! their spans; a span whose objects all came back is returned to the page heap at once
//! (its pages then follow the purge policy).

use super::arena::{self, GRANULE_ORDER, Owner};
use super::size_class::{CLASS_SIZE, NUM_CLASSES, batch_size, span_bytes};
use super::span::{Node, Span};
use super::stats::STATS;
use crate::os::Lock;
use std::ptr;
use std::sync::atomic::Ordering::Relaxed;

/// Full batches a class may park in its transfer slots.
const TRANSFER_SLOTS: usize = 16;
/// Bytes a class may park: a bound on the memory the transfer slots keep out of the page
/// heap (and so out of the purge policy's reach), 1 MiB per class.
const PARK_BYTES: usize = 1 << 20;

/// Batches `class` may park: [`TRANSFER_SLOTS`], fewer where its batches are large (medium
/// classes: 4 batches of 256 KiB down to one batch of one 1 MiB object).
const fn park_limit(class: usize) -> usize {
    let batch = batch_size(class) as usize * CLASS_SIZE[class] as usize;
    let n = PARK_BYTES / batch;
    if n < 1 {
        1
    } else if n > TRANSFER_SLOTS {
        TRANSFER_SLOTS
    } else {
        n
    }
}

/// A chain of `len` objects linked through their first word, `tail.next` unspecified.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chain {
    pub(crate) head: *mut Node,
    pub(crate) tail: *mut Node,
    pub(crate) len: u32,
}

impl Chain {
    pub(crate) const EMPTY: Chain = Chain {
        head: ptr::null_mut(),
        tail: ptr::null_mut(),
        len: 0,
    };

    /// Prepends `n`.
    ///
    /// # Safety
    /// `n` is a free object nobody else uses.
    #[inline]
    pub(crate) unsafe fn push(&mut self, n: *mut Node) {
        // SAFETY: caller contract: n is writable and ours.
        unsafe { (*n).next = self.head };
        if self.len == 0 {
            self.tail = n;
        }
        self.head = n;
        self.len += 1;
    }
}

struct CentralInner {
    /// Spans with a free or uncarved object, doubly linked through `prev`/`next`.
    partial: *mut Span,
    transfer: [Chain; TRANSFER_SLOTS],
    parked: usize,
}

// SAFETY: the raw pointers are owned by the allocator and only followed under the lock.
unsafe impl Send for CentralInner {}

#[repr(align(64))]
struct Central(Lock<CentralInner>);

static CENTRAL: [Central; NUM_CLASSES] = [const {
    Central(Lock::new(CentralInner {
        partial: ptr::null_mut(),
        transfer: [Chain::EMPTY; TRANSFER_SLOTS],
        parked: 0,
    }))
}; NUM_CLASSES];

/// Takes up to `want` objects of `class`: a parked batch if `want` is a whole batch, else
/// objects from partial spans, carving new spans from the page heap as needed. Returns an
/// empty chain only when the OS refuses memory.
pub(crate) fn take(class: usize, want: u32) -> Chain {
    let mut c = CENTRAL[class].0.lock();
    if want == batch_size(class) && c.parked > 0 {
        c.parked -= 1;
        return c.transfer[c.parked];
    }
    let mut out = Chain::EMPTY;
    while out.len < want {
        let span = if c.partial.is_null() {
            match new_span(class) {
                Some(s) => {
                    link(&mut c, s);
                    s
                }
                None => break,
            }
        } else {
            c.partial
        };
        // SAFETY: spans on the partial list are live records guarded by this class's lock.
        let s = unsafe { &mut *span };
        while out.len < want && s.has_free() {
            // SAFETY: `take` hands out a free object of the span that nobody else holds.
            unsafe { out.push(s.take()) };
        }
        if !s.has_free() {
            unlink(&mut c, span);
        }
    }
    out
}

/// Returns a chain of objects of `class`: parked whole if it is a full batch and a slot is
/// free, else each object goes back to its span.
///
/// # Safety
/// Every object of the chain is a free object of `class` that nobody uses any more.
pub(crate) unsafe fn give(class: usize, chain: Chain) {
    if chain.len == 0 {
        return;
    }
    let mut c = CENTRAL[class].0.lock();
    if chain.len == batch_size(class) && c.parked < park_limit(class) {
        let i = c.parked;
        c.transfer[i] = chain;
        c.parked += 1;
        return;
    }
    // SAFETY: caller contract.
    unsafe { return_chain(&mut c, chain) };
}

/// Returns every object of `chain` to its span.
///
/// # Safety
/// The chain holds free objects of the class whose lock `c` is.
unsafe fn return_chain(c: &mut CentralInner, chain: Chain) {
    let mut n = chain.head;
    for _ in 0..chain.len {
        // SAFETY: n is an object of the chain; read its link before the span reuses it.
        let next = unsafe { (*n).next };
        // SAFETY: caller contract.
        unsafe { return_to_span(c, n) };
        n = next;
    }
}

/// # Safety
/// `obj` is a free object of the class whose lock `c` is.
unsafe fn return_to_span(c: &mut CentralInner, obj: *mut Node) {
    let Owner::Small { span, .. } = arena::owner(obj as usize) else {
        debug_assert!(false, "object without a span");
        return;
    };
    // SAFETY: the pagemap points at the live record of the span holding obj; we hold its lock.
    let s = unsafe { &mut *span };
    // SAFETY: caller contract.
    unsafe { s.give_back(obj) };
    if s.used == 0 {
        if s.on_partial {
            unlink(c, span);
        }
        release_span(s);
    } else if !s.on_partial {
        link(c, span);
    }
}

fn link(c: &mut CentralInner, span: *mut Span) {
    // SAFETY: span and the list head are live records guarded by the lock `c` came from.
    unsafe {
        (*span).prev = ptr::null_mut();
        (*span).next = c.partial;
        if !c.partial.is_null() {
            (*c.partial).prev = span;
        }
        (*span).on_partial = true;
    }
    c.partial = span;
}

fn unlink(c: &mut CentralInner, span: *mut Span) {
    // SAFETY: span is on the partial list of this lock; its neighbours are live records.
    unsafe {
        let (p, n) = ((*span).prev, (*span).next);
        if p.is_null() {
            c.partial = n;
        } else {
            (*p).next = n;
        }
        if !n.is_null() {
            (*n).prev = p;
        }
        (*span).on_partial = false;
    }
}

/// A fresh span for `class` from the page heap, its pagemap entries published.
fn new_span(class: usize) -> Option<*mut Span> {
    let bytes = span_bytes(class);
    let granules = bytes >> GRANULE_ORDER;
    let (a, addr) = arena::alloc_block(bytes)?;
    let record = a.span_record(addr);
    // SAFETY: the record slot of a block just allocated is unused; the class lock we hold
    // guards it from now on.
    unsafe { (*record).init(addr, bytes, CLASS_SIZE[class]) };
    a.set_pagemap(addr, granules, record as usize | (class + 1));
    STATS.spans.fetch_add(1, Relaxed);
    STATS.span_bytes.fetch_add(bytes, Relaxed);
    Some(record)
}

fn release_span(s: &mut Span) {
    let Some(arena) = arena::arena_of(s.start) else {
        return;
    };
    STATS.spans.fetch_sub(1, Relaxed);
    STATS.span_bytes.fetch_sub(s.bytes(), Relaxed);
    arena::free_block(arena, s.start, s.bytes(), s.granules as usize);
}

/// Raw lock/unlock of every central list, for the `fork` handlers.
pub(crate) fn lock_all(lock: bool) {
    for c in &CENTRAL {
        if lock {
            c.0.raw_lock();
        } else {
            // SAFETY: called in the parent or child after `lock_all(true)` took every lock.
            unsafe { c.0.raw_unlock() };
        }
    }
}

/// Returns every parked batch to its spans (releasing spans that become empty), so that
/// memory held only by transfer slots can go back to the page heap and then to the OS.
pub(crate) fn drain_all() {
    for central in &CENTRAL {
        let mut c = central.0.lock();
        while c.parked > 0 {
            c.parked -= 1;
            let chain = c.transfer[c.parked];
            // SAFETY: parked chains hold free objects of this class; we hold its lock.
            unsafe { return_chain(&mut c, chain) };
        }
    }
}
