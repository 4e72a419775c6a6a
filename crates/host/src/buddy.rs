//! [`HostBuddy`]: the core [`Buddy`] over a range of OS pages, as a thread-safe page source.
//!
//! The range is mapped once (`MAP_NORESERVE`, so untouched pages cost nothing) and aligned to
//! the largest block, so every block is aligned to its own size in absolute terms: a slab can
//! find its header by masking an object address. Bitmaps live in mapped words, not the heap.

use crate::os::{self, Lock, MappedWords};
use coalesce_core::buddy::{Buddy, BuddyError, BuddyStats};
use std::ptr::NonNull;

/// A buddy allocator over mapped host memory. Blocks stay mapped after `free`;
/// [`HostBuddy::purge_free`] gives the pages of free blocks back to the OS.
#[derive(Debug)]
pub struct HostBuddy {
    base: NonNull<u8>,
    len: usize,
    inner: Lock<Buddy<MappedWords>>,
}

// SAFETY: the mapping is owned by HostBuddy and all bookkeeping is behind the lock.
unsafe impl Send for HostBuddy {}
// SAFETY: as above; the raw base pointer is only used for address arithmetic and purging.
unsafe impl Sync for HostBuddy {}

/// Why a [`HostBuddy`] could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostBuddyError {
    #[error(transparent)]
    Config(#[from] BuddyError),
    #[error("the OS refused to map {0} bytes")]
    Map(usize),
}

impl HostBuddy {
    /// Maps `size` bytes (rounded up to `2^max_order`) and manages them with blocks of
    /// `2^min_order..=2^max_order` bytes; `min_order` is at least the page order (12).
    pub fn new(size: usize, min_order: u32, max_order: u32) -> Result<HostBuddy, HostBuddyError> {
        if min_order < os::PAGE.trailing_zeros() {
            return Err(BuddyError::BadConfig("min_order below the page size").into());
        }
        let words = Buddy::<MappedWords>::storage_words(size as u64, min_order, max_order)?;
        let align = 1usize << max_order;
        let len = size.next_multiple_of(align);
        let base = os::map_aligned(len, align).ok_or(HostBuddyError::Map(len))?;
        let storage = MappedWords::new(words).ok_or(HostBuddyError::Map(words * 8))?;
        let buddy = Buddy::with_storage(
            base.as_ptr() as u64,
            len as u64,
            min_order,
            max_order,
            storage,
        )?;
        Ok(HostBuddy {
            base,
            len,
            inner: Lock::new(buddy),
        })
    }

    /// A block of at least `size` bytes, aligned to its size: `(pointer, block size)`.
    pub fn alloc(&self, size: usize) -> Option<(NonNull<u8>, usize)> {
        let (addr, got) = self.inner.lock().alloc(size as u64)?;
        Some((NonNull::new(addr as *mut u8)?, got as usize))
    }

    /// Frees the block at `ptr` (merging with its buddies) and returns its size. Double frees
    /// and pointers that are not block starts are reported and change nothing.
    pub fn free(&self, ptr: NonNull<u8>) -> Result<usize, BuddyError> {
        self.inner
            .lock()
            .free(ptr.as_ptr() as u64)
            .map(|s| s as usize)
    }

    /// Size of the allocated block that starts at `ptr`.
    pub fn block_size(&self, ptr: NonNull<u8>) -> Option<usize> {
        let k = self.inner.lock().allocated_order(ptr.as_ptr() as u64)?;
        Some(1 << k)
    }

    /// Whether `ptr` lies in this buddy's range.
    pub fn contains(&self, ptr: *const u8) -> bool {
        (ptr as usize).wrapping_sub(self.base.as_ptr() as usize) < self.len
    }

    /// Gives the pages of every free block back to the OS (`madvise(MADV_DONTNEED)`); returns
    /// the bytes purged. The lock is held throughout, so no block is handed out meanwhile.
    pub fn purge_free(&self) -> usize {
        let b = self.inner.lock();
        let mut purged = 0;
        for (addr, k) in b.free_blocks() {
            // SAFETY: a free block lies inside our mapping, is page-aligned (min_order >= 12)
            // and holds no live data; the lock keeps it free while we purge.
            unsafe { os::purge(addr as *mut u8, 1 << k) };
            purged += 1usize << k;
        }
        purged
    }

    pub fn stats(&self) -> BuddyStats {
        self.inner.lock().stats()
    }

    /// Runs the core invariant checker.
    pub fn check_invariants(&self) -> Result<(), coalesce_core::buddy::InvariantViolation> {
        self.inner.lock().check_invariants()
    }
}

impl Drop for HostBuddy {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length; `&mut self` means no block
        // pointer handed out can be used through this buddy any more (callers of `alloc` own
        // the contract that blocks die with their page source).
        unsafe { os::unmap(self.base.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_writable_and_purged() {
        let b = HostBuddy::new(1 << 22, 12, 20).unwrap();
        let (p, size) = b.alloc(5000).unwrap();
        assert_eq!(size, 8192);
        assert_eq!(p.as_ptr() as usize % size, 0, "aligned to its size");
        // SAFETY: the block is ours, mapped and 8192 bytes long.
        unsafe { p.as_ptr().write_bytes(0xAB, size) };
        assert_eq!(b.free(p), Ok(8192));
        assert!(b.free(p).is_err(), "double free reported");
        assert!(b.purge_free() >= 1 << 22);
        let (q, _) = b.alloc(8192).unwrap();
        // SAFETY: q is a live, mapped block of 8192 bytes.
        let first = unsafe { q.as_ptr().read() };
        assert_eq!(first, 0, "purged pages read back as zero");
        b.check_invariants().unwrap();
    }
}
