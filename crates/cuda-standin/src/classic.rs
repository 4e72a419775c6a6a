//! `cuMemAlloc`/`cuMemFree` over anonymous read/write mappings, and the synchronous copies
//! and fills. Device pointers are host addresses, so a copy is a `memcpy` once the range is
//! known to be device memory the caller may touch.

use crate::state::{Allocation, State};
use cudarc::driver::sys::CUresult;

const INVALID: CUresult = CUresult::CUDA_ERROR_INVALID_VALUE;

impl State {
    /// `size` bytes of read/write memory on the current context's device.
    pub fn alloc(&mut self, size: usize) -> Result<usize, CUresult> {
        self.ready()?;
        let device = self.current_device()?;
        if size == 0 {
            return Err(INVALID);
        }
        let len = size
            .checked_next_multiple_of(crate::config::page_size())
            .ok_or(CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
        self.charge(device, len)?;
        // SAFETY: a fresh anonymous mapping where the kernel chooses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            self.uncharge(device, len);
            return Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY);
        }
        self.allocations
            .insert(p as usize, Allocation { size, len, device });
        Ok(p as usize)
    }

    /// Frees an allocation by its start address; 0 is a no-op (as driver 580).
    pub fn free(&mut self, ptr: usize) -> Result<(), CUresult> {
        self.ready()?;
        self.current_device()?;
        if ptr == 0 {
            return Ok(());
        }
        let a = self.allocations.remove(&ptr).ok_or(INVALID)?;
        // SAFETY: exactly the mapping `alloc` made, now forgotten.
        unsafe { libc::munmap(ptr as *mut libc::c_void, a.len) };
        self.uncharge(a.device, a.len);
        Ok(())
    }

    /// Checks a synchronous copy or fill: initialized, a context, device memory with access.
    /// `src`/`dst` are device ranges to read/write.
    pub fn check_copy(
        &self,
        src: Option<usize>,
        dst: Option<usize>,
        len: usize,
    ) -> Result<(), CUresult> {
        self.ready()?;
        self.current_device()?;
        if let Some(s) = src {
            self.check_device_range(s, len, false)?;
        }
        if let Some(d) = dst {
            self.check_device_range(d, len, true)?;
        }
        Ok(())
    }
}

/// Copies `len` bytes; ranges may overlap (as `cuMemcpyDtoD` of overlapping ranges is
/// undefined on a GPU, `memmove` is the kindest reading).
///
/// # Safety
/// `src` is readable and `dst` writable for `len` bytes.
pub(crate) unsafe fn copy(dst: usize, src: usize, len: usize) {
    if len > 0 {
        // SAFETY: caller's contract.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
    }
}
