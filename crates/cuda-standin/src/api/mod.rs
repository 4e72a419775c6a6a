//! The exported C functions: each runs under [`guard`], which counts the call, fires an
//! injected fault before anything else happens, and turns a panic into `CUDA_ERROR_UNKNOWN`
//! so that none crosses the C ABI.
//!
//! Enum-typed inputs that C may fill with any integer (`CUresult` to describe, granularity
//! options, the enums inside `CUmemAllocationProp`/`CUmemAccessDesc`) are read as raw `u32`s:
//! the ABI is the same (`repr(u32)`), and an unknown value is refused instead of being
//! undefined behaviour.

mod control;
// The driver's C names, parameters included.
#[allow(non_snake_case)]
mod device;
#[allow(non_snake_case)]
mod memory;
#[allow(non_snake_case)]
mod stream;

use crate::state;
use cudarc::driver::sys::CUresult;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs the body of driver function `name`.
fn guard(name: &'static str, body: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    let r = catch_unwind(AssertUnwindSafe(|| {
        if let Some(code) = state::with(|s| s.faults.on_call(name)) {
            return Err(code);
        }
        body()
    }));
    match r {
        Ok(Ok(())) => CUresult::CUDA_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => CUresult::CUDA_ERROR_UNKNOWN,
    }
}

/// `CUDA_ERROR_INVALID_VALUE` for a null pointer (checked before the call changes anything).
fn non_null<T>(p: *const T) -> Result<(), CUresult> {
    if p.is_null() {
        Err(CUresult::CUDA_ERROR_INVALID_VALUE)
    } else {
        Ok(())
    }
}
