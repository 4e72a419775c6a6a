//! Reads a trace file (CSV or snapshot pickle, optionally gzipped) and reports its events and
//! the read throughput: `cargo run --release -p coalesce-trace --example read_trace -- FILE`.

use std::time::Instant;

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: read_trace FILE");
        std::process::exit(2);
    };
    let path = std::path::PathBuf::from(path);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let start = Instant::now();
    let (format, devices) = match coalesce_trace::read_trace(&path) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let events: usize = devices.iter().map(|d| d.events.len()).sum();
    println!(
        "{format:?}: {} device(s), {events} events, {:.1} MB in {secs:.2} s: {:.0} MB/s, {:.2} M events/s",
        devices.len(),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        events as f64 / 1e6 / secs
    );
    for d in &devices {
        let t = coalesce_trace::resolve(format!("device {}", d.device), &d.events);
        println!(
            "device {}: {} allocs, {} frees, peak requested {} bytes, {} warnings",
            d.device,
            t.stats.allocs,
            t.stats.frees,
            t.stats.peak_requested_bytes,
            t.warnings.len()
        );
    }
}
