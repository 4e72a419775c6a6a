//! Streams, events and the asynchronous fill.

use super::device::wait_for;
use super::{guard, non_null};
use crate::state;
use cudarc::driver::sys::{CUdeviceptr, CUevent, CUresult, CUstream};
use std::ffi::{c_uchar, c_uint};

/// Creates a stream (`Flags`: 0, blocking, or 1, `CU_STREAM_NON_BLOCKING`) on the current
/// context's device.
///
/// # Safety
/// `phStream` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(phStream: *mut CUstream, Flags: c_uint) -> CUresult {
    guard("cuStreamCreate", || {
        non_null(phStream)?;
        let s = state::with(|s| s.stream_create(Flags))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { phStream.write(s) };
        Ok(())
    })
}

/// # Safety
/// None: the handle is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(hStream: CUstream) -> CUresult {
    guard("cuStreamDestroy_v2", || {
        state::with(|s| s.stream_destroy(hStream))
    })
}

/// # Safety
/// None: the handle is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(hStream: CUstream) -> CUresult {
    guard("cuStreamSynchronize", || {
        wait_for(|s| s.stream_deadline(hStream))
    })
}

/// # Safety
/// None: the handles are only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent(
    hStream: CUstream,
    hEvent: CUevent,
    Flags: c_uint,
) -> CUresult {
    guard("cuStreamWaitEvent", || {
        state::with(|s| s.stream_wait_event(hStream, hEvent, Flags))
    })
}

/// # Safety
/// `phEvent` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(phEvent: *mut CUevent, Flags: c_uint) -> CUresult {
    guard("cuEventCreate", || {
        non_null(phEvent)?;
        let e = state::with(|s| s.event_create(Flags))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { phEvent.write(e) };
        Ok(())
    })
}

/// # Safety
/// None: the handles are only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord(hEvent: CUevent, hStream: CUstream) -> CUresult {
    guard("cuEventRecord", || {
        state::with(|s| s.event_record(hEvent, hStream))
    })
}

/// `CUDA_SUCCESS` once the recorded work completed, `CUDA_ERROR_NOT_READY` before.
///
/// # Safety
/// None: the handle is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventQuery(hEvent: CUevent) -> CUresult {
    guard("cuEventQuery", || state::with(|s| s.event_query(hEvent)))
}

/// # Safety
/// None: the handle is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(hEvent: CUevent) -> CUresult {
    guard("cuEventSynchronize", || {
        wait_for(|s| s.event_deadline(hEvent))
    })
}

/// # Safety
/// None: the handle is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy_v2(hEvent: CUevent) -> CUresult {
    guard("cuEventDestroy_v2", || {
        state::with(|s| s.event_destroy(hEvent))
    })
}

/// Enqueues a fill; the bytes are written when the stream gets there (after the lag).
///
/// # Safety
/// None: the range is checked to be device memory, and again when the fill runs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8Async(
    dstDevice: CUdeviceptr,
    uc: c_uchar,
    N: usize,
    hStream: CUstream,
) -> CUresult {
    guard("cuMemsetD8Async", || {
        state::with(|s| s.memset_async(dstDevice as usize, uc, N, hStream))
    })
}
