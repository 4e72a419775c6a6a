//! The pickle writer: encodes a [`Value`] the way CPython's pickler does (memo by object
//! identity, batched APPENDS/SETITEMS, FRAMEs at protocol 4+). Snapshots are written with
//! [`Options::python`]`(4)`, which Python 3.4 and later read; tests vary the knobs so round
//! trips cover every opcode the reader supports.
//!
//! Invariant: what [`write`] returns is one complete pickle that [`super::load`] decodes to a
//! value equal to the input (shared `Rc`s stay shared through the memo).

use crate::pickle::value::Value;
use rustc_hash::FxHashMap;
use std::rc::Rc;

/// How to encode.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// 2, 4 or 5. Protocol 2 memoizes with BINPUT/LONG_BINPUT, 4+ with MEMOIZE and frames.
    pub(crate) proto: u8,
    /// Items per APPENDS/SETITEMS batch (CPython: 1000).
    pub(crate) batch: usize,
    /// A new FRAME starts at the first opcode boundary past this many bytes (CPython: 64 KiB).
    pub(crate) frame: usize,
    /// Use the long forms (LONG_BINGET, LONG_BINPUT, LONG4, BINUNICODE8, BINBYTES8) even where
    /// a short one would do: valid, and the only way small values reach those opcodes.
    pub(crate) wide: bool,
}

impl Options {
    pub(crate) fn python(proto: u8) -> Self {
        Options {
            proto,
            batch: 1000,
            frame: 64 * 1024,
            wide: false,
        }
    }
}

/// Encodes `v` as a complete pickle (PROTO ... STOP).
pub(crate) fn write(v: &Value, opts: Options) -> Vec<u8> {
    let mut w = Writer {
        opts,
        body: Vec::new(),
        starts: Vec::new(),
        memo: FxHashMap::default(),
    };
    w.value(v);
    w.op(b'.');
    w.finish()
}

struct Writer {
    opts: Options,
    body: Vec<u8>,
    /// Offsets in `body` where opcodes start (frames may only split there).
    starts: Vec<usize>,
    /// Object identity -> memo index.
    memo: FxHashMap<usize, u32>,
}

impl Writer {
    fn op(&mut self, op: u8) {
        self.starts.push(self.body.len());
        self.body.push(op);
    }

    fn arg(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
    }

    fn finish(self) -> Vec<u8> {
        let mut out = vec![0x80, self.opts.proto];
        if self.opts.proto < 4 {
            out.extend_from_slice(&self.body);
            return out;
        }
        let mut frame_start = 0;
        for &s in self.starts.iter().skip(1).chain([&self.body.len()]) {
            if s - frame_start >= self.opts.frame || s == self.body.len() {
                out.push(0x95);
                out.extend_from_slice(&((s - frame_start) as u64).to_le_bytes());
                out.extend_from_slice(&self.body[frame_start..s]);
                frame_start = s;
            }
        }
        out
    }

    /// GET if `id` was memoized; else `None`.
    fn get(&mut self, id: usize) -> Option<()> {
        let idx = *self.memo.get(&id)?;
        if idx < 256 && !self.opts.wide {
            self.op(b'h');
            self.arg(&[idx as u8]);
        } else {
            self.op(b'j');
            self.arg(&idx.to_le_bytes());
        }
        Some(())
    }

    fn memoize(&mut self, id: usize) {
        let idx = self.memo.len() as u32;
        self.memo.insert(id, idx);
        if self.opts.proto >= 4 {
            self.op(0x94);
        } else if idx < 256 && !self.opts.wide {
            self.op(b'q');
            self.arg(&[idx as u8]);
        } else {
            self.op(b'r');
            self.arg(&idx.to_le_bytes());
        }
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::None => self.op(b'N'),
            Value::Bool(b) => self.op(if *b { 0x88 } else { 0x89 }),
            Value::Int(i) => self.int(*i),
            Value::BigInt(bytes) => self.long(bytes),
            Value::Float(f) => {
                self.op(b'G');
                self.arg(&f.to_be_bytes());
            }
            Value::Str(s) => {
                let id = Rc::as_ptr(s) as *const u8 as usize;
                if self.get(id).is_none() {
                    // SHORT_BINUNICODE is protocol 4; older ones write BINUNICODE.
                    let short = (self.opts.proto >= 4).then_some(0x8c);
                    self.sized(s.as_bytes(), short, [b'X', 0x8d]);
                    self.memoize(id);
                }
            }
            Value::Bytes(b) => {
                let id = Rc::as_ptr(b) as *const u8 as usize;
                if self.get(id).is_none() {
                    self.sized(b, Some(b'C'), [b'B', 0x8e]);
                    self.memoize(id);
                }
            }
            Value::Tuple(t) => self.tuple(t),
            Value::List(l) => {
                let id = Rc::as_ptr(l) as usize;
                if self.get(id).is_none() {
                    self.op(b']');
                    self.memoize(id);
                    self.batches(l.items.len(), |w, i| w.value(&l.items[i]), [b'a', b'e']);
                }
            }
            Value::Dict(d) => {
                let id = Rc::as_ptr(d) as usize;
                if self.get(id).is_none() {
                    self.op(b'}');
                    self.memoize(id);
                    let pair = |w: &mut Self, i: usize| {
                        w.value(&d.entries[i].0);
                        w.value(&d.entries[i].1);
                    };
                    self.batches(d.entries.len(), pair, [b's', b'u']);
                }
            }
        }
    }

    fn tuple(&mut self, t: &Rc<crate::pickle::value::Seq>) {
        if t.items.is_empty() {
            // CPython writes the empty tuple without memoizing it.
            return self.op(b')');
        }
        let id = Rc::as_ptr(t) as usize;
        if self.get(id).is_some() {
            return;
        }
        let n = t.items.len();
        if n > 3 {
            self.op(b'(');
        }
        for item in &t.items {
            self.value(item);
        }
        self.op(match n {
            1 => 0x85,
            2 => 0x86,
            3 => 0x87,
            _ => b't',
        });
        self.memoize(id);
    }

    /// `n` items in batches: one item with `single`, more between MARK and `multi`.
    fn batches(
        &mut self,
        n: usize,
        mut item: impl FnMut(&mut Self, usize),
        [single, multi]: [u8; 2],
    ) {
        let mut i = 0;
        while i < n {
            let end = (i + self.opts.batch.max(1)).min(n);
            if end - i == 1 {
                item(self, i);
                self.op(single);
            } else {
                self.op(b'(');
                (i..end).for_each(|j| item(self, j));
                self.op(multi);
            }
            i = end;
        }
    }

    fn int(&mut self, i: i64) {
        if self.opts.wide {
            return self.long(&long_bytes(i));
        }
        match i {
            0..=0xff => {
                self.op(b'K');
                self.arg(&[i as u8]);
            }
            0x100..=0xffff => {
                self.op(b'M');
                self.arg(&(i as u16).to_le_bytes());
            }
            _ if i32::try_from(i).is_ok() => {
                self.op(b'J');
                self.arg(&(i as i32).to_le_bytes());
            }
            _ => self.long(&long_bytes(i)),
        }
    }

    fn long(&mut self, bytes: &[u8]) {
        if bytes.len() < 256 && !self.opts.wide {
            self.op(0x8a);
            self.arg(&[bytes.len() as u8]);
        } else {
            self.op(0x8b);
            self.arg(&(bytes.len() as i32).to_le_bytes());
        }
        self.arg(bytes);
    }

    /// A length-prefixed string or bytes: 1-, 4- or 8-byte length forms.
    fn sized(&mut self, bytes: &[u8], short: Option<u8>, [long, long8]: [u8; 2]) {
        if self.opts.wide {
            self.op(long8);
            self.arg(&(bytes.len() as u64).to_le_bytes());
        } else if let Some(short) = short.filter(|_| bytes.len() < 256) {
            self.op(short);
            self.arg(&[bytes.len() as u8]);
        } else {
            self.op(long);
            self.arg(&(bytes.len() as u32).to_le_bytes());
        }
        self.arg(bytes);
    }
}

/// Minimal little-endian two's complement, as CPython's `encode_long`.
pub(crate) fn long_bytes(i: i64) -> Vec<u8> {
    if i == 0 {
        return Vec::new();
    }
    let mut b = i.to_le_bytes().to_vec();
    while let [.., prev, last] = b[..] {
        let redundant = (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0);
        if !redundant {
            break;
        }
        b.pop();
    }
    b
}
