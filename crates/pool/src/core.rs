//! The pool's single-threaded core: everything a pool does except locking.
//!
//! [`PoolCore`] owns a policy and a backend and adds, around the policy:
//! - **stream-ordered reuse** for policies that ignore streams (`stream_order.rs`);
//! - **stats**: requested, allocated and reserved bytes with peaks, driver calls, OOMs,
//!   retries and bad calls ([`PoolStats`]);
//! - **a memory cap**, enforced before the driver (the backend is wrapped in a
//!   [`Limit`] adaptor for each allocation);
//! - **OOM recovery**: on out-of-memory, held frees are completed (after a device
//!   synchronization) and cached memory is released, then the allocation is retried once; if it
//!   still fails the error carries what was requested, reserved, live, free on the device and the
//!   largest free block ([`OomReport`]);
//! - **a trace ring** of the last events, for snapshots.
//!
//! [`DevicePool`](crate::DevicePool) is this core behind a mutex; `coalesce replay` drives the
//! core directly through [`crate::replay`]. There is no other copy of any of this.
//!
//! Invariants (checked by [`PoolCore::check_invariants`]):
//! - `live` holds exactly the blocks handed out and not freed; the counters' requested and
//!   allocated bytes are the sums over it;
//! - with a cap `L`, reserved bytes never grow past `L`: growth that would is refused; a new
//!   cap below what is reserved releases cached memory at once, and so does every free while
//!   reserved memory stays above the cap; an allocation that would take live bytes past `L`
//!   fails whatever is cached.

use crate::stats::Counters;
use crate::stream_order::StreamOrder;
use crate::trace::{Snapshot, TraceAction, TraceEntry, TraceRing};
use crate::{AsDynBackend, MemoryLimit, OomReport, PoolConfig, PoolError, PoolStats};
use coalesce_backend::adaptor::{ByRef, Limit};
use coalesce_backend::{Backend, DevAddr, StreamId};
use coalesce_policy::{self as policy, Block, Policy, PolicyError};
use rustc_hash::FxHashMap;

/// A live block as the pool knows it.
#[derive(Clone, Copy, Debug)]
struct Live {
    requested: u64,
    size: u64,
    stream: StreamId,
}

/// The pool without its lock. See the [module docs](self).
pub struct PoolCore<B: ?Sized + Backend + AsDynBackend = dyn Backend> {
    policy: Box<dyn Policy>,
    policy_spec: String,
    limit: Option<u64>,
    /// The device's memory (fixed): requests above it are refused without asking the policy.
    total_memory: u64,
    live: FxHashMap<DevAddr, Live>,
    order: StreamOrder,
    counters: Counters,
    trace: TraceRing,
    backend: Box<B>,
}

impl<B: ?Sized + Backend + AsDynBackend> std::fmt::Debug for PoolCore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCore")
            .field("policy", &self.policy_spec)
            .field("limit", &self.limit)
            .field("live", &self.live.len())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> PoolCore<B> {
    /// A core over `backend` with the policy and options of `config`.
    pub fn new(backend: B, config: PoolConfig) -> Result<Self, PoolError> {
        Self::from_box(Box::new(backend), config)
    }

    /// A core over `backend` with a policy built by the caller (an offline policy such as the
    /// oracle, built from its trace) and the options of `config`; `config.policy` only names
    /// it in stats and reports.
    pub fn with_policy(
        backend: B,
        policy: Box<dyn Policy>,
        config: PoolConfig,
    ) -> Result<Self, PoolError> {
        Self::assemble(Box::new(backend), policy, config)
    }
}

impl<B: ?Sized + Backend + AsDynBackend> PoolCore<B> {
    /// A core over a boxed backend (`Box<dyn Backend>` for a backend chosen at run time).
    pub fn from_box(backend: Box<B>, config: PoolConfig) -> Result<Self, PoolError> {
        let policy = policy::build(&config.policy)?;
        Self::assemble(backend, policy, config)
    }

    fn assemble(
        mut backend: Box<B>,
        policy: Box<dyn Policy>,
        config: PoolConfig,
    ) -> Result<Self, PoolError> {
        let limit = config
            .memory_limit
            .map(|l| l.resolve(backend.as_dyn().total_memory()))
            .transpose()?;
        Ok(PoolCore {
            order: StreamOrder::new(policy.stream_aware()),
            policy,
            policy_spec: config.policy.to_string(),
            limit,
            total_memory: backend.as_dyn().total_memory(),
            live: FxHashMap::default(),
            counters: Counters::default(),
            trace: TraceRing::new(config.trace_entries),
            backend,
        })
    }

    pub fn device(&self) -> i32 {
        self.backend.device()
    }

    /// The backend (tests drive the simulated clock with it; the GPU check copies data).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Whether `addr` is a live block of this pool.
    pub fn is_live(&self, addr: DevAddr) -> bool {
        self.live.contains_key(&addr)
    }

    /// Bytes callers asked for, over live blocks (cheap: replays read it after every op).
    #[inline]
    pub fn requested_bytes(&self) -> u64 {
        self.counters.requested
    }

    /// The policy's own view (for replays that plot it).
    pub fn policy(&self) -> &dyn Policy {
        self.policy.as_ref()
    }

    /// Allocates at least `size` bytes for use on `stream`. See [`crate::DevicePool::alloc`].
    pub fn alloc(&mut self, size: u64, stream: StreamId) -> Result<Block, PoolError> {
        if size == 0 || size > self.total_memory {
            self.counters.invalid_requests += 1;
            return Err(PoolError::InvalidSize {
                requested: size,
                total: self.total_memory,
            });
        }
        self.order.note_stream(self.backend.as_dyn(), stream)?;
        self.reclaim_completed()?;
        let result = match self.try_alloc(size, stream) {
            Err((e, _)) if e.is_out_of_memory() => {
                self.counters.retries += 1;
                self.release_cached()?;
                self.try_alloc(size, stream)
            }
            other => other,
        };
        match result {
            Ok(block) => {
                self.live.insert(
                    block.addr,
                    Live {
                        requested: size,
                        size: block.size,
                        stream,
                    },
                );
                self.counters.on_alloc(size, block.size);
                self.trace.push(TraceEntry {
                    action: TraceAction::Alloc,
                    addr: block.addr,
                    size,
                    stream,
                });
                Ok(block)
            }
            Err((e, limit_reached)) if e.is_out_of_memory() => {
                self.counters.ooms += 1;
                Err(self.oom_report(size, limit_reached))
            }
            Err((e, _)) => Err(e.into()),
        }
    }

    /// One policy allocation under the memory cap; an error says whether the cap refused it.
    fn try_alloc(&mut self, size: u64, stream: StreamId) -> Result<Block, (PolicyError, bool)> {
        if let Some(limit) = self.limit
            && self.counters.allocated.saturating_add(size) > limit
        {
            // Live blocks alone would pass the cap: no placement can serve this.
            let e = coalesce_backend::BackendError::OutOfMemory {
                call: coalesce_backend::DriverCall::MemAlloc,
                requested: size,
                free: limit.saturating_sub(self.counters.allocated),
            };
            return Err((
                PolicyError::OutOfMemory {
                    requested: size,
                    source: e,
                },
                true,
            ));
        }
        let mut dev = Limit::new(ByRef(self.backend.as_dyn()), self.limit);
        self.policy
            .alloc(&mut dev, size, stream)
            .map_err(|e| (e, dev.refused()))
    }

    fn oom_report(&mut self, requested: u64, limit_reached: bool) -> PoolError {
        let dev = self.backend.as_dyn();
        PoolError::OutOfMemory(Box::new(OomReport {
            device: dev.device(),
            requested,
            reserved: dev.meter().reserved_bytes,
            allocated: self.counters.allocated,
            requested_live: self.counters.requested,
            // A policy's largest free block may count address space nothing backs yet; a
            // report means memory the pool holds, so it is at most what is free in the pool.
            largest_free_block: self.policy.usage().largest_free_block.min(
                dev.meter()
                    .reserved_bytes
                    .saturating_sub(self.counters.allocated),
            ),
            free_on_device: dev.free_memory().ok(),
            memory_limit: self.limit,
            limit_reached,
        }))
    }

    /// Frees the block at `addr`. See [`crate::DevicePool::free`].
    pub fn free(&mut self, addr: DevAddr, stream: StreamId) -> Result<(), PoolError> {
        let Some(block) = self.live.remove(&addr) else {
            self.counters.invalid_frees += 1;
            return Err(PoolError::UnknownAddress(addr));
        };
        if let Err(e) = self.hand_back(addr, block, stream) {
            // The block stays the caller's: nothing was freed.
            self.live.insert(addr, block);
            return Err(e);
        }
        self.counters.on_free(block.requested, block.size);
        if self.over_limit() {
            self.release_cached()?;
        }
        Ok(())
    }

    /// Gives a freed block to the policy now, or holds it until its stream passes the free.
    fn hand_back(&mut self, addr: DevAddr, block: Live, stream: StreamId) -> Result<(), PoolError> {
        self.order.note_stream(self.backend.as_dyn(), stream)?;
        if self.order.deferring() {
            self.order
                .defer(self.backend.as_dyn(), addr, block.requested, stream)?;
            self.trace.push(TraceEntry {
                action: TraceAction::FreeRequested,
                addr,
                size: block.requested,
                stream,
            });
            Ok(())
        } else {
            self.give_back(addr, block.requested, stream)
        }
    }

    fn over_limit(&self) -> bool {
        self.limit
            .is_some_and(|l| self.backend.meter().reserved_bytes > l)
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
        if self.order.pending() == 0 {
            return Ok(());
        }
        for p in self.order.completed(self.backend.as_dyn())? {
            self.give_back(p.addr, p.requested, p.stream)?;
        }
        Ok(())
    }

    /// Completes every held free (synchronizing the device) and empties the policy's cache:
    /// PyTorch's `empty_cache`.
    pub fn release_cached(&mut self) -> Result<(), PoolError> {
        for p in self.order.drain(self.backend.as_dyn())? {
            self.give_back(p.addr, p.requested, p.stream)?;
        }
        self.policy.empty_cache(self.backend.as_dyn())?;
        Ok(())
    }

    /// Completes held frees and returns everything not holding a live block to the driver,
    /// address reservations included (what dropping the pool does).
    pub fn teardown(&mut self) -> Result<(), PoolError> {
        for p in self.order.drain(self.backend.as_dyn())? {
            self.give_back(p.addr, p.requested, p.stream)?;
        }
        self.policy.teardown(self.backend.as_dyn())?;
        Ok(())
    }

    /// Caps the memory the pool reserves (`None`: no cap). Cached memory above a new cap is
    /// released at once; see the invariants in the [module docs](self).
    pub fn set_memory_limit(&mut self, limit: Option<MemoryLimit>) -> Result<(), PoolError> {
        let total = self.backend.as_dyn().total_memory();
        self.limit = limit.map(|l| l.resolve(total)).transpose()?;
        if self.over_limit() {
            self.release_cached()?;
        }
        Ok(())
    }

    pub fn memory_limit(&self) -> Option<u64> {
        self.limit
    }

    /// Starts new peak windows for requested, allocated and reserved bytes.
    pub fn reset_peak_stats(&mut self) {
        self.counters.reset_peaks();
        self.backend.as_dyn().reset_peak();
    }

    pub fn stats(&self) -> PoolStats {
        let usage = self.policy.usage();
        let meter = *self.backend.meter();
        let c = self.counters;
        PoolStats {
            device: self.backend.device(),
            backend: self.backend.name().to_owned(),
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
            num_invalid_frees: c.invalid_frees,
            num_invalid_requests: c.invalid_requests,
            total_allocated_bytes: c.total_allocated,
            total_freed_bytes: c.total_freed,
            total_requested_bytes: c.total_requested,
            total_requested_freed_bytes: c.total_requested_freed,
            driver_calls: meter.calls,
            driver_bytes: meter.bytes,
            memory_limit: self.limit,
            total_memory: self.backend.total_memory(),
        }
    }

    /// Live blocks and held frees: `(addr, requested, stream)`.
    fn unreleased(&self) -> impl Iterator<Item = (DevAddr, u64, StreamId)> + '_ {
        self.live
            .iter()
            .map(|(&a, l)| (a, l.requested, l.stream))
            .chain(self.order.held())
    }

    /// Segments, blocks and the traced events (after handing back the held frees whose
    /// streams have passed them, without waiting for the others).
    pub fn snapshot(&mut self) -> Result<Snapshot, PoolError> {
        self.reclaim_completed()?;
        let (live_before_trace, trace) = self.trace.contents(self.unreleased());
        Ok(Snapshot {
            device: self.backend.device(),
            segments: self.policy.segments(),
            live_before_trace,
            trace,
        })
    }

    /// Checks the core's invariants and the policy's (tests call it after every step).
    pub fn check_invariants(&self) -> Result<(), String> {
        let (req, alloc) = self
            .live
            .values()
            .fold((0, 0), |(r, a), l| (r + l.requested, a + l.size));
        if (req, alloc) != (self.counters.requested, self.counters.allocated) {
            return Err(format!(
                "counters say {} requested / {} allocated, live blocks sum to {req} / {alloc}",
                self.counters.requested, self.counters.allocated
            ));
        }
        if req > alloc {
            return Err(format!(
                "{req} bytes requested in blocks of only {alloc} bytes"
            ));
        }
        self.policy.check_invariants()
    }
}

impl<B: ?Sized + Backend + AsDynBackend> Drop for PoolCore<B> {
    /// Gives the driver back everything not holding a live block, address reservations
    /// included. Blocks still live are leaked with their segments (their owners outlived the
    /// pool).
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
