//! What the pool reports: bytes requested, allocated and reserved (current and peak), driver
//! calls, allocations, frees, retries and out-of-memory errors.

use coalesce_backend::DriverCalls;

/// Counters the pool keeps itself (the backend's [`Meter`](coalesce_backend::Meter) keeps the
/// reserved bytes and driver calls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub requested: u64,
    pub peak_requested: u64,
    pub allocated: u64,
    pub peak_allocated: u64,
    pub allocs: u64,
    pub frees: u64,
    pub ooms: u64,
    pub retries: u64,
    /// Frees of addresses that are not live blocks (double frees, foreign pointers).
    pub invalid_frees: u64,
    /// Allocations of 0 bytes or of more than the device holds.
    pub invalid_requests: u64,
    /// Bytes of blocks ever handed out and ever freed (PyTorch's
    /// `allocated_bytes.all.allocated` and `.freed`), and the same for requested bytes.
    pub total_allocated: u64,
    pub total_freed: u64,
    pub total_requested: u64,
    pub total_requested_freed: u64,
}

impl Counters {
    pub fn on_alloc(&mut self, requested: u64, size: u64) {
        self.allocs += 1;
        self.requested += requested;
        self.total_requested += requested;
        self.total_allocated += size;
        self.allocated += size;
        self.peak_requested = self.peak_requested.max(self.requested);
        self.peak_allocated = self.peak_allocated.max(self.allocated);
    }

    pub fn on_free(&mut self, requested: u64, size: u64) {
        self.frees += 1;
        self.requested -= requested;
        self.total_requested_freed += requested;
        self.total_freed += size;
        self.allocated -= size;
    }

    pub fn reset_peaks(&mut self) {
        self.peak_requested = self.requested;
        self.peak_allocated = self.allocated;
    }
}

/// A consistent picture of one pool, taken under its lock.
///
/// Always `requested_bytes <= allocated_bytes <= reserved_bytes` (blocks are the request
/// rounded up; blocks live inside reserved memory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStats {
    pub device: i32,
    /// Backend name ("cuda", "sim").
    pub backend: String,
    /// The policy spec, as it would be written in `COALESCE_POLICY`.
    pub policy: String,
    /// Sum of the sizes callers asked for, over live allocations.
    pub requested_bytes: u64,
    pub peak_requested_bytes: u64,
    /// Sum of the block sizes handed out for live allocations.
    pub allocated_bytes: u64,
    pub peak_allocated_bytes: u64,
    /// Device memory the pool holds from the driver.
    pub reserved_bytes: u64,
    pub peak_reserved_bytes: u64,
    /// Largest block the policy could hand out without calling the driver.
    pub largest_free_block: u64,
    pub segments: usize,
    /// Frees held until their stream passes them.
    pub pending_frees: usize,
    pub num_allocs: u64,
    pub num_frees: u64,
    /// Allocations that failed for lack of memory, after recovery.
    pub num_ooms: u64,
    /// Allocations that released cached memory and retried.
    pub num_alloc_retries: u64,
    /// Frees refused: double frees and pointers this pool did not hand out.
    pub num_invalid_frees: u64,
    /// Allocations refused: 0 bytes, or more than the device holds.
    pub num_invalid_requests: u64,
    /// Bytes of blocks handed out over the pool's life (PyTorch's
    /// `allocated_bytes.all.allocated`).
    pub total_allocated_bytes: u64,
    /// Bytes of blocks freed over the pool's life (`allocated_bytes.all.freed`).
    pub total_freed_bytes: u64,
    /// Requested bytes over the pool's life (`requested_bytes.all.allocated`).
    pub total_requested_bytes: u64,
    /// Requested bytes freed over the pool's life (`requested_bytes.all.freed`).
    pub total_requested_freed_bytes: u64,
    pub driver_calls: DriverCalls,
    /// Bytes passed to each kind of driver call.
    pub driver_bytes: DriverCalls,
    pub memory_limit: Option<u64>,
    pub total_memory: u64,
}
