//! A memory cap (RMM's `limiting_resource_adaptor`): growth beyond a byte limit is refused
//! before the driver sees it, so a policy meets the cap exactly as it meets a full device.
//!
//! Only calls that reserve memory (`cuMemAlloc`, `cuMemCreate`) are checked; a refused call
//! reaches no driver and is not metered.

use super::{Adaptor, Call};
use crate::{Backend, BackendError, BackendResult};

/// `inner` with reserved bytes capped at `limit` (`None`: no cap).
#[derive(Debug)]
pub struct Limit<B> {
    inner: B,
    limit: Option<u64>,
    refused: bool,
}

impl<B: Backend> Limit<B> {
    pub fn new(inner: B, limit: Option<u64>) -> Self {
        Limit {
            inner,
            limit,
            refused: false,
        }
    }

    /// Whether a call was refused because of the limit (the out-of-memory report says so).
    pub fn refused(&self) -> bool {
        self.refused
    }

    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Backend> Adaptor for Limit<B> {
    fn inner(&self) -> &dyn Backend {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut dyn Backend {
        &mut self.inner
    }
    fn before(&mut self, call: &Call) -> BackendResult<()> {
        let size = call.reserves();
        let Some(limit) = self.limit.filter(|_| size > 0) else {
            return Ok(());
        };
        let reserved = self.inner.meter().reserved_bytes;
        if reserved.saturating_add(size) <= limit {
            return Ok(());
        }
        self.refused = true;
        Err(BackendError::OutOfMemory {
            call: call.kind(),
            requested: size,
            free: limit.saturating_sub(reserved),
        })
    }
}
