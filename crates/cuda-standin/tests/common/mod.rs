//! Driving the stand-in through cudarc's own bindings (so the ABI is the one the CUDA backend
//! uses): [`setup`] preloads the built library, after which cudarc's `dlopen("libcuda.so")`
//! resolves to it.
#![allow(dead_code)]

use coalesce_cuda_standin_loader as loader;
use cudarc::driver::sys::{self, CUresult};
use std::sync::{Mutex, MutexGuard};

pub const G: usize = 2 << 20;
pub const OK: CUresult = CUresult::CUDA_SUCCESS;
pub const INVALID: CUresult = CUresult::CUDA_ERROR_INVALID_VALUE;

/// Tests in one binary share the driver's state: they take turns.
static TURN: Mutex<()> = Mutex::new(());

/// Loads the stand-in, initializes it, makes device 0's primary context current on this
/// thread and clears faults and counts. Hold the guard for the whole test.
pub fn setup() -> MutexGuard<'static, ()> {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    loader::preload().expect("preload the stand-in");
    controls().reset();
    init_context();
    turn
}

/// `cuInit`, retain device 0's primary context and make it current.
pub fn init_context() {
    // SAFETY: the stand-in is loaded; out-pointers are valid.
    unsafe {
        assert_eq!(sys::cuInit(0), OK);
        let mut ctx = std::ptr::null_mut();
        assert_eq!(sys::cuDevicePrimaryCtxRetain(&mut ctx, 0), OK);
        assert_eq!(sys::cuCtxSetCurrent(ctx), OK);
    }
}

pub fn controls() -> &'static loader::Controls {
    loader::controls().expect("stand-in controls")
}

pub fn prop(device: i32) -> sys::CUmemAllocationProp {
    // SAFETY: all-zero is a valid value of this plain C struct (its enums have a 0 variant).
    let mut p: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    p.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = device;
    p
}

pub fn reserve(size: usize) -> u64 {
    let mut p = 0;
    // SAFETY: valid out-pointer.
    let r = unsafe { sys::cuMemAddressReserve(&mut p, size, 0, 0, 0) };
    assert_eq!(r, OK);
    p
}

pub fn try_create(size: usize) -> Result<u64, CUresult> {
    let mut h = 0;
    // SAFETY: valid pointers.
    match unsafe { sys::cuMemCreate(&mut h, size, &prop(0), 0) } {
        OK => Ok(h),
        e => Err(e),
    }
}

pub fn create(size: usize) -> u64 {
    try_create(size).expect("cuMemCreate")
}

pub fn map(ptr: u64, size: usize, handle: u64) -> CUresult {
    // SAFETY: the stand-in checks the range.
    unsafe { sys::cuMemMap(ptr, size, 0, handle, 0) }
}

pub fn unmap(ptr: u64, size: usize) -> CUresult {
    // SAFETY: as above.
    unsafe { sys::cuMemUnmap(ptr, size) }
}

pub fn set_rw(ptr: u64, size: usize) -> CUresult {
    let desc = sys::CUmemAccessDesc {
        location: prop(0).location,
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: one valid descriptor.
    unsafe { sys::cuMemSetAccess(ptr, size, &desc, 1) }
}

pub fn release(handle: u64) -> CUresult {
    // SAFETY: the stand-in checks the handle.
    unsafe { sys::cuMemRelease(handle) }
}

pub fn address_free(ptr: u64, size: usize) -> CUresult {
    // SAFETY: the stand-in checks the range.
    unsafe { sys::cuMemAddressFree(ptr, size) }
}

/// The permissions (`rw-s`, `---p`, ...) of the host mapping holding `addr`.
pub fn protection(addr: u64) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            u64::from_str_radix(lo, 16).unwrap(),
            u64::from_str_radix(hi, 16).unwrap(),
        );
        if (lo..hi).contains(&addr) {
            return perms.to_string();
        }
    }
    "unmapped".into()
}

/// Frees (used) bytes of the current device.
pub fn mem_info() -> (usize, usize) {
    let (mut free, mut total) = (0, 0);
    // SAFETY: valid out-pointers.
    assert_eq!(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }, OK);
    (free, total)
}
