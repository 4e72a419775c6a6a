//! One pool per device, created on first use and kept for the life of the process.
//!
//! Each device has a `OnceLock`, so the hot path is one atomic load; creation races are
//! settled by the lock (one thread builds, the others wait). A pool that cannot be created
//! (no driver, bad environment) stays an error: every later call reports the same reason
//! instead of retrying the driver.

use crate::config;
use coalesce_pool::{DevicePool, PoolError};
use std::sync::OnceLock;

/// Devices addressable through the C ABI.
pub const MAX_DEVICES: usize = 64;

static POOLS: [OnceLock<Result<DevicePool, String>>; MAX_DEVICES] =
    [const { OnceLock::new() }; MAX_DEVICES];

/// The pool of `device`, creating it from the environment on first use.
pub fn pool(device: i32) -> Result<&'static DevicePool, String> {
    let slot = usize::try_from(device)
        .ok()
        .and_then(|d| POOLS.get(d))
        .ok_or_else(|| format!("device {device} is out of range (0..{MAX_DEVICES})"))?;
    slot.get_or_init(|| create(device))
        .as_ref()
        .map_err(Clone::clone)
}

/// The pools created so far, with their devices.
pub fn created() -> impl Iterator<Item = (i32, &'static DevicePool)> {
    POOLS
        .iter()
        .enumerate()
        .filter_map(|(d, slot)| match slot.get() {
            Some(Ok(pool)) => Some((d as i32, pool)),
            _ => None,
        })
}

fn create(device: i32) -> Result<DevicePool, String> {
    let backend = config::backend(device)?;
    let pool_config = config::pool_config()?;
    let spec = pool_config.policy.to_string();
    DevicePool::from_box(backend, pool_config).map_err(|e| match e {
        PoolError::Spec(e) => format!("COALESCE_POLICY={spec:?}: {e}"),
        e => e.to_string(),
    })
}
