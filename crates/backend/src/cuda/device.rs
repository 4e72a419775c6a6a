//! [`CudaBackend`]: the [`Backend`] contract on one GPU.

use super::context::PrimaryContext;
use super::driver::{self, message, vmm};
use super::events::EventPool;
use crate::{
    Backend, BackendError, BackendResult, DevAddr, DriverCall, EventId, Meter, PhysHandle, StreamId,
};
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;

/// One GPU through the CUDA driver API. See the [module docs](super).
///
/// Keeps its own books beside the driver's: sizes of classic allocations and physical handles
/// (for the [`Meter`], which counts reserved bytes exactly as the simulated device does) and
/// which handle is mapped where (`cuMemMap` needs the handle's size, `cuMemUnmap` releases its
/// memory once the handle was released).
#[derive(Debug)]
pub struct CudaBackend {
    ordinal: i32,
    cu_device: sys::CUdevice,
    total: u64,
    granularity: u64,
    prop: sys::CUmemAllocationProp,
    meter: Meter,
    /// Classic allocation -> size.
    classic: BTreeMap<DevAddr, u64>,
    handles: FxHashMap<u64, Handle>,
    /// Mapping start -> (handle, size).
    mappings: BTreeMap<DevAddr, (u64, u64)>,
    /// Streams this backend may hand to the driver (see [`CudaBackend::register_stream`]).
    streams: KnownStreams,
    // Declared before `ctx`: events are destroyed before the context is released.
    events: EventPool,
    ctx: PrimaryContext,
}

#[derive(Debug)]
struct Handle {
    size: u64,
    maps: u32,
    released: bool,
}

// SAFETY: the raw pointers inside (context, events, the null pointer in `prop`) are driver
// handles, valid from any thread: the driver API is thread-safe, and every call runs with the
// backend's context made current on the calling thread. `&mut self` on every call (the pool's
// lock) means one thread at a time.
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Opens device `ordinal`: loads the driver (once per process), retains the device's
    /// primary context and queries its memory and VMM granularity.
    ///
    /// Fails with [`BackendError::Unavailable`] when no driver or no such device exists; never
    /// panics (a panic inside the driver bindings is caught and reported the same way).
    pub fn new(ordinal: i32) -> BackendResult<Self> {
        std::panic::catch_unwind(|| Self::open(ordinal)).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(BackendError::Unavailable(format!(
                "the CUDA driver bindings panicked: {what}"
            )))
        })
    }

    fn open(ordinal: i32) -> BackendResult<Self> {
        driver::load()?;
        let unavailable = |call: &str, e: DriverError| {
            BackendError::Unavailable(format!("{call} failed: {}", message(e)))
        };
        let count = result::device::get_count().map_err(|e| unavailable("cuDeviceGetCount", e))?;
        if ordinal < 0 || ordinal >= count {
            return Err(BackendError::Unavailable(format!(
                "no CUDA device {ordinal}: the driver sees {count} device(s)"
            )));
        }
        let device = result::device::get(ordinal).map_err(|e| unavailable("cuDeviceGet", e))?;
        let ctx = PrimaryContext::retain(device)?;
        let current = ctx.enter()?;
        // SAFETY: `device` came from `cuDeviceGet`.
        let total = unsafe { result::device::total_mem(device) }
            .map_err(|e| unavailable("cuDeviceTotalMem", e))? as u64;
        let prop = vmm::pinned_on(device);
        let minimum = sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
        // SAFETY: the driver is initialized and `prop` names `device`.
        let granularity = unsafe { vmm::granularity(&prop, minimum) }
            .map_err(|e| unavailable("cuMemGetAllocationGranularity", e))?
            as u64;
        drop(current);
        Ok(CudaBackend {
            ordinal,
            cu_device: device,
            total,
            granularity,
            prop,
            meter: Meter::default(),
            classic: BTreeMap::new(),
            handles: FxHashMap::default(),
            mappings: BTreeMap::new(),
            streams: KnownStreams::default(),
            events: EventPool::default(),
            ctx,
        })
    }

    pub(super) fn context(&self) -> &PrimaryContext {
        &self.ctx
    }

    /// Runs `f` with this backend's context current, mapping a driver error to `call`'s.
    pub(super) fn with_ctx<T>(
        &mut self,
        call: DriverCall,
        f: impl FnOnce(&mut Self) -> Result<T, DriverError>,
    ) -> BackendResult<T> {
        let _current = self.ctx.enter()?;
        f(self).map_err(|e| driver_error(call, e))
    }

    /// Turns a driver out-of-memory into [`BackendError::OutOfMemory`] with the free bytes.
    fn out_of_memory_or(
        &mut self,
        call: DriverCall,
        requested: u64,
        e: BackendError,
    ) -> BackendError {
        match e {
            BackendError::Driver { code, .. }
                if code == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY as i32 =>
            {
                BackendError::OutOfMemory {
                    call,
                    requested,
                    free: self.free_memory().unwrap_or(0),
                }
            }
            other => other,
        }
    }

    fn invalid(call: DriverCall, reason: String) -> BackendError {
        BackendError::Invalid { call, reason }
    }

    /// Forgets a handle once it is released and unmapped; returns the bytes freed.
    fn drop_if_dead(&mut self, h: u64) -> u64 {
        match self.handles.get(&h) {
            Some(handle) if handle.released && handle.maps == 0 => {
                let size = handle.size;
                self.handles.remove(&h);
                self.meter.unreserve(size);
                size
            }
            _ => 0,
        }
    }

    /// Whether `[addr, addr + len)` is memory this backend holds: inside one classic
    /// allocation, or covered by contiguous mappings.
    pub(super) fn holds(&self, addr: DevAddr, len: u64) -> bool {
        let Some(end) = addr.checked_add(len.max(1)) else {
            return false;
        };
        if let Some((&a, &s)) = self.classic.range(..=addr).next_back()
            && end <= a + s
        {
            return true;
        }
        let mut at = addr;
        while at < end {
            match self.mappings.range(..=at).next_back() {
                Some((&m, &(_, s))) if m + s > at => at = m + s,
                _ => return false,
            }
        }
        true
    }

    /// Admits `stream` to driver calls.
    ///
    /// # Safety
    /// 1. `stream` is 0 or a `CUstream` of this device's primary context that stays alive for
    ///    as long as this backend may use it (until every block freed on it is reused).
    pub unsafe fn register_stream(&mut self, stream: StreamId) {
        self.streams.registered.insert(stream.0);
    }

    /// Admits every stream id to driver calls, for callers that only ever pass live streams
    /// (the C ABI, whose callers promise it).
    ///
    /// # Safety
    /// 1. Every [`StreamId`] later given to this backend meets [`Self::register_stream`]'s
    ///    precondition.
    pub unsafe fn admit_all_streams(&mut self) {
        self.streams.any = true;
    }

    pub(super) fn forget_stream(&mut self, stream: StreamId) {
        self.streams.registered.remove(&stream.0);
    }

    /// The driver handle of `s`, if this backend admits it; otherwise why not.
    pub(super) fn cu_stream(&self, s: StreamId) -> Result<sys::CUstream, String> {
        if !self.streams.admits(s) {
            return Err(format!(
                "stream {:#x} is not known to this backend (create it with \
                 CudaBackend::create_stream or register it)",
                s.0
            ));
        }
        Ok(std::ptr::without_provenance_mut(s.0 as usize))
    }

    fn stream(&self, call: DriverCall, s: StreamId) -> BackendResult<sys::CUstream> {
        self.cu_stream(s)
            .map_err(|reason| Self::invalid(call, reason))
    }

    fn event(&self, call: DriverCall, id: EventId) -> BackendResult<sys::CUevent> {
        self.events
            .get(id)
            .ok_or_else(|| Self::invalid(call, format!("unknown event {}", id.0)))
    }
}

/// Streams the driver may be given. A `CUstream` is a pointer the driver dereferences, so a
/// made-up [`StreamId`] would be undefined behaviour inside the driver: only the default
/// streams, streams made by [`CudaBackend::create_stream`] and streams vouched for through an
/// `unsafe` registration are passed on; any other is an `Invalid` error.
#[derive(Debug, Default)]
struct KnownStreams {
    registered: FxHashSet<u64>,
    any: bool,
}

/// `0` (legacy default stream), `cudaStreamLegacy` (1) and `cudaStreamPerThread` (2).
const DEFAULT_STREAMS: u64 = 2;

impl KnownStreams {
    fn admits(&self, s: StreamId) -> bool {
        self.any || s.0 <= DEFAULT_STREAMS || self.registered.contains(&s.0)
    }
}

/// A driver error of `call`, with the driver's own message.
pub(super) fn driver_error(call: DriverCall, e: DriverError) -> BackendError {
    BackendError::Driver {
        call,
        code: e.0 as i32,
        message: message(e),
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &str {
        "cuda"
    }

    fn device(&self) -> i32 {
        self.ordinal
    }

    fn total_memory(&self) -> u64 {
        self.total
    }

    fn free_memory(&mut self) -> BackendResult<u64> {
        let _current = self.ctx.enter()?;
        let (free, _) = result::mem_get_info().map_err(|e| {
            BackendError::Unavailable(format!("cuMemGetInfo failed: {}", message(e)))
        })?;
        Ok(free as u64)
    }

    fn meter(&self) -> &Meter {
        &self.meter
    }

    fn reset_peak(&mut self) {
        self.meter.reset_peak();
    }

    fn mem_alloc(&mut self, size: u64) -> BackendResult<DevAddr> {
        self.meter.count_sized(DriverCall::MemAlloc, size);
        if size == 0 {
            return Err(Self::invalid(DriverCall::MemAlloc, "size 0".into()));
        }
        // SAFETY: the context is current; the memory is handed out uninitialized, as bytes.
        let r = self.with_ctx(DriverCall::MemAlloc, |_| unsafe {
            result::malloc_sync(size as usize)
        });
        let addr = r.map_err(|e| self.out_of_memory_or(DriverCall::MemAlloc, size, e))?;
        self.classic.insert(addr, size);
        self.meter.reserve(size);
        Ok(addr)
    }

    fn mem_free(&mut self, addr: DevAddr) -> BackendResult<()> {
        self.meter.count(DriverCall::MemFree);
        let Some(&size) = self.classic.get(&addr) else {
            return Err(Self::invalid(
                DriverCall::MemFree,
                format!("{addr:#x} is not a live allocation"),
            ));
        };
        // SAFETY: `addr` is a live allocation of this backend (checked above), freed once.
        self.with_ctx(DriverCall::MemFree, |_| unsafe { result::free_sync(addr) })?;
        self.classic.remove(&addr);
        self.meter.add_bytes(DriverCall::MemFree, size);
        self.meter.unreserve(size);
        Ok(())
    }

    fn granularity(&self) -> u64 {
        self.granularity
    }

    fn address_reserve(&mut self, size: u64) -> BackendResult<DevAddr> {
        self.meter.count_sized(DriverCall::AddressReserve, size);
        let g = self.granularity;
        if size == 0 || !size.is_multiple_of(g) {
            return Err(Self::invalid(
                DriverCall::AddressReserve,
                format!("size {size} is not a positive multiple of the granularity {g}"),
            ));
        }
        // SAFETY: size and alignment are granule multiples (checked above).
        self.with_ctx(DriverCall::AddressReserve, |_| unsafe {
            vmm::address_reserve(size as usize, g as usize)
        })
    }

    fn address_free(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.meter.count(DriverCall::AddressFree);
        if let Some((m, _)) = self.mappings.range(addr..addr.saturating_add(size)).next() {
            return Err(Self::invalid(
                DriverCall::AddressFree,
                format!("reservation at {addr:#x} still has a mapping at {m:#x}"),
            ));
        }
        // SAFETY: nothing of ours is mapped in the range (checked above); the driver rejects a
        // range that is not exactly one reservation.
        self.with_ctx(DriverCall::AddressFree, |_| unsafe {
            vmm::address_free(addr, size as usize)
        })
    }

    fn mem_create(&mut self, size: u64) -> BackendResult<PhysHandle> {
        self.meter.count_sized(DriverCall::MemCreate, size);
        if size == 0 || !size.is_multiple_of(self.granularity) {
            return Err(Self::invalid(
                DriverCall::MemCreate,
                format!(
                    "size {size} is not a positive multiple of the granularity {}",
                    self.granularity
                ),
            ));
        }
        // SAFETY: `prop` names this device; size is a granule multiple (checked above).
        let r = self.with_ctx(DriverCall::MemCreate, |b| unsafe {
            vmm::create(size as usize, &b.prop)
        });
        let h = r.map_err(|e| self.out_of_memory_or(DriverCall::MemCreate, size, e))?;
        self.handles.insert(
            h,
            Handle {
                size,
                maps: 0,
                released: false,
            },
        );
        self.meter.reserve(size);
        Ok(PhysHandle(h))
    }

    fn mem_release(&mut self, handle: PhysHandle) -> BackendResult<()> {
        self.meter.count(DriverCall::MemRelease);
        match self.handles.get(&handle.0) {
            Some(h) if !h.released => {}
            _ => {
                return Err(Self::invalid(
                    DriverCall::MemRelease,
                    format!("handle {} is not live", handle.0),
                ));
            }
        }
        // SAFETY: the handle is live and not yet released (checked above).
        self.with_ctx(DriverCall::MemRelease, |_| unsafe {
            vmm::release(handle.0)
        })?;
        self.handles
            .get_mut(&handle.0)
            .expect("checked above")
            .released = true;
        self.drop_if_dead(handle.0);
        Ok(())
    }

    fn mem_map(&mut self, addr: DevAddr, handle: PhysHandle) -> BackendResult<()> {
        self.meter.count(DriverCall::MemMap);
        let size = match self.handles.get(&handle.0) {
            Some(h) if !h.released => h.size,
            _ => {
                return Err(Self::invalid(
                    DriverCall::MemMap,
                    format!("handle {} is not live", handle.0),
                ));
            }
        };
        // SAFETY: the handle is live with `size` bytes; the driver rejects a range outside a
        // reservation, misaligned or already mapped.
        self.with_ctx(DriverCall::MemMap, |_| unsafe {
            vmm::map(addr, size as usize, handle.0)
        })?;
        self.handles.get_mut(&handle.0).expect("checked above").maps += 1;
        self.mappings.insert(addr, (handle.0, size));
        Ok(())
    }

    fn mem_unmap(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.meter.count_sized(DriverCall::MemUnmap, size);
        let handle = match self.mappings.get(&addr) {
            Some(&(h, s)) if s == size => h,
            Some(&(_, s)) => {
                return Err(Self::invalid(
                    DriverCall::MemUnmap,
                    format!("mapping at {addr:#x} has {s} bytes; cuMemUnmap cannot unmap {size}"),
                ));
            }
            None => {
                return Err(Self::invalid(
                    DriverCall::MemUnmap,
                    format!("no mapping starts at {addr:#x}"),
                ));
            }
        };
        // Unmapping memory that queued work still uses faults the device, and cuMemUnmap does
        // not always wait (PyTorch synchronizes first too). Unmaps are rare: wait for all.
        self.device_synchronize()?;
        // SAFETY: the range is exactly one mapping (checked above) and no work is pending.
        self.with_ctx(DriverCall::MemUnmap, |_| unsafe {
            vmm::unmap(addr, size as usize)
        })?;
        self.mappings.remove(&addr);
        self.handles.get_mut(&handle).expect("mapped handle").maps -= 1;
        self.drop_if_dead(handle);
        Ok(())
    }

    fn set_access(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.meter.count_sized(DriverCall::SetAccess, size);
        let desc = [vmm::read_write_on(self.cu_device)];
        // SAFETY: the driver rejects a range that is not fully mapped.
        self.with_ctx(DriverCall::SetAccess, |_| unsafe {
            vmm::set_access(addr, size as usize, &desc)
        })
    }

    fn event_record(&mut self, stream: StreamId) -> BackendResult<EventId> {
        self.meter.count(DriverCall::EventRecord);
        let cu_stream = self.stream(DriverCall::EventRecord, stream)?;
        // Creating and recording need our context current (the driver answers
        // CUDA_ERROR_INVALID_CONTEXT otherwise, as the stand-in driver showed).
        self.with_ctx(DriverCall::EventRecord, |b| {
            let (id, event) = b.events.acquire()?;
            // SAFETY: `event` is live; the stream is admitted, hence live.
            match unsafe { result::event::record(event, cu_stream) } {
                Ok(()) => Ok(id),
                Err(e) => {
                    b.events.release(id);
                    Err(e)
                }
            }
        })
    }

    fn event_query(&mut self, event: EventId) -> BackendResult<bool> {
        self.meter.count(DriverCall::EventQuery);
        let Some(e) = self.events.get(event) else {
            return Err(Self::invalid(
                DriverCall::EventQuery,
                format!("unknown event {}", event.0),
            ));
        };
        // SAFETY: live events were created by the pool's `acquire` and are destroyed only
        // when the pool drops.
        self.with_ctx(DriverCall::EventQuery, |_| unsafe {
            driver::event::query(e)
        })
    }

    fn event_release(&mut self, event: EventId) {
        self.events.release(event);
    }

    fn stream_wait_event(&mut self, stream: StreamId, event: EventId) -> BackendResult<()> {
        self.meter.count(DriverCall::StreamWaitEvent);
        let cu_stream = self.stream(DriverCall::StreamWaitEvent, stream)?;
        let e = self.event(DriverCall::StreamWaitEvent, event)?;
        let flags = sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
        // SAFETY: the event is live; the stream is admitted, hence live.
        self.with_ctx(DriverCall::StreamWaitEvent, |_| unsafe {
            result::stream::wait_event(cu_stream, e, flags)
        })
    }

    fn stream_synchronize(&mut self, stream: StreamId) -> BackendResult<()> {
        self.meter.count(DriverCall::Synchronize);
        let cu_stream = self.stream(DriverCall::Synchronize, stream)?;
        // SAFETY: the stream is admitted, hence live.
        self.with_ctx(DriverCall::Synchronize, |_| unsafe {
            result::stream::synchronize(cu_stream)
        })
    }

    fn device_synchronize(&mut self) -> BackendResult<()> {
        self.meter.count(DriverCall::Synchronize);
        self.with_ctx(DriverCall::Synchronize, |_| result::ctx::synchronize())
    }
}
