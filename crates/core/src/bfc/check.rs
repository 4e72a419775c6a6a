//! [`Bfc::check_invariants`]: the structural invariants of the module docs, as code.
//!
//! O(chunks + regions · log regions). Tests call it after every operation; it is also cheap
//! enough for debug builds of policies to call after structural changes.

use super::chunk::NIL;
use super::{Bfc, BfcStats};
use std::collections::HashSet;

/// A broken invariant, with enough detail to find the chunk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("BFC invariant violated: {0}")]
pub struct InvariantViolation(pub String);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(InvariantViolation(format!($($fmt)+)));
        }
    };
}

impl Bfc {
    /// Checks every structural invariant; see the module docs for the list.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let walked = self.check_regions()?;
        ensure!(
            walked == self.chunks.live_count(),
            "{} live chunk records but {walked} reachable from regions",
            self.chunks.live_count()
        );
        self.check_bins()?;
        self.check_in_use_map()?;
        self.check_counters()
    }

    /// Invariants 1-3 per region; returns the number of chunks walked.
    fn check_regions(&self) -> Result<usize, InvariantViolation> {
        let align = self.config.alignment;
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut walked = 0;
        for (r, region) in self.regions.iter().enumerate() {
            let Some(region) = region else { continue };
            spans.push((region.base, region.end()));
            let (mut expect_addr, mut prev, mut i) = (region.base, NIL, region.first);
            let mut prev_free = false;
            let mut in_use = 0;
            while i != NIL {
                let c = self.chunks.get(i);
                ensure!(
                    c.region == r as u32,
                    "chunk {i} in region {r} says region {}",
                    c.region
                );
                ensure!(
                    c.addr == expect_addr,
                    "gap or overlap in region {r} at {:#x} (expected {expect_addr:#x})",
                    c.addr
                );
                ensure!(
                    c.prev == prev,
                    "chunk {i} at {:#x}: prev link {} != {prev}",
                    c.addr,
                    c.prev
                );
                ensure!(
                    c.size > 0 && c.size.is_multiple_of(align) && c.addr.is_multiple_of(align),
                    "chunk {i} at {:#x} misaligned",
                    c.addr
                );
                ensure!(
                    c.in_use || !prev_free,
                    "adjacent free chunks at {:#x} in region {r}",
                    c.addr
                );
                ensure!(
                    c.in_use || c.requested == 0,
                    "free chunk at {:#x} has requested bytes",
                    c.addr
                );
                if c.in_use {
                    in_use += c.size;
                }
                prev_free = !c.in_use;
                expect_addr = c.end();
                prev = i;
                i = c.next;
                walked += 1;
                ensure!(walked <= self.chunks.live_count(), "cycle in region {r}");
            }
            ensure!(
                expect_addr == region.end(),
                "region {r} chunks end at {expect_addr:#x}, region at {:#x}",
                region.end()
            );
            ensure!(
                prev == region.last,
                "region {r} last chunk {} but walk ended at {prev}",
                region.last
            );
            ensure!(
                in_use == region.in_use_bytes,
                "region {r}: {in_use} bytes in use, counter says {}",
                region.in_use_bytes
            );
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            ensure!(
                w[0].1 <= w[1].0,
                "regions overlap: {:#x?} and {:#x?}",
                w[0],
                w[1]
            );
        }
        Ok(walked)
    }

    /// Invariant 4, bins side: exactly the free chunks, each in its own bin under its key.
    fn check_bins(&self) -> Result<(), InvariantViolation> {
        let mut seen = HashSet::new();
        let mut per_bin = vec![0usize; super::bins::NUM_BINS];
        for (b, (size, addr), i) in self.bins.entries() {
            let c = self.chunks.get(i);
            ensure!(
                c.region != NIL && !c.in_use,
                "bin {b} holds chunk {i} which is not free"
            );
            ensure!(
                (c.size, c.addr) == (size, addr),
                "bin key ({size}, {addr:#x}) but chunk {i} is ({}, {:#x})",
                c.size,
                c.addr
            );
            ensure!(
                self.bins.bin_for(size) == b,
                "chunk of {size} bytes in bin {b}"
            );
            ensure!(seen.insert(i), "chunk {i} binned twice");
            per_bin[b] += 1;
        }
        let free = self.chunks.live().filter(|(_, c)| !c.in_use).count();
        ensure!(
            seen.len() == free,
            "{free} free chunks but {} binned",
            seen.len()
        );
        for (b, &n) in per_bin.iter().enumerate() {
            ensure!(
                self.bins.bin_is_marked(b) == (n > 0),
                "bitmap bit of bin {b} wrong ({n} chunks)"
            );
            ensure!(self.bins.bin_len(b) == n, "bin {b} length");
        }
        Ok(())
    }

    /// Invariant 4, map side: the address map holds exactly the in-use chunks.
    fn check_in_use_map(&self) -> Result<(), InvariantViolation> {
        for (&addr, &i) in &self.in_use {
            let c = self.chunks.get(i);
            ensure!(
                c.region != NIL && c.in_use && c.addr == addr,
                "address map entry {addr:#x} -> chunk {i} is stale"
            );
        }
        let n = self.chunks.live().filter(|(_, c)| c.in_use).count();
        ensure!(
            n == self.in_use.len(),
            "{n} in-use chunks but {} in the address map",
            self.in_use.len()
        );
        Ok(())
    }

    /// Invariant 5: the running counters.
    fn check_counters(&self) -> Result<(), InvariantViolation> {
        let mut expect = BfcStats {
            regions: self.regions.iter().flatten().count(),
            region_bytes: self.regions.iter().flatten().map(|r| r.size).sum(),
            peak_in_use_bytes: self.stats.peak_in_use_bytes,
            num_allocs: self.stats.num_allocs,
            ..BfcStats::default()
        };
        for (_, c) in self.chunks.live() {
            if c.in_use {
                expect.in_use_bytes += c.size;
                expect.requested_bytes += c.requested;
                expect.in_use_chunks += 1;
            } else {
                expect.free_chunks += 1;
            }
        }
        ensure!(
            expect == self.stats,
            "counters {:?} but chunks say {:?}",
            self.stats,
            expect
        );
        ensure!(
            self.stats.peak_in_use_bytes >= self.stats.in_use_bytes,
            "peak below current"
        );
        Ok(())
    }
}
