//! `coalesce replay`: load traces, replay each under each policy, report.

mod engine;
mod gap;
mod load;
mod series;

#[cfg(test)]
pub(crate) use engine::measured_pass;
pub use engine::{ReplayConfig, ReplayError, ReplayResult, median, replay, replay_with_oracle};
pub use gap::Gap;
pub use load::{bundled_traces, load_trace, load_traces, synth_trace, trace_name};
pub use series::Series;

use crate::oracle::{TraceOracle, oracle_config};
use coalesce_policy::PolicySpec;
use coalesce_policy::registry::is_offline;
use coalesce_trace::Trace;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::io::IsTerminal;

/// Replays every trace under every policy, in order, with a progress bar on stderr when it
/// is a terminal. No oracle: see [`replay_all_with_oracle`].
pub fn replay_all(
    traces: &[Trace],
    specs: &[PolicySpec],
    config: &ReplayConfig,
) -> Result<Vec<ReplayResult>, ReplayError> {
    replay_each(traces, specs, config, &[])
}

/// [`replay_all`], and each result carries the oracle's figures for its trace (see
/// [`ReplayResult::gap`]); `specs` may name the `oracle`. With `with_oracle` false the oracle
/// is computed only if `specs` name it. Every trace's oracle is planned once, before any
/// replay, the traces in parallel: planning takes seconds on the larger traces, and a replay
/// timed while other threads plan would bill their noise to the policies.
pub fn replay_all_with_oracle(
    traces: &[Trace],
    specs: &[PolicySpec],
    config: &ReplayConfig,
    with_oracle: bool,
) -> Result<Vec<ReplayResult>, ReplayError> {
    if !with_oracle && !specs.iter().any(|s| is_offline(&s.name)) {
        return replay_all(traces, specs, config);
    }
    replay_each(traces, specs, config, &plan_oracles(traces, config))
}

/// The oracle of every trace, in order, planned in parallel on the model of the simulated
/// device.
pub fn plan_oracles(traces: &[Trace], config: &ReplayConfig) -> Vec<TraceOracle> {
    let model = oracle_config(&config.sim);
    let bar = progress_bar(traces.len() as u64);
    bar.set_message("planning the oracle of each trace");
    let oracles = traces
        .par_iter()
        .map(|t| {
            let o = TraceOracle::new(t, &model);
            bar.inc(1);
            o
        })
        .collect();
    bar.finish_and_clear();
    oracles
}

/// The replay loop over traces and policies. `oracles` are the traces' oracles, in order, or
/// empty (not computed); results carry their figures.
fn replay_each(
    traces: &[Trace],
    specs: &[PolicySpec],
    config: &ReplayConfig,
    oracles: &[TraceOracle],
) -> Result<Vec<ReplayResult>, ReplayError> {
    let passes = 1 + config.repeats.max(1) as u64;
    let total: u64 = traces
        .iter()
        .map(|t| t.ops.len() as u64 * passes * specs.len() as u64)
        .sum();
    let bar = progress_bar(total);
    let mut results = Vec::new();
    for (i, trace) in traces.iter().enumerate() {
        let oracle = oracles.get(i);
        for spec in specs {
            bar.set_message(format!("{} / {spec}", trace.name));
            results.push(replay_with_oracle(trace, spec, config, oracle, &mut |n| {
                bar.inc(n)
            })?);
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
