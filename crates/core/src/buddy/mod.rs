//! A binary buddy allocator over an abstract address range.
//!
//! # High-level model
//!
//! A [`Buddy`] manages `[base, base + size)`. Blocks have an *order* `k` in
//! `min_order..=max_order` and span `2^k` bytes at an offset (from `base`) that is a multiple of
//! `2^k`; the *buddy* of a block is the other half of the order `k + 1` block that contains it
//! (offset `o ^ 2^k`). Allocation takes the lowest free block of the smallest order that fits
//! and splits it down, freeing the upper halves; freeing a block merges it with its buddy for as
//! long as the buddy is free.
//!
//! ```text
//!   order 3 |               0               |               8               |
//!   order 2 |       0       |       4       |       8       |      12       |
//!   order 1 |   0   |   2   |   4   |   6   |   8   |  10   |  12   |  14   |
//!            used(1) free(1)  free(2)         --------- free(3) ------------
//! ```
//!
//! All state is bitmaps in one word array (no free lists, no per-block records):
//! - per order, a hierarchical *free* bitset (see [`bitset`]): bit `i` means "block `i` of this
//!   order is free and not part of a larger free block"; the lowest free block is a few word
//!   reads away, and "is my buddy free?" is one bit test;
//! - per order, a flat *used* bitset: bit `i` means "block `i` of this order is allocated", so
//!   [`Buddy::free`] finds a block's order with at most `max_order - min_order + 1` bit tests and
//!   reports double frees and foreign addresses instead of corrupting state;
//! - a mask of the orders that have a free block, so the smallest fitting order is one
//!   `trailing_zeros`.
//!
//! The word array is a type parameter ([`BuddyStorage`]): tests and ordinary owners use a
//! `Vec<u64>`; an owner that must not allocate (a `malloc`) hands in words it mapped itself.
//!
//! Invariants (checked by [`Buddy::check_invariants`]):
//! 1. Free and used blocks tile the range without gaps or overlap (a tail shorter than
//!    `2^min_order` is never handed out).
//! 2. A block and its buddy are never both free (merging is immediate).
//! 3. Summary bits of the free bitsets and the order mask agree with the free bits.
//! 4. The counters (bytes in use, blocks per order) agree with the bits.

mod bitset;
#[cfg(test)]
mod tests;

use bitset::{FlatLayout, HierLayout};

/// Word storage of a [`Buddy`]: anything that derefs to a mutable word slice.
pub trait BuddyStorage: AsRef<[u64]> + AsMut<[u64]> {}
impl<T: AsRef<[u64]> + AsMut<[u64]>> BuddyStorage for T {}

/// Highest order a [`Buddy`] supports (blocks of 2^62 bytes).
pub const MAX_ORDER: u32 = 62;
/// Most blocks of the smallest order a range may hold (so bitsets stay addressable).
const MAX_MIN_BLOCKS: u64 = 1 << 40;

/// Errors of [`Buddy`] construction and [`Buddy::free`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuddyError {
    #[error("address {0:#x} is not the start of an allocated block (double free or foreign)")]
    NotAllocated(u64),
    #[error("bad buddy configuration: {0}")]
    BadConfig(&'static str),
    #[error("storage has {have} words, this configuration needs {need}")]
    StorageTooSmall { have: usize, need: usize },
}

/// A broken invariant, with enough detail to find the block.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("buddy invariant violated: {0}")]
pub struct InvariantViolation(pub String);

/// Counters of a [`Buddy`]; all O(1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuddyStats {
    /// Bytes of the range that blocks can be made of (`size` rounded down to `2^min_order`).
    pub capacity: u64,
    /// Bytes in allocated blocks.
    pub in_use_bytes: u64,
    pub peak_in_use_bytes: u64,
    /// Bytes in free blocks (`capacity - in_use_bytes`).
    pub free_bytes: u64,
    /// Size of the largest free block (0 when none).
    pub largest_free: u64,
    pub used_blocks: u64,
    pub free_blocks: u64,
    /// Allocations served since creation.
    pub num_allocs: u64,
}

/// The bitsets of one order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct OrderBits {
    free: HierLayout,
    used: FlatLayout,
}

/// Where everything lives in the word array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    orders: [OrderBits; (MAX_ORDER + 1) as usize],
    words: usize,
}

impl Layout {
    fn new(size: u64, min_order: u32, max_order: u32) -> Layout {
        let mut orders = [OrderBits::default(); (MAX_ORDER + 1) as usize];
        let mut at = 0;
        for k in min_order..=max_order {
            let n = size >> k;
            let (free, end) = HierLayout::new(n, at);
            let (used, end) = FlatLayout::new(n, end);
            orders[k as usize] = OrderBits { free, used };
            at = end;
        }
        Layout { orders, words: at }
    }
}

/// Binary buddy allocator over `[base, base + size)`. See the module docs.
#[derive(Clone, Debug)]
pub struct Buddy<S: BuddyStorage = Vec<u64>> {
    base: u64,
    /// Usable bytes: the size rounded down to `2^min_order`.
    size: u64,
    min_order: u32,
    max_order: u32,
    layout: Layout,
    words: S,
    /// Bit `k` set: order `k` has at least one free block.
    nonempty: u64,
    free_blocks: [u64; (MAX_ORDER + 1) as usize],
    used_blocks: [u64; (MAX_ORDER + 1) as usize],
    in_use: u64,
    peak_in_use: u64,
    num_allocs: u64,
}

impl Buddy<Vec<u64>> {
    /// A buddy over `[base, base + size)` with blocks of `2^min_order..=2^max_order` bytes, its
    /// bitmaps in a `Vec`. Blocks are aligned to their size relative to `base`, so an owner who
    /// wants absolute alignment passes a `base` aligned to `2^max_order`.
    pub fn new(base: u64, size: u64, min_order: u32, max_order: u32) -> Result<Self, BuddyError> {
        let need = Self::storage_words(size, min_order, max_order)?;
        Buddy::with_storage(base, size, min_order, max_order, vec![0; need])
    }
}

impl<S: BuddyStorage> Buddy<S> {
    /// Words of storage that [`Buddy::with_storage`] needs for this configuration.
    pub fn storage_words(size: u64, min_order: u32, max_order: u32) -> Result<usize, BuddyError> {
        Self::validate(size, min_order, max_order)?;
        Ok(Layout::new(size, min_order, max_order).words)
    }

    fn validate(size: u64, min_order: u32, max_order: u32) -> Result<(), BuddyError> {
        if min_order > max_order {
            return Err(BuddyError::BadConfig("min_order > max_order"));
        }
        if max_order > MAX_ORDER {
            return Err(BuddyError::BadConfig("max_order above 62"));
        }
        if size >> min_order == 0 {
            return Err(BuddyError::BadConfig("range smaller than one block"));
        }
        if size >> min_order > MAX_MIN_BLOCKS {
            return Err(BuddyError::BadConfig("more than 2^40 smallest blocks"));
        }
        Ok(())
    }

    /// Like [`Buddy::new`] over caller-provided storage of at least
    /// [`Buddy::storage_words`] words. The storage is zeroed here; the buddy never allocates.
    pub fn with_storage(
        base: u64,
        size: u64,
        min_order: u32,
        max_order: u32,
        mut words: S,
    ) -> Result<Self, BuddyError> {
        Self::validate(size, min_order, max_order)?;
        if base.checked_add(size).is_none() {
            return Err(BuddyError::BadConfig("range overflows u64"));
        }
        let layout = Layout::new(size, min_order, max_order);
        let have = words.as_ref().len();
        if have < layout.words {
            return Err(BuddyError::StorageTooSmall {
                have,
                need: layout.words,
            });
        }
        words.as_mut()[..layout.words].fill(0);
        let mut b = Buddy {
            base,
            size: size >> min_order << min_order,
            min_order,
            max_order,
            layout,
            words,
            nonempty: 0,
            free_blocks: [0; (MAX_ORDER + 1) as usize],
            used_blocks: [0; (MAX_ORDER + 1) as usize],
            in_use: 0,
            peak_in_use: 0,
            num_allocs: 0,
        };
        b.tile_free();
        Ok(b)
    }

    /// Covers the range with the largest aligned free blocks that fit, left to right.
    fn tile_free(&mut self) {
        let mut off = 0;
        while off < self.size {
            let mut k = self.max_order;
            while off & ((1 << k) - 1) != 0 || off + (1 << k) > self.size {
                k -= 1;
            }
            self.mark_free(k, off);
            off += 1 << k;
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }
    /// Usable bytes of the range (rounded down to the smallest block).
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn min_order(&self) -> u32 {
        self.min_order
    }
    pub fn max_order(&self) -> u32 {
        self.max_order
    }

    /// The order that serves `size` bytes, or `None` if it exceeds the largest block.
    #[inline]
    pub fn order_for(&self, size: u64) -> Option<u32> {
        let k = size.max(1).checked_next_power_of_two()?.trailing_zeros();
        let k = k.max(self.min_order);
        (k <= self.max_order).then_some(k)
    }

    // ------------------------------------------------------------------ bit helpers

    #[inline]
    fn mark_free(&mut self, k: u32, off: u64) {
        let bits = self.layout.orders[k as usize];
        bits.free.set(self.words.as_mut(), off >> k);
        self.nonempty |= 1 << k;
        self.free_blocks[k as usize] += 1;
    }

    #[inline]
    fn unmark_free(&mut self, k: u32, off: u64) {
        let bits = self.layout.orders[k as usize];
        bits.free.clear(self.words.as_mut(), off >> k);
        self.free_blocks[k as usize] -= 1;
        if self.free_blocks[k as usize] == 0 {
            self.nonempty &= !(1 << k);
        }
    }

    #[inline]
    fn is_free_bit(&self, k: u32, off: u64) -> bool {
        self.layout.orders[k as usize]
            .free
            .get(self.words.as_ref(), off >> k)
    }

    #[inline]
    fn is_used_bit(&self, k: u32, off: u64) -> bool {
        self.layout.orders[k as usize]
            .used
            .get(self.words.as_ref(), off >> k)
    }

    #[inline]
    fn put_used(&mut self, k: u32, off: u64, on: bool) {
        let bits = self.layout.orders[k as usize];
        bits.used.put(self.words.as_mut(), off >> k, on);
    }

    // ------------------------------------------------------------------ allocation

    /// Allocates the lowest free block of the smallest order that holds `size` bytes and
    /// returns `(addr, block_size)`; `None` when no free block is large enough.
    pub fn alloc(&mut self, size: u64) -> Option<(u64, u64)> {
        let k = self.order_for(size)?;
        self.alloc_order(k).map(|addr| (addr, 1 << k))
    }

    /// Allocates a block of exactly order `k` (`min_order..=max_order`).
    pub fn alloc_order(&mut self, k: u32) -> Option<u64> {
        if k < self.min_order || k > self.max_order {
            return None;
        }
        let candidates = self.nonempty >> k;
        if candidates == 0 {
            return None;
        }
        let mut j = k + candidates.trailing_zeros();
        let first = self.layout.orders[j as usize]
            .free
            .first(self.words.as_ref());
        let off = first.expect("order mask says non-empty") << j;
        self.unmark_free(j, off);
        // Split down: the upper half of every level becomes free.
        while j > k {
            j -= 1;
            self.mark_free(j, off + (1 << j));
        }
        self.put_used(k, off, true);
        self.used_blocks[k as usize] += 1;
        self.in_use += 1 << k;
        self.peak_in_use = self.peak_in_use.max(self.in_use);
        self.num_allocs += 1;
        Some(self.base + off)
    }

    // ------------------------------------------------------------------ exact sizes

    /// Allocates `size` bytes rounded up to whole smallest blocks rather than to a power of
    /// two (Linux's `alloc_pages_exact`): takes a block of the next order, keeps its head as
    /// the allocation (recorded as the power-of-two blocks of its binary decomposition) and
    /// frees the unused tail at once. Returns `(addr, rounded size)`; the address is aligned
    /// to the next power of two of the size. Free it with [`Buddy::free_exact`].
    pub fn alloc_exact(&mut self, size: u64) -> Option<(u64, u64)> {
        let k = self.order_for(size)?;
        let unit = 1u64 << self.min_order;
        let keep = size.max(1).div_ceil(unit) * unit;
        let addr = self.alloc_order(k)?;
        if keep == 1 << k {
            return Some((addr, keep));
        }
        let off = addr - self.base;
        // Re-record the head as its decomposition...
        self.put_used(k, off, false);
        self.used_blocks[k as usize] -= 1;
        for (o, j) in Self::head_parts(off, keep) {
            self.put_used(j, o, true);
            self.used_blocks[j as usize] += 1;
        }
        // ...and free the tail. Its blocks' buddies lie in the head, so nothing merges.
        let mut o = off + keep;
        while o < off + (1 << k) {
            let j = o.trailing_zeros().min(k);
            self.mark_free(j, o);
            o += 1 << j;
        }
        self.in_use -= (1 << k) - keep;
        Some((addr, keep))
    }

    /// The blocks `(offset, order)` that make up `[off, off + len)` for an `off` aligned to
    /// the next power of two of `len`: one per set bit of `len`, largest first.
    fn head_parts(off: u64, len: u64) -> impl Iterator<Item = (u64, u32)> {
        (0..64u32)
            .rev()
            .filter(move |b| len >> b & 1 == 1)
            .scan(off, |at, b| {
                let part = (*at, b);
                *at += 1 << b;
                Some(part)
            })
    }

    /// Frees an allocation made by [`Buddy::alloc_exact`] with its rounded `size`. Every part
    /// is checked before anything changes; a part that is not an allocated block of the
    /// expected order is [`BuddyError::NotAllocated`]. The buddy does not remember sizes: a
    /// `size` whose parts are a prefix of the real allocation's frees just those parts, so
    /// owners keep the size (the host malloc keeps it in its pagemap).
    pub fn free_exact(&mut self, addr: u64, size: u64) -> Result<u64, BuddyError> {
        let err = BuddyError::NotAllocated(addr);
        let off = addr.checked_sub(self.base).ok_or(err.clone())?;
        let unit = 1u64 << self.min_order;
        if size == 0
            || !size.is_multiple_of(unit)
            || off.checked_add(size).is_none_or(|e| e > self.size)
        {
            return Err(err);
        }
        let ok = Self::head_parts(off, size)
            .all(|(o, j)| self.allocated_order(self.base + o) == Some(j));
        if !ok {
            return Err(err);
        }
        for (o, _) in Self::head_parts(off, size) {
            self.free(self.base + o)?;
        }
        Ok(size)
    }

    // ------------------------------------------------------------------ free

    /// The order of the allocated block that starts at `addr`, if there is one.
    pub fn allocated_order(&self, addr: u64) -> Option<u32> {
        let off = addr.checked_sub(self.base)?;
        if off >= self.size {
            return None;
        }
        (self.min_order..=self.max_order)
            .take_while(|k| off & ((1 << k) - 1) == 0)
            .find(|&k| self.is_used_bit(k, off))
    }

    /// Frees the block that starts at `addr`, merges it with free buddies and returns its size.
    /// A double free or an address that is not a block start is an error; nothing changes.
    pub fn free(&mut self, addr: u64) -> Result<u64, BuddyError> {
        let k = self
            .allocated_order(addr)
            .ok_or(BuddyError::NotAllocated(addr))?;
        let mut off = addr - self.base;
        self.put_used(k, off, false);
        self.used_blocks[k as usize] -= 1;
        self.in_use -= 1 << k;
        let mut j = k;
        while j < self.max_order {
            let buddy = off ^ (1 << j);
            if buddy + (1 << j) > self.size || !self.is_free_bit(j, buddy) {
                break;
            }
            self.unmark_free(j, buddy);
            off &= !(1 << j);
            j += 1;
        }
        self.mark_free(j, off);
        Ok(1 << k)
    }

    /// Whether the whole block of order `k` at `addr` is free, i.e. lies inside one free block.
    /// Owners use it to check that memory they remember as free still is (before purging it).
    pub fn is_free(&self, addr: u64, k: u32) -> bool {
        let Some(off) = addr.checked_sub(self.base) else {
            return false;
        };
        if off >= self.size || k < self.min_order || k > self.max_order {
            return false;
        }
        (k..=self.max_order).any(|j| self.is_free_bit(j, off & !((1 << j) - 1)))
    }

    /// Whether `addr` lies in the managed range.
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        addr.wrapping_sub(self.base) < self.size
    }

    // ------------------------------------------------------------------ stats

    /// Bytes in allocated blocks (O(1)).
    #[inline]
    pub fn in_use_bytes(&self) -> u64 {
        self.in_use
    }

    /// Size of the largest free block (0 when none), from the order mask.
    #[inline]
    pub fn largest_free(&self) -> u64 {
        match self.nonempty {
            0 => 0,
            m => 1 << (63 - m.leading_zeros()),
        }
    }

    pub fn stats(&self) -> BuddyStats {
        BuddyStats {
            capacity: self.size,
            in_use_bytes: self.in_use,
            peak_in_use_bytes: self.peak_in_use,
            free_bytes: self.size - self.in_use,
            largest_free: self.largest_free(),
            used_blocks: self.used_blocks.iter().sum(),
            free_blocks: self.free_blocks.iter().sum(),
            num_allocs: self.num_allocs,
        }
    }

    /// Free blocks `(addr, order)` in address order of each order, smallest order first.
    pub fn free_blocks(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        (self.min_order..=self.max_order).flat_map(move |k| {
            self.layout.orders[k as usize]
                .free
                .iter_set(self.words.as_ref())
                .map(move |i| (self.base + (i << k), k))
        })
    }

    /// Allocated blocks `(addr, order)`, smallest order first.
    pub fn used_blocks(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        (self.min_order..=self.max_order).flat_map(move |k| {
            let n = self.size >> k;
            (0..n)
                .filter(move |&i| self.is_used_bit(k, i << k))
                .map(move |i| (self.base + (i << k), k))
        })
    }
}

mod check;
