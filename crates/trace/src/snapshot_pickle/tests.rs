use super::*;
use crate::input::{TraceFormat, read_trace_bytes};
use crate::pickle::load;
use std::path::Path;

const MIB: u64 = 1 << 20;

fn event(action: Action, addr: u64, size: u64) -> SnapshotEvent {
    SnapshotEvent {
        action,
        addr,
        size,
        stream: 7,
        time_us: 1,
    }
}

fn block(address: u64, size: u64, requested_size: u64, state: BlockState) -> SnapshotBlock {
    SnapshotBlock {
        address,
        size,
        requested_size,
        state,
    }
}

/// Two segments (one with a gap before, between and after its blocks), a trace on device 1.
fn doc() -> SnapshotDoc {
    let base = 1 << 40;
    SnapshotDoc {
        segments: vec![
            SnapshotSegment {
                device: 1,
                address: base,
                total_size: 20 * MIB,
                stream: 7,
                is_expandable: false,
                blocks: vec![
                    block(
                        base + 8 * MIB,
                        4 * MIB,
                        3 * MIB,
                        BlockState::ActivePendingFree,
                    ),
                    block(
                        base + 2 * MIB,
                        4 * MIB,
                        4 * MIB - 5,
                        BlockState::ActiveAllocated,
                    ),
                ],
            },
            SnapshotSegment {
                device: 1,
                address: base + 64 * MIB,
                total_size: 2 * MIB,
                stream: 0,
                is_expandable: true,
                blocks: vec![],
            },
        ],
        device_traces: vec![
            vec![],
            vec![
                event(Action::SegmentAlloc, base, 20 * MIB),
                event(Action::Alloc, base + 2 * MIB, 4 * MIB - 5),
                event(Action::Alloc, base + 8 * MIB, 3 * MIB),
                event(Action::FreeRequested, base + 8 * MIB, 3 * MIB),
                event(Action::Oom, 123, 80 << 30),
            ],
        ],
        settings: AllocatorSettings {
            conf: "coalesce".into(),
            ..AllocatorSettings::default()
        },
    }
}

fn bytes_of(doc: &SnapshotDoc) -> Vec<u8> {
    let mut out = vec![];
    write_snapshot_pickle(doc, &mut out).unwrap();
    out
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    match v {
        Value::Dict(d) => d.get(key).unwrap_or_else(|| panic!("no {key}")),
        other => panic!("not a dict: {other:?}"),
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::List(l) | Value::Tuple(l) => &l.items,
        other => panic!("not a list: {other:?}"),
    }
}

fn u(v: &Value) -> u64 {
    v.to_u64().unwrap()
}

#[test]
fn coalesce_replay_reads_back_the_trace_it_writes() {
    let d = doc();
    let (format, devices) = read_trace_bytes(Path::new("x.pickle"), &bytes_of(&d)).unwrap();
    assert_eq!(format, TraceFormat::Snapshot);
    assert_eq!(devices.len(), 1, "device 0's trace is empty");
    assert_eq!(devices[0].device, 1);
    let got: Vec<(Action, u64, u64, u64)> = devices[0]
        .events
        .iter()
        .map(|e| (e.action, e.addr, e.size, e.stream))
        .collect();
    let want: Vec<(Action, u64, u64, u64)> = d.device_traces[1]
        .iter()
        .map(|e| {
            // An oom entry has no address (its device_free is not read back).
            let addr = if e.action == Action::Oom { 0 } else { e.addr };
            (e.action, addr, e.size, e.stream)
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn segments_are_tiled_by_their_blocks_with_pytorchs_sums() {
    let v = load(&bytes_of(&doc())[..], &[]).unwrap();
    let segs = items(get(&v, "segments"));
    assert_eq!(segs.len(), 2);
    let s = &segs[0];
    let blocks = items(get(s, "blocks"));
    let states: Vec<String> = blocks
        .iter()
        .map(|b| match get(b, "state") {
            Value::Str(s) => s.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        states,
        [
            "inactive",
            "active_allocated",
            "inactive",
            "active_pending_free",
            "inactive"
        ]
    );
    let mut at = u(get(s, "address"));
    for b in blocks {
        assert_eq!(u(get(b, "address")), at, "blocks are contiguous");
        at += u(get(b, "size"));
        assert!(items(get(b, "frames")).is_empty());
    }
    assert_eq!(at, u(get(s, "address")) + u(get(s, "total_size")));
    assert_eq!(u(get(s, "allocated_size")), 4 * MIB);
    assert_eq!(u(get(s, "active_size")), 8 * MIB);
    assert_eq!(u(get(s, "requested_size")), 7 * MIB - 5);
    assert_eq!(get(s, "segment_type"), &Value::Str("large".into()));
    assert_eq!(get(&segs[1], "segment_type"), &Value::Str("small".into()));
    assert_eq!(get(&segs[1], "is_expandable"), &Value::Bool(true));
    assert_eq!(items(get(&segs[1], "blocks")).len(), 1, "one free block");
    let oom = &items(&items(get(&v, "device_traces"))[1])[4];
    assert_eq!(u(get(oom, "device_free")), 123);
    let settings = get(&v, "allocator_settings");
    assert_eq!(get(settings, "max_split_size"), &Value::Int(-1));
    assert_eq!(
        get(settings, "PYTORCH_CUDA_ALLOC_CONF"),
        &Value::Str("coalesce".into())
    );
}

#[test]
fn overlapping_or_stray_blocks_are_refused() {
    let mut d = doc();
    d.segments[0].blocks[0].address = d.segments[0].blocks[1].address + MIB;
    let e = write_snapshot_pickle(&d, &mut vec![]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("overlaps"), "{e}");
    let mut d = doc();
    d.segments[1].blocks = vec![block(1 << 50, 512, 512, BlockState::ActiveAllocated)];
    assert!(write_snapshot_pickle(&d, &mut vec![]).is_err());
}

/// Python's own unpickler reads the file and PyTorch's `segsum` arithmetic holds (every
/// segment's allocated + free bytes make its total), without torch.
#[test]
fn python_unpickles_it() {
    let Ok(python) = which_python() else {
        // On the real stderr: libtest captures eprintln!, and a skip must be seen.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping python_unpickles_it: no python3"
        );
        return;
    };
    let path = std::env::temp_dir().join(format!("coalesce-snap-{}.pickle", std::process::id()));
    std::fs::write(&path, bytes_of(&doc())).unwrap();
    let script = r#"
import pickle, sys
d = pickle.load(open(sys.argv[1], 'rb'))
for seg in d['segments']:
    alloc = sum(b['requested_size'] for b in seg['blocks'] if b['state'] == 'active_allocated')
    internal = sum(b['size'] - b['requested_size'] for b in seg['blocks'] if b['state'] == 'active_allocated')
    external = sum(b['size'] for b in seg['blocks'] if b['state'] != 'active_allocated')
    assert alloc + internal + external == seg['total_size'], seg
    assert seg['segment_pool_id'] == (0, 0)
assert [len(t) for t in d['device_traces']] == [0, 5]
assert d['device_traces'][1][4]['action'] == 'oom'
assert d['allocator_settings']['expandable_segments'] is False
print('ok', len(d['segments']))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 2");
}

fn which_python() -> Result<&'static str, ()> {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .map(|_| "python3")
        .map_err(|_| ())
}
