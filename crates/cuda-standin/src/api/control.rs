//! `coalesce_standin_*`: controls for in-process tests (faults, counts, lag, leak report).
//! None of them is a driver call: they are not counted and cannot be failed.

use crate::{codes, faults, state};
use std::ffi::{CStr, c_char, c_double, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// Runs `f`, turning a panic into `fallback`.
fn shield<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The exported driver function `name` names.
///
/// # Safety
/// `name` is null or a NUL-terminated string.
unsafe fn function(name: *const c_char) -> Option<&'static str> {
    if name.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (caller).
    let name = unsafe { CStr::from_ptr(name) };
    faults::known_name(name.to_str().ok()?)
}

/// Makes the `n`-th call of driver function `fn_name` from now (1: the next) fail with
/// CUresult `code`. Returns 0, or -1 for an unknown function or code or `n` = 0.
///
/// # Safety
/// `fn_name` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_standin_fail_nth(
    fn_name: *const c_char,
    n: u64,
    code: c_int,
) -> c_int {
    shield(-1, || {
        // SAFETY: caller's contract.
        let name = unsafe { function(fn_name) };
        let code = u32::try_from(code).ok().and_then(codes::from_u32);
        match (name, code) {
            (Some(name), Some(code)) if n > 0 => {
                state::with(|s| s.faults.fail_nth(name, n, code));
                0
            }
            _ => -1,
        }
    })
}

/// Makes each later call of `fn_name` fail with probability `p` (0 disarms), drawn from a
/// generator seeded with `seed`. Returns 0, or -1 for an unknown function or code or a `p`
/// outside [0, 1].
///
/// # Safety
/// `fn_name` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_standin_fail_rate(
    fn_name: *const c_char,
    p: c_double,
    code: c_int,
    seed: u64,
) -> c_int {
    shield(-1, || {
        // SAFETY: caller's contract.
        let name = unsafe { function(fn_name) };
        let code = u32::try_from(code).ok().and_then(codes::from_u32);
        match (name, code) {
            (Some(name), Some(code)) if (0.0..=1.0).contains(&p) => {
                state::with(|s| s.faults.fail_rate(name, p, code, seed));
                0
            }
            _ => -1,
        }
    })
}

/// Forgets all call counts and armed faults (the environment's too), clears the sticky
/// asynchronous fault, and sets the stream lags back to `COALESCE_STANDIN_STREAM_LAG_MS` and
/// `COALESCE_STANDIN_STREAM_LAG_QUERIES`.
/// Live handles, mappings, reservations, allocations, streams and events stay.
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_standin_reset() {
    shield((), || {
        state::with(|s| {
            s.faults.reset();
            s.streams.async_faults.clear();
            s.streams.lag = s.config.lag;
            s.streams.lag_queries = s.config.lag_queries;
        })
    })
}

/// Calls of driver function `fn_name` since start or the last reset; `u64::MAX` for a name
/// the stand-in does not export.
///
/// # Safety
/// `fn_name` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_standin_calls(fn_name: *const c_char) -> u64 {
    shield(u64::MAX, || {
        // SAFETY: caller's contract.
        match unsafe { function(fn_name) } {
            Some(name) => state::with(|s| s.faults.calls(name)),
            None => u64::MAX,
        }
    })
}

/// Sets the stream lag in milliseconds for work enqueued from now on. Returns 0, or -1 for a
/// negative or non-finite value.
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_standin_set_stream_lag_ms(ms: c_double) -> c_int {
    shield(-1, || {
        if !(ms.is_finite() && ms >= 0.0) {
            return -1;
        }
        state::with(|s| s.streams.lag = Duration::from_secs_f64(ms / 1000.0));
        0
    })
}

/// Makes the next `n` `cuEventQuery` calls on each event recorded from now on answer
/// `CUDA_ERROR_NOT_READY` (a deterministic lag; synchronizing on the event, its stream or the
/// context ends it).
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_standin_set_stream_lag_queries(n: u64) {
    shield((), || state::with(|s| s.streams.lag_queries = n))
}

/// Writes the leak report (one JSON object; see the crate docs) into `buf`, truncated to
/// `len - 1` bytes and NUL-terminated when `len > 0`; returns the report's full length, so a
/// caller can retry with a larger buffer (as `snprintf`).
///
/// # Safety
/// `buf` is null (with `len` 0) or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_standin_leak_report(buf: *mut c_char, len: usize) -> usize {
    shield(0, || {
        let (report, _) = state::with(|s| s.leak_report());
        if !buf.is_null() && len > 0 {
            let n = report.len().min(len - 1);
            // SAFETY: `buf` is valid for `len` > n bytes (caller); the report does not
            // overlap it.
            unsafe {
                std::ptr::copy_nonoverlapping(report.as_ptr(), buf.cast::<u8>(), n);
                buf.add(n).write(0);
            }
        }
        report.len()
    })
}

/// How many leaks the report lists now (handles not released, mappings, reservations and
/// allocations left, asynchronous faults).
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_standin_leak_count() -> u64 {
    shield(u64::MAX, || state::with(|s| s.leak_report().1 as u64))
}
