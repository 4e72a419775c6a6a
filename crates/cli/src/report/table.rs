//! The human table: one row per trace and policy, in human units, followed for the bundled
//! traces by the figures measured on a real H100 (see [`anchors`](super::anchors)).

use super::anchors::{Measured, measured_for};
use crate::replay::ReplayResult;
use crate::units::{bytes, nanos};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};

const HEADER: [&str; 9] = [
    "trace",
    "policy",
    "allocs",
    "peak requested",
    "peak reserved",
    "reserved / requested",
    "driver calls",
    "CPU per op",
    "wall",
];

/// Marks cells a measured row has no figure for.
const NOT_MEASURED: &str = "—";

pub fn replay_table(results: &[ReplayResult]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(HEADER);
    for (i, r) in results.iter().enumerate() {
        t.add_row(simulated_row(r));
        let last_of_trace = results.get(i + 1).is_none_or(|n| n.trace != r.trace);
        if last_of_trace {
            let of_trace: Vec<&ReplayResult> =
                results.iter().filter(|o| o.trace == r.trace).collect();
            for m in shown_measurements(&of_trace) {
                t.add_row(measured_row(r, &m));
            }
        }
    }
    t
}

/// The measured rows worth showing beside these results: `cuda-async` always (it has no
/// model), PyTorch's own only beside its model.
fn shown_measurements(of_trace: &[&ReplayResult]) -> Vec<Measured> {
    let r = of_trace[0];
    let replayed = |peer: &str| {
        of_trace
            .iter()
            .any(|o| o.policy.split(':').next() == Some(peer))
    };
    measured_for(&r.trace, r.allocs, r.events)
        .into_iter()
        .filter(|m| m.peer == "cuda-async" || replayed(m.peer))
        .collect()
}

/// A measured row: its peak requested is the trace's, which a replay that ran out of memory
/// may not have reached.
fn measured_row(r: &ReplayResult, m: &Measured) -> Vec<Cell> {
    let ratio = m.peak_reserved_bytes as f64 / m.peak_requested_bytes.max(1) as f64;
    vec![
        Cell::new(&r.trace),
        Cell::new(&m.label),
        right(r.allocs.to_string()),
        right(bytes(m.peak_requested_bytes)),
        right(bytes(m.peak_reserved_bytes)),
        right(format!("{ratio:.3}x")),
        Cell::new(
            m.segments
                .map_or(NOT_MEASURED.into(), |n| format!("cudaMalloc {n}")),
        ),
        right(m.ns_per_op.map_or(NOT_MEASURED.into(), nanos)),
        right(NOT_MEASURED.into()),
    ]
}

fn simulated_row(r: &ReplayResult) -> Vec<Cell> {
    vec![
        Cell::new(&r.trace),
        Cell::new(&r.policy),
        right(r.allocs.to_string()),
        right(bytes(r.peak_requested_bytes)),
        right(bytes(r.peak_reserved_bytes)),
        right(ratio(r)),
        Cell::new(calls(r)),
        right(nanos(r.ns_per_op)),
        right(format!("{:.2} s", r.wall_s)),
    ]
}

fn right(text: String) -> Cell {
    Cell::new(text).set_alignment(CellAlignment::Right)
}

fn ratio(r: &ReplayResult) -> String {
    let mut s = format!("{:.3}x", r.reserved_ratio());
    if r.ooms > 0 {
        s.push_str(&format!(" ({} OOM)", r.ooms));
    }
    s
}

/// Non-zero call kinds, one per line.
fn calls(r: &ReplayResult) -> String {
    let lines: Vec<String> = r
        .driver_calls
        .iter()
        .filter(|&(_, n)| n > 0)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    if lines.is_empty() {
        "none".into()
    } else {
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::Series;
    use coalesce_backend::DriverCalls;

    fn result(trace: &str, policy: &str, allocs: u64, events: u64) -> ReplayResult {
        let peak_requested = 1 << 30;
        ReplayResult {
            trace: trace.into(),
            policy: policy.into(),
            events,
            allocs,
            ops: 2 * allocs,
            peak_requested_bytes: peak_requested,
            peak_reserved_bytes: peak_requested,
            peak_allocated_bytes: peak_requested,
            driver_calls: DriverCalls::default(),
            driver_bytes: DriverCalls::default(),
            ooms: 0,
            retries: 0,
            ns_per_op: 100.0,
            ns_per_op_runs: vec![100.0],
            wall_s: 0.1,
            series: Series::new(1, 1),
        }
    }

    #[test]
    fn measured_rows_follow_their_trace_labelled_as_measured() {
        let gpt2 = |policy: &str| result("gpt2_train", policy, 43_091, 129_449);
        let results = [
            gpt2("bfc-classic"),
            gpt2("torch-native:max_split_size_mb:512"),
            result("my_run", "bfc-classic", 10, 1000),
        ];
        let text = replay_table(&results).to_string();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("measured")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("torch-native (measured on H100)") && lines[0].contains("24.85 GiB")
        );
        assert!(lines[1].contains("cuda-async (measured on H100)") && lines[1].contains("1.52 µs"));
        assert!(
            text.find("cuda-async").unwrap() < text.find("my_run").unwrap(),
            "measured rows come right after their trace's rows"
        );
        assert!(
            !text.contains("torch-expandable"),
            "its model was not replayed"
        );
    }
}
