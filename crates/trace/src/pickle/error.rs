//! Why a pickle could not be decoded, and where.

use std::fmt;

/// A decoding failure at byte `offset` of the pickle stream (after decompression): the offset
/// of the opcode being executed, or of the end of the input.
#[derive(Debug)]
pub(crate) struct PickleError {
    pub(crate) offset: u64,
    pub(crate) kind: PickleErrorKind,
}

#[derive(Debug)]
pub(crate) enum PickleErrorKind {
    /// The pickle is malformed or uses something this reader refuses; the text says what.
    Invalid(String),
    /// Reading the underlying stream failed (not end of input, which is `Invalid`).
    Io(std::io::Error),
}

impl PickleError {
    pub(crate) fn invalid(offset: u64, problem: impl Into<String>) -> Self {
        PickleError {
            offset,
            kind: PickleErrorKind::Invalid(problem.into()),
        }
    }
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PickleErrorKind::Invalid(problem) => {
                write!(f, "pickle byte {}: {problem}", self.offset)
            }
            PickleErrorKind::Io(e) => write!(f, "pickle byte {}: {e}", self.offset),
        }
    }
}
