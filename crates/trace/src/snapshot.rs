//! PyTorch snapshot pickles: `device_traces` into raw events.
//! (The pickle reader is being written; until then snapshots are refused with a clear error.)

use crate::error::TraceError;
use crate::input::DeviceEvents;
use std::io::BufRead;
use std::path::Path;

pub(crate) fn parse_snapshot(
    path: &Path,
    reader: impl BufRead,
) -> Result<Vec<DeviceEvents>, TraceError> {
    let _bytes = crate::input::read_all(path, reader)?;
    Err(TraceError::File {
        path: path.to_owned(),
        problem: "PyTorch snapshot pickles are not supported yet".into(),
    })
}
