//! # coalesce-backend: where device memory comes from
//!
//! A [`Backend`] is the driver as the pool sees it: classic allocations (`cuMemAlloc` /
//! `cuMemFree`), virtual memory management (reserve an address range, create physical memory in
//! granules, map, unmap, release) and the stream/event calls that make reuse stream-ordered.
//! Policies above only ever talk to this trait, so the same policy code runs on the
//! [`sim::SimDevice`] (trace replay, tests) and on a real GPU.
//!
//! Backends are used from one thread at a time (the pool holds its lock around them), hence
//! `&mut self`. They count every call and the bytes they reserve in a [`Meter`].
//!
//! The contract mirrors CUDA's own rules (the simulated device enforces them, so a policy that
//! passes on it is valid on a GPU):
//! - sizes given to `mem_create` and VMM addresses are multiples of [`Backend::granularity`];
//! - `mem_map` maps a whole physical handle at a reserved, unmapped, granule-aligned address;
//! - `mem_unmap` unmaps exactly one earlier mapping (CUDA cannot unmap part of one);
//! - mapped memory is not accessible until `set_access` covers it;
//! - `address_free` needs the whole reservation to be unmapped.

// `unsafe` is denied everywhere but in `cuda` (FFI to the CUDA driver), which allows it
// explicitly; every block there carries a `// SAFETY:` comment.
#![deny(unsafe_code)]

pub mod adaptor;
#[allow(unsafe_code)]
pub mod cuda;
mod meter;
pub mod sim;

pub use meter::{DriverCall, DriverCalls, Meter};

/// A device (virtual) address.
pub type DevAddr = u64;

/// A stream as its owner names it (a `cudaStream_t` value; 0 is the legacy default stream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// A physical memory allocation (`CUmemGenericAllocationHandle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhysHandle(pub u64);

/// A recorded event, used to learn when a stream has passed a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub u64);

/// Why a backend call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The device has no memory left for this request.
    #[error(
        "out of device memory: {call} of {requested} bytes with {free} bytes free on the device"
    )]
    OutOfMemory {
        call: DriverCall,
        requested: u64,
        free: u64,
    },
    /// The caller broke the backend's contract (a bug in the policy, reported, never ignored).
    #[error("invalid {call}: {reason}")]
    Invalid { call: DriverCall, reason: String },
    /// The driver returned an error code.
    #[error("{call} failed: {message} (CUDA error {code})")]
    Driver {
        call: DriverCall,
        code: i32,
        message: String,
    },
    /// No driver or device (e.g. CUDA is not installed).
    #[error("device backend unavailable: {0}")]
    Unavailable(String),
}

impl BackendError {
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, BackendError::OutOfMemory { .. })
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// The driver interface every policy allocates through. See the module docs for the contract.
pub trait Backend: Send {
    /// Short name for reports ("sim", "cuda").
    fn name(&self) -> &str;
    /// Device ordinal.
    fn device(&self) -> i32;
    /// Bytes of memory on the device.
    fn total_memory(&self) -> u64;
    /// Bytes the driver could still give out (`cuMemGetInfo`).
    fn free_memory(&mut self) -> BackendResult<u64>;
    /// What this backend has done: calls by kind, reserved bytes and their peak.
    fn meter(&self) -> &Meter;
    /// Starts a new peak window for reserved bytes.
    fn reset_peak(&mut self);

    // --- classic allocation

    /// `cuMemAlloc`: a new allocation of `size` bytes, aligned to at least 512 bytes.
    fn mem_alloc(&mut self, size: u64) -> BackendResult<DevAddr>;
    /// `cuMemFree` of an address returned by `mem_alloc`.
    fn mem_free(&mut self, addr: DevAddr) -> BackendResult<()>;

    // --- virtual memory management

    /// Physical allocation granularity (2 MiB on current NVIDIA data-center GPUs).
    fn granularity(&self) -> u64;
    /// `cuMemAddressReserve`: reserve `size` bytes of address space (a granularity multiple).
    fn address_reserve(&mut self, size: u64) -> BackendResult<DevAddr>;
    /// `cuMemAddressFree` of a whole reservation with nothing mapped in it.
    fn address_free(&mut self, addr: DevAddr, size: u64) -> BackendResult<()>;
    /// `cuMemCreate`: `size` bytes of physical memory (a granularity multiple).
    fn mem_create(&mut self, size: u64) -> BackendResult<PhysHandle>;
    /// `cuMemRelease`: drop the handle; the memory is freed once no mapping uses it.
    fn mem_release(&mut self, handle: PhysHandle) -> BackendResult<()>;
    /// `cuMemMap`: map all of `handle` at `addr` inside a reservation.
    fn mem_map(&mut self, addr: DevAddr, handle: PhysHandle) -> BackendResult<()>;
    /// `cuMemUnmap`: remove exactly the mapping at `[addr, addr + size)`.
    fn mem_unmap(&mut self, addr: DevAddr, size: u64) -> BackendResult<()>;
    /// `cuMemSetAccess`: make a fully mapped range readable and writable by this device.
    fn set_access(&mut self, addr: DevAddr, size: u64) -> BackendResult<()>;

    // --- stream ordering

    /// Records an event at the current end of `stream`'s work.
    fn event_record(&mut self, stream: StreamId) -> BackendResult<EventId>;
    /// Whether the stream has passed the event. Does not block.
    fn event_query(&mut self, event: EventId) -> BackendResult<bool>;
    /// Returns the event to the backend's pool (not a driver call of its own).
    fn event_release(&mut self, event: EventId);
    /// Makes `stream`'s later work wait for `event` on the device; the host does not block.
    fn stream_wait_event(&mut self, stream: StreamId, event: EventId) -> BackendResult<()>;
    /// Blocks the host until `stream` has finished all its work.
    fn stream_synchronize(&mut self, stream: StreamId) -> BackendResult<()>;
    /// Blocks the host until every stream of the device has finished.
    fn device_synchronize(&mut self) -> BackendResult<()>;
}
