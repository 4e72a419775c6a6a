//! Devices' primary contexts and each thread's current context.
//!
//! A context is an opaque token: `CTX_BASE + 16 * device`, never dereferenced. A thread's
//! current context is a thread-local; it is usable while its device's primary context is
//! retained (as a primary context is active only while retained).

use crate::state::State;
use cudarc::driver::sys::{CUcontext, CUresult};
use std::cell::Cell;

const CTX_BASE: usize = 0xC7C0_0000;

thread_local! {
    /// The calling thread's current context token (0: none).
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The token for `device`'s primary context.
pub(crate) fn token(device: i32) -> CUcontext {
    std::ptr::without_provenance_mut(CTX_BASE + 16 * device as usize)
}

/// The device a token names, if it is one.
fn device_of(ctx: CUcontext) -> Option<i32> {
    let v = (ctx as usize).checked_sub(CTX_BASE)?;
    (v % 16 == 0).then(|| i32::try_from(v / 16).ok()).flatten()
}

/// The thread's current context (null if none).
pub(crate) fn current() -> CUcontext {
    std::ptr::without_provenance_mut(CURRENT.with(Cell::get))
}

impl State {
    /// The current context's device, or `CUDA_ERROR_INVALID_CONTEXT` when there is none or
    /// its primary context is not retained.
    pub fn current_device(&self) -> Result<i32, CUresult> {
        let d = device_of(current()).ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
        match self.device(d) {
            Ok(dev) if dev.primary_refs > 0 => Ok(d),
            _ => Err(CUresult::CUDA_ERROR_INVALID_CONTEXT),
        }
    }

    pub fn retain_primary(&mut self, device: i32) -> Result<CUcontext, CUresult> {
        self.ready()?;
        self.device(device)?;
        self.devices[device as usize].primary_refs += 1;
        Ok(token(device))
    }

    pub fn release_primary(&mut self, device: i32) -> Result<(), CUresult> {
        self.ready()?;
        self.device(device)?;
        let d = &mut self.devices[device as usize];
        if d.primary_refs == 0 {
            return Err(CUresult::CUDA_ERROR_INVALID_CONTEXT);
        }
        d.primary_refs -= 1;
        Ok(())
    }

    /// Makes `ctx` (null: none) current on the calling thread.
    pub fn set_current(&self, ctx: CUcontext) -> Result<(), CUresult> {
        self.ready()?;
        if !ctx.is_null() {
            let d = device_of(ctx).ok_or(CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
            self.device(d)
                .map_err(|_| CUresult::CUDA_ERROR_INVALID_CONTEXT)?;
        }
        CURRENT.with(|c| c.set(ctx as usize));
        Ok(())
    }
}
