//! The simulated device: a strict, deterministic stand-in for a GPU driver.
//!
//! It hands out fake addresses (nothing is ever dereferenced), enforces the same rules as the
//! CUDA driver (see the [`Backend`] contract), counts every call and tracks reserved bytes.
//! Trace replay runs every policy on it, and tests check after each step that what a policy
//! handed out is really mapped and accessible ([`SimDevice::is_accessible`]).
//!
//! Time is logical: the replay advances a clock with [`SimDevice::tick`] and declares the
//! kernels it implies with [`SimDevice::work`]; work enqueued on a stream completes
//! `stream_lag` ticks later (see [`streams`]).

mod classic;
mod streams;
#[cfg(test)]
mod tests;
mod vmm;

use super::{
    Backend, BackendError, BackendResult, DevAddr, DriverCall, EventId, Meter, PhysHandle, StreamId,
};
use classic::ClassicHeap;
use streams::StreamClock;
use vmm::VirtualMemory;

/// Configuration of a [`SimDevice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    pub device: i32,
    /// Physical memory of the device; allocations beyond it fail with out-of-memory.
    pub capacity: u64,
    /// VMM granularity.
    pub granularity: u64,
    /// Ticks after which work enqueued on a stream has completed (0: at once).
    pub stream_lag: u64,
    /// Check every call against CUDA's rules and keep the indexes that `is_accessible` and the
    /// stream-hazard checks need. Timed replays turn this off so that the simulator's own
    /// bookkeeping is not billed to the allocator; their decisions are identical.
    pub validate: bool,
}

impl Default for SimConfig {
    /// An H100 80GB: 80 GiB, 2 MiB granules.
    fn default() -> Self {
        SimConfig {
            device: 0,
            capacity: 80 << 30,
            granularity: 2 << 20,
            stream_lag: 0,
            validate: true,
        }
    }
}

/// A simulated GPU. See the module docs.
#[derive(Debug)]
pub struct SimDevice {
    config: SimConfig,
    meter: Meter,
    classic: ClassicHeap,
    vmm: VirtualMemory,
    clock: StreamClock,
}

/// Address ranges of the fake address space of device 0: reservations from
/// `VIRTUAL_BASE` up, classic allocations from `CLASSIC_BASE` up.
const CLASSIC_BASE: u64 = 0x7f00_0000_0000;
const VIRTUAL_BASE: u64 = 0x6000_0000_0000;
/// Devices share one address space, as CUDA's unified addressing gives them: device `d`'s
/// ranges start `d` strides below device 0's (16 devices stay clear of each other and of
/// address 0; a pointer names one device only).
const DEVICE_STRIDE_VIRTUAL: u64 = 1 << 41;
const DEVICE_STRIDE_CLASSIC: u64 = 1 << 37;

/// Device `device`'s base for a range of device 0 at `base`.
fn device_base(base: u64, stride: u64, device: i32) -> u64 {
    base - (device.rem_euclid(16) as u64) * stride
}

impl SimDevice {
    pub fn new(config: SimConfig) -> Self {
        assert!(config.granularity.is_power_of_two() && config.granularity >= 512);
        SimDevice {
            config,
            meter: Meter::default(),
            classic: ClassicHeap::new(
                device_base(CLASSIC_BASE, DEVICE_STRIDE_CLASSIC, config.device),
                config.granularity,
            ),
            vmm: VirtualMemory::new(
                device_base(VIRTUAL_BASE, DEVICE_STRIDE_VIRTUAL, config.device),
                config.granularity,
                config.validate,
            ),
            clock: StreamClock::new(config.stream_lag),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Advances logical time by one tick (the replay calls this once per trace operation).
    #[inline]
    pub fn tick(&mut self) {
        self.clock.tick();
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Whether every byte of `[addr, addr + size)` is usable by a kernel: inside a live classic
    /// allocation, or mapped with access set.
    pub fn is_accessible(&self, addr: DevAddr, size: u64) -> bool {
        self.classic.contains(addr, size) || self.vmm.is_accessible(addr, size)
    }

    /// Whether work enqueued on `stream` now would run after the work before `event`: the
    /// hazard check for stream-ordered reuse (a block freed on another stream, with `event`
    /// recorded at the free, is safe for `stream` exactly when this holds). Uncounted: a test
    /// oracle, not a driver call.
    pub fn is_ordered_after(&self, stream: StreamId, event: EventId) -> bool {
        self.clock.is_ordered_after(stream, event).unwrap_or(false)
    }

    /// Declares that `stream` uses `[addr, addr + size)` in work enqueued up to now (a test or
    /// replay calls this when a block is freed: its kernels may still run). Unmapping the range
    /// before the stream has passed this point is then an error, as it would fault on a GPU.
    /// With no stream lag, work is done at once and nothing needs recording.
    pub fn use_until_now(&mut self, addr: DevAddr, size: u64, stream: StreamId) {
        let done_at = self.clock.work(stream);
        if done_at > self.clock.now() {
            self.vmm.note_use(addr, size, stream, done_at);
        }
    }

    /// Declares that the host enqueued work (kernels) on `stream` now: events recorded on the
    /// stream later complete only once it has run. Replays call this for every operation, as
    /// every allocation is used by kernels on its stream.
    #[inline]
    pub fn work(&mut self, stream: StreamId) {
        if self.config.stream_lag > 0 {
            self.clock.work(stream);
        }
    }

    /// Physical bytes currently mapped into reservations.
    pub fn mapped_bytes(&self) -> u64 {
        self.vmm.mapped_bytes()
    }

    /// Live physical handles and live classic allocations (for leak checks in tests).
    pub fn live_objects(&self) -> (usize, usize) {
        (self.vmm.live_handles(), self.classic.live())
    }

    fn reserve_physical(&mut self, call: DriverCall, size: u64) -> BackendResult<()> {
        let free = self
            .config
            .capacity
            .saturating_sub(self.meter.reserved_bytes);
        if size > free {
            return Err(BackendError::OutOfMemory {
                call,
                requested: size,
                free,
            });
        }
        self.meter.reserve(size);
        Ok(())
    }
}

impl Backend for SimDevice {
    fn name(&self) -> &str {
        "sim"
    }

    fn device(&self) -> i32 {
        self.config.device
    }

    fn total_memory(&self) -> u64 {
        self.config.capacity
    }

    fn free_memory(&mut self) -> BackendResult<u64> {
        Ok(self
            .config
            .capacity
            .saturating_sub(self.meter.reserved_bytes))
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
            return Err(invalid(DriverCall::MemAlloc, "size 0"));
        }
        self.reserve_physical(DriverCall::MemAlloc, size)?;
        Ok(self.classic.alloc(size))
    }

    fn mem_free(&mut self, addr: DevAddr) -> BackendResult<()> {
        self.meter.count(DriverCall::MemFree);
        let size = self
            .classic
            .free(addr)
            .map_err(|r| invalid(DriverCall::MemFree, r))?;
        self.meter.add_bytes(DriverCall::MemFree, size);
        self.meter.unreserve(size);
        Ok(())
    }

    fn granularity(&self) -> u64 {
        self.config.granularity
    }

    fn address_reserve(&mut self, size: u64) -> BackendResult<DevAddr> {
        self.meter.count_sized(DriverCall::AddressReserve, size);
        self.vmm
            .reserve(size)
            .map_err(|r| invalid(DriverCall::AddressReserve, r))
    }

    fn address_free(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.meter.count(DriverCall::AddressFree);
        self.vmm
            .free_reservation(addr, size)
            .map_err(|r| invalid(DriverCall::AddressFree, r))
    }

    fn mem_create(&mut self, size: u64) -> BackendResult<PhysHandle> {
        self.meter.count_sized(DriverCall::MemCreate, size);
        self.vmm
            .check_granular(size)
            .map_err(|r| invalid(DriverCall::MemCreate, r))?;
        self.reserve_physical(DriverCall::MemCreate, size)?;
        Ok(self.vmm.create(size))
    }

    fn mem_release(&mut self, handle: PhysHandle) -> BackendResult<()> {
        self.meter.count(DriverCall::MemRelease);
        let freed = self
            .vmm
            .release(handle)
            .map_err(|r| invalid(DriverCall::MemRelease, r))?;
        self.meter.unreserve(freed);
        Ok(())
    }

    fn mem_map(&mut self, addr: DevAddr, handle: PhysHandle) -> BackendResult<()> {
        self.meter.count(DriverCall::MemMap);
        let size = self
            .vmm
            .map(addr, handle)
            .map_err(|r| invalid(DriverCall::MemMap, r))?;
        self.meter.add_bytes(DriverCall::MemMap, size);
        Ok(())
    }

    fn mem_unmap(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.meter.count_sized(DriverCall::MemUnmap, size);
        let freed = self
            .vmm
            .unmap_at(addr, size, self.clock.now())
            .map_err(|r| invalid(DriverCall::MemUnmap, r))?;
        self.meter.unreserve(freed);
        Ok(())
    }

    fn set_access(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.meter.count_sized(DriverCall::SetAccess, size);
        self.vmm
            .set_access(addr, size)
            .map_err(|r| invalid(DriverCall::SetAccess, r))
    }

    fn event_record(&mut self, stream: StreamId) -> BackendResult<EventId> {
        self.meter.count(DriverCall::EventRecord);
        Ok(self.clock.record(stream))
    }

    fn event_query(&mut self, event: EventId) -> BackendResult<bool> {
        self.meter.count(DriverCall::EventQuery);
        self.clock
            .query(event)
            .map_err(|r| invalid(DriverCall::EventQuery, r))
    }

    fn event_release(&mut self, event: EventId) {
        self.clock.release(event);
    }

    fn stream_wait_event(&mut self, stream: StreamId, event: EventId) -> BackendResult<()> {
        self.meter.count(DriverCall::StreamWaitEvent);
        self.clock
            .wait(stream, event)
            .map_err(|r| invalid(DriverCall::StreamWaitEvent, r))
    }

    fn stream_synchronize(&mut self, stream: StreamId) -> BackendResult<()> {
        self.meter.count(DriverCall::Synchronize);
        self.clock.synchronize(Some(stream));
        Ok(())
    }

    fn device_synchronize(&mut self) -> BackendResult<()> {
        self.meter.count(DriverCall::Synchronize);
        self.clock.synchronize(None);
        Ok(())
    }
}

fn invalid(call: DriverCall, reason: impl Into<String>) -> BackendError {
    BackendError::Invalid {
        call,
        reason: reason.into(),
    }
}
