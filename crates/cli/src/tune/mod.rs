//! `coalesce tune`: find the PYTORCH_CUDA_ALLOC_CONF that reserves least on a user's trace.
//!
//! Every candidate of the [`grid`] is replayed under the torch-native model on every trace of
//! one file (a snapshot with several devices gives several; one setting applies to all of them),
//! in parallel over the cores. Candidates are ranked by out-of-memory errors, then total peak
//! reserved bytes, then fewer cache flushes, then fewer options: the first is the best setting, and a setting the
//! default beats is never reported as a saving.

pub mod grid;
pub mod report;

pub use grid::{Candidate, GridChoice, candidates};

use crate::replay::{ReplayConfig, ReplayError, replay};
use coalesce_trace::Trace;
use indicatif::ProgressBar;
use rayon::prelude::*;

/// What one setting did over all traces of the file.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub candidate: Candidate,
    /// Sum over traces of each trace's peak reserved bytes.
    pub peak_reserved_bytes: u64,
    /// Sum over traces of each trace's peak requested bytes (the same for every setting).
    pub peak_requested_bytes: u64,
    /// Allocations that failed even after the allocator released its cache.
    pub ooms: u64,
    /// Allocations that needed the release-and-retry path (`num_alloc_retries`).
    pub retries: u64,
}

impl Outcome {
    /// Bytes of peak reserved memory this setting saves against `default` (negative: costs).
    pub fn saved_vs(&self, default: &Outcome) -> i128 {
        default.peak_reserved_bytes as i128 - self.peak_reserved_bytes as i128
    }

    /// Ranking key: fewer out-of-memory errors, then less reserved, then fewer cache flushes,
    /// then fewer options.
    fn rank_key(&self) -> (u64, u64, u64, usize, String) {
        (
            self.ooms,
            self.peak_reserved_bytes,
            self.retries,
            self.candidate.options.len(),
            self.candidate.conf(),
        )
    }
}

/// The search's result: the default's outcome and every candidate's, best first.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub default: Outcome,
    /// Every candidate including the default, ranked (see [`Outcome::rank_key`]).
    pub ranked: Vec<Outcome>,
}

impl Tuning {
    /// The best setting; the default itself when nothing beats it.
    pub fn best(&self) -> &Outcome {
        &self.ranked[0]
    }

    /// The best setting without expandable segments, if the grid had any besides the default.
    pub fn best_without_expandable(&self) -> Option<&Outcome> {
        self.ranked.iter().find(|o| !o.candidate.uses_expandable())
    }

    /// Settings with no out-of-memory error, best first, when the default has some.
    pub fn avoiding_oom(&self) -> Vec<&Outcome> {
        if self.default.ooms == 0 {
            return vec![];
        }
        self.ranked.iter().filter(|o| o.ooms == 0).collect()
    }
}

/// Replays every candidate on every trace in parallel (rayon's global pool) and ranks them.
/// `bar` advances by the ops replayed; `config.repeats` should be 1 (timing is not used).
pub fn tune(
    traces: &[Trace],
    grid: &[Candidate],
    config: &ReplayConfig,
    bar: &ProgressBar,
) -> Result<Tuning, ReplayError> {
    assert!(
        grid.first().is_some_and(Candidate::is_default),
        "the grid starts with the default"
    );
    let mut outcomes = grid
        .par_iter()
        .map(|c| evaluate(traces, c, config, bar))
        .collect::<Result<Vec<_>, _>>()?;
    let default = outcomes[0].clone();
    outcomes.sort_by_key(Outcome::rank_key);
    Ok(Tuning {
        default,
        ranked: outcomes,
    })
}

/// Replays one candidate on every trace.
pub fn evaluate(
    traces: &[Trace],
    candidate: &Candidate,
    config: &ReplayConfig,
    bar: &ProgressBar,
) -> Result<Outcome, ReplayError> {
    let spec = candidate.spec();
    let mut o = Outcome {
        candidate: candidate.clone(),
        peak_reserved_bytes: 0,
        peak_requested_bytes: 0,
        ooms: 0,
        retries: 0,
    };
    for t in traces {
        let r = replay(t, &spec, config, &mut |n| bar.inc(n))?;
        o.peak_reserved_bytes += r.peak_reserved_bytes;
        o.peak_requested_bytes += r.peak_requested_bytes;
        o.ooms += r.ooms;
        o.retries += r.retries;
    }
    Ok(o)
}

/// Ops one candidate replays over `traces` (the measured pass and one timed pass each), for
/// sizing a progress bar.
pub fn ops_per_candidate(traces: &[Trace], config: &ReplayConfig) -> u64 {
    let passes = 1 + config.repeats.max(1) as u64;
    traces.iter().map(|t| t.ops.len() as u64 * passes).sum()
}
