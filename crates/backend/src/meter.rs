//! Counting what a backend did: driver calls by kind, and reserved bytes with their peak.
//!
//! Every backend owns a [`Meter`] and records each driver call in it, so replays, benchmarks and
//! the production pool report the same figures whatever the backend.

use std::fmt;

/// The driver calls a backend can make, one per CUDA driver entry point it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriverCall {
    /// `cuMemAlloc`
    MemAlloc,
    /// `cuMemFree`
    MemFree,
    /// `cuMemAddressReserve`
    AddressReserve,
    /// `cuMemAddressFree`
    AddressFree,
    /// `cuMemCreate`
    MemCreate,
    /// `cuMemRelease`
    MemRelease,
    /// `cuMemMap`
    MemMap,
    /// `cuMemUnmap`
    MemUnmap,
    /// `cuMemSetAccess`
    SetAccess,
    /// `cuEventRecord` (event creation is pooled and not counted)
    EventRecord,
    /// `cuEventQuery`
    EventQuery,
    /// `cuStreamWaitEvent`
    StreamWaitEvent,
    /// `cuStreamSynchronize` / `cuCtxSynchronize`
    Synchronize,
}

impl DriverCall {
    pub const ALL: [DriverCall; 13] = [
        DriverCall::MemAlloc,
        DriverCall::MemFree,
        DriverCall::AddressReserve,
        DriverCall::AddressFree,
        DriverCall::MemCreate,
        DriverCall::MemRelease,
        DriverCall::MemMap,
        DriverCall::MemUnmap,
        DriverCall::SetAccess,
        DriverCall::EventRecord,
        DriverCall::EventQuery,
        DriverCall::StreamWaitEvent,
        DriverCall::Synchronize,
    ];

    /// Snake-case name used in JSON output and cost tables.
    pub fn name(self) -> &'static str {
        match self {
            DriverCall::MemAlloc => "mem_alloc",
            DriverCall::MemFree => "mem_free",
            DriverCall::AddressReserve => "address_reserve",
            DriverCall::AddressFree => "address_free",
            DriverCall::MemCreate => "mem_create",
            DriverCall::MemRelease => "mem_release",
            DriverCall::MemMap => "mem_map",
            DriverCall::MemUnmap => "mem_unmap",
            DriverCall::SetAccess => "set_access",
            DriverCall::EventRecord => "event_record",
            DriverCall::EventQuery => "event_query",
            DriverCall::StreamWaitEvent => "stream_wait_event",
            DriverCall::Synchronize => "synchronize",
        }
    }

    /// The CUDA driver function this call stands for.
    pub fn cuda_name(self) -> &'static str {
        match self {
            DriverCall::MemAlloc => "cuMemAlloc",
            DriverCall::MemFree => "cuMemFree",
            DriverCall::AddressReserve => "cuMemAddressReserve",
            DriverCall::AddressFree => "cuMemAddressFree",
            DriverCall::MemCreate => "cuMemCreate",
            DriverCall::MemRelease => "cuMemRelease",
            DriverCall::MemMap => "cuMemMap",
            DriverCall::MemUnmap => "cuMemUnmap",
            DriverCall::SetAccess => "cuMemSetAccess",
            DriverCall::EventRecord => "cuEventRecord",
            DriverCall::EventQuery => "cuEventQuery",
            DriverCall::StreamWaitEvent => "cuStreamWaitEvent",
            DriverCall::Synchronize => "cuStreamSynchronize",
        }
    }

    /// Whether the call allocates, frees, maps or unmaps memory (not an event or a
    /// synchronization): the calls whose cost and count a policy decides.
    pub fn allocates_or_maps(self) -> bool {
        !matches!(
            self,
            DriverCall::EventRecord
                | DriverCall::EventQuery
                | DriverCall::StreamWaitEvent
                | DriverCall::Synchronize
        )
    }

    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DriverCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Calls counted by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverCalls([u64; DriverCall::ALL.len()]);

impl DriverCalls {
    pub fn get(&self, call: DriverCall) -> u64 {
        self.0[call.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(call, count)` for every kind, zero counts included, in [`DriverCall::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DriverCall, u64)> + '_ {
        DriverCall::ALL.iter().map(|&c| (c, self.get(c)))
    }

    /// Calls that allocate or map memory, the ones whose cost matters (not events).
    pub fn memory_calls(&self) -> u64 {
        self.iter()
            .filter(|(c, _)| {
                !matches!(
                    c,
                    DriverCall::EventRecord | DriverCall::EventQuery | DriverCall::StreamWaitEvent
                )
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// What a backend has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meter {
    pub calls: DriverCalls,
    /// Bytes passed to each kind of call, where the call has a size (allocation, creation,
    /// mapping, unmapping, access, reservation): some costs grow with the bytes.
    pub bytes: DriverCalls,
    /// Bytes the driver has given the pool: classic allocations plus physical memory created
    /// (and not yet released and unmapped).
    pub reserved_bytes: u64,
    pub peak_reserved_bytes: u64,
}

impl Meter {
    #[inline]
    pub fn count(&mut self, call: DriverCall) {
        self.calls.0[call.index()] += 1;
    }

    /// Counts a call of `bytes` bytes.
    #[inline]
    pub fn count_sized(&mut self, call: DriverCall, bytes: u64) {
        self.count(call);
        self.add_bytes(call, bytes);
    }

    /// Adds `bytes` to a call already counted (when the size is known only after the call).
    #[inline]
    pub fn add_bytes(&mut self, call: DriverCall, bytes: u64) {
        self.bytes.0[call.index()] += bytes;
    }

    pub fn reserve(&mut self, bytes: u64) {
        self.reserved_bytes += bytes;
        self.peak_reserved_bytes = self.peak_reserved_bytes.max(self.reserved_bytes);
    }

    pub fn unreserve(&mut self, bytes: u64) {
        debug_assert!(
            bytes <= self.reserved_bytes,
            "unreserving more than reserved"
        );
        self.reserved_bytes -= bytes;
    }

    /// Starts a new peak window at the current reservation.
    pub fn reset_peak(&mut self) {
        self.peak_reserved_bytes = self.reserved_bytes;
    }
}
