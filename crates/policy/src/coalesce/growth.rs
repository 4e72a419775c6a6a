//! How large new physical handles are.
//!
//! The trade-off, measured on the bundled traces: waste at peak is a few partly used handles,
//! so handles must stay small next to the pool; but every handle is a `cuMemCreate` and a
//! `cuMemMap`, so they should be as large as that allows. Three quantities, all in granules:
//! - `live`: bytes in live blocks. Handles are at most `live / cap_div` (the pool's scale),
//!   and at least `live / ahead_div` (mapping ahead of need so growth takes few calls);
//! - `burst`: bytes allocated since the last free. A burst (loading weights, a forward pass
//!   building up) is live and packed, so its handles may reach `burst / burst_div`;
//! - the request: a handle covers at least what the block needs (if the cap allows), and
//!   never more than the unmapped span where it is mapped;
//! - waste: while held memory exceeds live memory by more than `waste_permille`, earlier large
//!   handles have lost their bet (parts pinned by live blocks, the rest unable to move), and new
//!   handles are kept lean (at most `lean_granules`), so that memory turns fungible again.

/// Sizing parameters, in divisors of granule counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Growth {
    pub ahead_div: u32,
    pub cap_div: u32,
    pub burst_div: u32,
    /// Upper bound for any handle, in granules (1 for small-object spaces).
    pub max_granules: u32,
    /// Waste budget in permille of live granules: while held memory exceeds live memory by
    /// more, large handles have lost their bet (parts of them are pinned by live blocks and
    /// the rest cannot move), and new handles are kept lean so memory turns fungible.
    pub waste_permille: u32,
    /// Largest handle created while over the waste budget, in granules. One granule wastes
    /// least; two halve the driver calls of large blocks at little cost in memory (measured
    /// in docs/design.md).
    pub lean_granules: u32,
}

impl Growth {
    /// Granules of the next handle for a run that needs `need` more granules, with `span`
    /// unmapped granules available from its start (`need <= span`).
    pub fn handle_granules(&self, live: u32, held: u64, burst: u32, need: u32, span: u32) -> u32 {
        debug_assert!(need >= 1 && need <= span);
        let budget = live as u64 * self.waste_permille as u64 / 1000 + 2;
        if held > live as u64 + budget {
            return need
                .min(span)
                .min(self.lean_granules.max(1))
                .min(self.max_granules.max(1));
        }
        let burst = burst / self.burst_div.max(1);
        let cap = (live / self.cap_div.max(1))
            .max(burst)
            .clamp(1, self.max_granules.max(1));

        let ahead = (live / self.ahead_div.max(1)).max(burst);
        ahead.max(need).min(cap).min(span).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Growth = Growth {
        ahead_div: 128,
        cap_div: 16,
        burst_div: 4,
        max_granules: 32,
        waste_permille: 10,
        lean_granules: 1,
    };

    #[test]
    fn small_pools_get_single_granules() {
        assert_eq!(G.handle_granules(0, 0, 0, 1, 100), 1);
        assert_eq!(G.handle_granules(20, 0, 0, 5, 100), 1, "cap is live/16 = 1");
    }

    #[test]
    fn handles_scale_with_the_pool_up_to_the_maximum() {
        assert_eq!(G.handle_granules(320, 0, 0, 64, 100), 20, "cap 320/16");
        assert_eq!(
            G.handle_granules(100_000, 0, 0, 64, 100),
            32,
            "never above the maximum"
        );
        assert_eq!(
            G.handle_granules(100_000, 0, 0, 1, 100),
            32,
            "maps ahead of need on a large pool"
        );
    }

    #[test]
    fn bursts_lift_the_cap() {
        assert_eq!(
            G.handle_granules(40, 0, 40, 1, 100),
            10,
            "burst/4 both caps and maps ahead"
        );
    }

    #[test]
    fn never_beyond_the_unmapped_span() {
        assert_eq!(G.handle_granules(100_000, 0, 0, 3, 5), 5);
        assert_eq!(G.handle_granules(100_000, 0, 0, 3, 3), 3);
    }

    #[test]
    fn over_the_waste_budget_handles_stay_minimal() {
        assert_eq!(
            G.handle_granules(10_000, 10_000 + 100, 0, 5, 100),
            32,
            "1% of 10000 is 100: within budget"
        );
        assert_eq!(
            G.handle_granules(10_000, 10_000 + 103, 0, 5, 100),
            1,
            "over budget: one granule"
        );
    }

    #[test]
    fn over_the_budget_lean_handles_cover_at_most_the_need() {
        let lean = Growth {
            lean_granules: 2,
            ..G
        };
        assert_eq!(lean.handle_granules(10_000, 10_200, 0, 5, 100), 2);
        assert_eq!(
            lean.handle_granules(10_000, 10_200, 0, 1, 100),
            1,
            "never ahead"
        );
    }

    #[test]
    fn small_object_spaces_stay_at_one_granule() {
        let small = Growth {
            max_granules: 1,
            ..G
        };
        assert_eq!(small.handle_granules(100_000, 0, 100_000, 1, 100), 1);
    }
}
