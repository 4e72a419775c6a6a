//! The device's primary context, and making it current for the length of a driver call.
//!
//! The backend uses the primary context, the one the CUDA runtime (and so PyTorch) uses, so
//! memory it allocates is the runtime's memory. Calls may come from any thread, each with its
//! own current context (PyTorch frees a tensor of device 0 while device 1 is current): every
//! driver call runs under a [`CurrentGuard`] that makes ours current and restores the caller's.

use super::driver::message;
use crate::{BackendError, BackendResult};
use cudarc::driver::{result, sys};

/// A retained primary context, released on drop.
#[derive(Debug)]
pub(super) struct PrimaryContext {
    device: sys::CUdevice,
    ctx: sys::CUcontext,
}

impl PrimaryContext {
    /// Retains `device`'s primary context (creating it if no one has yet).
    pub fn retain(device: sys::CUdevice) -> BackendResult<Self> {
        // SAFETY: `device` came from `cuDeviceGet` on an initialized driver.
        let ctx = unsafe { result::primary_ctx::retain(device) }
            .map_err(|e| unavailable("cuDevicePrimaryCtxRetain", e))?;
        Ok(PrimaryContext { device, ctx })
    }

    /// Makes this context current on the calling thread until the guard drops.
    pub fn enter(&self) -> BackendResult<CurrentGuard> {
        let previous = result::ctx::get_current()
            .map_err(|e| unavailable("cuCtxGetCurrent", e))?
            .unwrap_or(std::ptr::null_mut());
        if previous == self.ctx {
            return Ok(CurrentGuard { restore: None });
        }
        // SAFETY: `self.ctx` is retained, hence alive.
        unsafe { result::ctx::set_current(self.ctx) }
            .map_err(|e| unavailable("cuCtxSetCurrent", e))?;
        Ok(CurrentGuard {
            restore: Some(previous),
        })
    }
}

impl Drop for PrimaryContext {
    fn drop(&mut self) {
        // SAFETY: retained in `retain` and released exactly once, here. A failure leaves one
        // reference behind, which costs nothing once the process exits.
        let _ = unsafe { result::primary_ctx::release(self.device) };
    }
}

/// Restores the thread's previous current context on drop.
#[derive(Debug)]
pub(super) struct CurrentGuard {
    restore: Option<sys::CUcontext>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        if let Some(previous) = self.restore {
            // SAFETY: `previous` was current on this thread when the guard was made (or null,
            // which unbinds), and the caller's contexts outlive its own calls into us.
            let _ = unsafe { result::ctx::set_current(previous) };
        }
    }
}

fn unavailable(call: &str, e: result::DriverError) -> BackendError {
    BackendError::Unavailable(format!("{call} failed: {}", message(e)))
}
