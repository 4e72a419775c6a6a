//! The CUDA backend: the [`Backend`](crate::Backend) contract on a real GPU.
//!
//! Layers, bottom up, as in cudarc itself (`sys` → `result` → safe):
//! - `cudarc::driver::sys`: the raw driver functions. `libcuda` is opened at run time and each
//!   symbol resolved on first use, so the project builds and its tests run with no CUDA.
//! - `driver`: loading (library present, every symbol we call present, `cuInit` once) and one
//!   thin `Result` wrapper per driver call cudarc's `result` layer lacks (the VMM calls, an
//!   event query where "not ready" is not an error), each with numbered `# Safety` items.
//! - [`CudaBackend`]: the safe backend: classic allocations (`cuMemAlloc`/`cuMemFree`), virtual
//!   memory (`cuMemAddressReserve`, `cuMemCreate` of pinned device memory, `cuMemMap`,
//!   `cuMemSetAccess` read/write for the device, `cuMemUnmap`, `cuMemRelease`, granularity from
//!   `cuMemGetAllocationGranularity(MINIMUM)`) and pooled events for stream-ordered reuse.
//!
//! No driver, no device, a driver too old: [`CudaBackend::new`] returns
//! [`BackendError::Unavailable`](crate::BackendError::Unavailable) with the reason;
//! nothing panics. The backend works in the device's primary context (the one the CUDA
//! runtime and PyTorch use) and makes it current around each call.
//!
//! This is the only module of the crate with `unsafe` code; every block states why it holds.

mod context;
mod copy;
mod device;
mod driver;
mod events;
#[cfg(test)]
mod tests;

pub use copy::{CudaError, CudaStream};
pub use device::CudaBackend;
/// Every driver function the backend resolves (and may call): the stand-in driver's tests and
/// the fault-injection tests take their lists from here.
pub use driver::SYMBOLS as DRIVER_SYMBOLS;

/// Whether a CUDA driver with at least one device can be used: `Ok` or the reason it cannot.
/// Loads the driver on first use (as [`CudaBackend::new`] does).
pub fn driver_status() -> Result<(), crate::BackendError> {
    driver::load()?;
    let count = cudarc::driver::result::device::get_count().map_err(|e| {
        crate::BackendError::Unavailable(format!("cuDeviceGetCount failed: {}", driver::message(e)))
    })?;
    if count == 0 {
        return Err(crate::BackendError::Unavailable(
            "the CUDA driver sees no device".into(),
        ));
    }
    Ok(())
}
