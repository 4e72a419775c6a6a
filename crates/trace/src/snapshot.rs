//! PyTorch memory snapshots (`torch.cuda.memory._dump_snapshot`): `device_traces` into raw
//! events.
//!
//! A snapshot is a pickled dict. Only `device_traces: list[list[TraceEntry]]` is read (one
//! list per device index); of each entry only `action`, `addr`, `size` and `stream`. Every
//! other key (`segments`, `allocator_settings`, `frames`, `time_us`, ...) is ignored, so
//! newer PyTorch versions that add keys still read.

use crate::error::TraceError;
use crate::event::{Action, RawEvent};
use crate::input::DeviceEvents;
use crate::pickle::{self, IntProblem, PickleErrorKind, Value, article};
use std::io::BufRead;
use std::path::Path;

/// Keys left out while decoding: nothing here reads them, and `frames` (stack traces) is most
/// of a snapshot's objects. Skipping them more than halves the memory a large snapshot takes
/// (frame lists are dropped as soon as they are read, not kept for the whole file).
const SKIPPED: &[&str] = &[
    "frames",
    "time_us",
    "compile_context",
    "user_metadata",
    "pool_id",
];

/// Reads a snapshot pickle and returns the events of every device whose trace is non-empty.
///
/// Each event's `location` is its index in that device's list. `oom` entries carry no
/// address (PyTorch stores `device_free` instead) and get address 0; entries of unknown
/// actions may lack one too. Streams are PyTorch's ints taken as 64-bit patterns.
pub(crate) fn parse_snapshot(
    path: &Path,
    reader: impl BufRead,
) -> Result<Vec<DeviceEvents>, TraceError> {
    let root = pickle::load(reader, SKIPPED).map_err(|e| match e.kind {
        PickleErrorKind::Io(source) => TraceError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(
                source.kind(),
                format!("pickle byte {}: {source}", e.offset),
            ),
        },
        PickleErrorKind::Invalid(_) => TraceError::File {
            path: path.to_owned(),
            problem: e.to_string(),
        },
    })?;
    device_events(&root).map_err(|problem| TraceError::File {
        path: path.to_owned(),
        problem,
    })
}

/// Extracts the events from a decoded snapshot; `Err` names the entry and the problem.
fn device_events(root: &Value) -> Result<Vec<DeviceEvents>, String> {
    let Value::Dict(top) = root else {
        return Err(format!(
            "the pickle holds {}, expected a dict (a PyTorch memory snapshot)",
            article(root.type_name())
        ));
    };
    let Some(traces) = top.get("device_traces") else {
        let keys: Vec<&str> = top.str_keys().take(8).collect();
        return Err(format!(
            "no 'device_traces' key (keys: {}): not a PyTorch memory snapshot",
            keys.join(", ")
        ));
    };
    let Value::List(devices) = traces else {
        return Err(format!(
            "'device_traces' is {}, expected list",
            article(traces.type_name())
        ));
    };
    let mut out = Vec::new();
    for (device, trace) in devices.items.iter().enumerate() {
        let Value::List(entries) = trace else {
            return Err(format!(
                "device_traces[{device}] is {}, expected list",
                article(trace.type_name())
            ));
        };
        if entries.items.is_empty() {
            continue;
        }
        let events = entries
            .items
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                event(entry, i as u64).map_err(|p| format!("device_traces[{device}][{i}]{p}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let device = u32::try_from(device).map_err(|_| "more than 2^32 devices".to_string())?;
        out.push(DeviceEvents { device, events });
    }
    Ok(out)
}

/// One trace entry. `Err` text continues the entry's name: `device_traces[3][17]` + `: ...`.
fn event(entry: &Value, location: u64) -> Result<RawEvent, String> {
    let Value::Dict(d) = entry else {
        return Err(format!(" is {}, expected dict", article(entry.type_name())));
    };
    let action = match d.get("action") {
        Some(Value::Str(s)) => Action::parse(s),
        Some(v) => {
            return Err(format!(
                ": 'action' is {}, expected str",
                article(v.type_name())
            ));
        }
        None => return Err(": no 'action'".into()),
    };
    let addr = match (d.get("addr"), action) {
        (Some(v), _) => int(v, "addr")?,
        (None, Action::Oom | Action::Other) => 0,
        (None, _) => return Err(format!(": no 'addr' in {} entry", article(action.name()))),
    };
    let size = int(required(d, "size")?, "size")?;
    let stream = stream(required(d, "stream")?)?;
    Ok(RawEvent {
        action,
        addr,
        size,
        stream,
        location,
    })
}

fn required<'a>(d: &'a pickle::Dict, key: &str) -> Result<&'a Value, String> {
    d.get(key).ok_or_else(|| format!(": no '{key}'"))
}

/// A non-negative int that fits in 64 bits.
fn int(v: &Value, key: &str) -> Result<u64, String> {
    v.to_u64().map_err(|p| match p {
        IntProblem::NotInt(t) => format!(": '{key}' is {}, expected int", article(t)),
        IntProblem::Negative(i) => format!(": '{key}' is negative ({i})"),
        IntProblem::NegativeBig => format!(": '{key}' is negative"),
        IntProblem::TooLarge => format!(": '{key}' does not fit in 64 bits"),
    })
}

/// A stream: PyTorch writes `int64_t(stream)` (older versions the unsigned pointer), so both
/// signs occur in principle; the value is an identifier, kept as its 64-bit pattern.
fn stream(v: &Value) -> Result<u64, String> {
    match v {
        Value::Int(i) => Ok(*i as u64),
        _ => int(v, "stream"),
    }
}

#[cfg(test)]
mod tests;
