//! The free path: `free`, `free_block`, `try_merge_blocks`, and the events of cross-stream
//! frees (`insert_events`, `process_events`, `synchronize_and_free_events`).

use super::TorchCaching;
use super::block::{BlockId, NIL};
use crate::PolicyError;
use coalesce_backend::{Backend, DevAddr, StreamId};

impl TorchCaching {
    /// `free`: the block is cached at once when freed on its allocation stream; freed on
    /// another stream, it first waits for an event recorded there (the model of
    /// `record_stream`: the other stream may still be using it).
    pub(super) fn free_at(
        &mut self,
        dev: &mut dyn Backend,
        addr: DevAddr,
        stream: StreamId,
    ) -> Result<(), PolicyError> {
        let id = self
            .active
            .remove(&addr)
            .ok_or(PolicyError::UnknownAddress(addr))?;
        let b = self.blocks.get_mut(id);
        b.allocated = false;
        b.requested = 0;
        self.allocated -= b.size;
        if stream == b.stream {
            self.free_block(id);
            return Ok(());
        }
        let event = dev.event_record(stream)?;
        self.blocks.get_mut(id).pending_events += 1;
        self.events
            .entry(stream)
            .or_default()
            .push_back((event, id));
        Ok(())
    }

    /// `free_block`: merges idle block `id` with its neighbours and caches it.
    pub(super) fn free_block(&mut self, id: BlockId) {
        let b = self.blocks.get(id);
        let (prev, next) = (b.prev, b.next);
        self.try_merge(id, prev);
        self.try_merge(id, next);
        self.insert_free(id);
    }

    /// `try_merge_blocks`: `dst` absorbs its neighbour `src` if that is idle and in the same
    /// mapping state; `src` leaves its set and the arena. Returns the bytes absorbed.
    pub(super) fn try_merge(&mut self, dst: BlockId, src: BlockId) -> u64 {
        let Some(s) = self.blocks.opt(src) else {
            return 0;
        };
        if !s.is_idle() || s.mapped != self.blocks.get(dst).mapped {
            return 0;
        }
        let s = *s;
        let (blocks, pool) = self.parts(s.pool);
        pool.remove_any(&s);
        let d = blocks.get_mut(dst);
        if d.prev == src {
            d.addr = s.addr;
            d.prev = s.prev;
            if s.prev != NIL {
                blocks.get_mut(s.prev).next = dst;
            }
        } else {
            d.next = s.next;
            if s.next != NIL {
                blocks.get_mut(s.next).prev = dst;
            }
        }
        blocks.get_mut(dst).size += s.size;
        blocks.remove(src);
        s.size
    }

    /// `process_events`: caches the blocks whose events have all completed, per stream in
    /// record order (a pending event stops its stream's queue, not the others).
    pub(super) fn process_events(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        let streams: Vec<StreamId> = self.events.keys().copied().collect();
        for stream in streams {
            let queue = self.events.get_mut(&stream).expect("listed above");
            let mut done = Vec::new();
            while let Some(&(event, id)) = queue.front() {
                if !dev.event_query(event)? {
                    break;
                }
                queue.pop_front();
                dev.event_release(event);
                done.push(id);
            }
            if queue.is_empty() {
                self.events.remove(&stream);
            }
            for id in done {
                self.event_passed(id);
            }
        }
        Ok(())
    }

    /// `synchronize_and_free_events`: waits for every pending event (the OOM path and
    /// `empty_cache` do), then caches their blocks.
    pub(super) fn synchronize_and_free_events(
        &mut self,
        dev: &mut dyn Backend,
    ) -> Result<(), PolicyError> {
        for (stream, queue) in std::mem::take(&mut self.events) {
            dev.stream_synchronize(stream)?;
            for (event, id) in queue {
                dev.event_release(event);
                self.event_passed(id);
            }
        }
        Ok(())
    }

    fn event_passed(&mut self, id: BlockId) {
        let b = self.blocks.get_mut(id);
        b.pending_events -= 1;
        if b.pending_events == 0 {
            self.free_block(id);
        }
    }
}
