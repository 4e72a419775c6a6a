//! # coalesce-pool: the device memory pool
//!
//! Layers, bottom up (each a file):
//! - [`PoolCore`] (`core.rs`): the pool without a lock. Around any policy (from
//!   `coalesce-policy`) and backend (from `coalesce-backend`) it adds stream-ordered reuse,
//!   stats, a memory cap, out-of-memory recovery and a trace ring;
//! - [`DevicePool`] (`device_pool.rs`): the core behind one mutex, what Rust users hold and what
//!   the C ABI (PyTorch's pluggable allocator) calls into;
//! - [`replay`]: the one loop that replays a trace through a pool: `coalesce replay`, the peer
//!   validation and the C ABI's tests all use it, so a replay measures what users run;
//! - [`trace`]: snapshots, written in the CSV trace format `coalesce replay` reads.
#![forbid(unsafe_code)]

mod core;
mod device_pool;
mod error;
pub mod replay;
mod stats;
mod stream_order;
#[cfg(test)]
mod tests;
pub mod trace;

pub use crate::core::PoolCore;
pub use device_pool::DevicePool;
pub use error::{OomReport, PoolError};
pub use stats::PoolStats;
pub use trace::{Snapshot, TraceAction, TraceEntry};

use coalesce_backend::Backend;
use coalesce_policy::{self as policy, PolicySpec};

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
    pub(crate) fn resolve(self, total: u64) -> Result<u64, PoolError> {
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
