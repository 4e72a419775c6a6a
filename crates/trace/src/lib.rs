//! # coalesce-trace: allocator traces in, replayable operations out
//!
//! Two input formats are read, both optionally gzip-compressed:
//! - **CSV** with the header `action,addr,size,stream`, one PyTorch trace entry per line (the
//!   format of the traces bundled with coalesce);
//! - **PyTorch snapshot pickles** written by `torch.cuda.memory._dump_snapshot(path)`, read
//!   directly by a small pickle reader (no Python needed).
//!
//! Both produce [`RawEvent`]s, which [`resolve()`] turns into a [`Trace`]: a flat list of
//! [`Op`]s where each allocation has a dense id and each free names that id. Replays then need
//! no address map of their own, so timing a replay measures the allocator and nothing else.
#![forbid(unsafe_code)]

mod csv;
mod error;
mod event;
mod input;
mod pickle;
mod resolve;
mod snapshot;
mod snapshot_pickle;
pub mod synth;
mod write;

pub use csv::parse_csv;
pub use error::{TraceError, Warning, WarningKind};
pub use event::{Action, RawEvent};
pub use input::{DeviceEvents, TraceFormat, read_trace, read_trace_bytes};
pub use resolve::{Op, Trace, TraceStats, resolve};
pub use snapshot_pickle::{
    AllocatorSettings, BlockState, SnapshotBlock, SnapshotDoc, SnapshotEvent, SnapshotSegment,
    write_snapshot_pickle,
};
pub use write::write_csv;
