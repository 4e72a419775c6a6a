//! The OS backend: the only place that talks to the kernel. Everything above it sees
//! page-granular mappings, a purge (give the pages back, keep the addresses) and a clock.
//!
//! Nothing here allocates with `malloc`, so the layer is safe to call from inside a `malloc`.

mod lock;
mod thread_exit;

pub use lock::{Lock, LockGuard};
pub use thread_exit::ThreadExitKey;

use std::ptr::NonNull;

/// The OS page size (4 KiB on the x86-64 and aarch64 Linux this targets).
pub const PAGE: usize = 4096;

/// Maps `size` bytes (a multiple of [`PAGE`]) of zeroed, private, read-write memory.
/// `MAP_NORESERVE`: the pages cost nothing until touched. `None` when the kernel refuses.
pub fn map(size: usize) -> Option<NonNull<u8>> {
    debug_assert!(size > 0 && size.is_multiple_of(PAGE));
    // SAFETY: an anonymous private mapping with a null hint touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

/// Maps `size` bytes aligned to `align` (a power of two, at least [`PAGE`]): maps
/// `size + align`, then unmaps the unaligned head and the tail.
pub fn map_aligned(size: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && align >= PAGE);
    let over = size.checked_add(align)?;
    let raw = map(over)?.as_ptr() as usize;
    let start = (raw + align - 1) & !(align - 1);
    // SAFETY: both pieces lie inside the mapping made just above and are page-aligned
    // (raw, start and start + size are multiples of PAGE); nothing else refers to them.
    unsafe {
        if start > raw {
            unmap(raw as *mut u8, start - raw);
        }
        let end = start + size;
        if raw + over > end {
            unmap(end as *mut u8, raw + over - end);
        }
    }
    NonNull::new(start as *mut u8)
}

/// Unmaps `[ptr, ptr + size)`.
///
/// # Safety
/// The range must be page-aligned, mapped by this module, and no longer referred to.
pub unsafe fn unmap(ptr: *mut u8, size: usize) {
    // SAFETY: the caller guarantees the range is ours and unused; munmap cannot fail on it.
    unsafe {
        libc::munmap(ptr.cast(), size);
    }
}

/// Gives the physical pages of `[ptr, ptr + size)` back to the OS; the addresses stay valid
/// and read as zero afterwards (`MADV_DONTNEED` on a private anonymous mapping).
///
/// # Safety
/// The range must be page-aligned, mapped by this module, and hold no data anyone still needs.
pub unsafe fn purge(ptr: *mut u8, size: usize) {
    // SAFETY: the caller guarantees the range is ours and its contents are dead.
    unsafe {
        libc::madvise(ptr.cast(), size, libc::MADV_DONTNEED);
    }
}

/// Milliseconds of a coarse monotonic clock (a vDSO read, no syscall).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Resident set size of this process in bytes (from `/proc/self/statm`); for tests and
/// benchmarks, not for the allocation path (it allocates).
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE as u64)
}

/// Writable mapped words, e.g. the bitmap storage of a buddy that must not call `malloc`.
/// Owns its mapping and unmaps it on drop.
#[derive(Debug)]
pub struct MappedWords {
    ptr: NonNull<u64>,
    len: usize,
}

// SAFETY: MappedWords owns its mapping exclusively, like a Box<[u64]>.
unsafe impl Send for MappedWords {}
// SAFETY: shared access only hands out `&[u64]`.
unsafe impl Sync for MappedWords {}

impl MappedWords {
    /// `len` zeroed words, or `None` when the kernel refuses.
    pub fn new(len: usize) -> Option<MappedWords> {
        let bytes = (len.max(1) * 8).next_multiple_of(PAGE);
        let ptr = map(bytes)?.cast();
        Some(MappedWords { ptr, len })
    }
}

impl AsRef<[u64]> for MappedWords {
    fn as_ref(&self) -> &[u64] {
        // SAFETY: the mapping holds `len` zero-initialised u64s and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u64]> for MappedWords {
    fn as_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in `as_ref`; `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        let bytes = (self.len.max(1) * 8).next_multiple_of(PAGE);
        // SAFETY: the mapping was made by `new` with this size and nothing borrows it now.
        unsafe { unmap(self.ptr.as_ptr().cast(), bytes) }
    }
}
