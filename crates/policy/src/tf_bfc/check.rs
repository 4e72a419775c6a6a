//! The allocator's invariants, as code:
//!
//! 1. Regions are sorted and disjoint; the chunks of each tile it through `prev`/`next`.
//! 2. No two neighbouring chunks are both free (coalescing is immediate).
//! 3. Free chunks are exactly the bin entries, each in the bin for its size under
//!    `(size, address)`; in-use chunks are exactly the address map.
//! 4. Sizes and addresses are multiples of 256 B; the byte counters match the chunks.

use super::TfBfc;
use super::chunks::{MIN_ALLOCATION, NO_BIN, NONE, bin_num_for_size};

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl TfBfc {
    pub(super) fn check(&self) -> Result<(), String> {
        let c = &self.chunks;
        let (mut walked, mut free, mut in_use_bytes, mut pool_bytes) = (0, 0, 0, 0);
        let mut last_end = 0;
        for r in &c.regions {
            ensure!(
                r.ptr >= last_end,
                "region {:#x} overlaps its predecessor",
                r.ptr
            );
            last_end = r.ptr + r.size;
            pool_bytes += r.size;
            let (mut at, mut prev, mut h, mut prev_free) = (r.ptr, NONE, r.first, false);
            while h != NONE {
                let ch = c.get(h);
                ensure!(
                    ch.ptr == at,
                    "gap or overlap at {:#x} in region {:#x}",
                    ch.ptr,
                    r.ptr
                );
                ensure!(ch.prev == prev, "chunk {:#x}: broken prev link", ch.ptr);
                ensure!(
                    ch.size > 0 && ch.size.is_multiple_of(MIN_ALLOCATION),
                    "chunk {:#x} has size {}",
                    ch.ptr,
                    ch.size
                );
                ensure!(
                    ch.in_use || !prev_free,
                    "free neighbours at {:#x} were not coalesced",
                    ch.ptr
                );
                if ch.in_use {
                    in_use_bytes += ch.size;
                    ensure!(ch.bin == NO_BIN, "in-use chunk {:#x} is binned", ch.ptr);
                    ensure!(
                        self.in_use.get(&ch.ptr) == Some(&h),
                        "in-use chunk {:#x} missing from the address map",
                        ch.ptr
                    );
                } else {
                    free += 1;
                    let b = bin_num_for_size(ch.size);
                    ensure!(
                        ch.bin as usize == b && c.bins[b].contains(&(ch.size, ch.ptr, h)),
                        "free chunk {:#x} of {} bytes is not in bin {b}",
                        ch.ptr,
                        ch.size
                    );
                }
                prev_free = !ch.in_use;
                at = ch.end();
                (prev, h) = (h, ch.next);
                walked += 1;
            }
            ensure!(
                at == last_end,
                "region {:#x} is not tiled to its end",
                r.ptr
            );
        }
        ensure!(
            walked == c.live(),
            "{} live chunks, {walked} in regions",
            c.live()
        );
        ensure!(
            free == c.bins.iter().map(|b| b.len()).sum::<usize>(),
            "bins hold chunks that are not free"
        );
        ensure!(
            self.in_use.len() == walked - free,
            "the address map holds chunks that are not in use"
        );
        ensure!(
            in_use_bytes == self.bytes_in_use && pool_bytes == self.pool_bytes,
            "counters: in use {} (chunks {in_use_bytes}), pool {} (regions {pool_bytes})",
            self.bytes_in_use,
            self.pool_bytes
        );
        Ok(())
    }
}
