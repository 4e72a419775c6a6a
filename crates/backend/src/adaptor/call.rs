//! One driver call with its arguments, as adaptors see it.

use crate::{DevAddr, DriverCall, EventId, PhysHandle, StreamId};
use std::fmt;

/// A driver call and its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    MemAlloc { size: u64 },
    MemFree { addr: DevAddr },
    AddressReserve { size: u64 },
    AddressFree { addr: DevAddr, size: u64 },
    MemCreate { size: u64 },
    MemRelease { handle: PhysHandle },
    MemMap { addr: DevAddr, handle: PhysHandle },
    MemUnmap { addr: DevAddr, size: u64 },
    SetAccess { addr: DevAddr, size: u64 },
    EventRecord { stream: StreamId },
    EventQuery { event: EventId },
    StreamWaitEvent { stream: StreamId, event: EventId },
    StreamSynchronize { stream: StreamId },
    DeviceSynchronize,
}

impl Call {
    /// The kind of driver call, as the [`Meter`](crate::Meter) counts it.
    pub fn kind(&self) -> DriverCall {
        match self {
            Call::MemAlloc { .. } => DriverCall::MemAlloc,
            Call::MemFree { .. } => DriverCall::MemFree,
            Call::AddressReserve { .. } => DriverCall::AddressReserve,
            Call::AddressFree { .. } => DriverCall::AddressFree,
            Call::MemCreate { .. } => DriverCall::MemCreate,
            Call::MemRelease { .. } => DriverCall::MemRelease,
            Call::MemMap { .. } => DriverCall::MemMap,
            Call::MemUnmap { .. } => DriverCall::MemUnmap,
            Call::SetAccess { .. } => DriverCall::SetAccess,
            Call::EventRecord { .. } => DriverCall::EventRecord,
            Call::EventQuery { .. } => DriverCall::EventQuery,
            Call::StreamWaitEvent { .. } => DriverCall::StreamWaitEvent,
            Call::StreamSynchronize { .. } | Call::DeviceSynchronize => DriverCall::Synchronize,
        }
    }

    /// Bytes of new memory the call asks the driver for (classic allocations and physical
    /// memory): what a memory cap counts.
    pub fn reserves(&self) -> u64 {
        match *self {
            Call::MemAlloc { size } | Call::MemCreate { size } => size,
            _ => 0,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.kind().cuda_name();
        match *self {
            Call::MemAlloc { size } | Call::AddressReserve { size } | Call::MemCreate { size } => {
                write!(f, "{name}({size})")
            }
            Call::MemFree { addr } => write!(f, "{name}({addr:#x})"),
            Call::AddressFree { addr, size }
            | Call::MemUnmap { addr, size }
            | Call::SetAccess { addr, size } => write!(f, "{name}({addr:#x}, {size})"),
            Call::MemRelease { handle } => write!(f, "{name}({})", handle.0),
            Call::MemMap { addr, handle } => write!(f, "{name}({addr:#x}, {})", handle.0),
            Call::EventRecord { stream } | Call::StreamSynchronize { stream } => {
                write!(f, "{name}(stream {})", stream.0)
            }
            Call::EventQuery { event } => write!(f, "{name}(event {})", event.0),
            Call::StreamWaitEvent { stream, event } => {
                write!(f, "{name}(stream {}, event {})", stream.0, event.0)
            }
            Call::DeviceSynchronize => f.write_str("cuCtxSynchronize()"),
        }
    }
}
