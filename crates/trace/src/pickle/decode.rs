//! The opcode loop: reads each opcode and its argument, and runs it on the machine.

use super::error::{PickleError, PickleErrorKind};
use super::machine::{Machine, Problem};
use super::opcode::{self, *};
use super::source::Source;
use super::value::Value;
use std::io::{self, ErrorKind, Read};
use std::rc::Rc;

/// Why an opcode failed: a problem with the pickle, or with reading it.
enum Fail {
    Problem(Problem),
    Io(io::Error),
}

impl From<Problem> for Fail {
    fn from(p: Problem) -> Self {
        Fail::Problem(p)
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

/// Runs opcodes from `src` until STOP and returns the value it yields, without keeping the
/// list and dict values of the keys in `skip`. Bytes after STOP are not read (as with
/// Python's `pickle.load`).
pub(super) fn run(src: &mut Source<impl Read>, skip: &[&str]) -> Result<Value, PickleError> {
    let mut m = Machine::new(skip);
    loop {
        let at = src.offset();
        let op = match src.next_byte() {
            Ok(Some(op)) => op,
            Ok(None) => return Err(PickleError::invalid(at, "input ends before STOP")),
            Err(e) => return Err(io_error(at, e)),
        };
        match step(&mut m, src, op) {
            Ok(None) => {}
            Ok(Some(v)) => return Ok(v),
            Err(Fail::Problem(p)) => return Err(PickleError::invalid(at, p)),
            Err(Fail::Io(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                let name = opcode::name(op).unwrap_or("?");
                return Err(PickleError::invalid(
                    at,
                    format!("input ends inside the argument of {name}"),
                ));
            }
            Err(Fail::Io(e)) => return Err(io_error(at, e)),
        }
    }
}

fn io_error(offset: u64, e: io::Error) -> PickleError {
    PickleError {
        offset,
        kind: PickleErrorKind::Io(e),
    }
}

/// Executes one opcode; `Some` is the result of STOP.
fn step(m: &mut Machine, src: &mut Source<impl Read>, op: u8) -> Result<Option<Value>, Fail> {
    match op {
        PROTO => {
            let [v] = src.array()?;
            if v > 5 {
                return Err(
                    format!("unsupported pickle protocol {v} (this reader knows 0-5)").into(),
                );
            }
        }
        // Frames only group opcodes for buffered reading; the source buffers anyway.
        FRAME => drop(src.array::<8>()?),
        STOP => return Ok(Some(m.finish()?)),
        MARK => m.mark(),
        POP => m.pop()?,
        POP_MARK => m.pop_mark()?,
        DUP => m.dup()?,
        NONE => m.push(Value::None),
        NEWTRUE => m.push(Value::Bool(true)),
        NEWFALSE => m.push(Value::Bool(false)),
        BININT => m.push(Value::Int(i32::from_le_bytes(src.array()?).into())),
        BININT1 => m.push(Value::Int(u8::from_le_bytes(src.array()?).into())),
        BININT2 => m.push(Value::Int(u16::from_le_bytes(src.array()?).into())),
        LONG1 => {
            // At most 255 bytes: read on the stack (addresses and times are LONG1s).
            let mut buf = [0; 255];
            let long = &mut buf[..usize::from(u8::from_le_bytes(src.array()?))];
            src.read_exact(long)?;
            m.push(Value::from_long_bytes(long));
        }
        LONG4 => {
            let len = i32::from_le_bytes(src.array()?);
            let len =
                u64::try_from(len).map_err(|_| format!("LONG4 with negative length {len}"))?;
            m.push(Value::from_long_bytes(&src.bytes(len)?));
        }
        BINFLOAT => m.push(Value::Float(f64::from_be_bytes(src.array()?))),
        SHORT_BINUNICODE => {
            let mut buf = [0; 255];
            let bytes = &mut buf[..usize::from(u8::from_le_bytes(src.array()?))];
            src.read_exact(bytes)?;
            m.push(text(bytes));
        }
        BINUNICODE => {
            let len = u32::from_le_bytes(src.array()?);
            m.push(text(&src.bytes(len.into())?));
        }
        BINUNICODE8 => {
            let len = u64::from_le_bytes(src.array()?);
            m.push(text(&src.bytes(len)?));
        }
        SHORT_BINBYTES => {
            let len = u8::from_le_bytes(src.array()?);
            m.push(Value::Bytes(src.bytes(len.into())?.into()));
        }
        BINBYTES => {
            let len = u32::from_le_bytes(src.array()?);
            m.push(Value::Bytes(src.bytes(len.into())?.into()));
        }
        BINBYTES8 | BYTEARRAY8 => {
            let len = u64::from_le_bytes(src.array()?);
            m.push(Value::Bytes(src.bytes(len)?.into()));
        }
        EMPTY_TUPLE => m.tuple_n(0, "EMPTY_TUPLE")?,
        TUPLE1 => m.tuple_n(1, "TUPLE1")?,
        TUPLE2 => m.tuple_n(2, "TUPLE2")?,
        TUPLE3 => m.tuple_n(3, "TUPLE3")?,
        TUPLE => m.tuple_marked()?,
        EMPTY_LIST => m.push_empty_list(),
        LIST => m.list_marked()?,
        EMPTY_DICT => m.push_empty_dict(),
        DICT => m.dict_marked()?,
        APPEND => m.append()?,
        APPENDS => m.appends()?,
        SETITEM => m.setitem()?,
        SETITEMS => m.setitems()?,
        GET => m.memo_get(text_index(src, "GET")?)?,
        BINGET => m.memo_get(u8::from_le_bytes(src.array()?).into())?,
        LONG_BINGET => m.memo_get(u32::from_le_bytes(src.array()?))?,
        PUT => {
            let idx = text_index(src, "PUT")?;
            m.memo_put(idx, "PUT")?;
        }
        BINPUT => m.memo_put(u8::from_le_bytes(src.array()?).into(), "BINPUT")?,
        LONG_BINPUT => m.memo_put(u32::from_le_bytes(src.array()?), "LONG_BINPUT")?,
        MEMOIZE => m.memoize()?,
        _ => return Err(opcode::refusal(op).into()),
    }
    Ok(None)
}

/// A `str`. Python writes lone surrogates (from undecodable file names) as invalid UTF-8;
/// those bytes become U+FFFD rather than failing the whole snapshot.
fn text(bytes: &[u8]) -> Value {
    Value::Str(match std::str::from_utf8(bytes) {
        Ok(s) => Rc::from(s),
        Err(_) => Rc::from(String::from_utf8_lossy(bytes)),
    })
}

/// The decimal memo index of the text opcodes GET and PUT.
fn text_index(src: &mut Source<impl Read>, what: &str) -> Result<u32, Fail> {
    let line = src
        .line(16)?
        .ok_or_else(|| format!("{what} argument is longer than 16 bytes"))?;
    let text = String::from_utf8_lossy(&line);
    text.trim()
        .parse()
        .map_err(|_| format!("{what} argument {text:?} is not a memo index").into())
}
