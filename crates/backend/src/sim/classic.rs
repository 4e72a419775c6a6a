//! Classic allocations (`cuMemAlloc`) of the simulated device.

use rustc_hash::FxHashMap;

/// Bump-allocated fake addresses, each allocation aligned to the granularity like the real
/// driver's large allocations. Addresses are never reused, which keeps replays deterministic.
#[derive(Debug)]
pub(super) struct ClassicHeap {
    next: u64,
    align: u64,
    live: FxHashMap<u64, u64>,
}

impl ClassicHeap {
    pub fn new(base: u64, align: u64) -> Self {
        ClassicHeap {
            next: base,
            align,
            live: FxHashMap::default(),
        }
    }

    pub fn alloc(&mut self, size: u64) -> u64 {
        let addr = self.next;
        self.next = coalesce_core::align::align_up(addr + size, self.align);
        self.live.insert(addr, size);
        addr
    }

    /// Frees `addr`; returns its size.
    pub fn free(&mut self, addr: u64) -> Result<u64, String> {
        self.live
            .remove(&addr)
            .ok_or_else(|| format!("{addr:#x} is not a live allocation"))
    }

    /// Whether `[addr, addr + size)` lies inside one live allocation.
    pub fn contains(&self, addr: u64, size: u64) -> bool {
        // Allocations are bump-allocated, so scanning is only needed in tests: keep it simple.
        self.live
            .iter()
            .any(|(&a, &s)| a <= addr && addr + size <= a + s)
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }
}
