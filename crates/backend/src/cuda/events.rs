//! CUDA events behind [`EventId`]s, created once and reused (as PyTorch's `EventPool`).
//!
//! Creating an event is far dearer than recording one, and the pool records one per deferred
//! free; released events go back on a free list instead of being destroyed.

use crate::EventId;
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys;
use rustc_hash::FxHashMap;

/// Live events by id, and created events waiting for reuse. Needs the owning context current
/// for [`EventPool::acquire`] (creation) only.
#[derive(Debug, Default)]
pub(super) struct EventPool {
    live: FxHashMap<u64, sys::CUevent>,
    idle: Vec<sys::CUevent>,
    next_id: u64,
}

impl EventPool {
    /// An event ready to record, with its id.
    pub fn acquire(&mut self) -> Result<(EventId, sys::CUevent), DriverError> {
        let event = match self.idle.pop() {
            Some(e) => e,
            None => result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)?,
        };
        self.next_id += 1;
        self.live.insert(self.next_id, event);
        Ok((EventId(self.next_id), event))
    }

    /// The event behind `id`, if it is live.
    pub fn get(&self, id: EventId) -> Option<sys::CUevent> {
        self.live.get(&id.0).copied()
    }

    /// Returns an event for reuse. Recording it again later is fine even if it is pending.
    pub fn release(&mut self, id: EventId) {
        if let Some(e) = self.live.remove(&id.0) {
            self.idle.push(e);
        }
    }
}

impl Drop for EventPool {
    fn drop(&mut self) {
        for e in self.live.drain().map(|(_, e)| e).chain(self.idle.drain(..)) {
            // SAFETY: each event was created once and is destroyed once, here; destroying a
            // pending event is allowed (its resources go when it completes).
            let _ = unsafe { result::event::destroy(e) };
        }
    }
}
