//! Replaying one resolved trace under one policy on the simulated device.
//!
//! Two kinds of pass:
//! - one **measured** pass, instrumented: requested and reserved bytes after every op (peaks,
//!   a downsampled series for plots), driver calls, out-of-memory count;
//! - several **timed** passes with no instrumentation, each on a fresh policy and device, whose
//!   median gives the allocator's CPU cost per op. Parsing happened before; building and
//!   dropping the policy are outside the timed region.

use super::series::Series;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DriverCalls, StreamId};
use coalesce_policy::{self as policy, Policy, PolicyError, PolicySpec, alloc_with_recovery};
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

/// A replay that could not finish: the policy broke its contract.
#[derive(Debug, thiserror::Error)]
#[error("{policy} on {trace}: op {op}: {source}")]
pub struct ReplayError {
    pub trace: String,
    pub policy: String,
    pub op: usize,
    pub source: PolicyError,
}

/// Address of a failed allocation (its free is skipped).
const FAILED: u64 = u64::MAX;

/// Stream handles of a trace, indexed like `Op` streams.
fn streams(trace: &Trace) -> Vec<StreamId> {
    trace.streams.iter().map(|&s| StreamId(s)).collect()
}

/// Replays `trace` under `spec`: one measured pass, then `repeats` timed passes.
/// `progress` is called with the number of ops done since its last call.
pub fn replay(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayResult, ReplayError> {
    let mut result = measured_pass(trace, spec, config, progress)?;
    for _ in 0..config.repeats.max(1) {
        let ns = timed_pass(trace, spec, config)?;
        result.ns_per_op_runs.push(ns);
        progress(trace.ops.len() as u64);
    }
    result.ns_per_op = median(&result.ns_per_op_runs);
    Ok(result)
}

fn new_policy(spec: &PolicySpec) -> Box<dyn Policy> {
    policy::build(spec).expect("policy specs are validated before replay")
}

fn error(trace: &Trace, spec: &PolicySpec, op: usize, source: PolicyError) -> ReplayError {
    ReplayError {
        trace: trace.name.clone(),
        policy: spec.to_string(),
        op,
        source,
    }
}

/// What one pass over a trace found (`MEASURE` passes only fill more than the time).
struct Pass {
    elapsed_ns: f64,
    peak_requested: u64,
    peak_allocated: u64,
    ooms: u64,
    retries: u64,
    series: Series,
    dev: SimDevice,
}

/// Replays `trace` once on a fresh policy and device. With `MEASURE`, records peaks, the
/// series and stream hazards; without, runs bare for timing. Both make exactly the same calls
/// into the policy and the device, so the timed runs time the measured behaviour.
#[inline(never)] // a named symbol for profilers (`callgrind --toggle-collect`)
fn pass<const MEASURE: bool>(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<Pass, ReplayError> {
    let mut policy = new_policy(spec);
    // Timed passes skip the simulator's rule checks: its bookkeeping is not the allocator's
    // cost (on a GPU it is driver time, estimated separately). The measured pass checks.
    let mut dev = SimDevice::new(SimConfig {
        validate: MEASURE,
        ..config.sim
    });
    let streams = streams(trace);
    let sizes = trace.alloc_sizes();
    let mut addrs = vec![FAILED; sizes.len()];
    let series_len = if MEASURE { trace.ops.len() } else { 0 };
    let mut series = Series::new(series_len, config.series_points);
    let hazards = MEASURE && config.sim.stream_lag > 0;
    let (mut requested, mut peak_requested, mut peak_allocated, mut ooms, mut retries) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let start = Instant::now();
    for (i, op) in trace.ops.iter().enumerate() {
        dev.tick();
        match *op {
            Op::Alloc { id, size, stream } => {
                let stream = streams[stream as usize];
                match alloc_with_recovery(policy.as_mut(), &mut dev, size, stream) {
                    Ok((block, retried)) => {
                        // Kernels on the stream will use the block.
                        dev.work(stream);
                        addrs[id as usize] = block.addr;
                        if MEASURE {
                            requested += size;
                            retries += retried as u64;
                        }
                    }
                    Err(e) if e.is_out_of_memory() => ooms += 1,
                    Err(e) => return Err(error(trace, spec, i, e)),
                }
            }
            Op::Free { id, stream } => {
                let stream = streams[stream as usize];
                let addr = std::mem::replace(&mut addrs[id as usize], FAILED);
                if addr != FAILED {
                    dev.work(stream);
                    if MEASURE {
                        requested -= sizes[id as usize];
                    }
                    // The kernels that used the block may still run: the simulator then refuses
                    // any unmap of it before the stream has passed this point.
                    if hazards {
                        dev.use_until_now(addr, sizes[id as usize], stream);
                    }
                    policy
                        .free(&mut dev, addr, stream)
                        .map_err(|e| error(trace, spec, i, e))?;
                }
            }
        }
        if MEASURE {
            peak_requested = peak_requested.max(requested);
            peak_allocated = peak_allocated.max(policy.usage().allocated_bytes);
            series.record(i, requested, dev.meter().reserved_bytes);
            if i % 65_536 == 65_535 {
                progress(65_536);
            }
        }
    }
    let elapsed_ns = start.elapsed().as_nanos() as f64;
    // Dropping the policy is outside the timed region.
    drop(policy);
    progress(if MEASURE {
        trace.ops.len() as u64 % 65_536
    } else {
        trace.ops.len() as u64
    });
    Ok(Pass {
        elapsed_ns,
        peak_requested,
        peak_allocated,
        ooms,
        retries,
        series,
        dev,
    })
}

fn measured_pass(
    trace: &Trace,
    spec: &PolicySpec,
    config: &ReplayConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayResult, ReplayError> {
    let p = pass::<true>(trace, spec, config, progress)?;
    let meter = *p.dev.meter();
    Ok(ReplayResult {
        trace: trace.name.clone(),
        policy: spec.to_string(),
        events: trace.stats.events,
        allocs: trace.stats.allocs,
        ops: trace.ops.len() as u64,
        peak_requested_bytes: p.peak_requested,
        peak_reserved_bytes: meter.peak_reserved_bytes,
        peak_allocated_bytes: p.peak_allocated,
        driver_calls: meter.calls,
        driver_bytes: meter.bytes,
        ooms: p.ooms,
        retries: p.retries,
        ns_per_op: 0.0,
        ns_per_op_runs: vec![],
        wall_s: p.elapsed_ns / 1e9,
        series: p.series,
    })
}

/// One uninstrumented pass; returns nanoseconds per op.
fn timed_pass(trace: &Trace, spec: &PolicySpec, config: &ReplayConfig) -> Result<f64, ReplayError> {
    let p = pass::<false>(trace, spec, config, &mut |_| {})?;
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
