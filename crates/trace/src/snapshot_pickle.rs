//! Writing PyTorch's memory snapshot pickle, the file `torch.cuda.memory._dump_snapshot`
//! writes, so PyTorch's tools (https://pytorch.org/memory_viz, `torch.cuda._memory_viz`) open
//! what coalesce records, and `coalesce replay` reads it back.
//!
//! The layout follows PyTorch's `torch/csrc/cuda/memory_snapshot.cpp` and what
//! `torch/cuda/_memory_viz.py` reads:
//!
//! ```text
//! {'segments': [{'device', 'address', 'total_size', 'allocated_size', 'active_size',
//!                'requested_size', 'stream', 'segment_type': 'small'|'large',
//!                'segment_pool_id': (0, 0), 'is_expandable', 'frames': [],
//!                'blocks': [{'address', 'size', 'requested_size', 'state', 'frames': []}]}],
//!  'device_traces': [[{'action', 'addr' (for 'oom': 'device_free'), 'size', 'stream',
//!                      'time_us', 'frames': []}], ...one list per device],
//!  'allocator_settings': {'PYTORCH_CUDA_ALLOC_CONF', 'max_split_size',
//!                         'garbage_collection_threshold', 'expandable_segments',
//!                         'roundup_power2_divisions': {}}}
//! ```
//!
//! Invariants of what is written: each segment's blocks tile it exactly, in address order
//! (gaps between the live blocks given are written as `inactive` blocks), so `_memory_viz`'s
//! `segsum` check `allocated + free == total_size` holds; `allocated_size` is the bytes of
//! `active_allocated` blocks, `active_size` of every `active_*` block, `requested_size` the
//! requested bytes of the active blocks. No stack frames are recorded: every `frames` is `[]`.

use crate::event::Action;
use crate::pickle::write::{Options, write};
use crate::pickle::{Dict, Seq, Value};
use std::io::{self, Write};
use std::rc::Rc;

/// Segments up to this size are PyTorch's small pool (`kSmallBuffer`).
const SMALL_SEGMENT: u64 = 2 << 20;

/// A block's state, as PyTorch spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// Handed out to the program.
    ActiveAllocated,
    /// Freed by the program, still in use by a stream (held for stream ordering).
    ActivePendingFree,
    /// Free, cached in the segment.
    Inactive,
}

impl BlockState {
    pub fn name(self) -> &'static str {
        match self {
            BlockState::ActiveAllocated => "active_allocated",
            BlockState::ActivePendingFree => "active_pending_free",
            BlockState::Inactive => "inactive",
        }
    }
}

/// A live block of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotBlock {
    pub address: u64,
    /// Bytes the block occupies in the segment.
    pub size: u64,
    /// Bytes the program asked for (at most `size`).
    pub requested_size: u64,
    pub state: BlockState,
}

/// A segment (a driver allocation or an expandable range) with its live blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSegment {
    pub device: i32,
    pub address: u64,
    pub total_size: u64,
    pub stream: u64,
    pub is_expandable: bool,
    /// Live blocks, in any order, inside the segment and not overlapping; gaps are free.
    pub blocks: Vec<SnapshotBlock>,
}

/// One trace entry; for [`Action::Oom`], `addr` is the device's free memory (`device_free`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotEvent {
    pub action: Action,
    pub addr: u64,
    pub size: u64,
    pub stream: u64,
    pub time_us: u64,
}

/// The allocator settings a snapshot records.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocatorSettings {
    /// The PYTORCH_CUDA_ALLOC_CONF-style text (for coalesce: the policy spec).
    pub conf: String,
    /// `None`: no limit (PyTorch writes `SIZE_MAX` as int64, i.e. -1).
    pub max_split_size: Option<u64>,
    pub garbage_collection_threshold: f64,
    pub expandable_segments: bool,
}

/// Everything a snapshot pickle holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotDoc {
    pub segments: Vec<SnapshotSegment>,
    /// One list per device index, oldest event first.
    pub device_traces: Vec<Vec<SnapshotEvent>>,
    pub settings: AllocatorSettings,
}

/// Writes `doc` as a PyTorch snapshot pickle (protocol 4). Fails with `InvalidInput` when a
/// segment's blocks overlap or leave it.
pub fn write_snapshot_pickle(doc: &SnapshotDoc, mut out: impl Write) -> io::Result<()> {
    let value = Keys::new().doc(doc)?;
    out.write_all(&write(&value, Options::python(4)))?;
    out.flush()
}

fn container_depth<'a>(items: impl Iterator<Item = &'a Value>) -> u32 {
    1 + items.map(Value::depth).max().unwrap_or(0)
}

fn list(items: Vec<Value>) -> Value {
    let depth = container_depth(items.iter());
    Value::List(Rc::new(Seq { items, depth }))
}

fn tuple(items: Vec<Value>) -> Value {
    let depth = container_depth(items.iter());
    Value::Tuple(Rc::new(Seq { items, depth }))
}

fn int(v: u64) -> Value {
    match i64::try_from(v) {
        Ok(i) => Value::Int(i),
        // Minimal two's complement of a value in 2^63..2^64: 8 bytes and a 0 sign byte.
        Err(_) => {
            let mut b = v.to_le_bytes().to_vec();
            b.push(0);
            Value::BigInt(b.into())
        }
    }
}

/// Interned strings: every key and state is one shared `Rc`, written once and then
/// referenced through the memo (as CPython does for interned keys).
struct Keys {
    strings: Vec<Rc<str>>,
}

impl Keys {
    fn new() -> Self {
        Keys { strings: vec![] }
    }

    fn s(&mut self, text: &str) -> Value {
        if let Some(s) = self.strings.iter().find(|s| &***s == text) {
            return Value::Str(s.clone());
        }
        let s: Rc<str> = text.into();
        self.strings.push(s.clone());
        Value::Str(s)
    }

    fn dict(&mut self, entries: Vec<(&str, Value)>) -> Value {
        let entries: Vec<(Value, Value)> =
            entries.into_iter().map(|(k, v)| (self.s(k), v)).collect();
        let depth = container_depth(entries.iter().map(|(_, v)| v));
        Value::Dict(Rc::new(Dict { entries, depth }))
    }

    fn doc(&mut self, doc: &SnapshotDoc) -> io::Result<Value> {
        let segments = doc
            .segments
            .iter()
            .map(|s| self.segment(s))
            .collect::<io::Result<Vec<_>>>()?;
        let traces = doc
            .device_traces
            .iter()
            .map(|t| list(t.iter().map(|e| self.event(e)).collect()))
            .collect();
        let settings = self.settings(&doc.settings);
        Ok(self.dict(vec![
            ("segments", list(segments)),
            ("device_traces", list(traces)),
            ("allocator_settings", settings),
        ]))
    }

    fn settings(&mut self, s: &AllocatorSettings) -> Value {
        let conf = self.s(&s.conf);
        let divisions = self.dict(vec![]);
        self.dict(vec![
            ("PYTORCH_CUDA_ALLOC_CONF", conf),
            (
                "max_split_size",
                s.max_split_size.map_or(Value::Int(-1), int),
            ),
            (
                "garbage_collection_threshold",
                Value::Float(s.garbage_collection_threshold),
            ),
            ("expandable_segments", Value::Bool(s.expandable_segments)),
            ("roundup_power2_divisions", divisions),
        ])
    }

    fn event(&mut self, e: &SnapshotEvent) -> Value {
        let action = self.s(e.action.name());
        let addr_key = if e.action == Action::Oom {
            "device_free"
        } else {
            "addr"
        };
        self.dict(vec![
            ("action", action),
            (addr_key, int(e.addr)),
            ("size", int(e.size)),
            ("stream", Value::Int(e.stream as i64)),
            ("time_us", int(e.time_us)),
            ("frames", list(vec![])),
        ])
    }

    fn segment(&mut self, seg: &SnapshotSegment) -> io::Result<Value> {
        let blocks = tile(seg)?;
        let sum = |f: &dyn Fn(&SnapshotBlock) -> Option<u64>| blocks.iter().filter_map(f).sum();
        let allocated: u64 = sum(&|b| (b.state == BlockState::ActiveAllocated).then_some(b.size));
        let active: u64 = sum(&|b| (b.state != BlockState::Inactive).then_some(b.size));
        let requested: u64 =
            sum(&|b| (b.state != BlockState::Inactive).then_some(b.requested_size));
        let kind = if seg.total_size <= SMALL_SEGMENT {
            "small"
        } else {
            "large"
        };
        let segment_type = self.s(kind);
        let block_values = blocks.iter().map(|b| self.block(b)).collect();
        Ok(self.dict(vec![
            ("device", Value::Int(seg.device.into())),
            ("address", int(seg.address)),
            ("total_size", int(seg.total_size)),
            ("allocated_size", int(allocated)),
            ("active_size", int(active)),
            ("requested_size", int(requested)),
            ("stream", Value::Int(seg.stream as i64)),
            ("segment_type", segment_type),
            ("segment_pool_id", tuple(vec![Value::Int(0), Value::Int(0)])),
            ("is_expandable", Value::Bool(seg.is_expandable)),
            ("frames", list(vec![])),
            ("blocks", list(block_values)),
        ]))
    }

    fn block(&mut self, b: &SnapshotBlock) -> Value {
        let state = self.s(b.state.name());
        self.dict(vec![
            ("address", int(b.address)),
            ("size", int(b.size)),
            ("requested_size", int(b.requested_size)),
            ("state", state),
            ("frames", list(vec![])),
        ])
    }
}

/// The segment's blocks in address order with its gaps as `inactive` blocks.
fn tile(seg: &SnapshotSegment) -> io::Result<Vec<SnapshotBlock>> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("segment {:#x}: {what}", seg.address),
        )
    };
    let mut live: Vec<SnapshotBlock> = seg.blocks.clone();
    live.sort_by_key(|b| b.address);
    let end = seg
        .address
        .checked_add(seg.total_size)
        .ok_or_else(|| bad("address + total_size overflows".into()))?;
    let mut out = Vec::with_capacity(live.len() * 2 + 1);
    let mut at = seg.address;
    for b in live {
        if b.address < at || b.address.saturating_add(b.size) > end {
            return Err(bad(format!(
                "block {:#x} (+{}) overlaps another or leaves the segment",
                b.address, b.size
            )));
        }
        if b.address > at {
            out.push(free_block(at, b.address - at));
        }
        out.push(b);
        at = b.address + b.size;
    }
    if at < end {
        out.push(free_block(at, end - at));
    }
    Ok(out)
}

fn free_block(address: u64, size: u64) -> SnapshotBlock {
    SnapshotBlock {
        address,
        size,
        requested_size: 0,
        state: BlockState::Inactive,
    }
}

#[cfg(test)]
mod tests;
