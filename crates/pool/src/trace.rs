//! The pool's trace: a ring buffer of its last alloc/free events, and snapshots written in the
//! CSV trace format `coalesce replay` reads.
//!
//! A snapshot file replays to exactly the pool's state at the dump:
//!
//! ```text
//! action,addr,size,stream
//! segment_alloc,ADDR,SIZE,STREAM   one per segment the policy holds at the dump
//! alloc,ADDR,SIZE,STREAM           one per block live before the ring's oldest event
//! alloc / free_requested / free_completed ...   the ring, oldest first
//! ```
//!
//! Sizes of `alloc` rows are the requested bytes. `free_requested` is written when a free is
//! held for stream ordering, `free_completed` when the block goes back to the policy (the point
//! where a replay frees, as for PyTorch's traces). The ring keeps only the last events; the
//! blocks live before them are derived at the dump from the blocks live then, so the preamble
//! is exact however long the run was and tracing costs one ring write per event.

use coalesce_backend::{DevAddr, StreamId};
use coalesce_policy::Segment;
use coalesce_trace::{Action, RawEvent};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::io::{self, Write};

/// What happened to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceAction {
    Alloc,
    /// Freed by the caller, held until its stream passes the free.
    FreeRequested,
    /// Back in the policy, reusable.
    FreeCompleted,
}

impl From<TraceAction> for Action {
    fn from(a: TraceAction) -> Action {
        match a {
            TraceAction::Alloc => Action::Alloc,
            TraceAction::FreeRequested => Action::FreeRequested,
            TraceAction::FreeCompleted => Action::FreeCompleted,
        }
    }
}

impl TraceAction {
    /// PyTorch's spelling, as trace files use it.
    pub fn name(self) -> &'static str {
        Action::from(self).name()
    }
}

/// One event: `size` is the requested size of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    pub action: TraceAction,
    pub addr: DevAddr,
    pub size: u64,
    pub stream: StreamId,
}

/// The last `capacity` events. Pushing costs a ring write: the blocks live before the oldest
/// event are derived only when a snapshot asks (see [`TraceRing::contents`]).
#[derive(Debug)]
pub(crate) struct TraceRing {
    capacity: usize,
    entries: VecDeque<TraceEntry>,
}

impl TraceRing {
    pub fn new(capacity: usize) -> Self {
        TraceRing {
            capacity,
            entries: VecDeque::with_capacity(capacity.min(1 << 16)),
        }
    }

    #[inline]
    pub fn push(&mut self, entry: TraceEntry) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// The blocks live before the ring, as `alloc` entries in address order, and the ring.
    ///
    /// `live_now` are the blocks not handed back to the policy yet (live, or held for stream
    /// ordering): `(addr, requested, stream)`. Undoing the ring's events newest first turns
    /// them into the blocks live before its oldest event: an `alloc` in the ring had not
    /// happened yet, a `free_completed` in the ring had not freed its block yet.
    pub fn contents(
        &self,
        live_now: impl Iterator<Item = (DevAddr, u64, StreamId)>,
    ) -> (Vec<TraceEntry>, Vec<TraceEntry>) {
        let mut live: FxHashMap<DevAddr, (u64, StreamId)> =
            live_now.map(|(a, size, s)| (a, (size, s))).collect();
        for e in self.entries.iter().rev() {
            match e.action {
                TraceAction::Alloc => {
                    live.remove(&e.addr);
                }
                TraceAction::FreeCompleted => {
                    live.insert(e.addr, (e.size, e.stream));
                }
                TraceAction::FreeRequested => {}
            }
        }
        let mut before: Vec<TraceEntry> = live
            .into_iter()
            .map(|(addr, (size, stream))| TraceEntry {
                action: TraceAction::Alloc,
                addr,
                size,
                stream,
            })
            .collect();
        before.sort_by_key(|e| e.addr);
        (before, self.entries.iter().copied().collect())
    }
}

/// The pool's state and recent history at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub device: i32,
    /// Segments the policy holds, with their live blocks (blocks held for stream ordering
    /// included).
    pub segments: Vec<Segment>,
    /// Blocks live before the oldest traced event (`alloc` entries).
    pub live_before_trace: Vec<TraceEntry>,
    /// The traced events, oldest first.
    pub trace: Vec<TraceEntry>,
}

impl Snapshot {
    /// Writes the snapshot as a CSV trace (see the [module docs](self)).
    pub fn write_csv(&self, out: impl Write) -> io::Result<()> {
        let event = |action, addr, size, stream: StreamId| RawEvent {
            action,
            addr,
            size,
            stream: stream.0,
            location: 0,
        };
        let segments = self
            .segments
            .iter()
            .map(|s| event(Action::SegmentAlloc, s.addr, s.size, s.stream));
        let blocks = self
            .live_before_trace
            .iter()
            .chain(&self.trace)
            .map(|e| event(e.action.into(), e.addr, e.size, e.stream));
        coalesce_trace::write_csv(&segments.chain(blocks).collect::<Vec<_>>(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: TraceAction, addr: u64) -> TraceEntry {
        TraceEntry {
            action,
            addr,
            size: addr / 2,
            stream: StreamId(0),
        }
    }

    fn live(addrs: &[u64]) -> impl Iterator<Item = (DevAddr, u64, StreamId)> + '_ {
        addrs.iter().map(|&a| (a, a / 2, StreamId(0)))
    }

    #[test]
    fn the_blocks_live_before_the_ring_are_derived_from_the_live_ones() {
        use TraceAction::*;
        let mut ring = TraceRing::new(2);
        for e in [
            entry(Alloc, 100),
            entry(Alloc, 200),
            entry(FreeRequested, 100),
            entry(FreeCompleted, 100),
            entry(Alloc, 300),
        ] {
            ring.push(e);
        }
        let (before, trace) = ring.contents(live(&[200, 300]));
        // 100's alloc was evicted but its free is still in the ring: replaying the preamble and
        // the ring leaves 200 and 300 live.
        assert_eq!(before, vec![entry(Alloc, 100), entry(Alloc, 200)]);
        assert_eq!(trace, vec![entry(FreeCompleted, 100), entry(Alloc, 300)]);
    }

    #[test]
    fn capacity_zero_keeps_only_the_live_blocks() {
        let mut ring = TraceRing::new(0);
        ring.push(entry(TraceAction::Alloc, 100));
        ring.push(entry(TraceAction::Alloc, 200));
        ring.push(entry(TraceAction::FreeCompleted, 100));
        let (before, trace) = ring.contents(live(&[200]));
        assert_eq!(before, vec![entry(TraceAction::Alloc, 200)]);
        assert!(trace.is_empty());
    }

    #[test]
    fn csv_has_the_replay_header_segments_preamble_and_ring() {
        let snap = Snapshot {
            device: 0,
            segments: vec![Segment {
                addr: 4096,
                size: 8192,
                stream: StreamId(7),
                blocks: vec![(4096, 512)],
            }],
            live_before_trace: vec![entry(TraceAction::Alloc, 4096)],
            trace: vec![entry(TraceAction::FreeCompleted, 4096)],
        };
        let mut out = Vec::new();
        snap.write_csv(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "action,addr,size,stream\nsegment_alloc,4096,8192,7\nalloc,4096,2048,0\n\
             free_completed,4096,2048,0\n"
        );
    }
}
