//! Errors (the trace cannot be read) and warnings (it can, but something was odd).

use std::fmt;
use std::path::PathBuf;

/// A trace that cannot be read. Always names the file and, where there is one, the line (CSV)
/// or event index (pickle), and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {problem}")]
    Line {
        path: PathBuf,
        line: u64,
        problem: String,
    },
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
}

impl TraceError {
    pub fn path(&self) -> &std::path::Path {
        match self {
            TraceError::Io { path, .. }
            | TraceError::Line { path, .. }
            | TraceError::File { path, .. } => path,
        }
    }
}

/// Something odd in a readable trace, with where it happened. Replays report and count these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub kind: WarningKind,
    /// Line (CSV) or event index (pickle) of the offending entry.
    pub location: u64,
    pub addr: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WarningKind {
    /// A free of an address with no live allocation (the trace may start mid-run: PyTorch's
    /// history is a ring buffer).
    UnknownFree,
    /// An allocation at an address that is still live (a free is missing from the trace). The
    /// earlier allocation is treated as freed.
    AllocOverLive,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WarningKind::UnknownFree => write!(
                f,
                "entry {}: free of unknown address {:#x} (ignored)",
                self.location, self.addr
            ),
            WarningKind::AllocOverLive => write!(
                f,
                "entry {}: alloc at {:#x}, which is still live (earlier allocation treated as freed)",
                self.location, self.addr
            ),
        }
    }
}
