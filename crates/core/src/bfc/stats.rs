//! Running counters of a [`Bfc`](super::Bfc).

/// Counters kept up to date on every operation (O(1)), except `largest_free`, which
/// [`Bfc::stats`](super::Bfc::stats) computes on demand from the bins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BfcStats {
    pub regions: usize,
    /// Sum of region sizes.
    pub region_bytes: u64,
    /// Sum of the sizes of in-use chunks (rounded and possibly padded).
    pub in_use_bytes: u64,
    pub peak_in_use_bytes: u64,
    /// Sum of the requested sizes of in-use chunks.
    pub requested_bytes: u64,
    pub in_use_chunks: usize,
    pub free_chunks: usize,
    pub largest_free: u64,
    /// Allocations served since creation.
    pub num_allocs: u64,
}

impl BfcStats {
    /// Bytes of all regions not in use.
    pub fn free_bytes(&self) -> u64 {
        self.region_bytes - self.in_use_bytes
    }

    /// TensorFlow's fragmentation metric: `1 - largest_free / free_bytes` (0 when nothing is free).
    pub fn fragmentation(&self) -> f64 {
        let free = self.free_bytes();
        if free == 0 {
            0.0
        } else {
            1.0 - self.largest_free as f64 / free as f64
        }
    }

    pub(crate) fn on_alloc(&mut self, size: u64, requested: u64) {
        self.in_use_bytes += size;
        self.requested_bytes += requested;
        self.peak_in_use_bytes = self.peak_in_use_bytes.max(self.in_use_bytes);
        self.in_use_chunks += 1;
        self.free_chunks -= 1;
        self.num_allocs += 1;
    }

    pub(crate) fn on_free(&mut self, size: u64, requested: u64) {
        self.in_use_bytes -= size;
        self.requested_bytes -= requested;
        self.in_use_chunks -= 1;
    }
}
