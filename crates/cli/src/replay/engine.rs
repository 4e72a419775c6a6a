//! Replaying one resolved trace under one policy, through the pool users run
//! ([`coalesce_pool::PoolCore`] with its stream ordering, stats, recovery and trace ring), on
//! the simulated device, with the pool's one replay loop ([`coalesce_pool::replay::run`]).
//!
//! Two kinds of pass:
//! - one **measured** pass, instrumented: requested and reserved bytes after every op (peaks,
//!   a downsampled series for plots), driver calls, out-of-memory count;
//! - several **timed** passes with no instrumentation, each on a fresh policy and device, whose
//!   median gives the allocator's CPU cost per op: the pool's own work and the policy's.
//!   Parsing happened before; building and dropping the pool are outside the timed region.

use super::series::Series;
use crate::oracle::TraceOracle;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DevAddr, DriverCalls, StreamId};
use coalesce_policy::oracle::{Figures, INFO as ORACLE};
use coalesce_policy::{Policy, PolicySpec};
use coalesce_pool::replay::{self as pool_replay, Hooks};
use coalesce_pool::{PoolConfig, PoolCore, PoolError};
use coalesce_trace::{Op, Trace};
use std::time::Instant;

/// Knobs of a replay.
#[derive(Clone, Copy, Debug)]
pub struct ReplayConfig {
    pub sim: SimConfig,
    /// Timed passes; the median is reported.
    pub repeats: usize,
    /// Points kept in the plotted series.
    pub series_points: usize,
}

/// Everything measured for one trace under one policy.
#[derive(Clone, Debug)]
pub struct ReplayResult {
    pub trace: String,
    pub policy: String,
    pub events: u64,
    pub allocs: u64,
    /// Allocations plus frees replayed.
    pub ops: u64,
    pub peak_requested_bytes: u64,
    pub peak_reserved_bytes: u64,
    /// Peak of the bytes the policy had handed out (requests after its rounding).
    pub peak_allocated_bytes: u64,
    pub driver_calls: DriverCalls,
    /// Bytes passed to each kind of driver call (see `Meter::bytes`).
    pub driver_bytes: DriverCalls,
    /// Allocations that failed even after releasing cached memory.
    pub ooms: u64,
    /// Allocations that needed the release-and-retry path.
    pub retries: u64,
    /// Median ns per op over the timed passes, and every pass.
    pub ns_per_op: f64,
    pub ns_per_op_runs: Vec<f64>,
    /// Wall-clock seconds of the measured pass.
    pub wall_s: f64,
    pub series: Series,
    /// The oracle's figures for the trace, when they were computed.
    pub oracle: Option<Figures>,
}

impl ReplayResult {
    pub fn reserved_ratio(&self) -> f64 {
        if self.peak_requested_bytes == 0 {
            0.0
        } else {
            self.peak_reserved_bytes as f64 / self.peak_requested_bytes as f64
        }
    }
}

/// A replay that could not finish: the pool or the policy broke its contract.
#[derive(Debug, thiserror::Error)]
#[error("{policy} on {trace}: op {op}: {source}")]
pub struct ReplayError {
    pub trace: String,
    pub policy: String,
    pub op: usize,
    pub source: Box<PoolError>,
}

/// Replays `trace` under `spec`: one measured pass, then `repeats` timed passes.
/// `progress` is called with the number of ops done since its last call. The offline `oracle`
/// policy needs the trace's oracle: see [`replay_with_oracle`].
pub fn replay(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayResult, ReplayError> {
    replay_with_oracle(trace, spec, config, None, progress)
}

/// [`replay`], with the trace's oracle (computed once per trace, see [`TraceOracle`]): the
/// result carries its figures, and `spec` may be the `oracle` policy, which replays the
/// oracle's plan through the same pool loop.
pub fn replay_with_oracle(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    oracle: Option<&TraceOracle>,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayResult, ReplayError> {
    let mut result = measured_pass(trace, spec, config, oracle, progress)?;
    result.oracle = oracle.map(|o| o.figures);
    for _ in 0..config.repeats.max(1) {
        let ns = timed_pass(trace, spec, config, oracle)?;
        result.ns_per_op_runs.push(ns);
        progress(trace.ops.len() as u64);
    }
    result.ns_per_op = median(&result.ns_per_op_runs);
    Ok(result)
}

/// What one pass over a trace found (`MEASURE` passes only fill more than the time).
struct Pass {
    elapsed_ns: f64,
    ooms: u64,
    series: Series,
    pool: PoolCore<SimDevice>,
}

/// What the replay does around each op on the simulated device: tick its clock, declare the
/// kernels each op implies on its stream, and (`MEASURE`) declare what freed blocks' streams
/// may still use and record the series.
struct SimHooks<'p, const MEASURE: bool> {
    hazards: bool,
    series: Series,
    progress: &'p mut dyn FnMut(u64),
}

impl<const MEASURE: bool> Hooks<PoolCore<SimDevice>> for SimHooks<'_, MEASURE> {
    #[inline]
    fn before(&mut self, pool: &mut PoolCore<SimDevice>, _i: usize, _op: &Op) {
        pool.backend_mut().tick();
    }
    #[inline]
    fn allocated(
        &mut self,
        pool: &mut PoolCore<SimDevice>,
        _: u32,
        _: DevAddr,
        _: u64,
        s: StreamId,
    ) {
        // Kernels on the stream will use the block.
        pool.backend_mut().work(s);
    }
    #[inline]
    fn freeing(&mut self, pool: &mut PoolCore<SimDevice>, addr: DevAddr, size: u64, s: StreamId) {
        let dev = pool.backend_mut();
        dev.work(s);
        // The kernels that used the block may still run: the simulator then refuses any unmap
        // of it before the stream has passed this point.
        if self.hazards {
            dev.use_until_now(addr, size, s);
        }
    }
    #[inline]
    fn after(&mut self, pool: &mut PoolCore<SimDevice>, i: usize) {
        if MEASURE {
            let requested = pool.requested_bytes();
            self.series
                .record(i, requested, pool.backend().meter().reserved_bytes);
            if i % 65_536 == 65_535 {
                (self.progress)(65_536);
            }
        }
    }
}

/// Replays `trace` once through a fresh pool on a fresh device. With `MEASURE`, records the
/// series and checks the simulator's rules and stream hazards; without, runs bare for timing.
/// Both make exactly the same calls into the pool, so the timed runs time the measured
/// behaviour.
fn pass<const MEASURE: bool>(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    oracle: Option<&TraceOracle>,
    progress: &mut dyn FnMut(u64),
) -> Result<Pass, ReplayError> {
    // Timed passes skip the simulator's rule checks: its bookkeeping is not the allocator's
    // cost (on a GPU it is driver time, estimated separately). The measured pass checks.
    let dev = SimDevice::new(SimConfig {
        validate: MEASURE,
        ..config.sim
    });
    let pool_config = PoolConfig {
        policy: spec.clone(),
        ..PoolConfig::default()
    };
    let error = |op, source| ReplayError {
        trace: trace.name.clone(),
        policy: spec.to_string(),
        op,
        source,
    };
    let mut pool = new_pool(dev, spec, oracle, pool_config).map_err(|e| error(0, Box::new(e)))?;
    let series_len = if MEASURE { trace.ops.len() } else { 0 };
    let mut hooks = SimHooks::<MEASURE> {
        hazards: MEASURE && config.sim.stream_lag > 0,
        series: Series::new(series_len, config.series_points),
        progress,
    };
    let start = Instant::now();
    let outcome =
        pool_replay::run(&mut pool, trace, &mut hooks).map_err(|e| error(e.op, e.source))?;
    let elapsed_ns = start.elapsed().as_nanos() as f64;
    (hooks.progress)(if MEASURE {
        trace.ops.len() as u64 % 65_536
    } else {
        trace.ops.len() as u64
    });
    Ok(Pass {
        elapsed_ns,
        ooms: outcome.ooms,
        series: hooks.series,
        pool,
    })
}

/// A pool on `dev` with the policy of `spec`: from the registry, or for the `oracle`, a fresh
/// replay of the trace's plan.
fn new_pool(
    dev: SimDevice,
    spec: &PolicySpec,
    oracle: Option<&TraceOracle>,
    config: PoolConfig,
) -> Result<PoolCore<SimDevice>, PoolError> {
    match oracle {
        Some(o) if spec.name == ORACLE.name => {
            PoolCore::with_policy(dev, Box::new(o.policy()) as Box<dyn Policy>, config)
        }
        _ => PoolCore::new(dev, config),
    }
}

/// The measured pass alone (tests that need the figures, not the timings).
pub(crate) fn measured_pass(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    oracle: Option<&TraceOracle>,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayResult, ReplayError> {
    let p = pass::<true>(trace, spec, config, oracle, progress)?;
    let stats = p.pool.stats();
    Ok(ReplayResult {
        trace: trace.name.clone(),
        policy: spec.to_string(),
        events: trace.stats.events,
        allocs: trace.stats.allocs,
        ops: trace.ops.len() as u64,
        peak_requested_bytes: stats.peak_requested_bytes,
        peak_reserved_bytes: stats.peak_reserved_bytes,
        peak_allocated_bytes: stats.peak_allocated_bytes,
        driver_calls: stats.driver_calls,
        driver_bytes: stats.driver_bytes,
        ooms: p.ooms,
        retries: stats.num_alloc_retries,
        ns_per_op: 0.0,
        ns_per_op_runs: vec![],
        wall_s: p.elapsed_ns / 1e9,
        series: p.series,
        oracle: None,
    })
}

/// One uninstrumented pass; returns nanoseconds per op.
fn timed_pass(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    oracle: Option<&TraceOracle>,
) -> Result<f64, ReplayError> {
    let p = pass::<false>(trace, spec, config, oracle, &mut |_| {})?;
    Ok(p.elapsed_ns / trace.ops.len().max(1) as f64)
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
