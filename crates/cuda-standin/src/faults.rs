//! Call counting and fault injection.
//!
//! Every exported driver function counts its calls (from process start or the last
//! [`Faults::reset`]) and asks [`Faults::on_call`] first, before it looks at its arguments or
//! at any state: an injected failure therefore changes nothing.

use cudarc::driver::sys::CUresult;
use std::collections::HashMap;

/// Every driver entry point the stand-in exports, by its C name.
pub(crate) const NAMES: &[&str] = &[
    "cuInit",
    "cuGetErrorString",
    "cuGetErrorName",
    "cuDriverGetVersion",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxGetDevice",
    "cuCtxSynchronize",
    "cuMemGetInfo_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetAllocationGranularity",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventDestroy_v2",
    "cuStreamWaitEvent",
    "cuStreamSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoD_v2",
    "cuMemsetD8_v2",
    "cuMemsetD8Async",
];

/// The static name for `name`, if it is an exported driver function.
pub(crate) fn known_name(name: &str) -> Option<&'static str> {
    let name = name.trim();
    NAMES.iter().copied().find(|n| *n == name)
}

/// Call counts and armed faults.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    calls: HashMap<&'static str, u64>,
    /// `(function, call number, code)`; removed when it fires.
    nth: Vec<(&'static str, u64, CUresult)>,
    /// `(function, probability, code)`.
    rate: Vec<(&'static str, f64, CUresult)>,
    rng: u64,
}

impl Faults {
    pub fn new(config: &crate::config::Config) -> Faults {
        Faults {
            calls: HashMap::new(),
            nth: config.fail_nth.clone(),
            rate: config.fail_rate.clone(),
            rng: config.seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Counts a call of `name` and returns the code it must fail with, if a fault fires.
    pub fn on_call(&mut self, name: &'static str) -> Option<CUresult> {
        let count = self.calls.entry(name).or_insert(0);
        *count += 1;
        let count = *count;
        if let Some(i) = self
            .nth
            .iter()
            .position(|(n, k, _)| *n == name && *k == count)
        {
            return Some(self.nth.swap_remove(i).2);
        }
        for i in 0..self.rate.len() {
            let (n, p, code) = self.rate[i];
            if n == name && self.next_unit() < p {
                return Some(code);
            }
        }
        None
    }

    /// Calls of `name` so far.
    pub fn calls(&self, name: &str) -> u64 {
        self.calls.get(name).copied().unwrap_or(0)
    }

    /// Fails the `n`-th call of `name` from now (1: the next one) with `code`.
    pub fn fail_nth(&mut self, name: &'static str, n: u64, code: CUresult) {
        let at = self.calls(name) + n;
        self.nth.push((name, at, code));
    }

    /// Fails each call of `name` with probability `p`.
    pub fn fail_rate(&mut self, name: &'static str, p: f64, code: CUresult, seed: u64) {
        self.rate.retain(|(n, _, _)| *n != name);
        self.rate.push((name, p, code));
        self.rng = seed ^ 0x9E37_79B9_7F4A_7C15;
    }

    /// Forgets all counts and all armed faults, the environment's included.
    pub fn reset(&mut self) {
        self.calls.clear();
        self.nth.clear();
        self.rate.clear();
    }

    /// A uniform number in `[0, 1)` (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_fires_once_at_its_call() {
        let mut f = Faults::default();
        f.fail_nth("cuMemMap", 2, CUresult::CUDA_ERROR_UNKNOWN);
        assert_eq!(f.on_call("cuMemMap"), None);
        assert_eq!(f.on_call("cuMemMap"), Some(CUresult::CUDA_ERROR_UNKNOWN));
        assert_eq!(f.on_call("cuMemMap"), None);
        assert_eq!(f.calls("cuMemMap"), 3);
    }

    #[test]
    fn rate_is_roughly_right() {
        let mut f = Faults::default();
        f.fail_rate("cuMemMap", 0.25, CUresult::CUDA_ERROR_UNKNOWN, 7);
        let hits = (0..10_000)
            .filter(|_| f.on_call("cuMemMap").is_some())
            .count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
    }
}
