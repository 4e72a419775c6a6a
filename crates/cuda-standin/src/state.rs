//! The driver's global state behind one mutex, and the checks shared by several calls.
//!
//! Invariants (held whenever the lock is released):
//! - `reservations`, `allocations` and `mappings` are keyed by start address; reservations do
//!   not overlap each other or allocations; every mapping lies inside one reservation and no
//!   two mappings overlap.
//! - A handle's `maps` is the number of mappings naming it; a handle is in `handles` while it is
//!   unreleased or mapped, and its bytes count against its device's `used` exactly as long.
//! - An allocation's `len` bytes count against its device's `used` until `cuMemFree`.

use crate::config::Config;
use crate::faults::Faults;
use crate::streams::Streams;
use cudarc::driver::sys::CUresult;
use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

/// Per-device accounting.
#[derive(Debug, Default)]
pub(crate) struct Device {
    /// Bytes of handles and allocations charged to this device.
    pub used: usize,
    /// `cuDevicePrimaryCtxRetain` calls not yet released.
    pub primary_refs: u64,
}

/// Physical memory made by `cuMemCreate`: `size` bytes of the arena from `offset`.
#[derive(Debug)]
pub(crate) struct Handle {
    pub offset: u64,
    pub size: usize,
    pub device: i32,
    pub released: bool,
    /// Mappings that name this handle.
    pub maps: usize,
}

/// `size` bytes of a handle mapped at a key address of `State::mappings`.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub size: usize,
    pub handle: u64,
    /// Access flags per granule (0: none, 1: read, 3: read/write), from `cuMemSetAccess`.
    pub access: Vec<u8>,
}

/// Memory from `cuMemAlloc`: `len` (page-rounded) bytes mapped read/write.
#[derive(Debug)]
pub(crate) struct Allocation {
    pub size: usize,
    pub len: usize,
    pub device: i32,
}

/// Everything the stand-in knows.
#[derive(Debug)]
pub(crate) struct State {
    pub config: Config,
    /// Why the environment's settings were refused, if they were; `cuInit` reports it.
    pub config_error: Option<String>,
    pub initialized: bool,
    pub devices: Vec<Device>,
    pub handles: BTreeMap<u64, Handle>,
    pub next_handle: u64,
    /// Reservation start -> size.
    pub reservations: BTreeMap<usize, usize>,
    pub mappings: BTreeMap<usize, Mapping>,
    pub allocations: BTreeMap<usize, Allocation>,
    pub arena: crate::physical::Arena,
    pub streams: Streams,
    pub faults: Faults,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| Mutex::new(State::from_env()));

/// Runs `f` on the state under the lock, after completing stream work that is due.
pub(crate) fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // A panic while the lock was held was caught at the C boundary; the state it left is
    // still consistent because every call validates before it changes anything.
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    s.progress();
    f(&mut s)
}

/// The state, if the lock can be taken without waiting long (for the exit handler).
pub(crate) fn try_with<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    for _ in 0..100 {
        match STATE.try_lock() {
            Ok(mut s) => return Some(f(&mut s)),
            Err(std::sync::TryLockError::Poisoned(e)) => return Some(f(&mut e.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
        }
    }
    None
}

impl State {
    fn from_env() -> State {
        let (config, config_error) = match Config::from_env() {
            Ok(c) => (c, None),
            Err(e) => (Config::default(), Some(e)),
        };
        State {
            devices: (0..config.devices).map(|_| Device::default()).collect(),
            faults: Faults::new(&config),
            streams: Streams::new(config.lag, config.lag_queries),
            config,
            config_error,
            initialized: false,
            handles: BTreeMap::new(),
            next_handle: 1,
            reservations: BTreeMap::new(),
            mappings: BTreeMap::new(),
            allocations: BTreeMap::new(),
            arena: Default::default(),
        }
    }

    /// `CUDA_ERROR_NOT_INITIALIZED` before `cuInit`.
    pub fn ready(&self) -> Result<(), CUresult> {
        if self.initialized {
            Ok(())
        } else {
            Err(CUresult::CUDA_ERROR_NOT_INITIALIZED)
        }
    }

    /// The device behind an ordinal, or `CUDA_ERROR_INVALID_DEVICE`.
    pub fn device(&self, ordinal: i32) -> Result<&Device, CUresult> {
        usize::try_from(ordinal)
            .ok()
            .and_then(|i| self.devices.get(i))
            .ok_or(CUresult::CUDA_ERROR_INVALID_DEVICE)
    }

    /// Charges `bytes` to `device`, or `CUDA_ERROR_OUT_OF_MEMORY` (charging nothing).
    pub fn charge(&mut self, device: i32, bytes: usize) -> Result<(), CUresult> {
        let capacity = self.config.capacity;
        let d = &mut self.devices[device as usize];
        match d.used.checked_add(bytes) {
            Some(total) if total <= capacity => {
                d.used = total;
                Ok(())
            }
            _ => Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY),
        }
    }

    pub fn uncharge(&mut self, device: i32, bytes: usize) {
        self.devices[device as usize].used -= bytes;
    }

    /// Fails with `CUDA_ERROR_INVALID_VALUE` unless `[ptr, ptr + len)` is device memory the
    /// caller may read (and write, if `write`): inside one allocation, or mapped with access.
    pub fn check_device_range(&self, ptr: usize, len: usize, write: bool) -> Result<(), CUresult> {
        let invalid = Err(CUresult::CUDA_ERROR_INVALID_VALUE);
        if len == 0 {
            return Ok(());
        }
        let Some(end) = ptr.checked_add(len) else {
            return invalid;
        };
        if let Some((&start, a)) = self.allocations.range(..=ptr).next_back()
            && end <= start + a.size
        {
            return Ok(());
        }
        let g = self.config.granularity;
        let need = if write { 3 } else { 1 };
        let mut cursor = ptr;
        while cursor < end {
            let Some((&start, m)) = self.mappings.range(..=cursor).next_back() else {
                return invalid;
            };
            if cursor >= start + m.size {
                return invalid;
            }
            let stop = end.min(start + m.size);
            let granules = (cursor - start) / g..(stop - start).div_ceil(g);
            if m.access[granules].iter().any(|a| a & need != need) {
                return invalid;
            }
            cursor = stop;
        }
        Ok(())
    }
}
