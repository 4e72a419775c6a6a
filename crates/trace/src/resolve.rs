//! From raw events to replayable operations.
//!
//! A replay allocates on `alloc` and frees on `free_completed` (the point where PyTorch's own
//! allocator may reuse the block). Every other action is counted and otherwise ignored, except
//! `segment_alloc`, whose rows are kept: they are the segments PyTorch's native allocator really
//! created, which the peer models are validated against.

use crate::error::{Warning, WarningKind};
use crate::event::{Action, RawEvent};
use rustc_hash::FxHashMap;

/// One replayable operation. Allocation ids are dense: the n-th `Alloc` has id n.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc { id: u32, size: u64, stream: u32 },
    Free { id: u32, stream: u32 },
}

/// Counts and figures of a trace, computed once while resolving.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Trace entries of every action.
    pub events: u64,
    /// Entries per action, indexed like [`Action::ALL`].
    pub by_action: [u64; Action::ALL.len()],
    pub allocs: u64,
    pub frees: u64,
    /// Peak of the sum of live requested sizes.
    pub peak_requested_bytes: u64,
    /// Index into `ops` of the op after which the peak was first reached.
    pub peak_requested_op: usize,
    /// Allocations never freed by the end of the trace.
    pub live_at_end: u64,
}

impl TraceStats {
    pub fn count(&self, action: Action) -> u64 {
        self.by_action[Action::ALL
            .iter()
            .position(|&a| a == action)
            .expect("action in ALL")]
    }
}

/// A resolved trace, ready to replay.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub name: String,
    pub ops: Vec<Op>,
    /// Stream handles as the trace named them; `Op` streams index into this.
    pub streams: Vec<u64>,
    /// `(addr, size)` of every `segment_alloc` row, in order.
    pub segments: Vec<(u64, u64)>,
    pub stats: TraceStats,
    pub warnings: Vec<Warning>,
}

impl Trace {
    /// Requested size of every allocation, by id.
    pub fn alloc_sizes(&self) -> Vec<u64> {
        self.ops
            .iter()
            .filter_map(|op| match *op {
                Op::Alloc { size, .. } => Some(size),
                Op::Free { .. } => None,
            })
            .collect()
    }
}

/// Resolves raw events into a [`Trace`]. Never fails: oddities become [`Warning`]s.
pub fn resolve(name: impl Into<String>, events: &[RawEvent]) -> Trace {
    let mut r = Resolver::default();
    for e in events {
        r.event(e);
    }
    r.trace.stats.live_at_end = r.live.len() as u64;
    Trace {
        name: name.into(),
        ..r.trace
    }
}

#[derive(Default)]
struct Resolver {
    trace: Trace,
    /// Live allocations: address -> (id, requested size).
    live: FxHashMap<u64, (u32, u64)>,
    stream_index: FxHashMap<u64, u32>,
    requested: u64,
}

impl Resolver {
    fn event(&mut self, e: &RawEvent) {
        let stats = &mut self.trace.stats;
        stats.events += 1;
        stats.by_action[Action::ALL
            .iter()
            .position(|&a| a == e.action)
            .expect("action in ALL")] += 1;
        match e.action {
            Action::Alloc => self.alloc(e),
            Action::FreeCompleted => self.free(e),
            Action::SegmentAlloc => self.trace.segments.push((e.addr, e.size)),
            _ => {}
        }
    }

    fn stream(&mut self, stream: u64) -> u32 {
        let streams = &mut self.trace.streams;
        *self.stream_index.entry(stream).or_insert_with(|| {
            streams.push(stream);
            (streams.len() - 1) as u32
        })
    }

    fn alloc(&mut self, e: &RawEvent) {
        if self.live.contains_key(&e.addr) {
            self.warn(WarningKind::AllocOverLive, e);
            self.free(e);
        }
        let id = u32::try_from(self.trace.stats.allocs).expect("more than 2^32 allocations");
        let stream = self.stream(e.stream);
        self.live.insert(e.addr, (id, e.size));
        self.trace.ops.push(Op::Alloc {
            id,
            size: e.size,
            stream,
        });
        let stats = &mut self.trace.stats;
        stats.allocs += 1;
        self.requested += e.size;
        if self.requested > stats.peak_requested_bytes {
            stats.peak_requested_bytes = self.requested;
            stats.peak_requested_op = self.trace.ops.len() - 1;
        }
    }

    fn free(&mut self, e: &RawEvent) {
        let Some((id, size)) = self.live.remove(&e.addr) else {
            self.warn(WarningKind::UnknownFree, e);
            return;
        };
        let stream = self.stream(e.stream);
        self.trace.ops.push(Op::Free { id, stream });
        self.trace.stats.frees += 1;
        self.requested -= size;
    }

    fn warn(&mut self, kind: WarningKind, e: &RawEvent) {
        self.trace.warnings.push(Warning {
            kind,
            location: e.location,
            addr: e.addr,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: Action, addr: u64, size: u64, location: u64) -> RawEvent {
        RawEvent {
            action,
            addr,
            size,
            stream: 0,
            location,
        }
    }

    #[test]
    fn pairs_frees_with_allocations_and_tracks_peak() {
        use Action::*;
        let events = [
            ev(SegmentAlloc, 0x1000, 1 << 21, 1),
            ev(Alloc, 0x1000, 100, 2),
            ev(Alloc, 0x2000, 50, 3),
            ev(FreeRequested, 0x1000, 100, 4),
            ev(FreeCompleted, 0x1000, 100, 5),
            ev(Alloc, 0x1000, 30, 6),
        ];
        let t = resolve("t", &events);
        assert_eq!(
            t.ops,
            vec![
                Op::Alloc {
                    id: 0,
                    size: 100,
                    stream: 0
                },
                Op::Alloc {
                    id: 1,
                    size: 50,
                    stream: 0
                },
                Op::Free { id: 0, stream: 0 },
                Op::Alloc {
                    id: 2,
                    size: 30,
                    stream: 0
                },
            ]
        );
        assert_eq!(t.stats.peak_requested_bytes, 150);
        assert_eq!(t.stats.peak_requested_op, 1);
        assert_eq!(t.stats.events, 6);
        assert_eq!(t.stats.count(FreeRequested), 1);
        assert_eq!(t.stats.live_at_end, 2);
        assert_eq!(t.segments, vec![(0x1000, 1 << 21)]);
        assert!(t.warnings.is_empty());
    }

    #[test]
    fn unknown_frees_and_reused_live_addresses_are_warnings() {
        use Action::*;
        let events = [
            ev(FreeCompleted, 0x9000, 1, 2),
            ev(Alloc, 0x1000, 10, 3),
            ev(Alloc, 0x1000, 20, 4),
        ];
        let t = resolve("t", &events);
        assert_eq!(
            t.warnings,
            vec![
                Warning {
                    kind: WarningKind::UnknownFree,
                    location: 2,
                    addr: 0x9000
                },
                Warning {
                    kind: WarningKind::AllocOverLive,
                    location: 4,
                    addr: 0x1000
                },
            ]
        );
        assert_eq!(
            t.ops.len(),
            3,
            "the stale allocation is freed before the new one"
        );
        assert_eq!(t.stats.peak_requested_bytes, 20);
    }

    #[test]
    fn streams_get_dense_indices() {
        let mut a = ev(Action::Alloc, 1, 1, 1);
        a.stream = 0xdead;
        let t = resolve("t", &[a]);
        assert_eq!(t.streams, vec![0xdead]);
        assert_eq!(
            t.ops[0],
            Op::Alloc {
                id: 0,
                size: 1,
                stream: 0
            }
        );
    }
}
