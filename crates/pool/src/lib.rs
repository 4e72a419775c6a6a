//! # coalesce-pool: the device memory pool
//!
//! The thread-safe pool: one per device, one lock around a policy and its backend.
//!
//! [`DevicePool`] is what Rust users hold in a struct and what the C ABI (PyTorch's pluggable
//! allocator) calls into. Around the policy it adds:
//! - **thread safety**: one `Mutex` around everything (as PyTorch's and TensorFlow's
//!   allocators); every method takes `&self`, so a pool is shared across threads in an `Arc`
//!   or a `static` (PyTorch's autograd frees on its own threads);
//! - **stream-ordered reuse** for policies that ignore streams (`stream_order.rs`);
//! - **stats**: requested, allocated and reserved bytes with peaks, driver calls, OOMs
//!   ([`PoolStats`]);
//! - **a memory cap** in bytes or as a fraction of the device, enforced before the driver;
//! - **OOM recovery**: on out-of-memory, pending frees are completed (after a device
//!   synchronization) and cached memory is released, then the allocation is retried once; if
//!   it still fails the error says what was requested, reserved, free on the device and the
//!   largest free block ([`OomReport`]). Never a panic, never an abort;
//! - **snapshots**: segments, blocks and the last N events, written in the CSV trace format
//!   `coalesce replay` reads ([`trace`]).
#![forbid(unsafe_code)]

mod error;
mod limit;
mod stats;
mod stream_order;
#[cfg(test)]
mod tests;
pub mod trace;

pub use error::{OomReport, PoolError};
pub use stats::PoolStats;
pub use trace::{Snapshot, TraceAction, TraceEntry};

use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DevAddr, StreamId};
use coalesce_policy::{self as policy, Block, Policy, PolicyError, PolicySpec};
use limit::Limited;
use rustc_hash::FxHashMap;
use stats::Counters;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use stream_order::StreamOrder;
use trace::TraceRing;

/// Events kept by default for snapshots (32 bytes each: about 3 MiB).
pub const DEFAULT_TRACE_ENTRIES: usize = 100_000;

/// The policy a pool uses unless told otherwise: `coalesce` where the registry has it, else
/// `bfc-classic`.
pub fn default_policy() -> PolicySpec {
    let name = if policy::lookup("coalesce").is_some() {
        "coalesce"
    } else {
        "bfc-classic"
    };
    PolicySpec::named(name)
}

/// A cap on the memory a pool reserves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryLimit {
    Bytes(u64),
    /// A fraction in (0, 1] of the device's total memory.
    Fraction(f64),
}

impl MemoryLimit {
    fn resolve(self, total: u64) -> Result<u64, PoolError> {
        match self {
            MemoryLimit::Bytes(b) => Ok(b),
            MemoryLimit::Fraction(f) if f > 0.0 && f <= 1.0 => Ok((total as f64 * f) as u64),
            MemoryLimit::Fraction(f) => Err(PoolError::BadLimit(format!(
                "fraction {f} is not in (0, 1]"
            ))),
        }
    }
}

/// How to build a pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub policy: PolicySpec,
    pub memory_limit: Option<MemoryLimit>,
    /// Events kept for snapshots; 0 keeps only the live blocks.
    pub trace_entries: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            policy: default_policy(),
            memory_limit: None,
            trace_entries: DEFAULT_TRACE_ENTRIES,
        }
    }
}

/// Gives the pool a `&mut dyn Backend` whether it holds a concrete backend or a boxed one.
pub trait AsDynBackend {
    fn as_dyn(&mut self) -> &mut dyn Backend;
}

impl<T: Backend> AsDynBackend for T {
    fn as_dyn(&mut self) -> &mut dyn Backend {
        self
    }
}

impl AsDynBackend for dyn Backend {
    fn as_dyn(&mut self) -> &mut dyn Backend {
        self
    }
}

/// A thread-safe memory pool for one device. See the [module docs](self).
///
/// `B` is the backend: a concrete one (`DevicePool<CudaBackend>`, `DevicePool<SimDevice>`,
/// which [`DevicePool::with_backend`] exposes to tests) or, by default, `dyn Backend` chosen at
/// run time.
pub struct DevicePool<B: ?Sized + Backend + AsDynBackend = dyn Backend> {
    device: i32,
    state: Mutex<State<B>>,
}

impl<B: ?Sized + Backend + AsDynBackend> std::fmt::Debug for DevicePool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePool")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Everything behind the lock.
struct State<B: ?Sized> {
    policy: Box<dyn Policy>,
    policy_spec: String,
    limit: Option<u64>,
    /// Blocks handed out and not freed: addr -> (requested, block size).
    live: FxHashMap<DevAddr, (u64, u64)>,
    order: StreamOrder,
    counters: Counters,
    trace: TraceRing,
    backend: Box<B>,
}

impl<B: Backend> DevicePool<B> {
    /// A pool over `backend` with the policy and options of `config`.
    pub fn new(backend: B, config: PoolConfig) -> Result<Self, PoolError> {
        Self::from_box(Box::new(backend), config)
    }
}

impl DevicePool<SimDevice> {
    /// A pool on a simulated device (tests, and `COALESCE_BACKEND=sim`).
    pub fn sim(sim: SimConfig, config: PoolConfig) -> Result<Self, PoolError> {
        Self::new(SimDevice::new(sim), config)
    }
}

impl<B: ?Sized + Backend + AsDynBackend> DevicePool<B> {
    /// A pool over a boxed backend (`Box<dyn Backend>` for a backend chosen at run time).
    pub fn from_box(mut backend: Box<B>, config: PoolConfig) -> Result<Self, PoolError> {
        let policy = policy::build(&config.policy)?;
        let limit = config
            .memory_limit
            .map(|l| l.resolve(backend.as_dyn().total_memory()))
            .transpose()?;
        Ok(DevicePool {
            device: backend.as_dyn().device(),
            state: Mutex::new(State {
                order: StreamOrder::new(policy.stream_aware()),
                policy,
                policy_spec: config.policy.to_string(),
                limit,
                live: FxHashMap::default(),
                counters: Counters::default(),
                trace: TraceRing::new(config.trace_entries),
                backend,
            }),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State<B>>, PoolError> {
        self.state.lock().map_err(|_| PoolError::Poisoned)
    }

    pub fn device(&self) -> i32 {
        self.device
    }

    /// Allocates at least `size` bytes for use on `stream`, 512-byte aligned (or more, as the
    /// policy aligns). On out-of-memory, pending frees are completed and cached memory is
    /// released before one retry; then [`PoolError::OutOfMemory`].
    pub fn alloc(&self, size: u64, stream: StreamId) -> Result<Block, PoolError> {
        self.lock()?.alloc(size, stream)
    }

    /// Frees the block at `addr`. `stream` is where its last use was ordered (PyTorch passes
    /// the stream it was allocated on); the block is reused on other streams only once that
    /// stream has passed this point.
    pub fn free(&self, addr: DevAddr, stream: StreamId) -> Result<(), PoolError> {
        self.lock()?.free(addr, stream)
    }

    /// Returns cached memory to the driver: completes pending frees (synchronizing the
    /// device if there are any), then releases what the policy does not use.
    pub fn empty_cache(&self) -> Result<(), PoolError> {
        self.lock()?.release_cached()
    }

    /// Caps the memory the pool reserves (`None`: no cap). Memory already reserved above a
    /// new cap is kept; growth beyond it fails as out-of-memory.
    pub fn set_memory_limit(&self, limit: Option<MemoryLimit>) -> Result<(), PoolError> {
        let mut s = self.lock()?;
        let total = s.backend.as_dyn().total_memory();
        s.limit = limit.map(|l| l.resolve(total)).transpose()?;
        Ok(())
    }

    pub fn stats(&self) -> Result<PoolStats, PoolError> {
        Ok(self.lock()?.stats(self.device))
    }

    /// Starts new peak windows for requested, allocated and reserved bytes.
    pub fn reset_peak_stats(&self) -> Result<(), PoolError> {
        let mut s = self.lock()?;
        s.counters.reset_peaks();
        s.backend.as_dyn().reset_peak();
        Ok(())
    }

    /// Segments, blocks and the traced events (after handing back the held frees whose
    /// streams have passed them, without waiting for the others).
    pub fn snapshot(&self) -> Result<Snapshot, PoolError> {
        let mut s = self.lock()?;
        s.reclaim_completed()?;
        let (live_before_trace, trace) = s.trace.contents();
        Ok(Snapshot {
            device: self.device,
            segments: s.policy.segments(),
            live_before_trace,
            trace,
        })
    }

    /// Writes [`DevicePool::snapshot`] as a CSV trace to `path` (`coalesce replay path`
    /// replays it).
    pub fn dump_snapshot(&self, path: &Path) -> Result<(), PoolError> {
        let snap = self.snapshot()?;
        let io = |source| PoolError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        snap.write_csv(std::io::BufWriter::new(file)).map_err(io)
    }

    /// Runs `f` on the backend under the pool's lock (tests drive the simulated clock with it;
    /// the GPU smoke test copies data with it).
    pub fn with_backend<R>(&self, f: impl FnOnce(&mut B) -> R) -> Result<R, PoolError> {
        Ok(f(&mut self.lock()?.backend))
    }
}

impl<B: ?Sized + Backend + AsDynBackend> Drop for DevicePool<B> {
    /// Gives the driver back every segment with nothing live in it. Blocks still live are
    /// leaked with their segments (their owners outlived the pool).
    fn drop(&mut self) {
        if let Ok(s) = self.state.get_mut() {
            let _ = s.release_cached();
        }
    }
}

impl<B: ?Sized + Backend + AsDynBackend> State<B> {
    fn alloc(&mut self, size: u64, stream: StreamId) -> Result<Block, PoolError> {
        self.order.note_stream(self.backend.as_dyn(), stream)?;
        self.reclaim_completed()?;
        let (first, mut limit_reached) = self.try_alloc(size, stream);
        let result = match first {
            Err(e) if e.is_out_of_memory() => {
                self.counters.retries += 1;
                self.release_cached()?;
                let (retry, refused) = self.try_alloc(size, stream);
                limit_reached = refused;
                retry
            }
            other => other,
        };
        match result {
            Ok(block) => {
                self.live.insert(block.addr, (size, block.size));
                self.counters.on_alloc(size, block.size);
                self.trace.push(TraceEntry {
                    action: TraceAction::Alloc,
                    addr: block.addr,
                    size,
                    stream,
                });
                Ok(block)
            }
            Err(e) if e.is_out_of_memory() => {
                self.counters.ooms += 1;
                Err(self.oom_report(size, limit_reached))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One policy allocation under the memory cap; also says whether the cap refused growth.
    fn try_alloc(&mut self, size: u64, stream: StreamId) -> (Result<Block, PolicyError>, bool) {
        let mut dev = Limited::new(self.backend.as_dyn(), self.limit);
        let r = self.policy.alloc(&mut dev, size.max(1), stream);
        (r, dev.refused)
    }

    fn oom_report(&mut self, requested: u64, limit_reached: bool) -> PoolError {
        let dev = self.backend.as_dyn();
        PoolError::OutOfMemory(Box::new(OomReport {
            device: dev.device(),
            requested,
            reserved: dev.meter().reserved_bytes,
            allocated: self.counters.allocated,
            largest_free_block: self.policy.usage().largest_free_block,
            free_on_device: dev.free_memory().ok(),
            memory_limit: self.limit,
            limit_reached,
        }))
    }

    fn free(&mut self, addr: DevAddr, stream: StreamId) -> Result<(), PoolError> {
        let &(requested, size) = self
            .live
            .get(&addr)
            .ok_or(PoolError::UnknownAddress(addr))?;
        self.order.note_stream(self.backend.as_dyn(), stream)?;
        if self.order.deferring() {
            self.order
                .defer(self.backend.as_dyn(), addr, requested, stream)?;
            self.trace.push(TraceEntry {
                action: TraceAction::FreeRequested,
                addr,
                size: requested,
                stream,
            });
        } else {
            self.give_back(addr, requested, stream)?;
        }
        self.live.remove(&addr);
        self.counters.on_free(requested, size);
        Ok(())
    }

    /// Hands a freed block back to the policy.
    fn give_back(
        &mut self,
        addr: DevAddr,
        requested: u64,
        stream: StreamId,
    ) -> Result<(), PoolError> {
        self.policy.free(self.backend.as_dyn(), addr, stream)?;
        self.trace.push(TraceEntry {
            action: TraceAction::FreeCompleted,
            addr,
            size: requested,
            stream,
        });
        Ok(())
    }

    /// Hands back the held frees whose streams have passed them.
    fn reclaim_completed(&mut self) -> Result<(), PoolError> {
        for p in self.order.completed(self.backend.as_dyn())? {
            self.give_back(p.addr, p.requested, p.stream)?;
        }
        Ok(())
    }

    /// Completes every held free (synchronizing the device) and empties the policy's cache.
    fn release_cached(&mut self) -> Result<(), PoolError> {
        for p in self.order.drain(self.backend.as_dyn())? {
            self.give_back(p.addr, p.requested, p.stream)?;
        }
        self.policy.empty_cache(self.backend.as_dyn())?;
        Ok(())
    }

    fn stats(&mut self, device: i32) -> PoolStats {
        let usage = self.policy.usage();
        let dev = self.backend.as_dyn();
        let meter = *dev.meter();
        let c = self.counters;
        PoolStats {
            device,
            backend: dev.name().to_owned(),
            policy: self.policy_spec.clone(),
            requested_bytes: c.requested,
            peak_requested_bytes: c.peak_requested,
            allocated_bytes: c.allocated,
            peak_allocated_bytes: c.peak_allocated,
            reserved_bytes: meter.reserved_bytes,
            peak_reserved_bytes: meter.peak_reserved_bytes,
            largest_free_block: usage.largest_free_block,
            segments: usage.segments,
            pending_frees: self.order.pending(),
            num_allocs: c.allocs,
            num_frees: c.frees,
            num_ooms: c.ooms,
            num_alloc_retries: c.retries,
            driver_calls: meter.calls,
            memory_limit: self.limit,
            total_memory: dev.total_memory(),
        }
    }
}
