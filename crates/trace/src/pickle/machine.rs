//! The pickle machine's state and the effect of each stack, memo and container opcode.
//!
//! Lists and dicts are built in place: EMPTY_LIST or EMPTY_DICT pushes an *open* container,
//! APPENDS/SETITEMS fill it, and it is *closed* into an immutable `Rc` value when it leaves
//! the stack (or is popped). A memo entry for an open container names its stack position and
//! becomes the closed value when the container closes.
//!
//! Skipped keys: when SETITEM(S) or DICT pairs a key in `skip` with its value, the pair is
//! left out of the dict; a list or dict value still open at that point (its first use, in
//! the way picklers write) is dropped instead of closed, and its memo entries become `None`,
//! so later references cost nothing. Snapshot readers skip `frames` this way, most of a
//! snapshot's objects.
//!
//! Sharing rule: the pickler writes a shared object once and refers to it later with GET; at
//! that point the object is complete unless it contains itself. So a GET (or DUP) of an open
//! container closes it on the spot, and any later attempt to add to it is an error: that is
//! exactly a recursive structure, which would otherwise become an `Rc` cycle.

use super::memo::{Entry, Memo};
use super::value::{Dict, MAX_DEPTH, Seq, Value};
use std::rc::Rc;

/// A problem found executing an opcode; the decoder adds the offset.
pub(super) type Problem = String;

/// A stack slot: a finished value, or a list or dict still being filled (boxed: most slots
/// are values, and every push and pop moves a whole slot).
#[derive(Debug)]
enum Slot {
    Done(Value),
    Open(Box<Open>),
}

#[derive(Debug)]
struct Open {
    items: Items,
    /// Depth of the container as filled so far (1 when empty).
    depth: u32,
    /// Memo indices that were given this container while open. Nearly always one.
    memo_first: Option<u32>,
    memo_rest: Vec<u32>,
}

#[derive(Debug)]
enum Items {
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

/// The machine: value stack, mark stack and memo.
///
/// Invariants: every mark is `<= stack.len()` and marks are non-decreasing; a memo entry
/// `Entry::Open(p)` means `stack[p]` is an open container that recorded that memo index.
#[derive(Debug, Default)]
pub(super) struct Machine {
    stack: Vec<Slot>,
    marks: Vec<usize>,
    memo: Memo,
    skip: Vec<Box<str>>,
}

impl Machine {
    /// A machine that leaves out dict entries whose key is a str in `skip`.
    pub(super) fn new(skip: &[&str]) -> Self {
        Machine {
            skip: skip.iter().map(|&k| k.into()).collect(),
            ..Machine::default()
        }
    }

    /// Stack positions below this belong to an enclosing MARK and cannot be popped.
    fn fence(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    pub(super) fn push(&mut self, v: Value) {
        self.stack.push(Slot::Done(v));
    }

    pub(super) fn push_empty_list(&mut self) {
        self.push_open(Items::List(Vec::new()), 1);
    }

    pub(super) fn push_empty_dict(&mut self) {
        self.push_open(Items::Dict(Vec::new()), 1);
    }

    fn push_open(&mut self, items: Items, depth: u32) {
        self.stack.push(Slot::Open(Box::new(Open {
            items,
            depth,
            memo_first: None,
            memo_rest: Vec::new(),
        })));
    }

    pub(super) fn mark(&mut self) {
        self.marks.push(self.stack.len());
    }

    /// POP: discards the top item or, if the top is a mark with no items after it, the mark.
    pub(super) fn pop(&mut self) -> Result<(), Problem> {
        if self.marks.last() == Some(&self.stack.len()) {
            self.marks.pop();
        } else {
            self.take_top("POP")?;
        }
        Ok(())
    }

    /// POP_MARK: discards the items after the last mark, and the mark.
    pub(super) fn pop_mark(&mut self) -> Result<(), Problem> {
        self.take_marked("POP_MARK")?;
        Ok(())
    }

    /// DUP: pushes the top item again (an open container is closed first: it is now shared).
    pub(super) fn dup(&mut self) -> Result<(), Problem> {
        if self.stack.len() <= self.fence() {
            return Err(underflow("DUP"));
        }
        let top = self.stack.len() - 1;
        let v = self.share(top)?;
        self.push(v);
        Ok(())
    }

    /// TUPLE1/2/3: the top `n` items become a tuple.
    pub(super) fn tuple_n(&mut self, n: usize, what: &str) -> Result<(), Problem> {
        if self.stack.len() < self.fence() + n {
            return Err(underflow(what));
        }
        let start = self.stack.len() - n;
        let items: Vec<Value> = self.drain_closed(start).collect();
        let v = Value::Tuple(Rc::new(seq(items)?));
        self.push(v);
        Ok(())
    }

    /// TUPLE: the items after the last mark become a tuple.
    pub(super) fn tuple_marked(&mut self) -> Result<(), Problem> {
        let items = self.take_marked("TUPLE")?;
        let v = Value::Tuple(Rc::new(seq(items)?));
        self.push(v);
        Ok(())
    }

    /// LIST: the items after the last mark become an open list.
    pub(super) fn list_marked(&mut self) -> Result<(), Problem> {
        let items = self.take_marked("LIST")?;
        let depth = depth_over(&items)?;
        self.push_open(Items::List(items), depth);
        Ok(())
    }

    /// DICT: the key/value pairs after the last mark become an open dict.
    pub(super) fn dict_marked(&mut self) -> Result<(), Problem> {
        let pairs = self.take_marked_pairs("DICT")?;
        self.push_open(Items::Dict(Vec::new()), 1);
        self.extend_dict(pairs, "DICT")
    }

    /// APPEND: pops an item and appends it to the list below it.
    pub(super) fn append(&mut self) -> Result<(), Problem> {
        let item = self.take_top("APPEND")?;
        self.extend_list(vec![item], "APPEND")
    }

    /// APPENDS: appends the items after the last mark to the list before the mark.
    pub(super) fn appends(&mut self) -> Result<(), Problem> {
        let items = self.take_marked("APPENDS")?;
        self.extend_list(items, "APPENDS")
    }

    /// SETITEM: pops a value and a key and sets them in the dict below.
    pub(super) fn setitem(&mut self) -> Result<(), Problem> {
        if self.stack.len() < self.fence() + 2 {
            return Err(underflow("SETITEM"));
        }
        let start = self.stack.len() - 2;
        let pairs = self.drain_pairs(start);
        self.extend_dict(pairs, "SETITEM")
    }

    /// SETITEMS: sets the key/value pairs after the last mark in the dict before the mark.
    pub(super) fn setitems(&mut self) -> Result<(), Problem> {
        let pairs = self.take_marked_pairs("SETITEMS")?;
        self.extend_dict(pairs, "SETITEMS")
    }

    /// PUT, BINPUT, LONG_BINPUT: stores the top item at memo index `idx`.
    pub(super) fn memo_put(&mut self, idx: u32, what: &str) -> Result<(), Problem> {
        if self.stack.len() <= self.fence() {
            return Err(underflow(what));
        }
        let top = self.stack.len() - 1;
        let entry = match &mut self.stack[top] {
            Slot::Done(v) => Entry::Done(v.clone()),
            Slot::Open(open) => {
                match open.memo_first {
                    None => open.memo_first = Some(idx),
                    Some(_) => open.memo_rest.push(idx),
                }
                Entry::Open(top)
            }
        };
        self.memo.put(idx, entry);
        Ok(())
    }

    /// MEMOIZE: stores the top item at the next memo index.
    pub(super) fn memoize(&mut self) -> Result<(), Problem> {
        let idx = self
            .memo
            .next_index()
            .ok_or("MEMOIZE: the memo already holds 2^32 objects")?;
        self.memo_put(idx, "MEMOIZE")
    }

    /// GET, BINGET, LONG_BINGET: pushes the object at memo index `idx`.
    pub(super) fn memo_get(&mut self, idx: u32) -> Result<(), Problem> {
        let v = match self.memo.get(idx) {
            None => return Err(format!("memo index {idx} was never stored")),
            Some(Entry::Done(v)) => v.clone(),
            Some(&Entry::Open(pos)) => self.share(pos)?,
        };
        self.push(v);
        Ok(())
    }

    /// STOP: the top item is the result.
    pub(super) fn finish(&mut self) -> Result<Value, Problem> {
        self.take_top("STOP")
    }

    /// The value at stack position `pos`, closing it there if it is open.
    fn share(&mut self, pos: usize) -> Result<Value, Problem> {
        let slot = self
            .stack
            .get_mut(pos)
            .ok_or("internal error: a memo entry points past the stack")?;
        let open = match std::mem::replace(slot, Slot::Done(Value::None)) {
            Slot::Done(v) => {
                *slot = Slot::Done(v.clone());
                return Ok(v);
            }
            Slot::Open(open) => open,
        };
        let v = close(&mut self.memo, pos, *open, true);
        self.stack[pos] = Slot::Done(v.clone());
        Ok(v)
    }

    /// Pops the top item (above the fence), closing it if open.
    fn take_top(&mut self, what: &str) -> Result<Value, Problem> {
        if self.stack.len() <= self.fence() {
            return Err(underflow(what));
        }
        let start = self.stack.len() - 1;
        Ok(self.drain_closed(start).next().unwrap_or(Value::None))
    }

    /// Pops the last mark and the items after it, closing open ones.
    fn take_marked(&mut self, what: &str) -> Result<Vec<Value>, Problem> {
        let start = self.pop_mark_for(what)?;
        Ok(self.drain_closed(start).collect())
    }

    /// Like [`Self::take_marked`], as key/value pairs.
    fn take_marked_pairs(&mut self, what: &str) -> Result<Vec<(Value, Value)>, Problem> {
        let start = self.pop_mark_for(what)?;
        let n = self.stack.len() - start;
        if !n.is_multiple_of(2) {
            return Err(format!("{what} needs key/value pairs but has {n} items"));
        }
        Ok(self.drain_pairs(start))
    }

    /// Removes `stack[start..]` (an even count) as key/value pairs, closing open ones. Pairs
    /// of a skipped key are left out; their value, if open, is dropped unclosed.
    fn drain_pairs(&mut self, start: usize) -> Vec<(Value, Value)> {
        let Machine {
            stack, memo, skip, ..
        } = self;
        let skipped = |key: &Slot| match key {
            Slot::Done(Value::Str(s)) => skip.iter().any(|k| **k == **s),
            _ => false,
        };
        let kept = stack[start..]
            .iter()
            .step_by(2)
            .filter(|k| !skipped(k))
            .count();
        let mut pairs = Vec::with_capacity(kept);
        let mut slots = stack.drain(start..).enumerate();
        while let (Some((i, k)), Some((j, v))) = (slots.next(), slots.next()) {
            let keep = !skipped(&k);
            let key = take(memo, start + i, k, true);
            let value = take(memo, start + j, v, keep);
            if keep {
                pairs.push((key, value));
            }
        }
        pairs
    }

    fn pop_mark_for(&mut self, what: &str) -> Result<usize, Problem> {
        self.marks
            .pop()
            .ok_or_else(|| format!("{what} without a preceding MARK"))
    }

    /// Removes `stack[start..]` as values, closing open ones.
    fn drain_closed(&mut self, start: usize) -> impl Iterator<Item = Value> + '_ {
        let Machine { stack, memo, .. } = self;
        stack
            .drain(start..)
            .enumerate()
            .map(move |(i, slot)| take(memo, start + i, slot, true))
    }

    /// The open container on top of the stack, which `what` is about to fill.
    fn target(&mut self, what: &str, want: &str) -> Result<&mut Open, Problem> {
        if self.stack.len() <= self.fence() {
            return Err(format!("{what} has no {want} to add to (stack underflow)"));
        }
        match self.stack.last_mut() {
            Some(Slot::Open(open)) => Ok(open),
            Some(Slot::Done(v @ (Value::List(_) | Value::Dict(_)))) => Err(format!(
                "{what} adds to a {} that was already referenced again (a recursive \
                 structure, which memory snapshots never contain)",
                v.type_name()
            )),
            Some(Slot::Done(v)) => Err(format!(
                "{what} target is {}, expected a {want}",
                article(v.type_name())
            )),
            None => Err(underflow(what)),
        }
    }

    fn extend_list(&mut self, items: Vec<Value>, what: &str) -> Result<(), Problem> {
        let open = self.target(what, "list")?;
        let Items::List(list) = &mut open.items else {
            return Err(format!("{what} target is a dict, expected a list"));
        };
        open.depth = open.depth.max(depth_over(&items)?);
        // The first batch becomes the list: no copy.
        if list.is_empty() {
            *list = items;
        } else {
            list.extend(items);
        }
        Ok(())
    }

    fn extend_dict(&mut self, pairs: Vec<(Value, Value)>, what: &str) -> Result<(), Problem> {
        let open = self.target(what, "dict")?;
        let Items::Dict(dict) = &mut open.items else {
            return Err(format!("{what} target is a list, expected a dict"));
        };
        for (k, v) in &pairs {
            if matches!(k, Value::List(_) | Value::Dict(_)) {
                return Err(format!(
                    "{what}: dict key is a {} (unhashable)",
                    k.type_name()
                ));
            }
            open.depth = open.depth.max(depth_of_parent(k)?.max(depth_of_parent(v)?));
        }
        if dict.is_empty() {
            *dict = pairs;
        } else {
            dict.extend(pairs);
        }
        Ok(())
    }
}

/// The value of a slot taken off the stack at `pos`: closed if open, or `None` if not `keep`.
fn take(memo: &mut Memo, pos: usize, slot: Slot, keep: bool) -> Value {
    match slot {
        Slot::Done(v) if keep => v,
        Slot::Done(_) => Value::None,
        Slot::Open(open) => close(memo, pos, *open, keep),
    }
}

/// Freezes the open container that was at stack position `pos` (or drops it, giving `None`,
/// if not `keep`) and points the memo entries it recorded at the result.
fn close(memo: &mut Memo, pos: usize, open: Open, keep: bool) -> Value {
    let Open {
        items,
        depth,
        memo_first,
        memo_rest,
    } = open;
    let v = match items {
        _ if !keep => Value::None,
        Items::List(items) => Value::List(Rc::new(Seq { items, depth })),
        Items::Dict(entries) => Value::Dict(Rc::new(Dict { entries, depth })),
    };
    for idx in memo_first.into_iter().chain(memo_rest) {
        if let Some(entry) = memo.get_mut(idx) {
            // The index may have been reused for another object since.
            if matches!(entry, Entry::Open(p) if *p == pos) {
                *entry = Entry::Done(v.clone());
            }
        }
    }
    v
}

fn underflow(what: &str) -> Problem {
    format!("{what} needs more items than the stack holds (stack underflow)")
}

/// "a list", "an int".
pub(crate) fn article(type_name: &str) -> String {
    match type_name.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// The depth of a container holding `v`.
fn depth_of_parent(v: &Value) -> Result<u32, Problem> {
    let d = v.depth() + 1;
    if d > MAX_DEPTH {
        return Err(format!("containers nest deeper than {MAX_DEPTH} levels"));
    }
    Ok(d)
}

/// The depth of a container holding `items` (1 if empty).
fn depth_over(items: &[Value]) -> Result<u32, Problem> {
    items
        .iter()
        .try_fold(1, |d, v| Ok(d.max(depth_of_parent(v)?)))
}

fn seq(items: Vec<Value>) -> Result<Seq, Problem> {
    let depth = depth_over(&items)?;
    Ok(Seq { items, depth })
}
