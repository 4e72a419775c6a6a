//! A replay's distance to the oracle of its trace: its peak reservation over the oracle's
//! placement (what an allocator that knows the future reaches) and over the lower bound (what
//! no allocator can beat).
//!
//! The bound depends on how the policy got its memory. Policies on the VMM API are charged by
//! granule, and the oracle's bound on that model holds for them. Memory from `cuMemAlloc` is
//! charged by the byte, so a policy that used it is held only to the bound with 1-byte
//! granules and alignment: the trace's peak of live requested bytes.

use super::ReplayResult;
use coalesce_backend::DriverCall;

/// How far a replay's peak reservation is from the oracle's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gap {
    /// The oracle's placement for the trace, in bytes.
    pub placement_bytes: u64,
    /// The lower bound that holds for this policy: the granule bound on VMM memory, the peak
    /// of live requested bytes where it used `cuMemAlloc`.
    pub bound_bytes: u64,
    /// Peak reserved over the placement.
    pub vs_oracle: f64,
    /// Peak reserved over the bound.
    pub vs_bound: f64,
}

impl ReplayResult {
    /// Whether the policy took memory from `cuMemAlloc` (charged by the byte).
    pub fn used_classic_memory(&self) -> bool {
        self.driver_calls.get(DriverCall::MemAlloc) > 0
    }

    /// The gap to the trace's oracle, if its figures were computed.
    pub fn gap(&self) -> Option<Gap> {
        let f = self.oracle?;
        let bound_bytes = if self.used_classic_memory() {
            f.peak_live_bytes
        } else {
            f.bound_bytes
        };
        let over = |d: u64| self.peak_reserved_bytes as f64 / d.max(1) as f64;
        Some(Gap {
            placement_bytes: f.placement_bytes,
            bound_bytes,
            vs_oracle: over(f.placement_bytes),
            vs_bound: over(bound_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::replay::{ReplayConfig, replay};
    use coalesce_backend::sim::SimConfig;
    use coalesce_policy::PolicySpec;
    use coalesce_policy::oracle::Figures;
    use coalesce_trace::{Action, RawEvent, resolve};

    /// 3 MB then 1 MB, both live at the end.
    fn result(policy: &str) -> crate::replay::ReplayResult {
        let ev = |addr, size| RawEvent {
            action: Action::Alloc,
            addr,
            size,
            stream: 0,
            location: 0,
        };
        let trace = resolve("t", &[ev(1 << 30, 3_000_000), ev(2 << 30, 1_000_000)]);
        let config = ReplayConfig {
            sim: SimConfig::default(),
            repeats: 1,
            series_points: 4,
        };
        let mut r = replay(&trace, &PolicySpec::named(policy), &config, &mut |_| {}).unwrap();
        r.oracle = Some(Figures {
            peak_live_bytes: 4_000_000,
            bound_bytes: 4 << 20,
            placement_bytes: 5 << 20,
        });
        r
    }

    #[test]
    fn classic_memory_is_held_to_the_peak_of_live_bytes() {
        let r = result("cuda-malloc");
        assert!(r.used_classic_memory());
        let g = r.gap().unwrap();
        assert_eq!(g.bound_bytes, 4_000_000);
        assert_eq!(g.vs_bound, r.peak_reserved_bytes as f64 / 4e6);
        assert_eq!(g.vs_oracle, r.peak_reserved_bytes as f64 / (5 << 20) as f64);
    }

    #[test]
    fn vmm_memory_is_held_to_the_granule_bound() {
        let r = result("coalesce");
        assert!(!r.used_classic_memory());
        let g = r.gap().unwrap();
        assert_eq!(g.bound_bytes, 4 << 20);
        assert_eq!(g.vs_bound, r.peak_reserved_bytes as f64 / (4 << 20) as f64);
    }

    #[test]
    fn no_figures_no_gap() {
        let mut r = result("coalesce");
        r.oracle = None;
        assert_eq!(r.gap(), None);
    }
}
