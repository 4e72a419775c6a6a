//! Backend adaptors: small wrappers that sit between a pool and its backend and see every
//! driver call, composed the way RMM's resource adaptors are (a limit over a fault injector
//! over the simulated device, say).
//!
//! There is one forwarding mechanism: an [`Adaptor`] names the backend it wraps and may hook
//! [`Adaptor::before`] and [`Adaptor::after`] each call; the blanket `impl Backend for A:
//! Adaptor` forwards every method. An adaptor therefore never writes a forwarding method by
//! hand, and a new `Backend` method is forwarded for all of them in one place.
//!
//! Invariants of the mechanism:
//! - a call refused by `before` never reaches the inner backend, and `after` is not called
//!   for it (a refused call is not a driver call: it changes nothing and is not metered);
//! - `after` sees every call the inner backend answered, with its outcome;
//! - queries that are not driver calls (`name`, `meter`, `granularity`, `total_memory`,
//!   `event_release`, `reset_peak`) forward untouched.

mod by_ref;
mod call;
mod faults;
mod limit;
mod log;
#[cfg(test)]
mod tests;

pub use by_ref::ByRef;
pub use call::Call;
pub use faults::{Fault, Faults};
pub use limit::Limit;
pub use log::{Log, LogEntry};

use crate::{Backend, BackendError, BackendResult, DevAddr, EventId, Meter, PhysHandle, StreamId};

/// A backend wrapping another. See the [module docs](self).
pub trait Adaptor: Send {
    fn inner(&self) -> &dyn Backend;
    fn inner_mut(&mut self) -> &mut dyn Backend;

    /// Sees `call` before the inner backend does; an error refuses it.
    fn before(&mut self, _call: &Call) -> BackendResult<()> {
        Ok(())
    }

    /// Sees `call` after the inner backend answered it.
    fn after(&mut self, _call: &Call, _outcome: Result<(), &BackendError>) {}
}

/// Runs one driver call through the adaptor's hooks.
#[inline]
fn through<A: Adaptor + ?Sized, T>(
    a: &mut A,
    call: Call,
    f: impl FnOnce(&mut dyn Backend) -> BackendResult<T>,
) -> BackendResult<T> {
    a.before(&call)?;
    let r = f(a.inner_mut());
    a.after(&call, r.as_ref().map(|_| ()));
    r
}

impl<A: Adaptor> Backend for A {
    fn name(&self) -> &str {
        self.inner().name()
    }
    fn device(&self) -> i32 {
        self.inner().device()
    }
    fn total_memory(&self) -> u64 {
        self.inner().total_memory()
    }
    fn free_memory(&mut self) -> BackendResult<u64> {
        self.inner_mut().free_memory()
    }
    fn meter(&self) -> &Meter {
        self.inner().meter()
    }
    fn reset_peak(&mut self) {
        self.inner_mut().reset_peak()
    }
    fn mem_alloc(&mut self, size: u64) -> BackendResult<DevAddr> {
        through(self, Call::MemAlloc { size }, |b| b.mem_alloc(size))
    }
    fn mem_free(&mut self, addr: DevAddr) -> BackendResult<()> {
        through(self, Call::MemFree { addr }, |b| b.mem_free(addr))
    }
    fn granularity(&self) -> u64 {
        self.inner().granularity()
    }
    fn address_reserve(&mut self, size: u64) -> BackendResult<DevAddr> {
        through(self, Call::AddressReserve { size }, |b| {
            b.address_reserve(size)
        })
    }
    fn address_free(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        through(self, Call::AddressFree { addr, size }, |b| {
            b.address_free(addr, size)
        })
    }
    fn mem_create(&mut self, size: u64) -> BackendResult<PhysHandle> {
        through(self, Call::MemCreate { size }, |b| b.mem_create(size))
    }
    fn mem_release(&mut self, handle: PhysHandle) -> BackendResult<()> {
        through(self, Call::MemRelease { handle }, |b| b.mem_release(handle))
    }
    fn mem_map(&mut self, addr: DevAddr, handle: PhysHandle) -> BackendResult<()> {
        through(self, Call::MemMap { addr, handle }, |b| {
            b.mem_map(addr, handle)
        })
    }
    fn mem_unmap(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        through(self, Call::MemUnmap { addr, size }, |b| {
            b.mem_unmap(addr, size)
        })
    }
    fn set_access(&mut self, addr: DevAddr, size: u64) -> BackendResult<()> {
        through(self, Call::SetAccess { addr, size }, |b| {
            b.set_access(addr, size)
        })
    }
    fn event_record(&mut self, stream: StreamId) -> BackendResult<EventId> {
        through(self, Call::EventRecord { stream }, |b| {
            b.event_record(stream)
        })
    }
    fn event_query(&mut self, event: EventId) -> BackendResult<bool> {
        through(self, Call::EventQuery { event }, |b| b.event_query(event))
    }
    fn event_release(&mut self, event: EventId) {
        self.inner_mut().event_release(event)
    }
    fn stream_wait_event(&mut self, stream: StreamId, event: EventId) -> BackendResult<()> {
        through(self, Call::StreamWaitEvent { stream, event }, |b| {
            b.stream_wait_event(stream, event)
        })
    }
    fn stream_synchronize(&mut self, stream: StreamId) -> BackendResult<()> {
        through(self, Call::StreamSynchronize { stream }, |b| {
            b.stream_synchronize(stream)
        })
    }
    fn device_synchronize(&mut self) -> BackendResult<()> {
        through(self, Call::DeviceSynchronize, |b| b.device_synchronize())
    }
}
