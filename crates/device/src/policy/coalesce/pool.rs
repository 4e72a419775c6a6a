//! The physical pool: every physical handle, and every space's mapping table.
//!
//! A *granule* is the device's mapping granularity (2 MiB). A *handle* is one physical
//! allocation (`cuMemCreate`) of one or more granules, either mapped at a run of granules of
//! one space, or *spare* (unmapped, still holding memory). Keeping all of them in one place is
//! what makes physical memory fungible: an idle handle in any space can back a block in any
//! other.
//!
//! A mapped handle is *idle* when no live block overlaps it, which (free chunks being maximal)
//! is exactly when one free chunk of its space's BFC contains it. Only an alloc or free of a
//! block over the handle changes that, so the space re-examines just those handles
//! ([`Pool::mark_busy_over`], [`Pool::mark_idle_over`]). Idleness is a flag plus the tick it
//! started; the list of idle handles is kept lazily (candidates validated when used), so the
//! hot path never touches an ordered set.
//!
//! Invariants (checked by [`Pool::check`]): a table entry names the handle whose mapping covers
//! that granule; every idle handle is a candidate; spare handles are in the spare index; the
//! held-granule counter matches the handles.

use crate::backend::{PhysHandle, StreamId};
use std::collections::BTreeSet;

pub(super) const NONE: u32 = u32::MAX;

/// Where a handle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
    Spare,
    Mapped { space: u16, at: u32 },
}

/// One physical allocation of `granules` granules.
#[derive(Clone, Debug)]
pub(super) struct Handle {
    pub phys: PhysHandle,
    pub granules: u32,
    pub place: Place,
    /// Mapped and no live block overlaps it.
    pub idle: bool,
    /// Policy tick of the free that made it idle: its stream may use it until past this.
    pub idle_since: u64,
}

/// What the pool knows of a space: where its range starts and which stream it serves.
#[derive(Clone, Copy, Debug)]
struct SpaceInfo {
    base: u64,
    stream: StreamId,
}

#[derive(Debug)]
pub(super) struct Pool {
    /// Bytes per granule.
    granule: u64,
    spaces: Vec<SpaceInfo>,
    /// Per space, the handle mapped under each granule (or `NONE`).
    tables: Vec<Vec<u32>>,
    handles: Vec<Handle>,
    vacant: Vec<u32>,
    /// Handles that were idle when pushed; stale once they turn busy or move.
    idle_candidates: Vec<u32>,
    /// Spare handles by `(granules, slot)`.
    spare: BTreeSet<(u32, u32)>,
    /// Granules held in handles (mapped or spare): the reserved memory.
    held: u64,
}

impl Pool {
    pub fn new(granule: u64) -> Self {
        Pool {
            granule,
            spaces: Vec::new(),
            tables: Vec::new(),
            handles: Vec::new(),
            vacant: Vec::new(),
            idle_candidates: Vec::new(),
            spare: BTreeSet::new(),
            held: 0,
        }
    }

    /// Adds the mapping table of a new space at `base` of `granules` granules serving
    /// `stream`; returns its id.
    pub fn add_space(&mut self, base: u64, granules: usize, stream: StreamId) -> u16 {
        self.spaces.push(SpaceInfo { base, stream });
        self.tables.push(vec![NONE; granules]);
        u16::try_from(self.tables.len() - 1).expect("fewer than 65536 spaces")
    }

    pub fn space_stream(&self, space: u16) -> StreamId {
        self.spaces[space as usize].stream
    }

    /// The stream whose space handle `h` is mapped in (mapped handles only).
    pub fn stream_of(&self, h: u32) -> StreamId {
        match self.handles[h as usize].place {
            Place::Mapped { space, .. } => self.space_stream(space),
            Place::Spare => unreachable!("a spare handle has no stream"),
        }
    }

    /// `(address, bytes)` of mapped handle `h`.
    pub fn mapping_of(&self, h: u32) -> (u64, u64) {
        let rec = &self.handles[h as usize];
        match rec.place {
            Place::Mapped { space, at } => (
                self.spaces[space as usize].base + at as u64 * self.granule,
                rec.granules as u64 * self.granule,
            ),
            Place::Spare => unreachable!("a spare handle has no mapping"),
        }
    }

    #[inline]
    pub fn handle(&self, h: u32) -> &Handle {
        &self.handles[h as usize]
    }

    pub fn held(&self) -> u64 {
        self.held
    }

    #[inline]
    fn table(&self, space: u16) -> &[u32] {
        &self.tables[space as usize]
    }

    /// Whether every granule of `g0..=g1` in `space` is mapped (one step per handle).
    #[inline]
    pub fn all_mapped(&self, space: u16, g0: u32, g1: u32) -> bool {
        let table = self.table(space);
        let mut g = g0;
        while g <= g1 {
            match table[g as usize] {
                NONE => return false,
                h => g = self.end_of(h),
            }
        }
        true
    }

    #[inline]
    fn end_of(&self, h: u32) -> u32 {
        match self.handles[h as usize].place {
            Place::Mapped { at, .. } => at + self.handles[h as usize].granules,
            Place::Spare => unreachable!("table entry names a spare handle"),
        }
    }

    /// Unmapped granules of `space` from `g` upwards, at most `max`.
    pub fn unmapped_run(&self, space: u16, g: u32, max: u32) -> u32 {
        let table = self.table(space);
        let end = (g as usize + max as usize).min(table.len());
        table[g as usize..end]
            .iter()
            .take_while(|&&h| h == NONE)
            .count() as u32
    }

    /// Marks busy every mapped handle over `g0..=g1` of `space` (a live block now overlaps
    /// them); returns whether some granule there is unmapped.
    #[inline]
    pub fn mark_busy_over(&mut self, space: u16, g0: u32, g1: u32) -> bool {
        let (mut g, mut unmapped) = (g0, false);
        while g <= g1 {
            match self.tables[space as usize][g as usize] {
                NONE => {
                    unmapped = true;
                    g += 1;
                }
                h => {
                    self.handles[h as usize].idle = false;
                    g = self.end_of(h);
                }
            }
        }
        unmapped
    }

    /// After a free over `g0..=g1` of `space` at tick `now`: marks idle every handle there
    /// that lies within granules `free_from..free_to`, the whole granules of the free chunk
    /// the block joined.
    #[inline]
    pub fn mark_idle_over(
        &mut self,
        space: u16,
        g0: u32,
        g1: u32,
        free_from: u32,
        free_to: u32,
        now: u64,
    ) {
        let mut g = g0;
        while g <= g1 {
            match self.tables[space as usize][g as usize] {
                NONE => g += 1,
                h => {
                    let end = self.end_of(h);
                    let at = end - self.handles[h as usize].granules;
                    if free_from <= at && end <= free_to {
                        self.set_idle(h, now);
                    }
                    g = end;
                }
            }
        }
    }

    fn set_idle(&mut self, h: u32, now: u64) {
        let rec = &mut self.handles[h as usize];
        if !rec.idle {
            rec.idle = true;
            rec.idle_since = now;
            self.idle_candidates.push(h);
            // Bound the list: compact once stale entries dominate (amortised O(1)).
            if self.idle_candidates.len() > 2 * self.handles.len() + 64 {
                self.compact_candidates();
            }
        }
    }

    /// Registers a new spare handle; returns its slot.
    pub fn add_handle(&mut self, phys: PhysHandle, granules: u32) -> u32 {
        self.held += granules as u64;
        let rec = Handle {
            phys,
            granules,
            place: Place::Spare,
            idle: false,
            idle_since: 0,
        };
        let h = match self.vacant.pop() {
            Some(s) => {
                self.handles[s as usize] = rec;
                s
            }
            None => {
                self.handles.push(rec);
                u32::try_from(self.handles.len() - 1).expect("fewer than 2^32 handles")
            }
        };
        self.spare.insert((granules, h));
        h
    }

    /// Forgets a spare handle (after `cuMemRelease`); returns its physical handle.
    pub fn remove_handle(&mut self, h: u32) -> PhysHandle {
        let rec = &mut self.handles[h as usize];
        debug_assert_eq!(rec.place, Place::Spare, "removing a mapped handle");
        self.spare.remove(&(rec.granules, h));
        self.held -= rec.granules as u64;
        rec.granules = 0;
        self.vacant.push(h);
        rec.phys
    }

    /// Records that spare handle `h` is now mapped at granule `at` of `space` (all unmapped
    /// before); it overlaps the block being backed, so it is busy.
    pub fn set_mapped(&mut self, h: u32, space: u16, at: u32) {
        let n = self.handles[h as usize].granules;
        self.spare.remove(&(n, h));
        let table = &mut self.tables[space as usize];
        for g in at..at + n {
            debug_assert_eq!(table[g as usize], NONE, "granule {g} mapped twice");
            table[g as usize] = h;
        }
        let rec = &mut self.handles[h as usize];
        rec.place = Place::Mapped { space, at };
        rec.idle = false;
    }

    /// Records that idle handle `h` is no longer mapped; it becomes spare.
    pub fn set_unmapped(&mut self, h: u32) {
        let rec = &mut self.handles[h as usize];
        debug_assert!(rec.idle, "unmapping a handle with live data");
        let Place::Mapped { space, at } = rec.place else {
            unreachable!("unmapping a spare handle")
        };
        let n = rec.granules;
        rec.place = Place::Spare;
        rec.idle = false;
        self.tables[space as usize][at as usize..(at + n) as usize].fill(NONE);
        self.spare.insert((n, h));
    }

    fn compact_candidates(&mut self) {
        let handles = &self.handles;
        self.idle_candidates.retain(|&h| handles[h as usize].idle);
        self.idle_candidates.sort_unstable();
        self.idle_candidates.dedup();
    }

    /// Idle handles that `usable` accepts, as `(granules, slot)`. Only the backing path and
    /// trimming call this.
    pub fn idle(&mut self, usable: impl Fn(&Handle) -> bool) -> Vec<(u32, u32)> {
        self.compact_candidates();
        self.idle_candidates
            .iter()
            .map(|&h| (self.handles[h as usize].granules, h))
            .filter(|&(_, h)| usable(&self.handles[h as usize]))
            .collect()
    }

    /// The smallest spare handle of `min..=max` granules.
    pub fn spare_fit(&self, min: u32, max: u32) -> Option<u32> {
        self.spare
            .range((min, 0)..=(max, NONE))
            .next()
            .map(|&(_, h)| h)
    }

    /// The largest spare handle of fewer than `n` granules.
    pub fn spare_below(&self, n: u32) -> Option<u32> {
        self.spare.range(..(n, 0)).next_back().map(|&(_, h)| h)
    }

    /// The largest spare handle.
    pub fn largest_spare(&self) -> Option<(u32, u32)> {
        self.spare.iter().next_back().copied()
    }

    /// Checks `space`'s table and the handles; `is_free(first, end)` says whether a granule
    /// range of the space lies in free space.
    pub fn check_space(
        &self,
        space: u16,
        is_free: impl Fn(u32, u32) -> bool,
    ) -> Result<(), String> {
        for (g, &h) in self.table(space).iter().enumerate() {
            if h == NONE {
                continue;
            }
            match self.handles[h as usize].place {
                Place::Mapped { space: s, at }
                    if s == space
                        && at <= g as u32
                        && (g as u32) < at + self.handles[h as usize].granules => {}
                place => {
                    return Err(format!(
                        "space {space} granule {g} names handle {h}, which is {place:?}"
                    ));
                }
            }
        }
        for (h, rec) in self
            .handles
            .iter()
            .enumerate()
            .filter(|(_, r)| r.granules > 0)
        {
            let Place::Mapped { space: s, at } = rec.place else {
                continue;
            };
            if s != space {
                continue;
            }
            let free = is_free(at, at + rec.granules);
            if free != rec.idle {
                return Err(format!(
                    "handle {h} at granule {at}: idle flag {} but free space says {free}",
                    rec.idle
                ));
            }
            if rec.idle && !self.idle_candidates.contains(&(h as u32)) {
                return Err(format!("idle handle {h} is not a candidate"));
            }
        }
        Ok(())
    }

    /// Checks what is not per space: the spare index and the held counter.
    pub fn check(&self) -> Result<(), String> {
        let mut held = 0;
        for (h, rec) in self
            .handles
            .iter()
            .enumerate()
            .filter(|(_, r)| r.granules > 0)
        {
            held += rec.granules as u64;
            let spare = self.spare.contains(&(rec.granules, h as u32));
            if spare != (rec.place == Place::Spare) {
                return Err(format!(
                    "handle {h} is {:?} but spare index says {spare}",
                    rec.place
                ));
            }
        }
        if held != self.held {
            return Err(format!(
                "held counter {} but handles hold {held} granules",
                self.held
            ));
        }
        Ok(())
    }
}
