//! Streams and events of the simulated device, on a logical clock.
//!
//! Model: the host enqueues *work* (kernels) on a stream with [`StreamClock::work`]; work
//! enqueued at time `t` completes at `t + lag`, in order, and never before work the stream was
//! told to wait for (`stream_wait_event`). An event completes when the work enqueued before it
//! has, which on a stream with nothing pending is at once. Synchronizing moves the clock to the
//! completion of the awaited work, as a blocked host thread would experience it.

use crate::{EventId, StreamId};
use rustc_hash::FxHashMap;

#[derive(Debug)]
pub(super) struct StreamClock {
    now: u64,
    lag: u64,
    /// Per stream, the earliest completion of anything enqueued from now on: the completion of
    /// its last work, or of events it was told to wait for.
    ready_at: FxHashMap<StreamId, u64>,
    events: FxHashMap<u64, u64>,
    next_event: u64,
}

impl StreamClock {
    pub fn new(lag: u64) -> Self {
        StreamClock {
            now: 0,
            lag,
            ready_at: FxHashMap::default(),
            events: FxHashMap::default(),
            next_event: 1,
        }
    }

    pub fn tick(&mut self) {
        self.now += 1;
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    fn ready(&self, stream: StreamId) -> u64 {
        self.ready_at.get(&stream).copied().unwrap_or(0)
    }

    /// Enqueues work on `stream` now; returns when it completes.
    pub fn work(&mut self, stream: StreamId) -> u64 {
        let done = (self.now + self.lag).max(self.ready(stream));
        self.ready_at.insert(stream, done);
        done
    }

    pub fn record(&mut self, stream: StreamId) -> EventId {
        let done = self.ready(stream).max(self.now);
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, done);
        EventId(id)
    }

    fn event(&self, e: EventId) -> Result<u64, String> {
        self.events
            .get(&e.0)
            .copied()
            .ok_or_else(|| format!("unknown event {}", e.0))
    }

    pub fn query(&self, e: EventId) -> Result<bool, String> {
        Ok(self.event(e)? <= self.now)
    }

    pub fn release(&mut self, e: EventId) {
        self.events.remove(&e.0);
    }

    /// Whether work enqueued on `stream` now runs after `e`'s work: the event has completed, or
    /// the stream waits on something that completes no earlier.
    pub fn is_ordered_after(&self, stream: StreamId, e: EventId) -> Result<bool, String> {
        let done = self.event(e)?;
        Ok(done <= self.now || done <= self.ready(stream))
    }

    pub fn wait(&mut self, stream: StreamId, e: EventId) -> Result<(), String> {
        let done = self.event(e)?;
        let ready = self.ready_at.entry(stream).or_insert(0);
        *ready = (*ready).max(done);
        Ok(())
    }

    /// Blocks until `stream` (or every stream) has finished the work enqueued so far.
    pub fn synchronize(&mut self, stream: Option<StreamId>) {
        let until = match stream {
            Some(s) => self.ready(s),
            None => self.ready_at.values().copied().max().unwrap_or(0),
        };
        self.now = self.now.max(until);
    }
}
