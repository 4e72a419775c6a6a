//! [`Buddy::check_invariants`]: the invariants of the module docs, as code. O(range / 2^min_order);
//! meant for tests, which call it after every operation.

use super::{Buddy, BuddyStorage, InvariantViolation};

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(InvariantViolation(format!($($fmt)+)));
        }
    };
}

impl<S: BuddyStorage> Buddy<S> {
    /// Checks every invariant; see the module docs for the list.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_tiling()?;
        self.check_no_free_buddies()?;
        self.check_summaries()?;
        self.check_counters()
    }

    /// Invariant 1: every smallest block is covered by exactly one free or used block.
    fn check_tiling(&self) -> Result<(), InvariantViolation> {
        let unit = self.min_order;
        let mut owner = vec![0u8; (self.size >> unit) as usize];
        let blocks = self
            .free_blocks()
            .map(|b| (b, "free"))
            .chain(self.used_blocks().map(|b| (b, "used")));
        for ((addr, k), what) in blocks {
            let off = addr - self.base;
            ensure!(
                off.trailing_zeros() >= k,
                "{what} block {addr:#x} misaligned for order {k}"
            );
            ensure!(
                off + (1 << k) <= self.size,
                "{what} block {addr:#x} order {k} past the end"
            );
            for u in (off >> unit)..((off + (1 << k)) >> unit) {
                ensure!(
                    owner[u as usize] == 0,
                    "{what} block {addr:#x} order {k} overlaps another"
                );
                owner[u as usize] = 1;
            }
        }
        if let Some(u) = owner.iter().position(|&o| o == 0) {
            ensure!(
                false,
                "offset {:#x} belongs to no block",
                (u as u64) << unit
            );
        }
        Ok(())
    }

    /// Invariant 2: merging is immediate.
    fn check_no_free_buddies(&self) -> Result<(), InvariantViolation> {
        for (addr, k) in self.free_blocks() {
            if k == self.max_order {
                continue;
            }
            let buddy = (addr - self.base) ^ (1 << k);
            ensure!(
                !(buddy + (1 << k) <= self.size && self.is_free_bit(k, buddy)),
                "free block {addr:#x} order {k} has a free buddy"
            );
        }
        Ok(())
    }

    /// Invariant 3: summary bits and the order mask.
    fn check_summaries(&self) -> Result<(), InvariantViolation> {
        for k in self.min_order..=self.max_order {
            let bits = self.layout.orders[k as usize];
            ensure!(
                bits.free.summaries_consistent(self.words.as_ref()),
                "summary bits of order {k} disagree with its free bits"
            );
            let any = bits.free.first(self.words.as_ref()).is_some();
            ensure!(
                any == (self.nonempty >> k & 1 == 1),
                "order mask bit {k} is {} but the order has free blocks: {any}",
                self.nonempty >> k & 1
            );
        }
        Ok(())
    }

    /// Invariant 4: counters.
    fn check_counters(&self) -> Result<(), InvariantViolation> {
        let mut in_use = 0;
        for k in self.min_order..=self.max_order {
            let free = self.free_blocks().filter(|b| b.1 == k).count() as u64;
            let used = self.used_blocks().filter(|b| b.1 == k).count() as u64;
            ensure!(
                free == self.free_blocks[k as usize],
                "free count of order {k}: {} vs {free}",
                self.free_blocks[k as usize]
            );
            ensure!(
                used == self.used_blocks[k as usize],
                "used count of order {k}: {} vs {used}",
                self.used_blocks[k as usize]
            );
            in_use += used << k;
        }
        ensure!(
            in_use == self.in_use,
            "in-use bytes {} but blocks sum to {in_use}",
            self.in_use
        );
        ensure!(self.peak_in_use >= self.in_use, "peak below current");
        Ok(())
    }
}
