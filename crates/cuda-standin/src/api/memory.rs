//! Memory: information, `cuMemAlloc`/`cuMemFree`, the VMM calls, synchronous copies and fills.

use super::device::wait_for;
use super::{guard, non_null};
use crate::classic;
use crate::state;
use crate::vmm::Location;
use cudarc::driver::sys::{
    CUdeviceptr, CUmemAccessDesc, CUmemAllocationProp, CUmemGenericAllocationHandle, CUresult,
};
use std::ffi::{c_uchar, c_uint, c_ulonglong, c_void};

const INVALID: CUresult = CUresult::CUDA_ERROR_INVALID_VALUE;

/// Free and total bytes of the current context's device.
///
/// # Safety
/// `free` and `total` are null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    guard("cuMemGetInfo_v2", || {
        non_null(free)?;
        non_null(total)?;
        let (f, t) = state::with(|s| {
            s.ready()?;
            let d = s.current_device()?;
            let cap = s.config.capacity;
            Ok::<_, CUresult>((cap - s.devices[d as usize].used, cap))
        })?;
        // SAFETY: both non-null and valid for writes (caller).
        unsafe {
            free.write(f);
            total.write(t);
        }
        Ok(())
    })
}

/// # Safety
/// `dptr` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    guard("cuMemAlloc_v2", || {
        non_null(dptr)?;
        let p = state::with(|s| s.alloc(bytesize))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { dptr.write(p as CUdeviceptr) };
        Ok(())
    })
}

/// # Safety
/// None: the pointer is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    guard("cuMemFree_v2", || state::with(|s| s.free(dptr as usize)))
}

/// `(allocation type, location)` of a property struct, read as raw integers.
///
/// # Safety
/// `prop` is non-null and valid for reads of a `CUmemAllocationProp`.
unsafe fn read_prop(prop: *const CUmemAllocationProp) -> (u32, Location) {
    // SAFETY: the fields lie inside `*prop` (caller); the enums are `repr(u32)`.
    unsafe {
        (
            std::ptr::addr_of!((*prop).type_).cast::<u32>().read(),
            Location {
                type_: std::ptr::addr_of!((*prop).location.type_)
                    .cast::<u32>()
                    .read(),
                id: std::ptr::addr_of!((*prop).location.id).read(),
            },
        )
    }
}

/// The granularity (`COALESCE_STANDIN_GRANULARITY`), for both options.
///
/// # Safety
/// `granularity` is null or valid for writes; `prop` is null or valid for reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const CUmemAllocationProp,
    option: c_uint,
) -> CUresult {
    guard("cuMemGetAllocationGranularity", || {
        non_null(granularity)?;
        non_null(prop)?;
        // SAFETY: non-null and valid for reads (caller).
        let (alloc_type, loc) = unsafe { read_prop(prop) };
        let g = state::with(|s| {
            s.ready()?;
            if alloc_type != 1 || option > 1 {
                return Err(INVALID);
            }
            // Driver 580 answers for any ordinal here; only the location type is checked.
            if loc.type_ != 1 {
                return Err(INVALID);
            }
            Ok(s.config.granularity)
        })?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { granularity.write(g) };
        Ok(())
    })
}

/// Reserves address space; `addr` (a hint) is ignored.
///
/// # Safety
/// `ptr` is null or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    _addr: CUdeviceptr,
    flags: c_ulonglong,
) -> CUresult {
    guard("cuMemAddressReserve", || {
        non_null(ptr)?;
        let p = state::with(|s| s.reserve(size, alignment, flags))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { ptr.write(p as CUdeviceptr) };
        Ok(())
    })
}

/// # Safety
/// None: the range is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard("cuMemAddressFree", || {
        state::with(|s| s.address_free(ptr as usize, size))
    })
}

/// # Safety
/// `handle` is null or valid for writes; `prop` is null or valid for reads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: c_ulonglong,
) -> CUresult {
    guard("cuMemCreate", || {
        non_null(handle)?;
        non_null(prop)?;
        // SAFETY: non-null and valid for reads (caller).
        let (alloc_type, loc) = unsafe { read_prop(prop) };
        let h = state::with(|s| s.create(size, alloc_type, &loc, flags))?;
        // SAFETY: non-null, valid for writes (caller).
        unsafe { handle.write(h) };
        Ok(())
    })
}

/// # Safety
/// None: the handle is only looked up.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    guard("cuMemRelease", || state::with(|s| s.release(handle)))
}

/// # Safety
/// None: the stand-in checks the range is its own reserved, unmapped address space.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: c_ulonglong,
) -> CUresult {
    guard("cuMemMap", || {
        state::with(|s| s.map(ptr as usize, size, offset, handle, flags))
    })
}

/// # Safety
/// No one touches the range afterwards (a touch faults, as on a GPU).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    guard("cuMemUnmap", || {
        state::with(|s| s.unmap(ptr as usize, size))
    })
}

/// # Safety
/// `desc` is null or valid for reads of `count` descriptors.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: CUdeviceptr,
    size: usize,
    desc: *const CUmemAccessDesc,
    count: usize,
) -> CUresult {
    guard("cuMemSetAccess", || {
        non_null(desc)?;
        let descs: Vec<(Location, u32)> = (0..count.min(64))
            .map(|i| {
                // SAFETY: `desc` is valid for `count` reads (caller) and `i < count`; the
                // enums are `repr(u32)`.
                unsafe {
                    let d = desc.add(i);
                    let loc = Location {
                        type_: std::ptr::addr_of!((*d).location.type_).cast::<u32>().read(),
                        id: std::ptr::addr_of!((*d).location.id).read(),
                    };
                    (loc, std::ptr::addr_of!((*d).flags).cast::<u32>().read())
                }
            })
            .collect();
        if count > 64 {
            return Err(INVALID);
        }
        state::with(|s| s.set_access(ptr as usize, size, &descs))
    })
}

/// Waits for the legacy default stream's dependencies, then checks and runs `op`.
fn sync_copy(
    name: &'static str,
    src: Option<usize>,
    dst: Option<usize>,
    len: usize,
    op: impl FnOnce(),
) -> CUresult {
    guard(name, || {
        wait_for(|s| s.legacy_deadline())?;
        state::with(|s| {
            s.check_copy(src, dst, len)?;
            op();
            Ok(())
        })
    })
}

/// # Safety
/// `srcHost` is valid for reads of `ByteCount` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dstDevice: CUdeviceptr,
    srcHost: *const c_void,
    ByteCount: usize,
) -> CUresult {
    if srcHost.is_null() && ByteCount > 0 {
        return guard("cuMemcpyHtoD_v2", || Err(INVALID));
    }
    let dst = dstDevice as usize;
    // SAFETY: the destination was checked to be writable device memory; the source is
    // readable (caller).
    sync_copy("cuMemcpyHtoD_v2", None, Some(dst), ByteCount, || unsafe {
        classic::copy(dst, srcHost as usize, ByteCount)
    })
}

/// # Safety
/// `dstHost` is valid for writes of `ByteCount` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dstHost: *mut c_void,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
) -> CUresult {
    if dstHost.is_null() && ByteCount > 0 {
        return guard("cuMemcpyDtoH_v2", || Err(INVALID));
    }
    let src = srcDevice as usize;
    // SAFETY: the source was checked to be readable device memory; the destination is
    // writable (caller).
    sync_copy("cuMemcpyDtoH_v2", Some(src), None, ByteCount, || unsafe {
        classic::copy(dstHost as usize, src, ByteCount)
    })
}

/// # Safety
/// None: both ranges are checked to be device memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(
    dstDevice: CUdeviceptr,
    srcDevice: CUdeviceptr,
    ByteCount: usize,
) -> CUresult {
    let (dst, src) = (dstDevice as usize, srcDevice as usize);
    // SAFETY: both ranges were checked to be device memory with the access needed.
    sync_copy(
        "cuMemcpyDtoD_v2",
        Some(src),
        Some(dst),
        ByteCount,
        || unsafe { classic::copy(dst, src, ByteCount) },
    )
}

/// # Safety
/// None: the range is checked to be device memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8_v2(dstDevice: CUdeviceptr, uc: c_uchar, N: usize) -> CUresult {
    let dst = dstDevice as usize;
    sync_copy("cuMemsetD8_v2", None, Some(dst), N, || {
        if N > 0 {
            // SAFETY: the range was checked to be writable device memory.
            unsafe { std::ptr::write_bytes(dst as *mut u8, uc, N) }
        }
    })
}
