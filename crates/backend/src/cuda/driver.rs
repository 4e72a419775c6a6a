//! The thin layer over the driver: loading it, and one `Result` wrapper per driver call that
//! cudarc's `result` layer lacks (virtual memory management, a non-failing event query).
//!
//! Same shape as `cudarc::driver::result`: functions grouped in modules named after the CUDA
//! object (`sys::cuMemMap` becomes [`vmm::map`]), each returning `Result<_, DriverError>`,
//! linking NVIDIA's documentation, and stating its preconditions as numbered `# Safety` items.
//! Calls cudarc already wraps (`cuMemAlloc`, events, streams, contexts) are used from there.

use crate::BackendError;
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;
use std::sync::OnceLock;

/// Every driver entry point the backend calls, directly or through cudarc. They are resolved
/// up front because cudarc panics at the first call of a missing symbol: a driver too old for
/// one of them must be an `Unavailable` error at start-up, never a panic mid-run.
pub const SYMBOLS: &[&str] = &[
    "cuInit",
    "cuGetErrorString",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuMemGetInfo_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetAllocationGranularity",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventDestroy_v2",
    "cuStreamWaitEvent",
    "cuStreamSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuMemsetD8Async",
];

/// Opens `libcuda`, checks that every symbol in [`SYMBOLS`] exists and runs `cuInit(0)`, once
/// per process; later calls return the first outcome.
pub(super) fn load() -> Result<(), BackendError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(load_once)
        .clone()
        .map_err(BackendError::Unavailable)
}

fn load_once() -> Result<(), String> {
    // SAFETY: `is_culib_present` only tries to dlopen the library names cudarc knows.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "no CUDA driver found (libcuda.so could not be loaded; is an NVIDIA driver \
                    installed and on the loader path?)"
                .into(),
        );
    }
    // SAFETY: the library was just found, so `culib` opens it instead of panicking; looking a
    // symbol up does not call it.
    let lib = unsafe { sys::culib() };
    let missing: Vec<&str> = SYMBOLS
        .iter()
        .copied()
        // SAFETY: the symbol is only looked up, never called through this type.
        .filter(|name| unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the CUDA driver lacks {} (too old: CUDA 11.4 or newer is needed)",
            missing.join(", ")
        ));
    }
    result::init().map_err(|e| format!("cuInit failed: {}", message(e)))
}

/// The driver's description of an error, falling back to its code.
pub(super) fn message(e: DriverError) -> String {
    match e.error_string() {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => format!("{:?}", e.0),
    }
}

pub(super) mod vmm {
    //! Virtual memory management (`cuMem*` VMM calls).
    //!
    //! See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html)

    use super::{DriverError, sys};
    use std::mem::MaybeUninit;

    /// Physical memory pinned on `device`, with no exportable handle type.
    pub fn pinned_on(device: sys::CUdevice) -> sys::CUmemAllocationProp {
        sys::CUmemAllocationProp {
            type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
            requestedHandleTypes: sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE,
            location: sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: device,
            },
            win32HandleMetaData: std::ptr::null_mut(),
            allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
                compressionType: 0,
                gpuDirectRDMACapable: 0,
                usage: 0,
                reserved: [0; 4],
            },
        }
    }

    /// Read and write access for `device`.
    pub fn read_write_on(device: sys::CUdevice) -> sys::CUmemAccessDesc {
        sys::CUmemAccessDesc {
            location: sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: device,
            },
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        }
    }

    /// The size and alignment unit of physical allocations with `prop`.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1g30ee906c2cf66a0347b3dfec3d7eb31a)
    ///
    /// # Safety
    /// 1. The driver is initialized and `prop` names an existing device.
    pub unsafe fn granularity(
        prop: &sys::CUmemAllocationProp,
        option: sys::CUmemAllocationGranularity_flags,
    ) -> Result<usize, DriverError> {
        let mut g = 0usize;
        // SAFETY: `g` and `prop` are valid for the call (caller: precondition 1).
        unsafe { sys::cuMemGetAllocationGranularity(&mut g, prop, option) }.result()?;
        Ok(g)
    }

    /// Reserves `size` bytes of virtual address space aligned to `alignment`.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1ge489256c107df2a07bddf96d80c86cd9)
    ///
    /// # Safety
    /// 1. The driver is initialized.
    /// 2. `size` and `alignment` are multiples of the allocation granularity.
    pub unsafe fn address_reserve(
        size: usize,
        alignment: usize,
    ) -> Result<sys::CUdeviceptr, DriverError> {
        let mut ptr = MaybeUninit::uninit();
        // SAFETY: `ptr` is valid for writes; preconditions 1-2 hold.
        unsafe {
            sys::cuMemAddressReserve(ptr.as_mut_ptr(), size, alignment, 0, 0).result()?;
            Ok(ptr.assume_init())
        }
    }

    /// Frees a whole reservation.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1g6993ecea2ea03e1b802b8255edc2da5b)
    ///
    /// # Safety
    /// 1. `[ptr, ptr + size)` is exactly a reservation from [`address_reserve`].
    /// 2. Nothing is mapped in it any more.
    pub unsafe fn address_free(ptr: sys::CUdeviceptr, size: usize) -> Result<(), DriverError> {
        // SAFETY: preconditions 1-2.
        unsafe { sys::cuMemAddressFree(ptr, size) }.result()
    }

    /// Creates `size` bytes of physical memory described by `prop`.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1g899d69a862bba36449789c64b430dc7c)
    ///
    /// # Safety
    /// 1. The driver is initialized and `prop` names an existing device.
    /// 2. `size` is a multiple of the granularity for `prop`.
    pub unsafe fn create(
        size: usize,
        prop: &sys::CUmemAllocationProp,
    ) -> Result<sys::CUmemGenericAllocationHandle, DriverError> {
        let mut handle = MaybeUninit::uninit();
        // SAFETY: `handle` is valid for writes; preconditions 1-2 hold.
        unsafe {
            sys::cuMemCreate(handle.as_mut_ptr(), size, prop, 0).result()?;
            Ok(handle.assume_init())
        }
    }

    /// Releases a handle; its memory is freed once no mapping uses it.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1g3014f0759f43a8d82db951b8e4b91d68)
    ///
    /// # Safety
    /// 1. `handle` came from [`create`] and was not released yet.
    pub unsafe fn release(handle: sys::CUmemGenericAllocationHandle) -> Result<(), DriverError> {
        // SAFETY: precondition 1.
        unsafe { sys::cuMemRelease(handle) }.result()
    }

    /// Maps all `size` bytes of `handle` at `ptr`.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1gff1d395423af5c5c75375516959dae56)
    ///
    /// # Safety
    /// 1. `handle` is live and has exactly `size` bytes.
    /// 2. `[ptr, ptr + size)` lies inside one reservation, is granule-aligned and unmapped.
    pub unsafe fn map(
        ptr: sys::CUdeviceptr,
        size: usize,
        handle: sys::CUmemGenericAllocationHandle,
    ) -> Result<(), DriverError> {
        // SAFETY: preconditions 1-2.
        unsafe { sys::cuMemMap(ptr, size, 0, handle, 0) }.result()
    }

    /// Unmaps `[ptr, ptr + size)`.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1gfb50aac00c848fd7087e858f59bf7e2a)
    ///
    /// # Safety
    /// 1. The range is exactly one earlier mapping.
    /// 2. No GPU work that uses the range is pending (the pool synchronizes first).
    pub unsafe fn unmap(ptr: sys::CUdeviceptr, size: usize) -> Result<(), DriverError> {
        // SAFETY: preconditions 1-2.
        unsafe { sys::cuMemUnmap(ptr, size) }.result()
    }

    /// Sets access to a mapped range for each descriptor.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__VA.html#group__CUDA__VA_1g1b6b12b10e8324bf462ecab4e7ef30e1)
    ///
    /// # Safety
    /// 1. `[ptr, ptr + size)` is fully mapped.
    pub unsafe fn set_access(
        ptr: sys::CUdeviceptr,
        size: usize,
        desc: &[sys::CUmemAccessDesc],
    ) -> Result<(), DriverError> {
        // SAFETY: `desc` is valid for `desc.len()` reads; precondition 1.
        unsafe { sys::cuMemSetAccess(ptr, size, desc.as_ptr(), desc.len()) }.result()
    }
}

pub(super) mod event {
    //! Event status without treating "not yet" as a failure.

    use super::{DriverError, sys};

    /// Whether all work captured by `event` has completed. `CUDA_ERROR_NOT_READY` means
    /// "pending" and is `Ok(false)`; cudarc's `result::event::query` reports it as an error.
    ///
    /// See [cuda docs](https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__EVENT.html#group__CUDA__EVENT_1g6f0704d755066b0ee705749ae911deef)
    ///
    /// # Safety
    /// 1. `event` was created and not destroyed.
    pub unsafe fn query(event: sys::CUevent) -> Result<bool, DriverError> {
        // SAFETY: precondition 1.
        match unsafe { sys::cuEventQuery(event) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            e => Err(DriverError(e)),
        }
    }
}
