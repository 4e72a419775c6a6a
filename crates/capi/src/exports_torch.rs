//! Exports for PyTorch users: snapshots in PyTorch's pickle format and peak-stat resets (what
//! `coalesce_torch` patches `torch.cuda.memory._dump_snapshot` and
//! `torch.cuda.reset_peak_memory_stats` with). Their C contract is the end of
//! `include/coalesce.h`.

use crate::ffi::boundary;
use crate::pools::pool;
use coalesce_pool::{Snapshot, TraceAction};
use coalesce_trace::{
    Action, AllocatorSettings, BlockState, SnapshotBlock, SnapshotDoc, SnapshotEvent,
    SnapshotSegment, write_snapshot_pickle,
};
use rustc_hash::FxHashMap;
use std::ffi::{CStr, OsStr, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The pool's snapshot as PyTorch's snapshot: its segments with their live blocks, and one
/// trace (at index `snap.device` of `device_traces`) that replays to the pool's state:
/// `segment_alloc` per segment, `alloc` per block live before the ring, then the ring.
///
/// A block's `requested_size` and state come from its last traced event: `active_pending_free`
/// after a `free_requested` (held for stream ordering), else `active_allocated`; a block with
/// no event (cannot happen for a pool's own snapshot) counts its whole size as requested.
/// `time_us` is the event's index (the pool records order, not time). `policy` is recorded as
/// the allocator settings' `PYTORCH_CUDA_ALLOC_CONF`.
pub fn snapshot_to_pickle(snap: &Snapshot, policy: &str) -> SnapshotDoc {
    let history = snap.live_before_trace.iter().chain(&snap.trace);
    let mut last: FxHashMap<u64, (u64, TraceAction)> = FxHashMap::default();
    for e in history.clone() {
        last.insert(e.addr, (e.size, e.action));
    }
    let segments = snap
        .segments
        .iter()
        .map(|s| SnapshotSegment {
            device: snap.device,
            address: s.addr,
            total_size: s.size,
            stream: s.stream.0,
            is_expandable: false,
            blocks: s
                .blocks
                .iter()
                .map(|&(address, size)| {
                    let (requested, action) = last
                        .get(&address)
                        .copied()
                        .unwrap_or((size, TraceAction::Alloc));
                    SnapshotBlock {
                        address,
                        size,
                        requested_size: requested.min(size),
                        state: if action == TraceAction::FreeRequested {
                            BlockState::ActivePendingFree
                        } else {
                            BlockState::ActiveAllocated
                        },
                    }
                })
                .collect(),
        })
        .collect();
    let segment_allocs = snap
        .segments
        .iter()
        .map(|s| (Action::SegmentAlloc, s.addr, s.size, s.stream.0));
    let blocks = history.map(|e| (e.action.into(), e.addr, e.size, e.stream.0));
    let trace = segment_allocs
        .chain(blocks)
        .enumerate()
        .map(|(i, (action, addr, size, stream))| SnapshotEvent {
            action,
            addr,
            size,
            stream,
            time_us: i as u64,
        })
        .collect();
    let device = usize::try_from(snap.device).unwrap_or(0);
    let mut device_traces = vec![vec![]; device + 1];
    device_traces[device] = trace;
    SnapshotDoc {
        segments,
        device_traces,
        settings: AllocatorSettings {
            conf: policy.to_owned(),
            ..AllocatorSettings::default()
        },
    }
}

/// Writes a snapshot of `device`'s pool to `path` as PyTorch's snapshot pickle
/// (`torch.cuda.memory._dump_snapshot`'s format: pytorch.org/memory_viz opens it, `coalesce
/// replay path` replays it). 0 on success, -1 on error.
///
/// # Safety
/// 1. `path` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn coalesce_dump_snapshot_pickle(
    device: c_int,
    path: *const c_char,
) -> c_int {
    boundary(-1, || {
        if path.is_null() {
            return Err("coalesce_dump_snapshot_pickle: path is NULL".into());
        }
        // SAFETY: precondition 1, and `path` is not null.
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        let path = Path::new(OsStr::from_bytes(bytes));
        let pool = pool(device)?;
        let policy = pool.stats().map_err(|e| e.to_string())?.policy;
        let snap = pool.snapshot().map_err(|e| e.to_string())?;
        let doc = snapshot_to_pickle(&snap, &policy);
        let fail = |e: std::io::Error| format!("cannot write snapshot {}: {e}", path.display());
        let file = std::fs::File::create(path).map_err(fail)?;
        write_snapshot_pickle(&doc, std::io::BufWriter::new(file)).map_err(fail)?;
        Ok(0)
    })
}

/// Resets the peaks of `device`'s stats (peak requested, allocated and reserved bytes) to
/// their current values: `torch.cuda.reset_peak_memory_stats`. 0 on success, -1 on error.
#[unsafe(no_mangle)]
pub extern "C" fn coalesce_reset_peak_stats(device: c_int) -> c_int {
    boundary(-1, || {
        pool(device)?
            .reset_peak_stats()
            .map_err(|e| e.to_string())?;
        Ok(0)
    })
}
