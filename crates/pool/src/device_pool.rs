//! The thread-safe pool: a [`PoolCore`] behind one mutex.
//!
//! One `Mutex` around everything, as PyTorch's and TensorFlow's allocators: every method takes
//! `&self`, so a pool is shared across threads in an `Arc` or a `static` (PyTorch's autograd
//! frees on its own threads). A thread that panics while holding the lock poisons the pool: it
//! then refuses every call ([`PoolError::Poisoned`]) rather than work on state it cannot trust.

use crate::{AsDynBackend, MemoryLimit, PoolConfig, PoolCore, PoolError, PoolStats, Snapshot};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DevAddr, StreamId};
use coalesce_policy::Block;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// A thread-safe memory pool for one device.
///
/// `B` is the backend: a concrete one (`DevicePool<CudaBackend>`, `DevicePool<SimDevice>`) or,
/// by default, `dyn Backend` chosen at run time.
pub struct DevicePool<B: ?Sized + Backend + AsDynBackend = dyn Backend> {
    device: i32,
    core: Mutex<PoolCore<B>>,
}

impl<B: ?Sized + Backend + AsDynBackend> std::fmt::Debug for DevicePool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicePool")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
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
    pub fn from_box(backend: Box<B>, config: PoolConfig) -> Result<Self, PoolError> {
        let core = PoolCore::from_box(backend, config)?;
        Ok(DevicePool {
            device: core.device(),
            core: Mutex::new(core),
        })
    }

    /// Runs `f` on the core under the lock.
    pub fn with_core<R>(&self, f: impl FnOnce(&mut PoolCore<B>) -> R) -> Result<R, PoolError> {
        Ok(f(&mut *self.lock()?))
    }

    fn lock(&self) -> Result<MutexGuard<'_, PoolCore<B>>, PoolError> {
        self.core.lock().map_err(|_| PoolError::Poisoned)
    }

    pub fn device(&self) -> i32 {
        self.device
    }

    /// Allocates at least `size` bytes for use on `stream`, 512-byte aligned (or more, as the
    /// policy aligns). On out-of-memory, held frees are completed and cached memory is
    /// released before one retry; then [`PoolError::OutOfMemory`]. A size of 0 or larger than
    /// the device is [`PoolError::InvalidSize`].
    pub fn alloc(&self, size: u64, stream: StreamId) -> Result<Block, PoolError> {
        self.lock()?.alloc(size, stream)
    }

    /// Frees the block at `addr`. `stream` is where its last use was ordered (PyTorch passes
    /// the stream it was allocated on); the block is reused on other streams only once that
    /// stream has passed this point.
    pub fn free(&self, addr: DevAddr, stream: StreamId) -> Result<(), PoolError> {
        self.lock()?.free(addr, stream)
    }

    /// Whether `addr` is a live block of this pool (the C ABI names the right device when a
    /// block is freed on the wrong one).
    pub fn is_live(&self, addr: DevAddr) -> Result<bool, PoolError> {
        Ok(self.lock()?.is_live(addr))
    }

    /// Returns cached memory to the driver: completes held frees (synchronizing the device if
    /// there are any), then releases what the policy does not use.
    pub fn empty_cache(&self) -> Result<(), PoolError> {
        self.lock()?.release_cached()
    }

    /// Caps the memory the pool reserves (`None`: no cap). Cached memory above the new cap is
    /// released at once; from then on reserved memory never exceeds the larger of the cap and
    /// what live blocks need, and an allocation that would take live bytes past the cap fails.
    pub fn set_memory_limit(&self, limit: Option<MemoryLimit>) -> Result<(), PoolError> {
        self.lock()?.set_memory_limit(limit)
    }

    pub fn stats(&self) -> Result<PoolStats, PoolError> {
        Ok(self.lock()?.stats())
    }

    /// Starts new peak windows for requested, allocated and reserved bytes.
    pub fn reset_peak_stats(&self) -> Result<(), PoolError> {
        self.lock()?.reset_peak_stats();
        Ok(())
    }

    /// Segments, blocks and the traced events.
    pub fn snapshot(&self) -> Result<Snapshot, PoolError> {
        self.lock()?.snapshot()
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
    /// the GPU check copies data with it).
    pub fn with_backend<R>(&self, f: impl FnOnce(&mut B) -> R) -> Result<R, PoolError> {
        Ok(f(self.lock()?.backend_mut()))
    }
}
