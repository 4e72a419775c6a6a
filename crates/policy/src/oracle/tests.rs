//! The oracle on hand-made traces whose optimum is known, and properties on random ones: plans
//! are valid, the bound never exceeds the placement, the policy replays the plan exactly, and
//! no registered policy reserves less than the bound.

use super::*;
use crate::{Policy, PolicySpec, REGISTRY, build};
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_backend::{Backend, DriverCall, StreamId};
use proptest::prelude::*;

const G: u64 = 2 << 20;

fn alloc(size: u64) -> OracleOp {
    OracleOp::Alloc { size }
}

fn free(block: usize) -> OracleOp {
    OracleOp::Free { block }
}

/// `(bound, placement)` in granules, after checking the plan.
fn granules(ops: &[OracleOp]) -> (u64, u64) {
    let input = OracleInput::from_ops(ops.iter().copied()).unwrap();
    let config = OracleConfig::default();
    let p = plan(&input, &config);
    check_plan(&input, &p).unwrap();
    let f = figures(&input, &config);
    assert_eq!(f.placement_bytes, p.peak_bytes());
    (f.bound_bytes / G, f.placement_bytes / G)
}

#[test]
fn known_optima() {
    assert_eq!(granules(&[]), (0, 0), "empty trace");
    assert_eq!(granules(&[alloc(1)]), (1, 1), "one byte costs a granule");
    assert_eq!(
        granules(&[alloc(G), free(0), alloc(G)]),
        (1, 1),
        "a granule is reused after its block dies"
    );
    assert_eq!(
        granules(&[alloc(3 * G / 2), alloc(3 * G / 2)]),
        (3, 3),
        "two blocks of 1.5 granules share the middle granule"
    );
    assert_eq!(
        granules(&[alloc(3 * G / 2), alloc(G / 2)]),
        (2, 2),
        "a small block fills a large block's tail"
    );
    assert_eq!(
        granules(&[alloc(G - 100), alloc(G - 100), alloc(G - 100)]),
        (3, 3),
        "blocks of almost a granule, rounded to the alignment, fill a granule each"
    );
    // a1 and a2 die early, b1 and b2 late, then granule-sized blocks arrive: only a placement
    // that groups by death time frees a whole granule for them (2 granules, not 3).
    let h = G / 2;
    let grouped = [
        alloc(h), // a1
        alloc(h), // b1
        alloc(h), // a2
        alloc(h), // b2
        free(0),
        free(2),
        alloc(G),
        free(4),
        alloc(G),
        free(5),
        free(1),
        free(3),
    ];
    assert_eq!(granules(&grouped), (2, 2), "blocks grouped by death time");
    // The same with blocks of 1.5 granules: A and C die early, B and D late, then a block of
    // three granules needs A's and C's granules, which only a placement that put A and C
    // side by side (and B and D) frees whole: 6 granules, not 7.
    let large = [
        alloc(3 * h), // A
        alloc(3 * h), // B
        alloc(3 * h), // C
        alloc(3 * h), // D
        free(0),
        free(2),
        alloc(3 * G),
        free(4),
        free(1),
        free(3),
    ];
    assert_eq!(
        granules(&large),
        (6, 6),
        "large blocks grouped by death time"
    );
}

#[test]
fn inputs_reject_bad_frees() {
    assert!(OracleInput::from_ops([alloc(1), free(0), free(0)]).is_err());
    assert!(OracleInput::from_ops([free(0)]).is_err());
    let input = OracleInput::from_ops([alloc(5), alloc(7), free(0)]).unwrap();
    assert_eq!(input.death(0), 2);
    assert_eq!(input.death(1), 3, "never freed: live to the end");
    assert_eq!(input.peak_live_bytes(), 12);
}

#[test]
fn the_checker_catches_overlap_and_a_wrong_count() {
    let input = OracleInput::from_ops([alloc(G), alloc(G)]).unwrap();
    let good = plan(&input, &OracleConfig::default());
    check_plan(&input, &good).unwrap();
    let mut overlap = good.clone();
    overlap.offsets[1] = overlap.offsets[0] + 256;
    assert!(
        check_plan(&input, &overlap)
            .unwrap_err()
            .contains("overlaps")
    );
    let mut count = good;
    count.mapped[1] = 1;
    assert!(check_plan(&input, &count).unwrap_err().contains("granules"));
}

/// Sizes from a few bytes to a few granules, half of them under 64 KiB.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..65_536, 65_536..G, G..5 * G]
}

/// Random traces: allocations and frees of a random live block, some never freed.
fn trace() -> impl Strategy<Value = OracleInput> {
    prop::collection::vec(
        (any::<bool>(), size(), any::<prop::sample::Index>()),
        1..200,
    )
    .prop_map(|steps| {
        let (mut ops, mut live, mut n) = (Vec::new(), Vec::new(), 0);
        for (is_alloc, size, pick) in steps {
            if is_alloc || live.is_empty() {
                ops.push(alloc(size));
                live.push(n);
                n += 1;
            } else {
                ops.push(free(live.swap_remove(pick.index(live.len()))));
            }
        }
        OracleInput::from_ops(ops).unwrap()
    })
}

/// Replays `input` under `policy` on a simulated device; returns its peak reserved bytes and
/// whether it used classic (`cuMemAlloc`) memory.
fn replay(input: &OracleInput, policy: &mut dyn Policy) -> (u64, bool) {
    let mut dev = SimDevice::new(SimConfig::default());
    let mut addrs = vec![0; input.blocks.len()];
    for (t, ev) in input.events().into_iter().enumerate() {
        match ev {
            Some((i, true)) => {
                let size = input.blocks[i].size;
                let b = policy.alloc(&mut dev, size, StreamId(0)).unwrap();
                assert!(dev.is_accessible(b.addr, size.max(1)), "op {t}");
                addrs[i] = b.addr;
            }
            Some((i, false)) => policy.free(&mut dev, addrs[i], StreamId(0)).unwrap(),
            None => {}
        }
    }
    policy.check_invariants().unwrap();
    let m = dev.meter();
    (m.peak_reserved_bytes, m.calls.get(DriverCall::MemAlloc) > 0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn plans_are_valid_and_never_beat_the_bound(input in trace()) {
        let config = OracleConfig::default();
        let p = plan(&input, &config);
        prop_assert_eq!(check_plan(&input, &p), Ok(()));
        let bound = lower_bound(&input, &config).bytes;
        prop_assert!(bound >= input.peak_live_bytes().next_multiple_of(G));
        prop_assert!(bound <= p.peak_bytes(), "bound {} > placement {}", bound, p.peak_bytes());
        let (reserved, classic) = replay(&input, &mut OraclePolicy::new(p.clone()));
        prop_assert!(!classic);
        prop_assert_eq!(reserved, p.peak_bytes(), "the policy reserves what the plan maps");
    }

    #[test]
    fn no_policy_reserves_less_than_the_bound(input in trace()) {
        for info in REGISTRY {
            let mut policy = build(&PolicySpec::named(info.name)).unwrap();
            let (reserved, classic) = replay(&input, policy.as_mut());
            // Classic allocations are charged by the byte: the same proof with 1-byte granules.
            let config = if classic {
                OracleConfig { granule: 1, align: 1 }
            } else {
                OracleConfig::default()
            };
            let bound = lower_bound(&input, &config).bytes;
            prop_assert!(reserved >= bound, "{}: {} < bound {}", info.name, reserved, bound);
        }
    }
}

#[test]
fn the_policy_refuses_requests_off_its_plan() {
    let input = OracleInput::from_ops([alloc(1000)]).unwrap();
    let mut p = OraclePolicy::new(plan(&input, &OracleConfig::default()));
    let mut dev = SimDevice::new(SimConfig::default());
    let e = p.alloc(&mut dev, 5000, StreamId(0)).unwrap_err();
    assert!(e.to_string().contains("planned for 1024 bytes"), "{e}");
    let b = p.alloc(&mut dev, 1000, StreamId(0)).unwrap();
    assert!(
        p.alloc(&mut dev, 1, StreamId(0)).is_err(),
        "past the plan's end"
    );
    p.free(&mut dev, b.addr, StreamId(0)).unwrap();
    p.empty_cache(&mut dev).unwrap();
    assert_eq!(dev.meter().reserved_bytes, 0);
    assert!(
        p.free(&mut dev, b.addr, StreamId(0)).is_err(),
        "double free"
    );
}
