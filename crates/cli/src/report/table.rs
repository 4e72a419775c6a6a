//! The human table: one row per trace and policy, in human units, followed for the bundled
//! traces by the figures measured on a real H100 (see [`anchors`](super::anchors)). Where the
//! oracle was computed, each row's peak reserved is also shown over the oracle's placement
//! ("vs oracle") and over the lower bound that holds for the policy ("vs bound", see
//! [`Gap`]); without it, those two columns are left out.

use super::anchors::{Measured, measured_for};
use crate::replay::{Gap, ReplayResult};
use crate::units::{bytes, nanos};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};

const HEADER: [&str; 11] = [
    "trace",
    "policy",
    "allocs",
    "peak requested",
    "peak reserved",
    "reserved / requested",
    "vs oracle",
    "vs bound",
    "driver calls",
    "CPU per op",
    "wall",
];

/// Where the two gap columns are in [`HEADER`] and in every row.
const GAP_COLUMNS: std::ops::Range<usize> = 6..8;

/// Marks cells a measured row has no figure for.
const NOT_MEASURED: &str = "—";

pub fn replay_table(results: &[ReplayResult]) -> Table {
    let gaps = results.iter().any(|r| r.oracle.is_some());
    // Drops the gap columns when no result has the oracle's figures.
    let shown = |mut row: Vec<Cell>| {
        if !gaps {
            row.drain(GAP_COLUMNS);
        }
        row
    };
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(shown(HEADER.map(Cell::new).to_vec()));
    for (i, r) in results.iter().enumerate() {
        t.add_row(shown(simulated_row(r)));
        let last_of_trace = results.get(i + 1).is_none_or(|n| n.trace != r.trace);
        if last_of_trace {
            let of_trace: Vec<&ReplayResult> =
                results.iter().filter(|o| o.trace == r.trace).collect();
            for m in shown_measurements(&of_trace) {
                t.add_row(shown(measured_row(r, &m)));
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
        right(NOT_MEASURED.into()),
        right(NOT_MEASURED.into()),
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
        right(gap(r, |g| g.vs_oracle)),
        right(gap(r, |g| g.vs_bound)),
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

/// One figure of the row's gap to the oracle, `—` where the oracle was not computed.
pub fn gap(r: &ReplayResult, figure: fn(&Gap) -> f64) -> String {
    r.gap()
        .map_or(NOT_MEASURED.into(), |g| format!("{:.4}x", figure(&g)))
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
            oracle: None,
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

    #[test]
    fn gaps_show_beside_the_ratio_or_a_dash_without_the_oracle() {
        let mut with = result("t", "coalesce", 10, 20);
        with.peak_reserved_bytes = 3 << 20;
        with.oracle = Some(coalesce_policy::oracle::Figures {
            peak_live_bytes: 1 << 20,
            bound_bytes: 2 << 20,
            placement_bytes: 2 << 20,
        });
        let without = result("u", "coalesce", 10, 20);
        let text = replay_table(&[with, without.clone()]).to_string();
        assert!(
            text.contains("vs oracle") && text.contains("vs bound"),
            "{text}"
        );
        // The trimmed cells of the row of trace `name`.
        let cells = |text: &str, name: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.contains(&format!(" {name} ")))
                .unwrap_or_else(|| panic!("no row for {name}:\n{text}"));
            line.split('┆').map(|c| c.trim().to_owned()).collect()
        };
        assert_eq!(cells(&text, "t")[6..8], ["1.5000x", "1.5000x"], "{text}");
        assert_eq!(cells(&text, "u")[6..8], ["—", "—"], "{text}");
        let text = replay_table(&[without]).to_string();
        assert!(
            !text.contains("vs oracle") && !text.contains("vs bound"),
            "{text}"
        );
        assert_eq!(cells(&text, "u")[5..7], ["1.000x", "none"], "{text}");
    }
}
