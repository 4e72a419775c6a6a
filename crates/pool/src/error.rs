//! Why a pool operation failed. Out-of-memory carries the figures a user needs to act.

use coalesce_backend::{BackendError, DevAddr};
use coalesce_policy::{PolicyError, SpecError};
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The allocation cannot be served even after the pool released its cached memory.
    #[error("{0}")]
    OutOfMemory(Box<OomReport>),
    /// A free of an address the pool did not hand out, or freed already.
    #[error(
        "free of {0:#x}, which is not a live allocation of this pool (double free or foreign pointer)"
    )]
    UnknownAddress(DevAddr),
    /// A request of 0 bytes or of more than the device holds.
    #[error("cannot allocate {requested} bytes: {}", if *requested == 0 {
        "an empty request gets no memory (NULL)".to_string()
    } else {
        format!("more than the device's {total} bytes")
    })]
    InvalidSize { requested: u64, total: u64 },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid memory limit: {0}")]
    BadLimit(String),
    #[error("cannot write snapshot {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A thread panicked while holding the pool's lock (a bug): the pool refuses further use
    /// rather than work on state it cannot trust.
    #[error("the pool is unusable: a thread panicked while holding its lock")]
    Poisoned,
}

impl PoolError {
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, PoolError::OutOfMemory(_))
    }
}

/// The figures of an out-of-memory error (PyTorch's message plus what users ask it for:
/// the largest free block, and the limit when one is set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomReport {
    pub device: i32,
    pub requested: u64,
    pub reserved: u64,
    pub allocated: u64,
    /// Bytes callers asked for, over live blocks.
    pub requested_live: u64,
    /// Largest block the pool could have handed out without the driver.
    pub largest_free_block: u64,
    /// Free memory on the device as the driver reports it (`None` if it could not say).
    pub free_on_device: Option<u64>,
    pub memory_limit: Option<u64>,
    /// Whether the memory limit, not the device, refused the growth.
    pub limit_reached: bool,
}

fn bytes(n: u64) -> String {
    format!("{n} bytes ({:.2} MiB)", n as f64 / (1u64 << 20) as f64)
}

impl OomReport {
    /// Reserved bytes not in live blocks.
    pub fn free_in_pool(&self) -> u64 {
        self.reserved.saturating_sub(self.allocated)
    }

    /// Free bytes in the pool that could not serve this request: all of them when no free
    /// block is large enough, else none.
    pub fn unusable(&self) -> u64 {
        if self.largest_free_block < self.requested {
            self.free_in_pool()
        } else {
            0
        }
    }

    /// The share of reserved memory that is free but unusable for this request.
    pub fn unusable_share(&self) -> f64 {
        if self.reserved == 0 {
            0.0
        } else {
            self.unusable() as f64 / self.reserved as f64
        }
    }

    /// Whether fragmentation caused the failure: enough is free in total, but in pieces.
    pub fn fragmented(&self) -> bool {
        self.unusable() > 0 && self.free_in_pool() >= self.requested
    }
}

fn mib(n: u64) -> String {
    format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
}

impl fmt::Display for OomReport {
    /// PyTorch's message, plus the fragmentation report users ask it for (pytorch#29554):
    /// requested, reserved, live, the largest free block, and the share of reserved memory
    /// that is free but unusable for this request, with its cause.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = if self.fragmented() {
            "fragmentation: enough is free in total, but no free block is large enough"
        } else {
            "not fragmentation: the free memory is less than the request"
        };
        write!(
            f,
            "out of memory on device {}: cannot allocate {}; requested {}, reserved {}, live {}, \
             largest free block {}; {:.1}% of reserved memory ({}) is free but unusable for \
             this request ({cause})",
            self.device,
            bytes(self.requested),
            mib(self.requested),
            mib(self.reserved),
            mib(self.allocated),
            mib(self.largest_free_block),
            100.0 * self.unusable_share(),
            mib(self.unusable()),
        )?;
        match self.free_on_device {
            Some(free) => write!(f, "; {} free on the device", bytes(free))?,
            None => write!(f, "; free memory on the device unknown")?,
        }
        match (self.memory_limit, self.limit_reached) {
            (Some(limit), true) => write!(f, "; the memory limit of {} is reached", bytes(limit)),
            (Some(limit), false) => write!(f, "; memory limit {}", bytes(limit)),
            (None, _) => Ok(()),
        }
    }
}
