//! # coalesce-policy: allocation policies
//!
//! Allocation policies: which addresses to hand out, and when to ask the backend for memory.
//!
//! A [`Policy`] is single-threaded and owns no backend: every call receives the backend it
//! allocates through, so the same policy runs on the simulated device and on a GPU, and the
//! thread-safe pool wraps it with one lock. Policies are built by name from the
//! [`registry`](registry::REGISTRY), with options in PyTorch's `PYTORCH_CUDA_ALLOC_CONF` syntax
//! (see [`spec`]).
#![forbid(unsafe_code)]

mod bfc_classic;
mod buddy;
mod coalesce;
#[cfg(test)]
mod contract_tests;
mod cuda_malloc;
pub mod oracle;
pub mod registry;
pub mod spec;
mod tf_bfc;
mod torch;

pub use registry::{OFFLINE, PolicyInfo, REGISTRY, build, lookup};
pub use spec::{PolicySpec, SpecError};

use coalesce_backend::{Backend, BackendError, DevAddr, StreamId};
use std::fmt;

/// A block handed out by a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub addr: DevAddr,
    /// Bytes the block occupies in the pool (the request rounded, possibly padded).
    pub size: u64,
}

/// Why an allocation or free failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The device cannot supply the memory, even after the policy released what it could.
    #[error("out of memory: cannot allocate {requested} bytes: {source}")]
    OutOfMemory {
        requested: u64,
        source: BackendError,
    },
    /// The request can never be served (e.g. larger than the address space).
    #[error("cannot allocate {0} bytes: request too large")]
    TooLarge(u64),
    /// A free of an address this policy did not hand out, or freed already.
    #[error(
        "free of {0:#x}, which is not a live allocation of this pool (double free or foreign pointer)"
    )]
    UnknownAddress(DevAddr),
    /// The offline oracle was asked for an allocation its plan does not hold (another trace,
    /// past its end, or larger than planned).
    #[error("cannot allocate {requested} bytes off the oracle's plan: {reason}")]
    OffPlan { requested: u64, reason: String },
    /// The backend refused a call: a bug in the policy or a driver failure.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl PolicyError {
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, PolicyError::OutOfMemory { .. })
    }
}

/// Maps a backend failure during growth: running out of memory is an OOM of this request,
/// anything else is a backend error.
pub(crate) fn grow_error(requested: u64, e: BackendError) -> PolicyError {
    if e.is_out_of_memory() {
        PolicyError::OutOfMemory {
            requested,
            source: e,
        }
    } else {
        PolicyError::Backend(e)
    }
}

/// What a policy holds at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of live blocks, as the policy sized them.
    pub allocated_bytes: u64,
    /// Largest block the policy could hand out now without calling the backend.
    pub largest_free_block: u64,
    /// Segments (classic allocations or virtual ranges) the policy holds.
    pub segments: usize,
}

/// One segment of a policy, for snapshots and for validating models against real traces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: DevAddr,
    pub size: u64,
    pub stream: StreamId,
    /// Live blocks in the segment: `(addr, size)`.
    pub blocks: Vec<(DevAddr, u64)>,
}

/// An allocation policy. See the module docs.
pub trait Policy: Send + fmt::Debug {
    /// The policy's registry name.
    fn name(&self) -> &str;

    /// Allocates at least `size` bytes for use on `stream`.
    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        stream: StreamId,
    ) -> Result<Block, PolicyError>;

    /// Frees the block at `addr`. `stream` is where the free is ordered: the block may be
    /// reused on that stream at once, on others only once the stream has passed this point.
    fn free(
        &mut self,
        dev: &mut dyn Backend,
        addr: DevAddr,
        stream: StreamId,
    ) -> Result<(), PolicyError>;

    /// Whether the policy itself keeps reuse stream-ordered: a block freed on stream S is never
    /// handed to an allocation on another stream T before S has passed the free (checked with
    /// the backend's events, or made true with `stream_wait_event` on T). Reuse on S itself may
    /// be immediate. Pools wrap policies that return `false` with deferred, event-checked frees
    /// whenever more than one stream is in use.
    fn stream_aware(&self) -> bool {
        false
    }

    /// Returns cached memory the policy does not need to the driver (PyTorch's `empty_cache`).
    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError>;

    /// Returns everything to the driver when nothing is live, address reservations included:
    /// the pool calls it when it is dropped, so a process that drops its pools leaks nothing.
    /// With live blocks it only empties the cache (their memory stays theirs).
    fn teardown(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        self.empty_cache(dev)
    }

    /// Current usage. Must be cheap (O(1) or O(log n)): replays call it after every op.
    fn usage(&self) -> Usage;

    /// The segments held now, in address order.
    fn segments(&self) -> Vec<Segment>;

    /// Checks the policy's internal invariants (tests call this after every step).
    fn check_invariants(&self) -> Result<(), String>;
}
