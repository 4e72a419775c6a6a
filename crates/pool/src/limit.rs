//! The memory cap: a backend adaptor that refuses growth beyond a byte limit (as RMM's
//! `limiting_resource_adaptor`), so policies see the cap exactly like a full device.
//!
//! Only the calls that reserve memory (`cuMemAlloc`, `cuMemCreate`) are checked, before they
//! reach the driver; a refused call is not counted as a driver call. Everything else forwards.

use coalesce_backend::{
    Backend, BackendError, BackendResult, DevAddr, DriverCall, EventId, Meter, PhysHandle, StreamId,
};

/// `inner` with reserved bytes capped at `limit` (none: no cap).
pub(super) struct Limited<'a> {
    pub inner: &'a mut dyn Backend,
    pub limit: Option<u64>,
    /// Set when a call was refused because of the limit (for the OOM report).
    pub refused: bool,
}

impl<'a> Limited<'a> {
    pub fn new(inner: &'a mut dyn Backend, limit: Option<u64>) -> Self {
        Limited {
            inner,
            limit,
            refused: false,
        }
    }

    fn admit(&mut self, call: DriverCall, size: u64) -> BackendResult<()> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let reserved = self.inner.meter().reserved_bytes;
        if reserved.saturating_add(size) <= limit {
            return Ok(());
        }
        self.refused = true;
        Err(BackendError::OutOfMemory {
            call,
            requested: size,
            free: limit.saturating_sub(reserved),
        })
    }
}

impl Backend for Limited<'_> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn device(&self) -> i32 {
        self.inner.device()
    }
    fn total_memory(&self) -> u64 {
        self.inner.total_memory()
    }
    fn free_memory(&mut self) -> BackendResult<u64> {
        self.inner.free_memory()
    }
    fn meter(&self) -> &Meter {
        self.inner.meter()
    }
    fn reset_peak(&mut self) {
        self.inner.reset_peak()
    }
    fn mem_alloc(&mut self, size: u64) -> BackendResult<DevAddr> {
        self.admit(DriverCall::MemAlloc, size)?;
        self.inner.mem_alloc(size)
    }
    fn mem_free(&mut self, addr: DevAddr) -> BackendResult<()> {
        self.inner.mem_free(addr)
    }
    fn granularity(&self) -> u64 {
        self.inner.granularity()
    }
    fn address_reserve(&mut self, size: u64) -> BackendResult<DevAddr> {
        self.inner.address_reserve(size)
    }
    fn address_free(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.inner.address_free(addr, size)
    }
    fn mem_create(&mut self, size: u64) -> BackendResult<PhysHandle> {
        self.admit(DriverCall::MemCreate, size)?;
        self.inner.mem_create(size)
    }
    fn mem_release(&mut self, handle: PhysHandle) -> BackendResult<()> {
        self.inner.mem_release(handle)
    }
    fn mem_map(&mut self, addr: DevAddr, handle: PhysHandle) -> BackendResult<()> {
        self.inner.mem_map(addr, handle)
    }
    fn mem_unmap(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.inner.mem_unmap(addr, size)
    }
    fn set_access(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        self.inner.set_access(addr, size)
    }
    fn event_record(&mut self, stream: StreamId) -> BackendResult<EventId> {
        self.inner.event_record(stream)
    }
    fn event_query(&mut self, event: EventId) -> BackendResult<bool> {
        self.inner.event_query(event)
    }
    fn event_release(&mut self, event: EventId) {
        self.inner.event_release(event)
    }
    fn stream_wait_event(&mut self, stream: StreamId, event: EventId) -> BackendResult<()> {
        self.inner.stream_wait_event(stream, event)
    }
    fn stream_synchronize(&mut self, stream: StreamId) -> BackendResult<()> {
        self.inner.stream_synchronize(stream)
    }
    fn device_synchronize(&mut self) -> BackendResult<()> {
        self.inner.device_synchronize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coalesce_backend::sim::{SimConfig, SimDevice};

    const MIB: u64 = 1 << 20;

    #[test]
    fn growth_beyond_the_limit_is_refused_before_the_driver() {
        let mut dev = SimDevice::new(SimConfig::default());
        let mut limited = Limited::new(&mut dev, Some(8 * MIB));
        let a = limited.mem_alloc(6 * MIB).unwrap();
        let err = limited.mem_create(4 * MIB).unwrap_err();
        assert_eq!(
            err,
            BackendError::OutOfMemory {
                call: DriverCall::MemCreate,
                requested: 4 * MIB,
                free: 2 * MIB
            }
        );
        assert!(limited.refused);
        limited.mem_create(2 * MIB).unwrap();
        limited.mem_free(a).unwrap();
        assert_eq!(
            dev.meter().calls.get(DriverCall::MemCreate),
            1,
            "the refused call never reached the device"
        );
    }

    #[test]
    fn no_limit_forwards_everything() {
        let mut dev = SimDevice::new(SimConfig::default());
        let mut open = Limited::new(&mut dev, None);
        open.mem_alloc(60 << 30).unwrap();
        assert!(!open.refused);
    }
}
