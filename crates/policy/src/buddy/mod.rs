//! `buddy`: a binary buddy system over the device's memory, as the Linux page allocator runs
//! over physical pages.
//!
//! The whole device is one buddy range: a virtual reservation of the device's memory rounded up
//! to a power of two, managed by [`coalesce_core::buddy::Buddy`] with blocks from 512 B (the
//! smallest PyTorch block) to the whole range. A request takes the lowest free block of the
//! smallest power of two that holds it, split down from larger blocks; a freed block merges
//! with its buddy for as long as the buddy is free. Physical memory follows use: the 2 MiB
//! granules under an allocated block are created and mapped when first needed, stay mapped
//! while cached, and are unmapped by `empty_cache` once wholly free (the replay's out-of-memory
//! recovery calls it before its retry).
//!
//! So the reserved figure is the power-of-two rounding of every live block, plus the buddy's
//! own external fragmentation, plus granule rounding: the cost of power-of-two sizes, side by
//! side with the best-fit allocators. Not stream-aware: a pool wraps it with deferred frees
//! when several streams are in use.

mod pages;
#[cfg(test)]
mod tests;

use super::registry::PolicyInfo;
use super::{Block, Policy, PolicyError, Segment, Usage, grow_error};
use coalesce_backend::{Backend, BackendError, DevAddr, DriverCall, StreamId};
use coalesce_core::buddy::Buddy;
use pages::Pages;
use rustc_hash::FxHashMap;

pub(super) const INFO: PolicyInfo = PolicyInfo {
    name: "buddy",
    summary: "binary buddy over the whole device (power-of-two blocks from 512 B, split and \
              merged with the buddy), 2 MiB pages mapped on first use",
    options: &[],
    build: |_| Ok(Box::new(BuddyPolicy::default())),
};

/// log2 of the smallest block: 512 B, PyTorch's rounding unit.
const MIN_ORDER: u32 = 9;
/// The range whose bitmaps are built with the policy: an 80 GB-class GPU rounded up. Building
/// them costs about 0.1 s and 128 MiB, which belongs to setup, not to the first allocation;
/// a device of another size rebuilds them (empty) at its first allocation.
const DEFAULT_RANGE: u64 = 128 << 30;

/// The reservation and its pages, made at the first allocation.
#[derive(Debug)]
struct Arena {
    pages: Pages,
    /// log2 of a page, for the buddy's `is_free` test.
    page_order: u32,
}

/// The policy. See the module docs.
#[derive(Debug)]
pub struct BuddyPolicy {
    /// Blocks as offsets into the reservation.
    buddy: Buddy,
    arena: Option<Arena>,
    /// Live blocks: address -> order (the allocated-block map every pool keeps).
    live: FxHashMap<DevAddr, u32>,
}

impl Default for BuddyPolicy {
    fn default() -> Self {
        BuddyPolicy {
            buddy: buddy_over(DEFAULT_RANGE),
            arena: None,
            live: FxHashMap::default(),
        }
    }
}

fn buddy_over(range: u64) -> Buddy {
    Buddy::new(0, range, MIN_ORDER, range.trailing_zeros()).expect("a power-of-two range")
}

impl BuddyPolicy {
    /// The reservation: the device's memory rounded up to a power of two, made on first use.
    fn arena(&mut self, dev: &mut dyn Backend) -> Result<&mut Arena, PolicyError> {
        if self.arena.is_none() {
            let page = dev.granularity();
            let range = dev
                .total_memory()
                .max(page)
                .checked_next_power_of_two()
                .ok_or(PolicyError::TooLarge(dev.total_memory()))?;
            if range != self.buddy.size() {
                debug_assert!(self.live.is_empty());
                self.buddy = buddy_over(range);
            }
            let base = dev.address_reserve(range)?;
            self.arena = Some(Arena {
                pages: Pages::new(base, range, page),
                page_order: page.trailing_zeros(),
            });
        }
        Ok(self.arena.as_mut().expect("made above"))
    }
}

/// Out of memory for a block of `block` bytes: the range has no free block that large.
fn no_block(dev: &mut dyn Backend, requested: u64, block: u64) -> PolicyError {
    let free = dev.free_memory().unwrap_or(0);
    grow_error(
        requested,
        BackendError::OutOfMemory {
            call: DriverCall::MemCreate,
            requested: block,
            free,
        },
    )
}

impl Policy for BuddyPolicy {
    fn name(&self) -> &str {
        INFO.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        _stream: StreamId,
    ) -> Result<Block, PolicyError> {
        let base = self.arena(dev)?.pages.base;
        let Some(order) = self.buddy.order_for(size.max(1)) else {
            return Err(no_block(dev, size, size));
        };
        let Some(off) = self.buddy.alloc_order(order) else {
            return Err(no_block(dev, size, 1 << order));
        };
        let arena = self.arena.as_mut().expect("made above");
        if let Err(e) = arena.pages.ensure_mapped(dev, base + off, 1 << order)? {
            self.buddy.free(off).expect("allocated above");
            return Err(grow_error(size, e));
        }
        self.live.insert(base + off, order);
        Ok(Block {
            addr: base + off,
            size: 1 << order,
        })
    }

    fn free(
        &mut self,
        _dev: &mut dyn Backend,
        addr: DevAddr,
        _stream: StreamId,
    ) -> Result<(), PolicyError> {
        let (Some(_), Some(arena)) = (self.live.remove(&addr), self.arena.as_ref()) else {
            return Err(PolicyError::UnknownAddress(addr));
        };
        self.buddy
            .free(addr - arena.pages.base)
            .expect("a live block is allocated in the buddy");
        Ok(())
    }

    /// Unmaps every wholly free granule; with nothing live, gives the reservation back.
    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        let Some(arena) = self.arena.as_mut() else {
            return Ok(());
        };
        let p = &mut arena.pages;
        for i in 0..p.handles.len() {
            let off = p.addr(i) - p.base;
            if p.is_mapped(i) && self.buddy.is_free(off, arena.page_order) {
                p.unmap(dev, i)?;
            }
        }
        if self.live.is_empty() {
            let arena = self.arena.take().expect("checked above");
            dev.address_free(arena.pages.base, self.buddy.size())?;
        }
        Ok(())
    }

    /// `largest_free_block` is the buddy's largest free block, whose pages may still need
    /// mapping.
    fn usage(&self) -> Usage {
        let s = self.buddy.stats();
        Usage {
            allocated_bytes: s.in_use_bytes,
            largest_free_block: if self.arena.is_some() {
                s.largest_free
            } else {
                0
            },
            segments: usize::from(self.arena.is_some()),
        }
    }

    /// One segment per run of mapped pages.
    fn segments(&self) -> Vec<Segment> {
        let Some(arena) = &self.arena else {
            return vec![];
        };
        let p = &arena.pages;
        let mut blocks: Vec<(u64, u64)> = self.live.iter().map(|(&a, &k)| (a, 1 << k)).collect();
        blocks.sort_unstable();
        let mut out: Vec<Segment> = Vec::new();
        for i in (0..p.handles.len()).filter(|&i| p.is_mapped(i)) {
            match out.last_mut() {
                Some(s) if s.addr + s.size == p.addr(i) => s.size += p.page,
                _ => out.push(Segment {
                    addr: p.addr(i),
                    size: p.page,
                    stream: StreamId::default(),
                    blocks: vec![],
                }),
            }
        }
        for s in &mut out {
            s.blocks = blocks
                .iter()
                .filter(|&&(a, _)| a >= s.addr && a < s.addr + s.size)
                .copied()
                .collect();
        }
        out
    }

    /// Every live block is allocated in the buddy at its order and sits on mapped pages; the
    /// buddy's bytes and the page count agree. The buddy's own full check (linear in the range)
    /// runs when the range has at most 2^20 smallest blocks (512 MiB).
    fn check_invariants(&self) -> Result<(), String> {
        let b = &self.buddy;
        let Some(arena) = &self.arena else {
            return match self.live.is_empty() && b.stats().used_blocks == 0 {
                true => Ok(()),
                false => Err("buddy: blocks in use but no reservation".into()),
            };
        };
        let mut bytes = 0;
        for (&addr, &k) in &self.live {
            if b.allocated_order(addr - arena.pages.base) != Some(k) {
                return Err(format!(
                    "buddy: live block {addr:#x} is not allocated at order {k}"
                ));
            }
            if arena
                .pages
                .covering(addr, 1 << k)
                .any(|i| !arena.pages.is_mapped(i))
            {
                return Err(format!(
                    "buddy: live block {addr:#x} lies on an unmapped page"
                ));
            }
            bytes += 1u64 << k;
        }
        let s = b.stats();
        if bytes != s.in_use_bytes || self.live.len() as u64 != s.used_blocks {
            return Err(format!(
                "buddy: {} live blocks of {bytes} bytes, the buddy has {} of {}",
                self.live.len(),
                s.used_blocks,
                s.in_use_bytes
            ));
        }
        let mapped = arena.pages.handles.iter().flatten().count();
        if mapped != arena.pages.mapped {
            return Err(format!(
                "buddy: {mapped} pages mapped, counter says {}",
                arena.pages.mapped
            ));
        }
        if b.size() >> MIN_ORDER <= 1 << 20 {
            b.check_invariants().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
