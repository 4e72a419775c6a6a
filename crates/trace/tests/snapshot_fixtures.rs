//! PyTorch-structured snapshot pickles (tests/fixtures/make_snapshots.py) read to exactly the
//! events CPython's own `pickle.load` sees in them, and replay to the figures the generator
//! computed.

use coalesce_trace::{
    Action, DeviceEvents, RawEvent, TraceFormat, read_trace, read_trace_bytes, resolve,
};
use std::io::Read;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> Vec<DeviceEvents> {
    let (format, devices) = read_trace(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format, TraceFormat::Snapshot);
    devices
}

/// `<stem>.events.csv[.gz]`: device,index,action,addr,size,stream as Python decoded them.
fn expected(file: &str) -> Vec<DeviceEvents> {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let mut text = String::new();
    if file.ends_with(".gz") {
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
    } else {
        text = String::from_utf8(bytes).unwrap();
    }
    let mut devices: Vec<DeviceEvents> = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f[i].parse::<u64>().unwrap();
        let device = num(0) as u32;
        if devices.last().is_none_or(|d| d.device != device) {
            devices.push(DeviceEvents {
                device,
                events: Vec::new(),
            });
        }
        devices.last_mut().unwrap().events.push(RawEvent {
            action: Action::parse(f[2]),
            addr: num(3),
            size: num(4),
            stream: num(5),
            location: num(1),
        });
    }
    devices
}

#[test]
fn torch21_layout_protocol_2() {
    let devices = read("snapshot_torch21_p2.pickle");
    assert_eq!(devices, expected("snapshot_torch21_p2.events.csv"));
    assert_eq!(devices.len(), 1);
    let e = &devices[0].events;
    assert_eq!(e.len(), 95);
    let seg = 0x7f3a_0000_0000;
    assert_eq!(
        e[..2],
        [
            RawEvent {
                action: Action::SegmentAlloc,
                addr: seg,
                size: 2 << 20,
                stream: 0,
                location: 0
            },
            RawEvent {
                action: Action::Alloc,
                addr: seg,
                size: 502_784,
                stream: 0,
                location: 1
            },
        ]
    );
    assert_eq!(e[94].action, Action::Snapshot);
}

#[test]
fn torch25_layout_protocol_4_gzipped_two_devices() {
    let devices = read("snapshot_torch25_p4.pickle.gz");
    assert_eq!(devices, expected("snapshot_torch25_p4.events.csv.gz"));
    let sizes: Vec<(u32, usize)> = devices.iter().map(|d| (d.device, d.events.len())).collect();
    assert_eq!(sizes, [(0, 1552), (1, 29)]);
    let oom = devices[0].events[620];
    assert_eq!(
        (oom.action, oom.addr, oom.size, oom.location),
        (Action::Oom, 0, 80 << 30, 620)
    );
    assert!(
        devices[0]
            .events
            .iter()
            .any(|e| e.stream == 0x55d5_c0a1_2340)
    );
}

#[test]
fn torch29_layout_protocol_5_skips_the_empty_device() {
    let devices = read("snapshot_torch29_p5.pickle");
    assert_eq!(devices, expected("snapshot_torch29_p5.events.csv"));
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device, 1);
    let actions: Vec<Action> = devices[0].events[41..44].iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [Action::SegmentMap, Action::SegmentUnmap, Action::Other]
    );
}

#[test]
fn gzipped_and_plain_bytes_read_the_same() {
    let gz = std::fs::read(fixture("snapshot_torch25_p4.pickle.gz")).unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut plain)
        .unwrap();
    let name = std::path::Path::new("x");
    assert_eq!(
        read_trace_bytes(name, &plain).unwrap(),
        read_trace_bytes(name, &gz).unwrap()
    );
}

/// Figures printed by make_snapshots.py, from its own replay of what `pickle.load` returned.
#[test]
fn snapshots_replay_end_to_end() {
    let cases = [
        ("snapshot_torch21_p2.pickle", 0, 38, 22, 52_830_720, 16),
        (
            "snapshot_torch25_p4.pickle.gz",
            0,
            571,
            429,
            540_601_344,
            142,
        ),
        ("snapshot_torch25_p4.pickle.gz", 1, 9, 8, 17_826_304, 1),
        ("snapshot_torch29_p5.pickle", 0, 32, 18, 101_250_560, 14),
    ];
    for (file, index, allocs, frees, peak, live) in cases {
        let devices = read(file);
        let t = resolve(file, &devices[index].events);
        let what = format!("{file} device {}", devices[index].device);
        assert_eq!(t.stats.allocs, allocs, "{what}");
        assert_eq!(t.stats.frees, frees, "{what}");
        assert_eq!(t.ops.len() as u64, allocs + frees, "{what}");
        assert_eq!(t.stats.peak_requested_bytes, peak, "{what}");
        assert_eq!(t.stats.live_at_end, live, "{what}");
        assert!(t.warnings.is_empty(), "{what}: {:?}", t.warnings);
    }
}

#[test]
fn a_corrupt_snapshot_names_the_file_and_byte() {
    let mut bytes = std::fs::read(fixture("snapshot_torch29_p5.pickle")).unwrap();
    bytes[11] = b'R';
    let err = read_trace_bytes(std::path::Path::new("bad.pickle"), &bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad.pickle: pickle byte 11: opcode REDUCE (0x52) would import or call Python code; \
         refused (a memory snapshot holds only plain data)"
    );
    bytes[11] = b'}';
    bytes.truncate(501); // inside the argument of the BININT1 at byte 500
    let err = read_trace_bytes(std::path::Path::new("bad.pickle"), &bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad.pickle: pickle byte 500: input ends inside the argument of BININT1"
    );
}

mod fuzz {
    use super::fixture;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A real-structured snapshot with bytes overwritten, inserted or cut reads or fails
        /// with an error, never a panic, through the whole path (detection, pickle, entries).
        #[test]
        fn mutated_snapshots_never_panic(
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..8),
        ) {
            let mut bytes = std::fs::read(fixture("snapshot_torch29_p5.pickle")).unwrap();
            for (at, byte, kind) in edits {
                let at = at % (bytes.len() + 1);
                match kind {
                    0 | 1 if at < bytes.len() => bytes[at] = byte,
                    2 => bytes.insert(at, byte),
                    _ => bytes.truncate(at.max(1)),
                }
            }
            let _ = coalesce_trace::read_trace_bytes(std::path::Path::new("f.pickle"), &bytes);
        }
    }
}
