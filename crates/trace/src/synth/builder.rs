//! Building a trace: allocations get unique fake addresses, frees name them.

use crate::event::{Action, RawEvent};

/// A live allocation of a trace being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    addr: u64,
    size: u64,
    stream: u64,
}

impl Tensor {
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Accumulates events. Addresses are unique per allocation, so frees resolve unambiguously.
#[derive(Debug, Default)]
pub struct TraceBuilder {
    events: Vec<RawEvent>,
    next_addr: u64,
}

impl TraceBuilder {
    pub fn new() -> Self {
        TraceBuilder {
            events: Vec::new(),
            next_addr: 1 << 40,
        }
    }

    pub fn alloc(&mut self, size: u64, stream: u64) -> Tensor {
        let size = size.max(1);
        let addr = self.next_addr;
        self.next_addr += size.next_multiple_of(512);
        self.push(Action::Alloc, addr, size, stream);
        Tensor { addr, size, stream }
    }

    pub fn free(&mut self, t: Tensor) {
        self.push(Action::FreeCompleted, t.addr, t.size, t.stream);
    }

    pub fn free_all(&mut self, ts: impl IntoIterator<Item = Tensor>) {
        for t in ts {
            self.free(t);
        }
    }

    fn push(&mut self, action: Action, addr: u64, size: u64, stream: u64) {
        let location = self.events.len() as u64;
        self.events.push(RawEvent {
            action,
            addr,
            size,
            stream,
            location,
        });
    }

    pub fn finish(self) -> Vec<RawEvent> {
        self.events
    }
}
