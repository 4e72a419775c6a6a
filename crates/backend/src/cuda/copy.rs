//! Data movement and streams for tests and the GPU smoke test: outside the [`Backend`]
//! contract (a pool never touches the bytes it hands out), so they have their own error.
//!
//! [`Backend`]: crate::Backend

use super::device::CudaBackend;
use super::driver::message;
use crate::{DevAddr, StreamId};
use cudarc::driver::result::{self, DriverError};

/// A failed driver call outside the backend contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: {message}")]
pub struct CudaError {
    pub call: &'static str,
    pub message: String,
}

/// A stream made by [`CudaBackend::create_stream`]: the only owner of it.
#[derive(Debug, PartialEq, Eq)]
pub struct CudaStream(StreamId);

impl CudaStream {
    pub fn id(&self) -> StreamId {
        self.0
    }
}

impl CudaError {
    fn new(call: &'static str, e: DriverError) -> Self {
        CudaError {
            call,
            message: message(e),
        }
    }
}

impl CudaBackend {
    fn enter_for(&self, call: &'static str) -> Result<super::context::CurrentGuard, CudaError> {
        self.context().enter().map_err(|e| CudaError {
            call,
            message: e.to_string(),
        })
    }

    /// Fails unless `[addr, addr + len)` is device memory this backend holds, so a copy can
    /// never reach host memory (which unified addressing would otherwise allow).
    fn check_held(&self, call: &'static str, addr: DevAddr, len: usize) -> Result<(), CudaError> {
        if self.holds(addr, len as u64) {
            return Ok(());
        }
        Err(CudaError {
            call,
            message: format!("[{addr:#x}, +{len}) is not memory this backend allocated or mapped"),
        })
    }

    /// Copies `data` to device memory at `addr`, synchronously.
    ///
    /// The range must be memory this backend holds (checked); within it, the caller decides
    /// what it overwrites: a range in another live block is overwritten like any device write.
    pub fn write_bytes(&self, addr: DevAddr, data: &[u8]) -> Result<(), CudaError> {
        self.check_held("cuMemcpyHtoD", addr, data.len())?;
        let _current = self.enter_for("cuMemcpyHtoD")?;
        // SAFETY: `data` is valid for reads of its length; the destination is device memory
        // this backend holds (checked above).
        unsafe { result::memcpy_htod_sync(addr, data) }
            .map_err(|e| CudaError::new("cuMemcpyHtoD", e))
    }

    /// Copies device memory at `addr` into `out`, synchronously.
    pub fn read_bytes(&self, addr: DevAddr, out: &mut [u8]) -> Result<(), CudaError> {
        self.check_held("cuMemcpyDtoH", addr, out.len())?;
        let _current = self.enter_for("cuMemcpyDtoH")?;
        // SAFETY: `out` is valid for writes of its length and any bit pattern is a valid u8;
        // the source is device memory this backend holds (checked above).
        unsafe { result::memcpy_dtoh_sync(out, addr) }
            .map_err(|e| CudaError::new("cuMemcpyDtoH", e))
    }

    /// Enqueues a fill of `len` bytes at `addr` with `byte` on `stream`; same contract as
    /// [`CudaBackend::write_bytes`], ordered on the stream like a kernel.
    pub fn fill_async(
        &self,
        addr: DevAddr,
        len: usize,
        byte: u8,
        stream: StreamId,
    ) -> Result<(), CudaError> {
        self.check_held("cuMemsetD8Async", addr, len)?;
        let cu_stream = self.cu_stream(stream).map_err(|message| CudaError {
            call: "cuMemsetD8Async",
            message,
        })?;
        let _current = self.enter_for("cuMemsetD8Async")?;
        // SAFETY: the range is device memory this backend holds (checked above); the stream is
        // admitted, hence live.
        unsafe { result::memset_d8_async(addr, byte, len, cu_stream) }
            .map_err(|e| CudaError::new("cuMemsetD8Async", e))
    }

    /// Creates a stream that does not synchronize with the legacy default stream; the backend
    /// admits it until [`CudaBackend::destroy_stream`].
    pub fn create_stream(&mut self) -> Result<CudaStream, CudaError> {
        let s = {
            let _current = self.enter_for("cuStreamCreate")?;
            result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| CudaError::new("cuStreamCreate", e))?
        };
        let id = StreamId(s.addr() as u64);
        // SAFETY: the stream was just created in this backend's context and lives until
        // `destroy_stream` consumes its only owner.
        unsafe { self.register_stream(id) };
        Ok(CudaStream(id))
    }

    /// Waits for the stream's work, then destroys it. The stream is destroyed even when the
    /// wait fails (the driver releases a destroyed stream's resources once its work is done):
    /// the `CudaStream` is consumed, so nothing could destroy it later.
    pub fn destroy_stream(&mut self, stream: CudaStream) -> Result<(), CudaError> {
        self.forget_stream(stream.0);
        let _current = self.enter_for("cuStreamDestroy")?;
        let s = std::ptr::without_provenance_mut(stream.0.0 as usize);
        // SAFETY: `CudaStream` is only made by `create_stream` and is consumed here, so the
        // stream is live; it is synchronized at most once and destroyed exactly once.
        let synced = unsafe { result::stream::synchronize(s) };
        // SAFETY: as above.
        let destroyed = unsafe { result::stream::destroy(s) };
        synced.map_err(|e| CudaError::new("cuStreamSynchronize", e))?;
        destroyed.map_err(|e| CudaError::new("cuStreamDestroy", e))
    }
}
