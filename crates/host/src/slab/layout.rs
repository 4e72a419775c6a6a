//! Where things live inside one slab, and the slab header.
//!
//! ```text
//!  slab (a page-source block, aligned to its size)
//!  | header | alloc bits (atomic) | free-index array | pad | obj 0 | obj 1 | ... | obj n-1 |
//!                                                          ^ cache-line aligned, stride =
//!                                                            size rounded up to 64 bytes
//! ```
//!
//! Objects stay *constructed* while free (kmem_cache semantics), so the free list cannot live
//! inside them: it is an array of `u16` object indices in the header area. The alloc bits say
//! which objects are held by users; they are atomic so that `free` can reject a double free
//! before taking any lock.

use std::sync::atomic::AtomicU64;

pub(crate) const CACHE_LINE: usize = 64;
/// Marks a slab header as belonging to a cache: `MAGIC ^ cache id`.
pub(crate) const MAGIC: u64 = 0x51ab_c0a1_e5ce_0000;
/// "No object" in the u16 free list.
pub(crate) const NONE: u16 = u16::MAX;

/// Which list of its cache a slab is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    Empty = 0,
    Partial = 1,
    Full = 2,
}

/// The header at the start of every slab. Mutable fields are guarded by the cache lock,
/// except the alloc bits (atomic).
#[repr(C)]
pub(crate) struct Header {
    pub(crate) magic: u64,
    /// Objects not on the free list (held by users or sitting in magazines).
    pub(crate) in_use: u32,
    /// Head of the free-index list (`NONE` when empty).
    pub(crate) free_head: u16,
    pub(crate) state: State,
    /// Intrusive links of the cache's list for `state` (slab addresses, 0 = none).
    pub(crate) prev: usize,
    pub(crate) next: usize,
}

/// The geometry of the slabs of one cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) slab_size: usize,
    pub(crate) stride: usize,
    pub(crate) capacity: usize,
    bits_off: usize,
    next_off: usize,
    pub(crate) objs_off: usize,
}

impl Geometry {
    /// Lays out slabs of `slab_size` bytes for objects of `size` bytes and alignment `align`
    /// (at most a cache line is assumed; larger alignments are honoured through the stride).
    /// `None` if not even one object fits or more than `u16::MAX - 1` would.
    pub(crate) fn new(slab_size: usize, size: usize, align: usize) -> Option<Geometry> {
        let stride = size.max(1).next_multiple_of(align.max(CACHE_LINE));
        let base = std::mem::size_of::<Header>();
        // Fixed point: the metadata size depends on the capacity and vice versa.
        let mut capacity = slab_size / stride;
        loop {
            let bits_off = base.next_multiple_of(8);
            let next_off = bits_off + capacity.div_ceil(64) * 8;
            let objs_off =
                (next_off + capacity * 2).next_multiple_of(stride.min(slab_size).max(CACHE_LINE));
            let objs_off = objs_off.next_multiple_of(align.max(CACHE_LINE));
            if objs_off + capacity * stride <= slab_size {
                if capacity == 0 || capacity >= NONE as usize {
                    return None;
                }
                return Some(Geometry {
                    slab_size,
                    stride,
                    capacity,
                    bits_off,
                    next_off,
                    objs_off,
                });
            }
            capacity = capacity.checked_sub(1)?;
        }
    }

    pub(crate) fn header(&self, slab: usize) -> *mut Header {
        slab as *mut Header
    }

    pub(crate) fn bits(&self, slab: usize) -> *const AtomicU64 {
        (slab + self.bits_off) as *const AtomicU64
    }

    pub(crate) fn next_free(&self, slab: usize) -> *mut u16 {
        (slab + self.next_off) as *mut u16
    }

    pub(crate) fn object(&self, slab: usize, i: usize) -> usize {
        slab + self.objs_off + i * self.stride
    }

    /// The object index of `addr` in `slab`, if `addr` is exactly an object start.
    pub(crate) fn index_of(&self, slab: usize, addr: usize) -> Option<usize> {
        let off = addr.checked_sub(slab + self.objs_off)?;
        let i = off / self.stride;
        (off % self.stride == 0 && i < self.capacity).then_some(i)
    }
}
