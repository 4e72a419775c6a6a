//! Property tests: random values with shared references survive a round trip through the
//! test writer, and no input bytes make the reader panic.

use crate::pickle::load;
use crate::pickle::value::{Dict, Seq, Value};
use crate::pickle::write::{Options, write};
use proptest::prelude::*;
use rustc_hash::FxHashSet;
use std::rc::Rc;

/// One node of a random DAG. Children name earlier nodes by `index % position`, so later
/// nodes share earlier ones the way snapshot entries share frame lists.
#[derive(Clone, Debug)]
enum Node {
    Leaf(Leaf),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    /// Keys are fresh strings/ints, or an earlier node when that node is a str (shared keys,
    /// like the interned key strings of a snapshot).
    Dict(Vec<(Key, usize)>),
}

#[derive(Clone, Debug)]
enum Key {
    Str(String),
    Int(i64),
    Earlier(usize),
}

#[derive(Clone, Debug)]
enum Leaf {
    None,
    Bool(bool),
    Int(i64),
    Long(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
}

fn leaf() -> impl Strategy<Value = Leaf> {
    prop_oneof![
        Just(Leaf::None),
        any::<bool>().prop_map(Leaf::Bool),
        any::<i64>().prop_map(Leaf::Int),
        (-300i64..70_000).prop_map(Leaf::Int),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Leaf::Long),
        {
            use prop::num::f64::*;
            (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO | INFINITE).prop_map(Leaf::Float)
        },
        ".{0,12}".prop_map(Leaf::Str),
        "[a-z]{250,300}".prop_map(Leaf::Str),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Leaf::Bytes),
    ]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        "[a-z_]{0,10}".prop_map(Key::Str),
        any::<i64>().prop_map(Key::Int),
        any::<usize>().prop_map(Key::Earlier),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    let idx = prop::collection::vec(any::<usize>(), 0..6);
    prop_oneof![
        3 => leaf().prop_map(Node::Leaf),
        1 => idx.clone().prop_map(Node::Tuple),
        2 => prop::collection::vec(any::<usize>(), 0..12).prop_map(Node::List),
        2 => prop::collection::vec((key(), any::<usize>()), 0..6).prop_map(Node::Dict),
    ]
}

/// Builds the DAG; the root is a list of every node, so every shared node is reachable.
fn build(nodes: &[Node]) -> Value {
    let mut built: Vec<Value> = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let pick = |j: &usize| built[j % i].clone();
        let v = match n {
            Node::Leaf(l) => leaf_value(l),
            Node::Tuple(c) if i > 0 => Value::Tuple(seq(c.iter().map(pick).collect())),
            Node::List(c) if i > 0 => Value::List(seq(c.iter().map(pick).collect())),
            Node::Dict(c) if i > 0 => {
                let entries = c
                    .iter()
                    .map(|(k, j)| (key_value(k, &built[..i]), pick(j)))
                    .collect();
                Value::Dict(dict(entries))
            }
            _ => Value::List(seq(Vec::new())),
        };
        built.push(v);
    }
    Value::List(seq(built))
}

fn leaf_value(l: &Leaf) -> Value {
    match l {
        Leaf::None => Value::None,
        Leaf::Bool(b) => Value::Bool(*b),
        Leaf::Int(i) => Value::Int(*i),
        Leaf::Long(b) => Value::from_long_bytes(b),
        Leaf::Float(f) => Value::Float(*f),
        Leaf::Str(s) => Value::Str(s.as_str().into()),
        Leaf::Bytes(b) => Value::Bytes(b.as_slice().into()),
    }
}

fn key_value(k: &Key, earlier: &[Value]) -> Value {
    match k {
        Key::Str(s) => Value::Str(s.as_str().into()),
        Key::Int(i) => Value::Int(*i),
        Key::Earlier(j) => match &earlier[j % earlier.len()] {
            v @ Value::Str(_) => v.clone(),
            _ => Value::Int(*j as i64),
        },
    }
}

fn seq(items: Vec<Value>) -> Rc<Seq> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    Rc::new(Seq { items, depth })
}

fn dict(entries: Vec<(Value, Value)>) -> Rc<Dict> {
    let depth = entries
        .iter()
        .map(|(k, v)| 1 + k.depth().max(v.depth()))
        .max()
        .unwrap_or(1);
    Rc::new(Dict { entries, depth })
}

/// Identities of the memoizable objects reachable from `v` (the empty tuple excepted, which
/// CPython writes afresh each time).
fn identities(v: &Value, seen: &mut FxHashSet<usize>) {
    let id = match v {
        Value::Str(s) => Rc::as_ptr(s) as *const u8 as usize,
        Value::Bytes(b) => Rc::as_ptr(b) as *const u8 as usize,
        Value::Tuple(t) if t.items.is_empty() => return,
        Value::Tuple(s) | Value::List(s) => Rc::as_ptr(s) as usize,
        Value::Dict(d) => Rc::as_ptr(d) as usize,
        _ => return,
    };
    if !seen.insert(id) {
        return;
    }
    match v {
        Value::Tuple(s) | Value::List(s) => s.items.iter().for_each(|i| identities(i, seen)),
        Value::Dict(d) => d.entries.iter().for_each(|(k, x)| {
            identities(k, seen);
            identities(x, seen);
        }),
        _ => {}
    }
}

fn distinct(v: &Value) -> usize {
    let mut seen = FxHashSet::default();
    identities(v, &mut seen);
    seen.len()
}

fn options() -> impl Strategy<Value = Options> {
    (
        prop_oneof![Just(2u8), Just(4), Just(5)],
        1usize..5,
        1usize..200,
        any::<bool>(),
    )
        .prop_map(|(proto, batch, frame, wide)| Options {
            proto,
            batch,
            frame,
            wide,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Decoding what the writer encoded gives the same value with the same sharing: as many
    /// distinct objects as went in (shared ones were not copied, distinct ones not merged).
    #[test]
    fn round_trip_preserves_values_and_sharing(
        nodes in prop::collection::vec(node(), 1..40),
        opts in options(),
    ) {
        let v = build(&nodes);
        let bytes = write(&v, opts);
        let back = load(&bytes[..], &[]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(distinct(&back), distinct(&v));
    }

    /// Arbitrary bytes after a protocol header decode or fail, never panic.
    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = vec![0x80, 4];
        bytes.extend(body);
        let _ = load(&bytes[..], &[]);
        let _ = load(&bytes[..], &["", "a"]);
    }

    /// Valid pickles with a few bytes overwritten, inserted or cut never make it panic.
    #[test]
    fn mutated_pickles_never_panic(
        nodes in prop::collection::vec(node(), 1..20),
        opts in options(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = write(&build(&nodes), opts);
        for (at, byte, kind) in edits {
            let at = at % (bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ => bytes.truncate(at),
            }
        }
        let _ = load(&bytes[..], &[]);
        let _ = load(&bytes[..], &["", "a", "b"]);
    }
}
