//! The bundled H100 traces read and resolve to the figures recorded with them
//! (../shared/README.md: allocs and peak requested bytes per trace).

use coalesce_trace::{Action, TraceFormat, read_trace, resolve};
use std::path::PathBuf;

fn bundled(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../traces")
        .join(format!("{name}.trace.csv.gz"))
}

fn check(name: &str, allocs: u64, peak: u64, segments: usize) {
    let (format, devices) = read_trace(&bundled(name)).unwrap();
    assert_eq!(format, TraceFormat::Csv);
    assert_eq!(devices.len(), 1);
    let t = resolve(name, &devices[0].events);
    assert_eq!(t.stats.allocs, allocs);
    assert_eq!(t.stats.peak_requested_bytes, peak);
    assert_eq!(t.segments.len(), segments);
    assert_eq!(t.stats.count(Action::SegmentAlloc) as usize, segments);
    assert!(
        t.warnings.is_empty(),
        "{:?}",
        &t.warnings[..t.warnings.len().min(3)]
    );
    assert_eq!(t.stats.allocs - t.stats.frees, t.stats.live_at_end);
}

#[test]
fn gpt2_train() {
    check("gpt2_train", 43_091, 20_530_102_300, 182);
}

#[test]
fn resnet50_train() {
    check("resnet50_train", 10_686, 9_298_465_232, 127);
}

#[test]
fn llama_generate() {
    check("llama_generate", 544_807, 731_571_329, 53);
}

#[test]
fn a_malformed_gzip_trace_names_file_and_line() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"action,addr,size,stream\nalloc,1,2,0\nalloc,3\n")
        .unwrap();
    let bytes = gz.finish().unwrap();
    let err =
        coalesce_trace::read_trace_bytes(std::path::Path::new("bad.csv.gz"), &bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad.csv.gz:3: missing field \"size\" (line has 2 fields)"
    );
}
