//! A simulated device that hands out the real run's segment addresses (test only).
//!
//! Real `cudaMalloc` addresses are not monotonic, and best fit breaks ties by address, so the
//! model can only place blocks where PyTorch did if its segments sit where PyTorch's did. When
//! the model asks for a segment during the same allocation and of the same size as a real one,
//! this device answers with the real address; otherwise with the simulator's own address moved
//! above the user address range, where it cannot collide with a real one. Everything else is
//! the [`SimDevice`], whose rules and meter apply unchanged.

use super::real_run::RealSegment;
use coalesce_backend::sim::SimDevice;
use coalesce_backend::{Backend, BackendResult, DevAddr, EventId, Meter, PhysHandle, StreamId};
use std::collections::HashMap;

/// Moves the simulator's own addresses (below 2^47) out of the real ones' way.
const UNMATCHED_OFFSET: u64 = 1 << 48;

#[derive(Debug)]
pub struct TraceDevice {
    inner: SimDevice,
    real: Vec<RealSegment>,
    used: Vec<bool>,
    /// Id of the allocation being replayed.
    pub alloc: u32,
    /// `(allocation id, size, real segment index if matched)` of every `mem_alloc`.
    pub made: Vec<(u32, u64, Option<usize>)>,
    /// Address handed out -> the simulator's address.
    translate: HashMap<DevAddr, DevAddr>,
}

impl TraceDevice {
    pub fn new(inner: SimDevice, real: &[RealSegment]) -> Self {
        TraceDevice {
            inner,
            real: real.to_vec(),
            used: vec![false; real.len()],
            alloc: 0,
            made: Vec::new(),
            translate: HashMap::new(),
        }
    }

    /// The real segment made during this allocation with this size, not handed out yet.
    fn matching(&self, size: u64) -> Option<usize> {
        let start = self.real.partition_point(|s| s.alloc < self.alloc);
        (start..self.real.len())
            .take_while(|&i| self.real[i].alloc == self.alloc)
            .find(|&i| self.real[i].size == size && !self.used[i])
    }
}

impl Backend for TraceDevice {
    fn name(&self) -> &str {
        "sim+trace-addresses"
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
        let sim = self.inner.mem_alloc(size)?;
        let matched = self.matching(size);
        let addr = match matched {
            Some(i) => {
                self.used[i] = true;
                self.real[i].addr
            }
            None => sim + UNMATCHED_OFFSET,
        };
        self.made.push((self.alloc, size, matched));
        self.translate.insert(addr, sim);
        Ok(addr)
    }

    fn mem_free(&mut self, addr: DevAddr) -> BackendResult<()> {
        let sim = self.translate.remove(&addr).unwrap_or(addr);
        self.inner.mem_free(sim)
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
