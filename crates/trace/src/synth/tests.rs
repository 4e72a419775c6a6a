//! Every generator is deterministic, well formed and non-trivial.

use super::*;
use crate::{Action, resolve};

#[test]
fn generators_are_deterministic_and_seed_dependent() {
    for g in GENERATORS {
        let a = (g.generate)(7);
        assert_eq!(a, (g.generate)(7), "{}: same seed, same trace", g.name);
        assert_ne!(
            a,
            (g.generate)(8),
            "{}: another seed, another trace",
            g.name
        );
    }
}

#[test]
fn generated_traces_resolve_cleanly_and_free_everything() {
    for g in GENERATORS {
        let events = (g.generate)(1);
        let t = resolve(g.name, &events);
        assert!(
            t.warnings.is_empty(),
            "{}: {:?}",
            g.name,
            &t.warnings[..t.warnings.len().min(3)]
        );
        assert!(
            t.stats.allocs >= 1000,
            "{}: only {} allocations",
            g.name,
            t.stats.allocs
        );
        assert_eq!(t.stats.live_at_end, 0, "{}: leaks", g.name);
        assert!(
            t.stats.peak_requested_bytes >= 100 << 20,
            "{}: peak {}",
            g.name,
            t.stats.peak_requested_bytes
        );
        assert!(
            events
                .iter()
                .all(|e| matches!(e.action, Action::Alloc | Action::FreeCompleted))
        );
    }
}

#[test]
fn the_stream_generator_uses_four_streams() {
    let t = resolve("s", &(lookup("synth-streams").unwrap().generate)(3));
    assert_eq!(t.streams.len(), 4);
}

#[test]
fn splitmix_matches_its_reference_output() {
    // First outputs for seed 1234567 from the reference implementation (Vigna's splitmix64.c).
    let mut r = SplitMix64::new(1234567);
    assert_eq!(r.next_u64(), 6457827717110365317);
    assert_eq!(r.next_u64(), 3203168211198807973);
}

#[test]
fn the_irregular_training_loop_repeats_its_steps() {
    for seed in [1, 5] {
        let t = resolve(
            "t",
            &(lookup("synth-training-irregular").unwrap().generate)(seed),
        );
        let sizes = t.alloc_sizes();
        // Regular steps allocate the same sizes in the same order: the sequence of a regular
        // step recurs, so most allocations repeat one made a step earlier.
        let step = sizes.len() / 24;
        let repeats = (step..sizes.len())
            .filter(|&i| sizes[i - step..i].contains(&sizes[i]))
            .count();
        assert!(
            repeats * 10 >= sizes.len() * 9,
            "seed {seed}: {repeats} of {}",
            sizes.len()
        );
        let mut distinct = sizes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() * 20 < sizes.len(),
            "{} sizes",
            distinct.len()
        );
    }
}

#[test]
fn serving_runs_many_requests_at_once_and_frees_them_out_of_order() {
    let events = (lookup("synth-serving").unwrap().generate)(2);
    let t = resolve("s", &events);
    // KV chunks of 16 tokens x 4 KiB: count the live ones at their peak.
    let sizes = t.alloc_sizes();
    let (mut live, mut peak) = (0i64, 0i64);
    for op in &t.ops {
        match *op {
            crate::Op::Alloc { size, .. } if size == 16 * 4096 => live += 1,
            crate::Op::Free { id, .. } if sizes[id as usize] == 16 * 4096 => live -= 1,
            _ => {}
        }
        peak = peak.max(live);
    }
    assert!(
        peak >= 8 * 12,
        "at most {peak} live chunks: few concurrent requests"
    );
    // Caches die out of birth order: some free names an older id than the free before it.
    let freed: Vec<u32> = t
        .ops
        .iter()
        .filter_map(|op| match *op {
            crate::Op::Free { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert!(freed.windows(2).any(|w| w[1] < w[0]));
    assert!(freed.windows(2).any(|w| w[1] > w[0]));
}
