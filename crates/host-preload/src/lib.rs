//! The coalesce malloc as the C allocation API, for `LD_PRELOAD`:
//!
//! ```sh
//! LD_PRELOAD=target/release/libcoalesce_host_preload.so python3 script.py
//! ```
//!
//! Every entry point is a thin shim over [`coalesce_host::malloc`], which keeps all of its
//! metadata in mmapped memory and uses only const, destructor-free thread-locals plus a
//! pthread key, so it is sound as the process's only `malloc` (see that module's docs).
//!
//! No panic crosses the C boundary: the shims contain no panicking code of their own, an
//! `extern "C"` function that would unwind aborts the process instead (Rust >= 1.81), and a
//! panic hook installed when the library is loaded aborts at once — before the default hook
//! would format a message, which would re-enter `malloc`, possibly under one of its locks.
//! Errors follow glibc: null plus `errno = ENOMEM`/`EINVAL`, or the error code for
//! `posix_memalign`. Rust code inside this library allocates through the same allocator.
#![deny(unsafe_op_in_unsafe_fn)]

use coalesce_host::malloc;
use libc::{c_int, c_void, size_t};
use std::ptr;

#[global_allocator]
static GLOBAL: malloc::CoalesceAlloc = malloc::CoalesceAlloc;

const PAGE: usize = coalesce_host::os::PAGE;

/// Runs when the library is loaded (from `.init_array`): a panic anywhere in this library
/// (its own copy of std) aborts without allocating.
extern "C" fn on_load() {
    std::panic::set_hook(Box::new(|_| {
        const MSG: &[u8] = b"coalesce malloc: internal error, aborting\n";
        // SAFETY: writing a static buffer to stderr, then aborting; neither allocates.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::abort();
        }
    }));
}

#[used]
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Null results set `ENOMEM`, as glibc does.
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// # Safety
/// C `malloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    or_enomem(malloc::malloc(size))
}

/// # Safety
/// C `free` contract: `p` is null or from this allocator and not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: C contract; unknown pointers are ignored by `malloc::free`.
    unsafe { malloc::free(p.cast()) }
}

/// # Safety
/// C `calloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(n: size_t, size: size_t) -> *mut c_void {
    or_enomem(malloc::calloc(n, size))
}

/// # Safety
/// C `realloc` contract. `realloc(p, 0)` frees `p` and returns null, as glibc does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    if !p.is_null() && size == 0 {
        // SAFETY: C contract.
        unsafe { malloc::free(p.cast()) };
        return ptr::null_mut();
    }
    // SAFETY: C contract.
    or_enomem(unsafe { malloc::realloc(p.cast(), size) })
}

/// `reallocarray`: `realloc(p, n * size)` with overflow checking.
///
/// # Safety
/// C `realloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: C contract.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

fn aligned(align: usize, size: usize) -> *mut c_void {
    or_enomem(malloc::malloc_aligned(size, align))
}

/// # Safety
/// `out` is writable. Returns `EINVAL` unless `align` is a power of two multiple of
/// `sizeof(void *)`, `ENOMEM` on failure.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let p = malloc::malloc_aligned(size, align);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: C contract: out is writable.
    unsafe { *out = p.cast() };
    0
}

/// # Safety
/// C11 `aligned_alloc`; like glibc, any power-of-two alignment is accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    aligned(align, size)
}

/// # Safety
/// Obsolete `memalign`; like glibc, a non-power-of-two alignment is rounded up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    match align.max(1).checked_next_power_of_two() {
        Some(a) => aligned(a, size),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// # Safety
/// Obsolete `valloc`: page-aligned.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn valloc(size: size_t) -> *mut c_void {
    aligned(PAGE, size)
}

/// # Safety
/// Obsolete `pvalloc`: page-aligned, size rounded up to whole pages.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(PAGE) {
        Some(s) => aligned(PAGE, s),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// # Safety
/// `p` is null or a live allocation of this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    // SAFETY: C contract.
    unsafe { malloc::usable_size(p.cast()) }
}

/// Returns free page-heap memory to the OS now (coalesce extension; glibc's `malloc_trim`
/// semantics). Always returns 1.
#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(_pad: size_t) -> c_int {
    malloc::purge_all();
    1
}
