//! The human table: one row per trace and policy, in human units.

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

pub fn replay_table(results: &[ReplayResult]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED).set_header(HEADER);
    for r in results {
        t.add_row(vec![
            Cell::new(&r.trace),
            Cell::new(&r.policy),
            right(r.allocs.to_string()),
            right(bytes(r.peak_requested_bytes)),
            right(bytes(r.peak_reserved_bytes)),
            right(ratio(r)),
            Cell::new(calls(r)),
            right(nanos(r.ns_per_op)),
            right(format!("{:.2} s", r.wall_s)),
        ]);
    }
    t
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
