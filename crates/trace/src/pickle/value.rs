//! The values a plain-data pickle decodes to.

use std::rc::Rc;

/// Containers nest at most this deep. Snapshots nest 7 levels (top dict, `device_traces`,
/// device list, entry, `frames`, frame, its fields); the bound keeps the recursive drop,
/// comparison and formatting of any decoded value well within a thread's stack.
pub(crate) const MAX_DEPTH: u32 = 256;

/// A decoded Python object.
///
/// Invariants: values are immutable once decoded; an object the pickle references more than
/// once (through its memo) is one `Rc` shared by every referrer, so sharing costs nothing and
/// the tree is a DAG (a reference cycle is rejected while decoding); no container is deeper
/// than [`MAX_DEPTH`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An int outside `i64`: minimal little-endian two's complement, as LONG1/LONG4 carry it.
    BigInt(Rc<[u8]>),
    Float(f64),
    /// Text; invalid UTF-8 (Python's lone surrogates) was replaced by U+FFFD.
    Str(Rc<str>),
    /// `bytes` (and `bytearray`, which decodes to the same thing).
    Bytes(Rc<[u8]>),
    Tuple(Rc<Seq>),
    List(Rc<Seq>),
    Dict(Rc<Dict>),
}

/// The items of a tuple or list.
#[derive(Debug, PartialEq)]
pub(crate) struct Seq {
    pub(crate) items: Vec<Value>,
    /// 1 + the deepest item's depth.
    pub(crate) depth: u32,
}

/// A dict's entries in insertion order. A key set twice keeps both entries; lookups take the
/// last, as Python's dict would hold it.
#[derive(Debug, PartialEq)]
pub(crate) struct Dict {
    pub(crate) entries: Vec<(Value, Value)>,
    pub(crate) depth: u32,
}

impl Dict {
    /// The value of string key `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().rev().find_map(|(k, v)| match k {
            Value::Str(s) if &**s == key => Some(v),
            _ => None,
        })
    }

    /// The string keys, for messages.
    pub(crate) fn str_keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|(k, _)| match k {
            Value::Str(s) => Some(&**s),
            _ => None,
        })
    }
}

impl Value {
    /// Nesting depth: 0 for scalars, 1 for a container of scalars, and so on.
    pub(crate) fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }

    /// Python's name of the type, for messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
        }
    }

    /// Decodes the little-endian two's complement payload of LONG1/LONG4.
    pub(crate) fn from_long_bytes(bytes: &[u8]) -> Value {
        let bytes = minimal_long(bytes);
        if bytes.len() <= 8 {
            let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut le = [fill; 8];
            le[..bytes.len()].copy_from_slice(bytes);
            Value::Int(i64::from_le_bytes(le))
        } else {
            Value::BigInt(bytes.into())
        }
    }

    /// The value of an int in `0..2^64`: `Err` says why not (negative, too large, not an int).
    pub(crate) fn to_u64(&self) -> Result<u64, IntProblem> {
        match self {
            Value::Int(i) => u64::try_from(*i).map_err(|_| IntProblem::Negative(*i)),
            Value::BigInt(b) if b.last().is_some_and(|&x| x & 0x80 != 0) => {
                Err(IntProblem::NegativeBig)
            }
            // Minimal and non-negative with more than 8 bytes: 9 bytes ending in 0 is 2^63..2^64.
            Value::BigInt(b) if b.len() == 9 => {
                let mut le = [0; 8];
                le.copy_from_slice(&b[..8]);
                Ok(u64::from_le_bytes(le))
            }
            Value::BigInt(_) => Err(IntProblem::TooLarge),
            other => Err(IntProblem::NotInt(other.type_name())),
        }
    }
}

/// Why an int could not be used as a `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntProblem {
    NotInt(&'static str),
    Negative(i64),
    NegativeBig,
    TooLarge,
}

/// Drops redundant sign-extension bytes, so each int has one encoding (Python writes the
/// minimal one; hand-made pickles may not).
fn minimal_long(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., prev, last] = bytes {
        let redundant = (*last == 0 && prev & 0x80 == 0) || (*last == 0xff && prev & 0x80 != 0);
        if !redundant {
            break;
        }
        bytes = &bytes[..rest.len() + 1];
    }
    if bytes == [0] { &[] } else { bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bytes_decode_like_python() {
        assert_eq!(Value::from_long_bytes(&[]), Value::Int(0));
        assert_eq!(Value::from_long_bytes(&[0xff]), Value::Int(-1));
        assert_eq!(Value::from_long_bytes(&[0x80, 0x00]), Value::Int(128));
        assert_eq!(Value::from_long_bytes(&[0xff, 0xff, 0xff]), Value::Int(-1));
        assert_eq!(
            Value::from_long_bytes(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0xff]),
            Value::Int(i64::MIN)
        );
        let big = Value::from_long_bytes(&[5, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0]);
        assert_eq!(
            big,
            Value::BigInt(vec![5, 0, 0, 0, 0, 0, 0, 0x80, 0].into())
        );
        assert_eq!(big.to_u64(), Ok((1 << 63) + 5));
    }

    #[test]
    fn u64_conversion_names_the_problem() {
        assert_eq!(Value::Int(-3).to_u64(), Err(IntProblem::Negative(-3)));
        let neg = Value::from_long_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(neg.to_u64(), Err(IntProblem::NegativeBig));
        let huge = Value::from_long_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(huge.to_u64(), Err(IntProblem::TooLarge));
        assert_eq!(
            Value::Str("x".into()).to_u64(),
            Err(IntProblem::NotInt("str"))
        );
    }
}
