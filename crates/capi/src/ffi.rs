//! The boundary itself: panics stop here, errors become a return value plus a per-thread
//! message, and text goes out through caller-owned buffers.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as the calling thread's last error.
pub fn set_last_error(message: String) {
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

pub fn last_error() -> String {
    LAST_ERROR.with(|e| e.borrow().clone())
}

/// Runs `f`; an `Err` or a panic is recorded as the last error and turns into `fallback`.
pub fn boundary<T>(fallback: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => value,
        Ok(Err(message)) => {
            set_last_error(message);
            fallback
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            set_last_error(format!(
                "internal error in coalesce (please report): {what}"
            ));
            fallback
        }
    }
}

/// Copies `text` and a NUL into `buf` when it fits in `len` bytes; returns `text`'s length
/// either way (the size a caller needs, less the NUL).
///
/// # Safety
/// 1. `buf` is null or valid for writes of `len` bytes.
pub unsafe fn copy_out(text: &str, buf: *mut c_char, len: usize) -> usize {
    let n = text.len();
    if !buf.is_null() && len > n {
        // SAFETY: `buf` has room for `len > n` bytes (precondition 1), and `text` cannot
        // overlap it (it is Rust-owned).
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    n
}
