//! Virtual memory management over host memory: a reservation is a `PROT_NONE` anonymous
//! mapping, a physical handle a range of a memfd (see [`crate::physical`]), `cuMemMap` maps
//! that range `MAP_SHARED | MAP_FIXED`
//! (still `PROT_NONE`), `cuMemSetAccess` `mprotect`s, and `cuMemUnmap` puts a `PROT_NONE`
//! anonymous mapping back.
//!
//! Each call validates everything before it changes anything, so a refused call (or one failed
//! by fault injection, which is decided before the call starts) leaves no trace.

use crate::state::{Handle, Mapping, State};
use cudarc::driver::sys::CUresult;

const INVALID: CUresult = CUresult::CUDA_ERROR_INVALID_VALUE;

/// Device id of a `CUmemLocation` with `type_` = DEVICE, read as raw integers.
pub(crate) struct Location {
    pub type_: u32,
    pub id: i32,
}

impl State {
    fn granule_multiple(&self, x: usize) -> Result<(), CUresult> {
        if x == 0 || !x.is_multiple_of(self.config.granularity) {
            Err(INVALID)
        } else {
            Ok(())
        }
    }

    fn aligned(&self, x: usize) -> Result<(), CUresult> {
        if !x.is_multiple_of(self.config.granularity) {
            Err(INVALID)
        } else {
            Ok(())
        }
    }

    /// The device a location names (`CU_MEM_LOCATION_TYPE_DEVICE` and an existing ordinal).
    pub fn location_device(&self, loc: &Location) -> Result<i32, CUresult> {
        if loc.type_ != 1 {
            return Err(INVALID);
        }
        self.device(loc.id)?;
        Ok(loc.id)
    }

    /// Reserves `size` bytes aligned to `alignment` (0: the granularity).
    pub fn reserve(
        &mut self,
        size: usize,
        alignment: usize,
        flags: u64,
    ) -> Result<usize, CUresult> {
        self.ready()?;
        self.granule_multiple(size)?;
        if flags != 0 || (alignment != 0 && !alignment.is_power_of_two()) {
            return Err(INVALID);
        }
        let align = alignment.max(self.config.granularity);
        let total = size
            .checked_add(align)
            .ok_or(CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
        let base = map_none(None, total).ok_or(CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
        let start = base.next_multiple_of(align);
        // SAFETY: both ranges are parts of the mapping just made, outside [start, start + size).
        unsafe {
            if start > base {
                libc::munmap(base as *mut libc::c_void, start - base);
            }
            let tail = base + total - (start + size);
            if tail > 0 {
                libc::munmap((start + size) as *mut libc::c_void, tail);
            }
        }
        self.reservations.insert(start, size);
        Ok(start)
    }

    /// Frees a whole reservation with nothing mapped in it.
    pub fn address_free(&mut self, ptr: usize, size: usize) -> Result<(), CUresult> {
        self.ready()?;
        if self.reservations.get(&ptr) != Some(&size) {
            return Err(INVALID);
        }
        if self.mappings.range(ptr..ptr + size).next().is_some() {
            return Err(INVALID);
        }
        // SAFETY: the range is exactly a reservation this library made, now forgotten.
        unsafe { libc::munmap(ptr as *mut libc::c_void, size) };
        self.reservations.remove(&ptr);
        Ok(())
    }

    /// Creates `size` bytes of physical memory on `loc`'s device.
    pub fn create(
        &mut self,
        size: usize,
        alloc_type: u32,
        loc: &Location,
        flags: u64,
    ) -> Result<u64, CUresult> {
        self.ready()?;
        if alloc_type != 1 || flags != 0 {
            return Err(INVALID);
        }
        let device = self.location_device(loc)?;
        self.granule_multiple(size)?;
        if size > self.config.capacity - self.devices[device as usize].used {
            return Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY);
        }
        let offset = self
            .arena
            .take(size)
            .ok_or(CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
        self.charge(device, size)?;
        let id = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(
            id,
            Handle {
                offset,
                size,
                device,
                released: false,
                maps: 0,
            },
        );
        Ok(id)
    }

    /// Releases a handle; its memory goes once no mapping names it (as the CUDA docs say).
    /// With `COALESCE_STANDIN_STRICT_RELEASE=1` a mapped handle is refused instead.
    pub fn release(&mut self, id: u64) -> Result<(), CUresult> {
        self.ready()?;
        let strict = self.config.strict_release;
        let h = self
            .handles
            .get_mut(&id)
            .filter(|h| !h.released)
            .ok_or(INVALID)?;
        if strict && h.maps > 0 {
            return Err(INVALID);
        }
        h.released = true;
        self.drop_if_unused(id);
        Ok(())
    }

    fn drop_if_unused(&mut self, id: u64) {
        if let Some(h) = self.handles.get(&id).filter(|h| h.released && h.maps == 0) {
            let (device, size, offset) = (h.device, h.size, h.offset);
            self.handles.remove(&id);
            self.arena.give_back(offset, size);
            self.uncharge(device, size);
        }
    }

    /// Maps the first `size` bytes of handle `id` at `ptr` (`offset` must be 0), inside one
    /// reservation and over nothing mapped.
    pub fn map(
        &mut self,
        ptr: usize,
        size: usize,
        offset: usize,
        id: u64,
        flags: u64,
    ) -> Result<(), CUresult> {
        self.ready()?;
        self.granule_multiple(size)?;
        self.aligned(ptr)?;
        if flags != 0 {
            return Err(INVALID);
        }
        let end = ptr.checked_add(size).ok_or(INVALID)?;
        // A released handle stays mappable while a mapping keeps its memory alive (driver
        // 580 maps it); once the memory is gone the handle is unknown.
        let h = self.handles.get(&id).ok_or(INVALID)?;
        // Driver 580: a non-zero offset, or more bytes than the handle has, is NOT_SUPPORTED.
        if offset != 0 || size > h.size {
            return Err(CUresult::CUDA_ERROR_NOT_SUPPORTED);
        }
        let (&rstart, &rsize) = self.reservations.range(..=ptr).next_back().ok_or(INVALID)?;
        if end > rstart + rsize {
            return Err(INVALID);
        }
        if self.overlaps_mapping(ptr, end) {
            return Err(INVALID);
        }
        let fd = self
            .arena
            .fd()
            .expect("a handle exists, so the arena has its file");
        let Ok(off) = libc::off_t::try_from(h.offset + offset as u64) else {
            return Err(INVALID);
        };
        // SAFETY: [ptr, end) lies in a reservation of ours with nothing mapped there, so
        // replacing it hurts no one; the handle's range of the arena file spans
        // [off, off + size) (checked against its size above).
        let r = unsafe {
            libc::mmap(
                ptr as *mut libc::c_void,
                size,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY);
        }
        let granules = size / self.config.granularity;
        self.handles.get_mut(&id).expect("checked above").maps += 1;
        self.mappings.insert(
            ptr,
            Mapping {
                size,
                handle: id,
                access: vec![0; granules],
            },
        );
        Ok(())
    }

    fn overlaps_mapping(&self, ptr: usize, end: usize) -> bool {
        let before = self
            .mappings
            .range(..ptr)
            .next_back()
            .is_some_and(|(s, m)| s + m.size > ptr);
        before || self.mappings.range(ptr..end).next().is_some()
    }

    /// The mappings that exactly tile `[ptr, ptr + size)`, or `CUDA_ERROR_INVALID_VALUE` if the
    /// range cuts one or has a hole.
    fn tiling(&self, ptr: usize, size: usize) -> Result<Vec<usize>, CUresult> {
        let end = ptr.checked_add(size).ok_or(INVALID)?;
        let mut starts = Vec::new();
        let mut cursor = ptr;
        while cursor < end {
            let m = self.mappings.get(&cursor).ok_or(INVALID)?;
            starts.push(cursor);
            cursor += m.size;
        }
        if cursor != end {
            Err(INVALID)
        } else {
            Ok(starts)
        }
    }

    /// Unmaps whole mappings covering exactly `[ptr, ptr + size)`.
    pub fn unmap(&mut self, ptr: usize, size: usize) -> Result<(), CUresult> {
        self.ready()?;
        self.granule_multiple(size)?;
        let starts = self.tiling(ptr, size)?;
        for start in starts {
            let len = self.mappings[&start].size;
            // Only the kernel running out of map entries can refuse this; then the mappings
            // before this one are unmapped and this one and those after stay.
            map_none(Some(start), len).ok_or(CUresult::CUDA_ERROR_OUT_OF_MEMORY)?;
            let m = self.mappings.remove(&start).expect("tiling found it");
            self.handles
                .get_mut(&m.handle)
                .expect("a mapped handle is known")
                .maps -= 1;
            self.drop_if_unused(m.handle);
        }
        Ok(())
    }

    /// Sets access to whole mappings (one or several adjacent) for `locations` with `flags`
    /// (0: none, 1: read, 3: read/write).
    pub fn set_access(
        &mut self,
        ptr: usize,
        size: usize,
        locations: &[(Location, u32)],
    ) -> Result<(), CUresult> {
        self.ready()?;
        self.granule_multiple(size)?;
        self.aligned(ptr)?;
        if locations.is_empty() {
            return Err(INVALID);
        }
        let mut flags = None;
        for (loc, f) in locations {
            self.location_device(loc)?;
            if ![0, 1, 3].contains(f) {
                return Err(INVALID);
            }
            // One address space for all devices: the most recent descriptor wins.
            flags = Some(*f);
        }
        let flags = flags.expect("not empty");
        // Whole mappings only (one or several adjacent), as driver 580 answers.
        let starts = self.tiling(ptr, size)?;
        let prot = match flags {
            0 => libc::PROT_NONE,
            1 => libc::PROT_READ,
            _ => libc::PROT_READ | libc::PROT_WRITE,
        };
        // SAFETY: the whole range is mapped by this library (checked above).
        if unsafe { libc::mprotect(ptr as *mut libc::c_void, size, prot) } != 0 {
            return Err(CUresult::CUDA_ERROR_UNKNOWN);
        }
        for s in starts {
            self.mappings
                .get_mut(&s)
                .expect("tiling found it")
                .access
                .fill(flags as u8);
        }
        Ok(())
    }
}

/// Maps `len` bytes `PROT_NONE` (at `at`, replacing what is there, if given); the address.
fn map_none(at: Option<usize>, len: usize) -> Option<usize> {
    let fixed = if at.is_some() { libc::MAP_FIXED } else { 0 };
    // SAFETY: without MAP_FIXED the kernel picks a free range; with it, callers pass a range
    // this library owns (a mapping inside one of its reservations).
    let r = unsafe {
        libc::mmap(
            at.unwrap_or(0) as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | fixed,
            -1,
            0,
        )
    };
    (r != libc::MAP_FAILED).then_some(r as usize)
}
