//! Extraction of `device_traces`, and every structural error with its exact message.

use super::parse_snapshot;
use crate::event::{Action, RawEvent};
use crate::input::DeviceEvents;
use crate::pickle::write::{Options, long_bytes, write};
use crate::pickle::{Dict, Seq, Value};
use std::path::Path;
use std::rc::Rc;

fn s(text: &str) -> Value {
    Value::Str(text.into())
}

fn int(i: i64) -> Value {
    Value::Int(i)
}

fn list(items: Vec<Value>) -> Value {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    Value::List(Rc::new(Seq { items, depth }))
}

fn dict(entries: Vec<(&str, Value)>) -> Value {
    let entries: Vec<(Value, Value)> = entries.into_iter().map(|(k, v)| (s(k), v)).collect();
    let depth = 1 + entries.iter().map(|(_, v)| v.depth()).max().unwrap_or(0);
    Value::Dict(Rc::new(Dict { entries, depth }))
}

fn entry(action: &str, addr: i64, size: i64, stream: i64) -> Value {
    dict(vec![
        ("action", s(action)),
        ("addr", int(addr)),
        ("size", int(size)),
        ("stream", int(stream)),
        ("time_us", int(1_700_000_000_000_000)),
        ("frames", list(vec![])),
    ])
}

fn snapshot(traces: Vec<Value>) -> Value {
    dict(vec![
        ("segments", list(vec![])),
        ("device_traces", list(traces)),
        ("allocator_settings", dict(vec![])),
    ])
}

fn parse(v: &Value) -> Result<Vec<DeviceEvents>, String> {
    parse_snapshot(Path::new("t.pickle"), &write(v, Options::python(4))[..])
        .map_err(|e| e.to_string())
}

fn error(v: &Value) -> String {
    parse(v).unwrap_err()
}

fn ev(action: Action, addr: u64, size: u64, stream: u64, location: u64) -> RawEvent {
    RawEvent {
        action,
        addr,
        size,
        stream,
        location,
    }
}

#[test]
fn reads_each_device_with_entries_and_skips_empty_ones() {
    let oom = dict(vec![
        ("action", s("oom")),
        ("device_free", int(1024)),
        ("size", int(1 << 30)),
        ("stream", int(0)),
    ]);
    let odd = dict(vec![
        ("action", s("annotate")),
        ("size", int(0)),
        ("stream", int(0)),
    ]);
    let v = snapshot(vec![
        list(vec![]),
        list(vec![entry("alloc", 4096, 512, 7), oom, odd]),
        list(vec![]),
        list(vec![entry("free_completed", 4096, 512, -1)]),
    ]);
    let devices = parse(&v).unwrap();
    assert_eq!(
        devices,
        vec![
            DeviceEvents {
                device: 1,
                events: vec![
                    ev(Action::Alloc, 4096, 512, 7, 0),
                    ev(Action::Oom, 0, 1 << 30, 0, 1),
                    ev(Action::Other, 0, 0, 0, 2),
                ],
            },
            DeviceEvents {
                device: 3,
                events: vec![ev(Action::FreeCompleted, 4096, 512, u64::MAX, 0)],
            },
        ]
    );
}

#[test]
fn addresses_and_streams_up_to_2_pow_64() {
    let top = |low: u8| Value::from_long_bytes(&[low, 0, 0, 0, 0, 0, 0, 0x80, 0]);
    let e = dict(vec![
        ("action", s("alloc")),
        ("addr", top(1)),
        ("size", Value::from_long_bytes(&long_bytes(i64::MAX))),
        ("stream", top(2)),
    ]);
    let devices = parse(&snapshot(vec![list(vec![e])])).unwrap();
    assert_eq!(
        devices[0].events,
        vec![ev(
            Action::Alloc,
            (1 << 63) + 1,
            i64::MAX as u64,
            (1 << 63) + 2,
            0
        )]
    );
}

#[test]
fn structural_errors_name_the_entry_and_the_problem() {
    let with = |key: &str, value: Value| {
        let mut fields = vec![
            ("action", s("alloc")),
            ("addr", int(1)),
            ("size", int(2)),
            ("stream", int(0)),
        ];
        fields.retain(|(k, _)| *k != key);
        if !matches!(value, Value::None) {
            fields.push((key, value));
        }
        snapshot(vec![list(vec![entry("alloc", 0, 1, 0), dict(fields)])])
    };
    let at = "t.pickle: device_traces[0][1]";
    assert_eq!(
        error(&with("size", s("12"))),
        format!("{at}: 'size' is a str, expected int")
    );
    assert_eq!(
        error(&with("size", int(-5))),
        format!("{at}: 'size' is negative (-5)")
    );
    assert_eq!(
        error(&with("addr", Value::Float(1.0))),
        format!("{at}: 'addr' is a float, expected int")
    );
    assert_eq!(
        error(&with(
            "addr",
            Value::from_long_bytes(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        )),
        format!("{at}: 'addr' does not fit in 64 bits")
    );
    assert_eq!(
        error(&with("stream", Value::Bool(true))),
        format!("{at}: 'stream' is a bool, expected int")
    );
    assert_eq!(
        error(&with("action", int(3))),
        format!("{at}: 'action' is an int, expected str")
    );
    assert_eq!(
        error(&with("action", Value::None)),
        format!("{at}: no 'action'")
    );
    assert_eq!(
        error(&with("addr", Value::None)),
        format!("{at}: no 'addr' in an alloc entry")
    );
    assert_eq!(
        error(&with("size", Value::None)),
        format!("{at}: no 'size'")
    );
    assert_eq!(
        error(&with("stream", Value::None)),
        format!("{at}: no 'stream'")
    );
}

#[test]
fn wrong_shapes_above_the_entries() {
    assert_eq!(
        error(&list(vec![])),
        "t.pickle: the pickle holds a list, expected a dict (a PyTorch memory snapshot)"
    );
    assert_eq!(
        error(&dict(vec![("segments", list(vec![])), ("x", int(1))])),
        "t.pickle: no 'device_traces' key (keys: segments, x): not a PyTorch memory snapshot"
    );
    assert_eq!(
        error(&dict(vec![("device_traces", dict(vec![]))])),
        "t.pickle: 'device_traces' is a dict, expected list"
    );
    assert_eq!(
        error(&snapshot(vec![list(vec![]), int(4)])),
        "t.pickle: device_traces[1] is an int, expected list"
    );
    assert_eq!(
        error(&snapshot(vec![list(vec![
            entry("alloc", 1, 1, 0),
            list(vec![])
        ])])),
        "t.pickle: device_traces[0][1] is a list, expected dict"
    );
}

#[test]
fn pickle_errors_name_the_file_and_byte() {
    let err = parse_snapshot(Path::new("t.pickle"), &b"\x80\x04}\x94(\xff"[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.pickle: pickle byte 5: unknown opcode 0xff"
    );
    let err = parse_snapshot(Path::new("t.pickle"), &b"\x80\x04}\x94(\x8c"[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.pickle: pickle byte 5: input ends inside the argument of SHORT_BINUNICODE"
    );
}

#[test]
fn read_errors_name_the_file_and_byte() {
    struct Failing;
    impl std::io::Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let err = parse_snapshot(Path::new("t.pickle"), std::io::BufReader::new(Failing));
    let err = err.unwrap_err();
    assert!(matches!(err, crate::TraceError::Io { .. }));
    assert_eq!(err.to_string(), "t.pickle: pickle byte 0: disk on fire");
}
