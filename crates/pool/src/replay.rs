//! The one replay loop: a resolved trace driven through a pool, op by op.
//!
//! `coalesce replay` and `coalesce bench` drive a [`PoolCore`] on the simulated device with it,
//! the peer validation drives one on a device that hands out the real run's addresses, and the
//! C ABI's tests drive `libcoalesce.so` with it: every figure comes from the pool users run.
//!
//! The loop keeps the address of every allocation by id; an allocation that fails for lack of
//! memory (or is refused as invalid: 0 bytes) is counted, and its free is skipped, as PyTorch
//! skips the free of a tensor it never got. Any other error stops the replay and names the op.
//! [`Hooks`] let a caller act around each op (tick a simulated clock, declare GPU work, record
//! peaks) without a second copy of the loop; empty hooks compile away.

use crate::{AsDynBackend, DevicePool, PoolCore, PoolError};
use coalesce_backend::{Backend, DevAddr, StreamId};
use coalesce_trace::{Op, Trace};

/// What a replay drives: an allocator with PyTorch's `malloc(size, stream)` / `free(ptr,
/// stream)` shape.
pub trait Target {
    fn alloc(&mut self, size: u64, stream: StreamId) -> Result<DevAddr, PoolError>;
    fn free(&mut self, addr: DevAddr, stream: StreamId) -> Result<(), PoolError>;
}

impl<B: ?Sized + Backend + AsDynBackend> Target for PoolCore<B> {
    #[inline]
    fn alloc(&mut self, size: u64, stream: StreamId) -> Result<DevAddr, PoolError> {
        PoolCore::alloc(self, size, stream).map(|b| b.addr)
    }
    #[inline]
    fn free(&mut self, addr: DevAddr, stream: StreamId) -> Result<(), PoolError> {
        PoolCore::free(self, addr, stream)
    }
}

impl<B: ?Sized + Backend + AsDynBackend> Target for &DevicePool<B> {
    fn alloc(&mut self, size: u64, stream: StreamId) -> Result<DevAddr, PoolError> {
        DevicePool::alloc(self, size, stream).map(|b| b.addr)
    }
    fn free(&mut self, addr: DevAddr, stream: StreamId) -> Result<(), PoolError> {
        DevicePool::free(self, addr, stream)
    }
}

/// Callbacks around each op; every method defaults to nothing.
pub trait Hooks<T: ?Sized> {
    /// Before op `i`.
    #[inline]
    fn before(&mut self, _target: &mut T, _i: usize, _op: &Op) {}
    /// After allocation `id` got `addr`.
    #[inline]
    fn allocated(
        &mut self,
        _target: &mut T,
        _id: u32,
        _addr: DevAddr,
        _size: u64,
        _stream: StreamId,
    ) {
    }
    /// Before the block at `addr` (of `size` requested bytes) is freed.
    #[inline]
    fn freeing(&mut self, _target: &mut T, _addr: DevAddr, _size: u64, _stream: StreamId) {}
    /// After op `i`.
    #[inline]
    fn after(&mut self, _target: &mut T, _i: usize) {}
}

/// No hooks.
impl<T: ?Sized> Hooks<T> for () {}

/// What a finished replay counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Allocations that failed for lack of memory, after the pool's recovery.
    pub ooms: u64,
    /// Allocations the pool refused as invalid (0 bytes, or more than the device).
    pub invalid: u64,
}

/// A replay that could not finish: an op failed for another reason than memory.
#[derive(Debug, thiserror::Error)]
#[error("{trace}: op {op}: {source}")]
pub struct ReplayError {
    pub trace: String,
    pub op: usize,
    pub source: Box<PoolError>,
}

/// Address of an allocation that failed (its free is skipped).
const FAILED: DevAddr = DevAddr::MAX;

/// Replays `trace` through `target`, calling `hooks` around each op.
#[inline(never)] // a named symbol for profilers (`callgrind --toggle-collect`)
pub fn run<T: Target + ?Sized, H: Hooks<T>>(
    target: &mut T,
    trace: &Trace,
    hooks: &mut H,
) -> Result<Outcome, ReplayError> {
    let streams: Vec<StreamId> = trace.streams.iter().map(|&s| StreamId(s)).collect();
    let sizes = trace.alloc_sizes();
    let mut addrs = vec![FAILED; sizes.len()];
    let mut outcome = Outcome::default();
    let fail = |op, source| ReplayError {
        trace: trace.name.clone(),
        op,
        source: Box::new(source),
    };
    for (i, op) in trace.ops.iter().enumerate() {
        hooks.before(target, i, op);
        match *op {
            Op::Alloc { id, size, stream } => {
                let stream = streams[stream as usize];
                match target.alloc(size, stream) {
                    Ok(addr) => {
                        addrs[id as usize] = addr;
                        hooks.allocated(target, id, addr, size, stream);
                    }
                    Err(e) if e.is_out_of_memory() => outcome.ooms += 1,
                    Err(PoolError::InvalidSize { .. }) => outcome.invalid += 1,
                    Err(e) => return Err(fail(i, e)),
                }
            }
            Op::Free { id, stream } => {
                let addr = std::mem::replace(&mut addrs[id as usize], FAILED);
                if addr != FAILED {
                    let stream = streams[stream as usize];
                    hooks.freeing(target, addr, sizes[id as usize], stream);
                    target.free(addr, stream).map_err(|e| fail(i, e))?;
                }
            }
        }
        hooks.after(target, i);
    }
    Ok(outcome)
}
