//! Stream-ordered reuse for policies that ignore streams (`Policy::stream_aware() == false`).
//!
//! A block freed on stream S may still be read or written by work queued on S. Handing it to
//! an allocation on S is safe (S runs in order); handing it to stream T is not until S has
//! passed the free. While only one stream has ever been seen, frees go straight back to the
//! policy. From the second stream on, each free records an event on its stream and the block
//! is held here; it goes back to the policy once the event has completed (polled before every
//! allocation, per stream in order, as PyTorch's `process_events`), or at once after a device
//! synchronization when memory runs out.
//!
//! Blocks freed before the second stream appeared went back at once, so each new stream first
//! waits (on the device, the host does not block) for an *epoch* event recorded on the first
//! stream when the second appeared, until that event has completed.

use coalesce_backend::{Backend, BackendResult, DevAddr, EventId, StreamId};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;

/// A free waiting for its stream to pass it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub addr: DevAddr,
    /// Requested bytes of the block (for the trace).
    pub requested: u64,
    pub stream: StreamId,
    event: EventId,
}

#[derive(Debug, Default)]
pub(crate) struct StreamOrder {
    /// The policy orders reuse itself: nothing to do here.
    policy_aware: bool,
    seen: FxHashSet<StreamId>,
    /// The stream of the previous call: most calls repeat it, and it needs no lookup.
    last: Option<StreamId>,
    first: Option<StreamId>,
    epoch: Option<EventId>,
    /// Pending frees per stream, oldest first (a stream's events complete in order).
    pending: FxHashMap<StreamId, VecDeque<Pending>>,
    count: usize,
}

impl StreamOrder {
    pub fn new(policy_aware: bool) -> Self {
        StreamOrder {
            policy_aware,
            ..StreamOrder::default()
        }
    }

    /// Frees must be deferred: the policy ignores streams and more than one is in use.
    pub fn deferring(&self) -> bool {
        !self.policy_aware && self.seen.len() > 1
    }

    /// Frees held here now.
    pub fn pending(&self) -> usize {
        self.count
    }

    /// The frees held here: `(addr, requested, stream)`.
    pub fn held(&self) -> impl Iterator<Item = (DevAddr, u64, StreamId)> + '_ {
        self.pending
            .values()
            .flatten()
            .map(|p| (p.addr, p.requested, p.stream))
    }

    /// Notes an allocation or free on `stream`; a stream seen for the first time is ordered after the
    /// frees that went back to the policy before deferral began.
    pub fn note_stream(&mut self, dev: &mut dyn Backend, stream: StreamId) -> BackendResult<()> {
        if self.policy_aware || self.last == Some(stream) {
            return Ok(());
        }
        self.last = Some(stream);
        if self.seen.contains(&stream) {
            return Ok(());
        }
        match self.first {
            None => self.first = Some(stream),
            Some(first) if self.seen.len() == 1 => {
                self.epoch = Some(dev.event_record(first)?);
            }
            Some(_) => {}
        }
        if let Some(epoch) = self.epoch {
            if dev.event_query(epoch)? {
                dev.event_release(epoch);
                self.epoch = None;
            } else {
                dev.stream_wait_event(stream, epoch)?;
            }
        }
        self.seen.insert(stream);
        Ok(())
    }

    /// Holds the free of `addr` on `stream` until the stream has passed this point.
    pub fn defer(
        &mut self,
        dev: &mut dyn Backend,
        addr: DevAddr,
        requested: u64,
        stream: StreamId,
    ) -> BackendResult<()> {
        let event = dev.event_record(stream)?;
        self.pending.entry(stream).or_default().push_back(Pending {
            addr,
            requested,
            stream,
            event,
        });
        self.count += 1;
        Ok(())
    }

    /// The held frees whose streams have passed them, without blocking.
    pub fn completed(&mut self, dev: &mut dyn Backend) -> BackendResult<Vec<Pending>> {
        let mut done = Vec::new();
        if self.count == 0 {
            return Ok(done);
        }
        for queue in self.pending.values_mut() {
            while let Some(p) = queue.front() {
                if !dev.event_query(p.event)? {
                    break;
                }
                dev.event_release(p.event);
                done.extend(queue.pop_front());
            }
        }
        self.count -= done.len();
        Ok(done)
    }

    /// Every held free, after waiting for the device to finish its work (the out-of-memory
    /// and `empty_cache` path: PyTorch's `synchronize_and_free_events`).
    pub fn drain(&mut self, dev: &mut dyn Backend) -> BackendResult<Vec<Pending>> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        dev.device_synchronize()?;
        let done: Vec<Pending> = self
            .pending
            .values_mut()
            .flat_map(|q| q.drain(..))
            .collect();
        for p in &done {
            dev.event_release(p.event);
        }
        self.count = 0;
        Ok(done)
    }
}
