//! Opening a trace file: format detection and decompression.

use crate::csv::parse_csv;
use crate::error::TraceError;
use crate::event::RawEvent;
use crate::snapshot::parse_snapshot;
use flate2::read::MultiGzDecoder;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// What a trace file turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceFormat {
    Csv,
    /// A PyTorch memory snapshot (`torch.cuda.memory._dump_snapshot`).
    Snapshot,
}

/// The events of one device of a trace file (a CSV trace is one device, device 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEvents {
    pub device: u32,
    pub events: Vec<RawEvent>,
}

/// Reads a trace file, gzip-compressed or not, CSV or snapshot pickle (detected from content).
pub fn read_trace(path: &Path) -> Result<(TraceFormat, Vec<DeviceEvents>), TraceError> {
    let file = std::fs::File::open(path).map_err(|source| TraceError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_trace_from(path, BufReader::with_capacity(1 << 16, file))
}

/// Like [`read_trace`], from bytes in memory (`path` only names the source in errors).
pub fn read_trace_bytes(
    path: &Path,
    bytes: &[u8],
) -> Result<(TraceFormat, Vec<DeviceEvents>), TraceError> {
    read_trace_from(path, bytes)
}

fn read_trace_from(
    path: &Path,
    mut reader: impl BufRead,
) -> Result<(TraceFormat, Vec<DeviceEvents>), TraceError> {
    let head = peek(path, &mut reader)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut inner = BufReader::with_capacity(1 << 16, MultiGzDecoder::new(reader));
        let head = peek(path, &mut inner)?;
        return dispatch(path, &head, inner);
    }
    dispatch(path, &head, reader)
}

fn dispatch(
    path: &Path,
    head: &[u8],
    reader: impl BufRead,
) -> Result<(TraceFormat, Vec<DeviceEvents>), TraceError> {
    // Pickles of protocol 2 and later start with the PROTO opcode.
    if head.first() == Some(&0x80) {
        Ok((TraceFormat::Snapshot, parse_snapshot(path, reader)?))
    } else {
        let events = parse_csv(path, reader)?;
        Ok((TraceFormat::Csv, vec![DeviceEvents { device: 0, events }]))
    }
}

/// The first bytes of the stream, without consuming them.
fn peek(path: &Path, reader: &mut impl BufRead) -> Result<Vec<u8>, TraceError> {
    let buf = reader.fill_buf().map_err(|source| TraceError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(buf[..buf.len().min(2)].to_vec())
}
