//! Initialization, errors, devices and contexts.

use super::{guard, non_null};
use crate::{codes, context, leaks, state};
use cudarc::driver::sys::{CUcontext, CUdevice, CUresult};
use std::ffi::{c_char, c_int, c_uint};
use std::time::Instant;

/// Initializes the driver; `Flags` must be 0. Fails with `CUDA_ERROR_INVALID_VALUE` (and a
/// message on stderr) if a `COALESCE_STANDIN_*` variable is malformed, and with
/// `CUDA_ERROR_NO_DEVICE` when `COALESCE_STANDIN_DEVICES=0`.
///
/// # Safety
/// None: no pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(Flags: c_uint) -> CUresult {
    guard("cuInit", || {
        state::with(|s| {
            if let Some(e) = &s.config_error {
                eprintln!("coalesce-cuda-standin: {e}");
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
            }
            if Flags != 0 {
                return Err(CUresult::CUDA_ERROR_INVALID_VALUE);
            }
            if s.devices.is_empty() {
                return Err(CUresult::CUDA_ERROR_NO_DEVICE);
            }
            s.initialized = true;
            leaks::register_exit_check(s.config.leak_check);
            Ok(())
        })
    })
}

fn describe(
    name: &'static str,
    error: c_uint,
    p: *mut *const c_char,
    text: fn(u32) -> Option<&'static std::ffi::CStr>,
) -> CUresult {
    guard(name, || {
        non_null(p)?;
        let found = text(error);
        // SAFETY: `p` is non-null and the caller passes a pointer valid for writes.
        unsafe { p.write(found.map_or(std::ptr::null(), |c| c.as_ptr())) };
        found.map(|_| ()).ok_or(CUresult::CUDA_ERROR_INVALID_VALUE)
    })
}

/// A static description of `error` (works before `cuInit`).
///
/// # Safety
/// `pStr` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(error: c_uint, pStr: *mut *const c_char) -> CUresult {
    describe("cuGetErrorString", error, pStr, codes::description)
}

/// The static name of `error` (works before `cuInit`).
///
/// # Safety
/// `pStr` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(error: c_uint, pStr: *mut *const c_char) -> CUresult {
    describe("cuGetErrorName", error, pStr, codes::name)
}

/// 12040 (CUDA 12.4, the API cudarc is built for).
///
/// # Safety
/// `driverVersion` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(driverVersion: *mut c_int) -> CUresult {
    guard("cuDriverGetVersion", || {
        non_null(driverVersion)?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { driverVersion.write(12040) };
        Ok(())
    })
}

/// # Safety
/// `count` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    guard("cuDeviceGetCount", || {
        non_null(count)?;
        let n = state::with(|s| s.ready().map(|()| s.devices.len() as c_int))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { count.write(n) };
        Ok(())
    })
}

/// # Safety
/// `device` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    guard("cuDeviceGet", || {
        non_null(device)?;
        state::with(|s| s.ready().and_then(|()| s.device(ordinal).map(|_| ())))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { device.write(ordinal) };
        Ok(())
    })
}

/// The device's capacity (`COALESCE_STANDIN_CAPACITY`).
///
/// # Safety
/// `bytes` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    guard("cuDeviceTotalMem_v2", || {
        non_null(bytes)?;
        let total = state::with(|s| {
            s.ready()
                .and_then(|()| s.device(dev).map(|_| s.config.capacity))
        })?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { bytes.write(total) };
        Ok(())
    })
}

/// # Safety
/// `pctx` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRetain", || {
        non_null(pctx)?;
        let ctx = state::with(|s| s.retain_primary(dev))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { pctx.write(ctx) };
        Ok(())
    })
}

/// # Safety
/// None: no pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    guard("cuDevicePrimaryCtxRelease_v2", || {
        state::with(|s| s.release_primary(dev))
    })
}

/// # Safety
/// `pctx` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    guard("cuCtxGetCurrent", || {
        non_null(pctx)?;
        state::with(|s| s.ready())?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { pctx.write(context::current()) };
        Ok(())
    })
}

/// # Safety
/// None: the context is only compared with the stand-in's tokens.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    guard("cuCtxSetCurrent", || state::with(|s| s.set_current(ctx)))
}

/// # Safety
/// `device` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(device: *mut CUdevice) -> CUresult {
    guard("cuCtxGetDevice", || {
        non_null(device)?;
        let d = state::with(|s| s.ready().and_then(|()| s.current_device()))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { device.write(d) };
        Ok(())
    })
}

/// Waits for all stream work of the current context's device.
///
/// # Safety
/// None: no pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    guard("cuCtxSynchronize", || wait_for(|s| s.device_deadline()))
}

/// Sleeps (without the lock) until the deadline `deadline` computes has passed, then runs
/// the work that became due and reports a sticky asynchronous fault.
pub(super) fn wait_for(
    deadline: impl Fn(&mut state::State) -> Result<Option<Instant>, CUresult>,
) -> Result<(), CUresult> {
    loop {
        let t = state::with(&deadline)?;
        let now = Instant::now();
        match t {
            Some(t) if t > now => std::thread::sleep(t - now),
            _ => break,
        }
    }
    state::with(|s| s.sticky())
}
