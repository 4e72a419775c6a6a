//! `coalesce replay`: load traces, replay each under each policy, report.

mod engine;
mod load;
mod series;

pub use engine::{ReplayConfig, ReplayError, ReplayResult, median, replay};
pub use load::{bundled_traces, load_trace, load_traces, synth_trace, trace_name};
pub use series::Series;

use coalesce_policy::PolicySpec;
use coalesce_trace::Trace;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Replays every trace under every policy, in order, with a progress bar on stderr when it
/// is a terminal.
pub fn replay_all(
    traces: &[Trace],
    specs: &[PolicySpec],
    config: &ReplayConfig,
) -> Result<Vec<ReplayResult>, ReplayError> {
    let passes = 1 + config.repeats.max(1) as u64;
    let total: u64 = traces
        .iter()
        .map(|t| t.ops.len() as u64 * passes * specs.len() as u64)
        .sum();
    let bar = progress_bar(total);
    let mut results = Vec::new();
    for trace in traces {
        for spec in specs {
            bar.set_message(format!("{} / {spec}", trace.name));
            results.push(replay(trace, spec, config, &mut |n| bar.inc(n))?);
        }
    }
    bar.finish_and_clear();
    Ok(results)
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        )
        .expect("valid template"),
    );
    bar
}
