//! Rendering the bench: one table of every trace and policy, one of the goals, and JSON lines.

use super::{BenchRow, CPU_GOAL_NS, CPU_PEER, DRIVER_PEER, Goals, RATIO_GOAL, SUBJECT};
use crate::report::table::gap;
use crate::units::nanos;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use serde_json::{Map, Value, json};

fn right(text: String) -> Cell {
    Cell::new(text).set_alignment(CellAlignment::Right)
}

fn millis(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

/// Every trace and policy; "vs oracle" and "vs bound" are the peak reserved over the oracle's
/// placement and over the bound that holds for the policy (left out without the oracle).
pub fn table(rows: &[BenchRow]) -> Table {
    let gaps = rows.iter().any(|r| r.result.oracle.is_some());
    // Drops the gap columns (3 and 4) when no row has the oracle's figures.
    let shown = |mut row: Vec<Cell>| {
        if !gaps {
            row.drain(3..5);
        }
        row
    };
    let mut t = Table::new();
    let vs = format!("CPU vs {CPU_PEER}");
    let header = [
        "trace",
        "policy",
        "reserved / requested",
        "vs oracle",
        "vs bound",
        "driver calls per 1000 allocs",
        "est. driver time",
        "CPU per op",
        vs.as_str(),
    ];
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(shown(header.map(Cell::new).to_vec()));
    for r in rows {
        let res = &r.result;
        t.add_row(shown(vec![
            Cell::new(&res.trace),
            Cell::new(&res.policy),
            right(format!("{:.3}x", res.reserved_ratio())),
            right(gap(res, |g| g.vs_oracle)),
            right(gap(res, |g| g.vs_bound)),
            right(format!("{:.1}", r.calls_per_1000_allocs())),
            right(millis(r.est_driver_us)),
            right(nanos(res.ns_per_op)),
            right(r.cpu_vs_peer.map_or("—".into(), |v| format!("{v:.2}x"))),
        ]));
    }
    t
}

fn mark(ok: bool) -> &'static str {
    if ok { "yes" } else { "NO" }
}

/// Whether the subject met each goal, per trace.
pub fn goals_table(goals: &[Goals]) -> Table {
    let mut t = Table::new();
    let cpu = format!("CPU ≤ {CPU_GOAL_NS:.0} ns and < {CPU_PEER}");
    let driver = format!("driver time ≤ {DRIVER_PEER}");
    let ratio = format!("reserved ≤ {RATIO_GOAL}x");
    t.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "trace",
        ratio.as_str(),
        cpu.as_str(),
        driver.as_str(),
    ]);
    for g in goals {
        let peer_ns = g.peer_ns_per_op.map_or("—".into(), nanos);
        let peer_us = g.peer_driver_us.map_or("—".into(), millis);
        t.add_row(vec![
            Cell::new(&g.trace),
            Cell::new(format!("{} ({:.3}x)", mark(g.ratio_ok), g.ratio)),
            Cell::new(format!(
                "{} ({} vs {peer_ns})",
                mark(g.cpu_ok),
                nanos(g.ns_per_op)
            )),
            Cell::new(format!(
                "{} ({} vs {peer_us})",
                mark(g.driver_ok),
                millis(g.est_driver_us)
            )),
        ]);
    }
    t
}

/// How many traces met each goal, e.g. `goals met: reserved 19/27, CPU 20/27, driver 14/27`.
pub fn goals_summary(goals: &[Goals]) -> String {
    let n = goals.len();
    let met = |f: fn(&Goals) -> bool| goals.iter().filter(|g| f(g)).count();
    format!(
        "goals met on {n} traces: reserved {}/{n}, CPU {}/{n}, driver time {}/{n}, all three {}/{n}",
        met(|g| g.ratio_ok),
        met(|g| g.cpu_ok),
        met(|g| g.driver_ok),
        met(|g| g.ratio_ok && g.cpu_ok && g.driver_ok),
    )
}

/// The heading of the goals table.
pub fn goals_heading() -> String {
    format!("Goals of `{SUBJECT}` per trace (peers measured in this run):")
}

/// One JSON object per trace and policy; the oracle's fields are those of `coalesce replay
/// --json` (null without the oracle).
pub fn json_line(r: &BenchRow) -> String {
    let res = &r.result;
    let gap = res.gap();
    let calls: Map<String, Value> = res
        .driver_calls
        .iter()
        .map(|(c, n)| (c.name().to_owned(), json!(n)))
        .collect();
    json!({
        "trace": res.trace,
        "policy": res.policy,
        "allocs": res.allocs,
        "ops": res.ops,
        "peak_requested_bytes": res.peak_requested_bytes,
        "peak_reserved_bytes": res.peak_reserved_bytes,
        "reserved_ratio": res.reserved_ratio(),
        "oracle_bound_bytes": res.oracle.map(|f| f.bound_bytes),
        "oracle_placement_bytes": res.oracle.map(|f| f.placement_bytes),
        "bound_bytes": gap.map(|g| g.bound_bytes),
        "vs_oracle": gap.map(|g| g.vs_oracle),
        "vs_bound": gap.map(|g| g.vs_bound),
        "driver_calls": calls,
        "driver_calls_per_1000_allocs": r.calls_per_1000_allocs(),
        "est_driver_us": r.est_driver_us,
        "ns_per_op": res.ns_per_op,
        "ns_per_op_runs": res.ns_per_op_runs,
        "cpu_vs_torch_native": r.cpu_vs_peer,
        "ooms": res.ooms,
    })
    .to_string()
}
