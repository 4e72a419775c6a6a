//! Squeezing a plan's address range: each run of granules that blocks touch keeps its layout,
//! and the granules no block ever touches between runs go.

/// Moves every block so that runs of touched granules are back to back from 0; returns the new
/// extent in bytes. Blocks that share a granule at any time are in the same run and keep their
/// relative places; blocks of different runs never shared a granule and stay apart, so the
/// plan stays valid and maps the same number of granules at every op.
pub(super) fn compact(offsets: &mut [u64], sizes: &[u64], g: u64) -> u64 {
    let mut spans: Vec<(u64, u64)> = offsets
        .iter()
        .zip(sizes)
        .map(|(&o, &s)| (o / g, (o + s).div_ceil(g)))
        .collect();
    spans.sort_unstable();
    // (old first granule, old end, new first granule)
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for (s, e) in spans {
        match runs.last_mut() {
            Some(r) if s < r.1 => r.1 = r.1.max(e),
            _ => runs.push((s, e, 0)),
        }
    }
    let mut next = 0;
    for r in &mut runs {
        r.2 = next;
        next += r.1 - r.0;
    }
    for o in offsets.iter_mut() {
        let r = runs[runs.partition_point(|r| r.0 <= *o / g) - 1];
        *o = *o - r.0 * g + r.2 * g;
    }
    next * g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_between_runs_go_and_runs_keep_their_layout() {
        let g = 100;
        // Two blocks sharing granule 1, one alone far away, one in granule 1000.
        let mut offsets = vec![50, 150, 100_000, 100_050];
        let sizes = vec![100, 20, 30, 30];
        assert_eq!(compact(&mut offsets, &sizes, g), 300);
        assert_eq!(offsets, vec![50, 150, 200, 250]);
    }
}
