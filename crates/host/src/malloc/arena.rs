//! Arenas: 1 GiB-aligned ranges of OS pages, each managed by a core [`Buddy`] with 8 KiB
//! granules, plus the global table that maps any address to its arena or huge mapping.
//!
//! # Model
//!
//! ```text
//!  TABLE[addr >> 30] ──> Arena header (separate mapping)        or  huge mapping base | 1
//!                          ├─ pagemap[granule]: 0 | span record | class | granules, LARGE
//!                          ├─ spans[granule]: span record of the span starting there
//!                          └─ heap (locked): buddy of orders 13..=30 + purge bitmaps
//! ```
//!
//! Invariants: a pagemap entry is non-zero exactly for the granules of a small span (all of
//! them, so any object finds its span) and for the first granule of a large block. Entries
//! change only under the arena's heap lock, before a block is handed out or after it is
//! freed, so a lock-free reader that holds a live pointer always sees the right entry.

use super::purge::PurgeState;
use super::span::Span;
use crate::os::{self, Lock, MappedWords};
use coalesce_core::buddy::Buddy;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

pub(crate) const GRANULE_ORDER: u32 = 13;
pub(crate) const ARENA_ORDER: u32 = 30;
pub(crate) const GRANULES: usize = 1 << (ARENA_ORDER - GRANULE_ORDER);
const ARENA_SIZE: usize = 1 << ARENA_ORDER;
/// Slots of the address table: 47-bit user addresses in 1 GiB steps.
const TABLE_SLOTS: usize = 1 << (47 - ARENA_ORDER);
/// Most arenas (256 GiB of page heap); huge mappings are not counted here.
const MAX_ARENAS: usize = 256;

/// Pagemap tag of a large block's first granule: `granules << 6 | LARGE_TAG`.
pub(crate) const LARGE_TAG: usize = 63;
/// Table tag of a huge mapping: `base | HUGE_TAG`.
pub(crate) const HUGE_TAG: usize = 1;

static TABLE: [AtomicUsize; TABLE_SLOTS] = [const { AtomicUsize::new(0) }; TABLE_SLOTS];
static ARENAS: [AtomicPtr<Arena>; MAX_ARENAS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_ARENAS];
static ARENA_COUNT: AtomicUsize = AtomicUsize::new(0);
static GROW: Lock<()> = Lock::new(());

/// The locked part of an arena: which granules are free, and which free ones are dirty.
pub(crate) struct PageHeap {
    pub(crate) buddy: Buddy<MappedWords>,
    pub(crate) purge: PurgeState,
}

/// Header of one arena, in its own mapping (never inside the arena, so blocks keep their
/// natural alignment).
pub(crate) struct Arena {
    pub(crate) base: usize,
    pagemap: [AtomicUsize; GRANULES],
    spans: [UnsafeCell<Span>; GRANULES],
    pub(crate) heap: Lock<PageHeap>,
}

// SAFETY: the pagemap is atomic, the heap is behind its lock, and each span record is only
// touched under the central lock of the class that owns the span (see `span`).
unsafe impl Sync for Arena {}

/// What the table and pagemap say about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// An object of a small span.
    Small { span: *mut Span, class: usize },
    /// The first byte of a large block of `granules` granules.
    Large {
        arena: *const Arena,
        granules: usize,
    },
    /// Somewhere in a huge mapping that starts at `base`.
    Huge { base: usize },
    /// Not ours (or not a block start in a large block, or freed).
    Unknown,
}

/// Looks up the owner of `addr` without locks: two loads.
#[inline(always)]
pub(crate) fn owner(addr: usize) -> Owner {
    let slot = addr >> ARENA_ORDER;
    if slot >= TABLE_SLOTS {
        return Owner::Unknown;
    }
    let t = TABLE[slot].load(Ordering::Acquire);
    if t == 0 {
        return Owner::Unknown;
    }
    if t & HUGE_TAG != 0 {
        return Owner::Huge {
            base: t & !HUGE_TAG,
        };
    }
    let arena = t as *const Arena;
    // SAFETY: non-zero, untagged table entries point at live arena headers (never unmapped).
    let a = unsafe { &*arena };
    // The arena is aligned to its size: the low bits of the address index its pagemap.
    let e = a.pagemap[(addr & (ARENA_SIZE - 1)) >> GRANULE_ORDER].load(Ordering::Acquire);
    match e & 63 {
        0 => Owner::Unknown,
        LARGE_TAG if addr & ((1 << GRANULE_ORDER) - 1) == 0 => Owner::Large {
            arena,
            granules: e >> 6,
        },
        LARGE_TAG => Owner::Unknown,
        tag => Owner::Small {
            span: (e & !63) as *mut Span,
            class: tag - 1,
        },
    }
}

/// Records or clears a huge mapping in the table (every 1 GiB slot it covers).
pub(crate) fn set_huge(base: usize, len: usize, present: bool) {
    let v = if present { base | HUGE_TAG } else { 0 };
    let slots = (base >> ARENA_ORDER)..=((base + len - 1) >> ARENA_ORDER);
    for slot in &TABLE[slots] {
        slot.store(v, Ordering::Release);
    }
}

/// The arenas that exist now.
pub(crate) fn arenas() -> impl Iterator<Item = &'static Arena> {
    let n = ARENA_COUNT.load(Ordering::Acquire);
    // SAFETY: the first `n` entries are published, initialised, never-freed arena headers.
    (0..n).map(|i| unsafe { &*ARENAS[i].load(Ordering::Acquire) })
}

impl Arena {
    /// Maps a new arena and its header and publishes it; `None` when the OS refuses.
    fn create() -> Option<&'static Arena> {
        let base = os::map_aligned(ARENA_SIZE, ARENA_SIZE)?.as_ptr() as usize;
        let words =
            Buddy::<MappedWords>::storage_words(ARENA_SIZE as u64, GRANULE_ORDER, ARENA_ORDER)
                .ok()?;
        let storage = MappedWords::new(words)?;
        let buddy = Buddy::with_storage(
            base as u64,
            ARENA_SIZE as u64,
            GRANULE_ORDER,
            ARENA_ORDER,
            storage,
        )
        .ok()?;
        let header_len = std::mem::size_of::<Arena>().next_multiple_of(os::PAGE);
        let hdr = os::map(header_len)?.as_ptr().cast::<Arena>();
        // SAFETY: `hdr` is a fresh zeroed mapping large and aligned enough for an Arena; zero
        // is a valid bit pattern for the pagemap, the span records and the unlocked Lock
        // state; the fields that are not zero are written before anyone can see the header.
        unsafe {
            std::ptr::addr_of_mut!((*hdr).base).write(base);
            std::ptr::addr_of_mut!((*hdr).heap).write(Lock::new(PageHeap {
                buddy,
                purge: PurgeState::new(),
            }));
        }
        TABLE[base >> ARENA_ORDER].store(hdr as usize, Ordering::Release);
        // SAFETY: initialised above and never unmapped.
        Some(unsafe { &*hdr })
    }

    /// Appends a new arena unless another thread already did since `seen` were counted.
    fn grow(seen: usize) -> bool {
        let _g = GROW.lock();
        let n = ARENA_COUNT.load(Ordering::Acquire);
        if n != seen {
            return true;
        }
        if n == MAX_ARENAS {
            return false;
        }
        let Some(a) = Arena::create() else {
            return false;
        };
        ARENAS[n].store(a as *const Arena as *mut Arena, Ordering::Release);
        ARENA_COUNT.store(n + 1, Ordering::Release);
        true
    }

    #[inline]
    fn granule(&self, addr: usize) -> usize {
        (addr - self.base) >> GRANULE_ORDER
    }

    /// The span record kept for a span that starts at `addr`.
    pub(crate) fn span_record(&self, addr: usize) -> *mut Span {
        self.spans[self.granule(addr)].get()
    }

    /// Sets the pagemap entry of `count` granules from `addr`.
    pub(crate) fn set_pagemap(&self, addr: usize, count: usize, entry: usize) {
        let g = self.granule(addr);
        for e in &self.pagemap[g..g + count] {
            e.store(entry, Ordering::Release);
        }
    }
}

/// The arena that contains `addr`, if any.
pub(crate) fn arena_of(addr: usize) -> Option<&'static Arena> {
    let t = TABLE.get(addr >> ARENA_ORDER)?.load(Ordering::Acquire);
    // SAFETY: non-zero, untagged table entries point at live arena headers (never unmapped).
    (t != 0 && t & HUGE_TAG == 0).then(|| unsafe { &*(t as *const Arena) })
}

/// Allocates `bytes` (a multiple of the granule) from the first arena with room, growing the
/// heap by one arena when none has: an exact allocation (the unused tail of the power-of-two
/// block goes straight back), aligned to the next power of two of `bytes`. The caller
/// publishes pagemap entries before handing the block out (nobody can free it before that).
pub(crate) fn alloc_block(bytes: usize) -> Option<(&'static Arena, usize)> {
    loop {
        let seen = ARENA_COUNT.load(Ordering::Acquire);
        for a in arenas() {
            let mut heap = a.heap.lock();
            if let Some((addr, _)) = heap.buddy.alloc_exact(bytes as u64) {
                let heap = &mut *heap;
                heap.purge
                    .note_allocated(&heap.buddy, a.base, addr as usize, bytes);
                heap.purge.maybe_sweep(&heap.buddy, a.base);
                return Some((a, addr as usize));
            }
        }
        if !Arena::grow(seen) {
            return None;
        }
    }
}

/// Frees the `bytes`-long page-heap block at `addr` of `arena`, clearing `map_granules`
/// pagemap entries first and remembering the block as dirty for the purge policy.
pub(crate) fn free_block(arena: &Arena, addr: usize, bytes: usize, map_granules: usize) {
    let mut heap = arena.heap.lock();
    arena.set_pagemap(addr, map_granules, 0);
    let heap = &mut *heap;
    if heap.buddy.free_exact(addr as u64, bytes as u64).is_ok() {
        heap.purge.note_freed(arena.base, addr, bytes);
        heap.purge.maybe_sweep(&heap.buddy, arena.base);
    }
}

/// Raw lock/unlock of arena growth and every arena heap, for the `fork` handlers.
pub(crate) fn lock_all(lock: bool) {
    if lock {
        GROW.raw_lock();
        for a in arenas() {
            a.heap.raw_lock();
        }
    } else {
        for a in arenas() {
            // SAFETY: paired with the raw_lock in the prepare handler.
            unsafe { a.heap.raw_unlock() };
        }
        // SAFETY: as above.
        unsafe { GROW.raw_unlock() };
    }
}
