//! Spans: page-heap blocks carved into the objects of one size class.
//!
//! A span record lives in its arena's header (one slot per granule; the slot of the span's
//! first granule is used). All mutable fields are guarded by the central lock of the span's
//! class; the pagemap entry that points here is written before the span's first object is
//! handed out and cleared only after its last object came back.
//!
//! Invariants: `used` counts objects handed out of the span (live or sitting in some thread
//! cache or transfer slot); objects on `free` plus uncarved objects in `[bump, limit)` plus
//! `used` equals the capacity; a span is on its class's partial list exactly when it has a
//! free or uncarved object and `used > 0`.

use std::ptr;

/// A free object: the first word of freed memory links to the next one.
#[repr(C)]
pub(crate) struct Node {
    pub(crate) next: *mut Node,
}

/// A span record (64 bytes, so pagemap entries can keep a class tag in the low 6 bits).
#[repr(C, align(64))]
pub(crate) struct Span {
    pub(crate) start: usize,
    /// End of the last whole object.
    pub(crate) limit: usize,
    /// Next uncarved object (carving is lazy, so untouched pages stay untouched).
    pub(crate) bump: usize,
    pub(crate) free: *mut Node,
    pub(crate) prev: *mut Span,
    pub(crate) next: *mut Span,
    pub(crate) obj_size: u32,
    pub(crate) used: u32,
    /// Length of the span in page-heap granules.
    pub(crate) granules: u32,
    pub(crate) on_partial: bool,
}

impl Span {
    /// Resets the record for a fresh span of `bytes` (whole granules) carved into
    /// `obj_size` objects.
    pub(crate) fn init(&mut self, start: usize, bytes: usize, obj_size: u32) {
        let n = bytes / obj_size as usize;
        *self = Span {
            start,
            limit: start + n * obj_size as usize,
            bump: start,
            free: ptr::null_mut(),
            prev: ptr::null_mut(),
            next: ptr::null_mut(),
            obj_size,
            used: 0,
            granules: (bytes >> super::arena::GRANULE_ORDER) as u32,
            on_partial: false,
        };
    }

    /// Bytes of the span.
    #[inline]
    pub(crate) fn bytes(&self) -> usize {
        (self.granules as usize) << super::arena::GRANULE_ORDER
    }

    /// Whether an object can still be taken from this span.
    #[inline]
    pub(crate) fn has_free(&self) -> bool {
        !self.free.is_null() || self.bump < self.limit
    }

    /// Takes one free object (recycled first, then carved). The caller checked `has_free`.
    #[inline]
    pub(crate) fn take(&mut self) -> *mut Node {
        self.used += 1;
        if !self.free.is_null() {
            let n = self.free;
            // SAFETY: nodes on a span's free list are free objects of this span, written by
            // `give_back`; the central lock serialises access.
            self.free = unsafe { (*n).next };
            n
        } else {
            let n = self.bump as *mut Node;
            self.bump += self.obj_size as usize;
            n
        }
    }

    /// Returns one object to the span.
    ///
    /// # Safety
    /// `obj` is an object of this span that was taken and is no longer used by anyone.
    #[inline]
    pub(crate) unsafe fn give_back(&mut self, obj: *mut Node) {
        // SAFETY: the object is ours to reuse (caller contract) and at least 8 bytes.
        unsafe { (*obj).next = self.free };
        self.free = obj;
        self.used -= 1;
    }
}
