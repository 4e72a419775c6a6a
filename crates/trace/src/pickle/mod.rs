//! A small, safe reader of plain-data pickles (Python's `pickle` format).
//!
//! PyTorch writes memory snapshots with `pickle.dump`; their objects are only dicts, lists,
//! tuples, str, int, float, bool and None. This module decodes exactly that much:
//!
//! - protocols 2 to 5 (PROTO; protocol 4 is Python 3.8-3.13's default, 5 is 3.14's), with
//!   FRAME, STOP, MARK, POP, POP_MARK, DUP;
//! - None, bool (NEWTRUE/NEWFALSE), int (BININT, BININT1, BININT2, LONG1, LONG4), float
//!   (BINFLOAT), str (SHORT_BINUNICODE, BINUNICODE, BINUNICODE8), bytes (SHORT_BINBYTES,
//!   BINBYTES, BINBYTES8, BYTEARRAY8);
//! - tuples (EMPTY_TUPLE, TUPLE1/2/3, TUPLE), lists (EMPTY_LIST, LIST, APPEND, APPENDS), dicts
//!   (EMPTY_DICT, DICT, SETITEM, SETITEMS);
//! - the memo (MEMOIZE, PUT/BINPUT/LONG_BINPUT, GET/BINGET/LONG_BINGET).
//!
//! Guarantees, whatever the input: no panic; nothing is imported or called (GLOBAL,
//! STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ(_EX), EXT*, PERSID and BINPERSID are refused
//! with an error naming the opcode and its byte offset); memory grows with the bytes actually
//! read, never with a length the input declares; objects the memo shares are shared `Rc`s,
//! never copies; recursive structures (a list inside itself) and nesting deeper than
//! [`value::MAX_DEPTH`] are errors, so values are finite DAGs.
//!
//! Callers may name dict keys to skip: their entries are read and checked but not kept, which
//! is how the snapshot reader avoids holding millions of stack-frame lists in memory.

mod decode;
mod error;
mod machine;
mod memo;
mod opcode;
mod source;
mod value;
pub(crate) mod write;

#[cfg(test)]
pub(crate) mod tests;

pub(crate) use error::{PickleError, PickleErrorKind};
pub(crate) use machine::article;
pub(crate) use value::{Dict, IntProblem, Seq, Value};

use std::io::Read;

/// Decodes one pickle from `reader` (buffered internally; pass it unbuffered or buffered).
///
/// Dict entries whose key is a str in `skip` are read (and checked as they are read) but
/// left out of their dict. A list or dict first stored under such a key is not kept either:
/// later memo references to it decode as `None`. Snapshot readers skip `frames`, most of a
/// snapshot's objects.
pub(crate) fn load(reader: impl Read, skip: &[&str]) -> Result<Value, PickleError> {
    decode::run(&mut source::Source::new(reader), skip)
}
