//! [`CoalesceAlloc`]: the allocator as Rust's `#[global_allocator]`.

use super::size_class::class_for;
use std::alloc::{GlobalAlloc, Layout};

/// The coalesce thread-caching allocator as a `GlobalAlloc`:
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: coalesce_host::malloc::CoalesceAlloc = coalesce_host::malloc::CoalesceAlloc;
/// ```
///
/// `dealloc` uses the layout to find the size class, so freeing a small object is a push on
/// the thread's list without any lookup.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoalesceAlloc;

// SAFETY: malloc_aligned returns blocks of at least `size` bytes aligned to `align` or null;
// blocks are freed with the class of their layout (reallocation keeps a block only when the
// class stays the same, so the layout passed to dealloc always maps to the block's class).
unsafe impl GlobalAlloc for CoalesceAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        super::malloc_aligned(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by `alloc` with this layout (GlobalAlloc contract).
        unsafe { super::free_sized(ptr, layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = super::malloc_aligned(layout.size(), layout.align());
        if !p.is_null() {
            // SAFETY: a fresh block of at least layout.size() bytes.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        let old_class = class_for(layout.size(), align);
        let new_class = class_for(new_size, align);
        let keep = match (old_class, new_class) {
            (Some(a), Some(b)) => a == b,
            (None, None) => {
                // SAFETY: ptr is a live large or huge block of this allocator.
                let usable = unsafe { super::usable_size(ptr) };
                new_size <= usable && new_size >= usable / 2
            }
            _ => false,
        };
        if keep {
            return ptr;
        }
        let q = super::malloc_aligned(new_size, align);
        if !q.is_null() {
            // SAFETY: distinct live blocks, each at least min(old, new) bytes long; ptr is
            // then freed with the layout it was allocated with.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                super::free_sized(ptr, layout.size(), align);
            }
        }
        q
    }
}
