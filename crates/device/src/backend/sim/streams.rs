//! Streams and events of the simulated device, on a logical clock.
//!
//! Model: work enqueued on a stream at time `t` completes at `t + lag`, but never before work
//! the stream was told to wait for (`stream_wait_event`). An event completes when the work
//! enqueued before it has. Synchronizing moves the clock forward to the completion of the
//! awaited work, as a blocked host thread would experience it.

use crate::backend::{EventId, StreamId};
use rustc_hash::FxHashMap;

#[derive(Debug)]
pub(super) struct StreamClock {
    now: u64,
    lag: u64,
    /// Earliest completion time of new work per stream, from waits on other streams' events.
    ready_at: FxHashMap<StreamId, u64>,
    /// Completion time of the last work enqueued per stream.
    last_done: FxHashMap<StreamId, u64>,
    events: FxHashMap<u64, u64>,
    next_event: u64,
}

impl StreamClock {
    pub fn new(lag: u64) -> Self {
        StreamClock {
            now: 0,
            lag,
            ready_at: FxHashMap::default(),
            last_done: FxHashMap::default(),
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

    /// Completion time of work enqueued on `stream` now.
    pub fn done_at(&self, stream: StreamId) -> u64 {
        let ready = self.ready_at.get(&stream).copied().unwrap_or(0);
        let last = self.last_done.get(&stream).copied().unwrap_or(0);
        (self.now + self.lag).max(ready).max(last)
    }

    pub fn record(&mut self, stream: StreamId) -> EventId {
        let done = self.done_at(stream);
        self.last_done.insert(stream, done);
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, done);
        EventId(id)
    }

    pub fn query(&self, e: EventId) -> Result<bool, String> {
        let done = self
            .events
            .get(&e.0)
            .ok_or_else(|| format!("unknown event {}", e.0))?;
        Ok(*done <= self.now)
    }

    pub fn release(&mut self, e: EventId) {
        self.events.remove(&e.0);
    }

    /// Whether work enqueued on `stream` now runs after `e`'s work: the event has completed, or
    /// the stream waits on something that completes no earlier.
    pub fn is_ordered_after(&self, stream: StreamId, e: EventId) -> Result<bool, String> {
        let done = *self
            .events
            .get(&e.0)
            .ok_or_else(|| format!("unknown event {}", e.0))?;
        let ready = self.ready_at.get(&stream).copied().unwrap_or(0);
        Ok(done <= self.now || done <= ready)
    }

    pub fn wait(&mut self, stream: StreamId, e: EventId) -> Result<(), String> {
        let done = *self
            .events
            .get(&e.0)
            .ok_or_else(|| format!("unknown event {}", e.0))?;
        let ready = self.ready_at.entry(stream).or_insert(0);
        *ready = (*ready).max(done);
        Ok(())
    }

    /// Blocks until `stream` (or every stream) has finished the work enqueued so far.
    pub fn synchronize(&mut self, stream: Option<StreamId>) {
        let until = match stream {
            Some(s) => self.done_at(s),
            None => {
                let known = self.last_done.keys().chain(self.ready_at.keys());
                known
                    .map(|&s| self.done_at(s))
                    .max()
                    .unwrap_or(self.now + self.lag)
            }
        };
        self.now = self.now.max(until);
    }
}
