//! Fences: how far each stream is known to have got, in policy ticks.
//!
//! Unmapping a handle is a host-side driver call, not ordered in any stream: a kernel still
//! running on the handle's old stream would fault. So a handle that became idle at tick `t`
//! (the tick of the free) may be unmapped only once its stream has passed `t`. A fence is an
//! event recorded on a stream at some tick; once it completes, everything the stream was given
//! up to that tick has run. Fences are recorded lazily, only on the rare backing path, and a
//! stream needs at most one outstanding at a time.

use coalesce_backend::{Backend, BackendError, EventId, StreamId};
use rustc_hash::FxHashMap;

#[derive(Debug, Default)]
struct Fence {
    /// Event recorded at a tick, not yet known to be complete.
    pending: Option<(EventId, u64)>,
    /// Every tick up to this one is known complete on the stream.
    done: u64,
}

#[derive(Debug, Default)]
pub(super) struct Fences {
    streams: FxHashMap<StreamId, Fence>,
}

impl Fences {
    /// Whether `stream` has passed tick `t`.
    #[inline]
    pub fn passed(&self, stream: StreamId, t: u64) -> bool {
        self.streams.get(&stream).is_some_and(|f| f.done >= t)
    }

    /// Learns what it can about `stream` without blocking: completes a pending fence if its
    /// event is done; otherwise records one at `now` if the stream's known point is behind.
    /// Returns whether the stream has passed `want`.
    pub fn advance(
        &mut self,
        dev: &mut dyn Backend,
        stream: StreamId,
        now: u64,
        want: u64,
    ) -> Result<bool, BackendError> {
        let f = self.streams.entry(stream).or_default();
        if f.done >= want {
            return Ok(true);
        }
        if let Some((event, at)) = f.pending {
            if !dev.event_query(event)? {
                return Ok(false);
            }
            dev.event_release(event);
            f.pending = None;
            f.done = f.done.max(at);
            if f.done >= want {
                return Ok(true);
            }
        }
        let event = dev.event_record(stream)?;
        // An event recorded now covers everything enqueued so far; check it at once, as the
        // stream is often already idle.
        if dev.event_query(event)? {
            dev.event_release(event);
            f.done = now;
            return Ok(now >= want);
        }
        f.pending = Some((event, now));
        Ok(false)
    }

    /// Records that `stream` is known to have finished everything up to `now` (after a device
    /// synchronize).
    pub fn mark_done(&mut self, stream: StreamId, now: u64) {
        let f = self.streams.entry(stream).or_default();
        f.done = f.done.max(now);
    }
}
