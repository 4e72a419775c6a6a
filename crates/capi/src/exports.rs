//! The exported functions. Their C contract is `include/coalesce.h`; keep the two in step.

use crate::ffi::{boundary, copy_out, last_error, set_last_error};
use crate::pools::{created, pool};
use crate::stats_json;
use coalesce_backend::StreamId;
use coalesce_pool::{MemoryLimit, PoolError};
use std::ffi::{CStr, OsStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn stream_id(stream: *mut c_void) -> StreamId {
    StreamId(stream.addr() as u64)
}

/// Allocates `size` bytes on `device` for use on `stream`: PyTorch's pluggable `malloc`.
/// Returns NULL when memory runs out (after the pool released its cache and retried) or on
/// any other error; `coalesce_last_error` says why.
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_malloc(size: usize, device: c_int, stream: *mut c_void) -> *mut c_void {
    boundary(std::ptr::null_mut(), || {
        let block = pool(device)?
            .alloc(size as u64, stream_id(stream))
            .map_err(|e| e.to_string())?;
        Ok(std::ptr::without_provenance_mut(block.addr as usize))
    })
}

/// Frees `ptr` (from `coalesce_malloc` on `device`), ordered on `stream`: PyTorch's pluggable
/// `free`. `size` is not needed (the pool knows it). NULL is ignored, as by C's `free`. A bad
/// pointer is reported on stderr and in `coalesce_last_error`; nothing else happens.
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_free(
    ptr: *mut c_void,
    _size: usize,
    device: c_int,
    stream: *mut c_void,
) {
    if ptr.is_null() {
        return;
    }
    let ok = boundary(false, || {
        let addr = ptr.addr() as u64;
        match pool(device)?.free(addr, stream_id(stream)) {
            Ok(()) => Ok(true),
            Err(PoolError::UnknownAddress(_)) => Err(unknown_address(addr, device)),
            Err(e) => Err(e.to_string()),
        }
    });
    if !ok {
        eprintln!("coalesce: coalesce_free failed: {}", last_error());
    }
}

/// Says why `addr` is not a live block of `device`'s pool: live on another device (freed on
/// the wrong one), or unknown (a double free or a foreign pointer).
fn unknown_address(addr: u64, device: c_int) -> String {
    let owner = created().find(|(d, p)| *d != device && p.is_live(addr).unwrap_or(false));
    match owner {
        Some((owner, _)) => format!(
            "free of {addr:#x} on device {device}, but it was allocated on device {owner}: \
             nothing freed"
        ),
        None => format!(
            "free of {addr:#x} on device {device}, which is not a live allocation of its pool \
             (double free or foreign pointer): nothing freed"
        ),
    }
}

/// Writes the pool's stats as JSON into `buf` (NUL-terminated) when `len` exceeds its length;
/// returns the length, or 0 on error.
///
/// # Safety
/// 1. `buf` is null or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_stats_json(device: c_int, buf: *mut c_char, len: usize) -> usize {
    boundary(0, || {
        let stats = pool(device)?.stats().map_err(|e| e.to_string())?;
        // SAFETY: precondition 1.
        Ok(unsafe { copy_out(&stats_json::to_json(&stats), buf, len) })
    })
}

/// Returns cached memory of `device` to the driver. 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_empty_cache(device: c_int) -> c_int {
    boundary(-1, || {
        pool(device)?.empty_cache().map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Caps the memory the pool of `device` reserves at `bytes` (0 removes the cap). 0 on success,
/// -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_set_memory_limit(device: c_int, bytes: usize) -> c_int {
    boundary(-1, || {
        let limit = (bytes != 0).then_some(MemoryLimit::Bytes(bytes as u64));
        pool(device)?
            .set_memory_limit(limit)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Writes a snapshot of `device`'s pool to `path` as a CSV trace `coalesce replay` reads.
/// 0 on success, -1 on error.
///
/// # Safety
/// 1. `path` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_dump_snapshot(device: c_int, path: *const c_char) -> c_int {
    boundary(-1, || {
        if path.is_null() {
            return Err("coalesce_dump_snapshot: path is NULL".into());
        }
        // SAFETY: precondition 1, and `path` is not null.
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        let path = Path::new(OsStr::from_bytes(bytes));
        pool(device)?
            .dump_snapshot(path)
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Copies the calling thread's last error message into `buf` (NUL-terminated) when `len`
/// exceeds its length; returns the length (0: no error yet).
///
/// # Safety
/// 1. `buf` is null or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_last_error(buf: *mut c_char, len: usize) -> usize {
    boundary(0, || {
        // SAFETY: precondition 1.
        Ok(unsafe { copy_out(&last_error(), buf, len) })
    })
}

/// Clears the calling thread's last error (tests use it between checks).
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_clear_error() {
    boundary((), || {
        set_last_error(String::new());
        Ok(())
    })
}
