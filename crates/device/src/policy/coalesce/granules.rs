//! The mapping table: which physical handle, if any, is mapped under each granule of the
//! virtual range, and which mapped handles are idle.
//!
//! A *granule* is the device's mapping granularity (2 MiB). A *handle* is one physical
//! allocation (`cuMemCreate`) of one or more granules, mapped at a run of granules or *spare*
//! (unmapped, still holding memory).
//!
//! A mapped handle is *idle* when no live block overlaps its range, which (free chunks being
//! maximal) is exactly when one free chunk of the BFC contains it. Only an alloc or free of a
//! block overlapping the handle can change that, so the owner re-examines just those handles
//! ([`Granules::handles_over`]). Idleness is a flag; the index of idle handles is kept
//! *lazily* (a candidate list validated when used) so the hot path never touches an ordered
//! set: moving idle memory only happens on the rare path where backing is needed.
//!
//! Invariants (checked by [`Granules::check`]): `mapped[g]` is the handle whose range covers
//! `g`; every idle handle is in the candidate list; spare handles are in the spare index.

use crate::backend::PhysHandle;
use std::collections::BTreeSet;

pub(super) const NONE: u32 = u32::MAX;

/// One physical allocation of `granules` granules.
#[derive(Clone, Debug)]
pub(super) struct Handle {
    pub phys: PhysHandle,
    pub granules: u32,
    /// First granule it is mapped at, or `NONE` when spare.
    pub at: u32,
    /// Mapped and no live block overlaps it.
    pub idle: bool,
}

#[derive(Debug)]
pub(super) struct Granules {
    /// Handle slot mapped under each granule, or `NONE`.
    mapped: Vec<u32>,
    handles: Vec<Handle>,
    vacant: Vec<u32>,
    /// Slots that were idle when pushed; entries go stale when a handle turns busy.
    idle_candidates: Vec<u32>,
    /// Unmapped handles: `(granules, slot)`.
    spare: BTreeSet<(u32, u32)>,
    /// Granules held in handles (mapped or spare).
    held: u32,
}

impl Granules {
    pub fn new(n: usize) -> Self {
        Granules {
            mapped: vec![NONE; n],
            handles: Vec::new(),
            vacant: Vec::new(),
            idle_candidates: Vec::new(),
            spare: BTreeSet::new(),
            held: 0,
        }
    }

    pub fn len(&self) -> u32 {
        self.mapped.len() as u32
    }

    pub fn held(&self) -> u32 {
        self.held
    }

    #[inline]
    pub fn is_mapped(&self, g: u32) -> bool {
        self.mapped[g as usize] != NONE
    }

    #[inline]
    pub fn handle(&self, h: u32) -> &Handle {
        &self.handles[h as usize]
    }

    /// Whether every granule of `g0..=g1` is mapped (one step per handle).
    #[inline]
    pub fn all_mapped(&self, g0: u32, g1: u32) -> bool {
        let mut g = g0;
        while g <= g1 {
            match self.mapped[g as usize] {
                NONE => return false,
                h => {
                    let rec = &self.handles[h as usize];
                    g = rec.at + rec.granules;
                }
            }
        }
        true
    }

    /// Marks busy every mapped handle over granules `g0..=g1` (a live block now overlaps them);
    /// returns whether some granule there is unmapped.
    #[inline]
    pub fn mark_busy_over(&mut self, g0: u32, g1: u32) -> bool {
        let (mut g, mut unmapped) = (g0, false);
        while g <= g1 {
            match self.mapped[g as usize] {
                NONE => {
                    unmapped = true;
                    g += 1;
                }
                h => {
                    let rec = &mut self.handles[h as usize];
                    rec.idle = false;
                    g = rec.at + rec.granules;
                }
            }
        }
        unmapped
    }

    /// After a free over granules `g0..=g1`: marks idle every handle there that lies within
    /// granules `free_from..free_to`, the whole granules of the free chunk the block joined.
    #[inline]
    pub fn mark_idle_over(&mut self, g0: u32, g1: u32, free_from: u32, free_to: u32) {
        let mut g = g0;
        while g <= g1 {
            match self.mapped[g as usize] {
                NONE => g += 1,
                h => {
                    let rec = &self.handles[h as usize];
                    let (at, end) = (rec.at, rec.at + rec.granules);
                    if free_from <= at && end <= free_to {
                        self.set_idle(h);
                    }
                    g = end;
                }
            }
        }
    }

    /// Marks mapped handle `h` idle (no live block overlaps it any more).
    #[inline]
    fn set_idle(&mut self, h: u32) {
        let rec = &mut self.handles[h as usize];
        if !rec.idle {
            rec.idle = true;
            self.idle_candidates.push(h);
            // Bound the list: compact once stale entries dominate (amortised O(1)).
            if self.idle_candidates.len() > 2 * self.handles.len() + 64 {
                self.idle_now();
            }
        }
    }

    /// Registers a new, spare handle; returns its slot.
    pub fn add_handle(&mut self, phys: PhysHandle, granules: u32) -> u32 {
        self.held += granules;
        let rec = Handle {
            phys,
            granules,
            at: NONE,
            idle: false,
        };
        let h = match self.vacant.pop() {
            Some(s) => {
                self.handles[s as usize] = rec;
                s
            }
            None => {
                self.handles.push(rec);
                (self.handles.len() - 1) as u32
            }
        };
        self.spare.insert((granules, h));
        h
    }

    /// Forgets a spare handle (after `cuMemRelease`); returns its physical handle.
    pub fn remove_handle(&mut self, h: u32) -> PhysHandle {
        let rec = &mut self.handles[h as usize];
        debug_assert_eq!(rec.at, NONE, "removing a mapped handle");
        self.spare.remove(&(rec.granules, h));
        self.held -= rec.granules;
        rec.granules = 0;
        self.vacant.push(h);
        rec.phys
    }

    /// Records that spare handle `h` is now mapped at granule `at` (all unmapped before), busy
    /// or idle as the caller determined.
    pub fn set_mapped(&mut self, h: u32, at: u32, idle: bool) {
        let n = self.handles[h as usize].granules;
        self.spare.remove(&(n, h));
        for g in at..at + n {
            debug_assert_eq!(self.mapped[g as usize], NONE, "granule {g} mapped twice");
            self.mapped[g as usize] = h;
        }
        let rec = &mut self.handles[h as usize];
        rec.at = at;
        rec.idle = false;
        if idle {
            self.set_idle(h);
        }
    }

    /// Records that idle handle `h` is no longer mapped; it becomes spare.
    pub fn set_unmapped(&mut self, h: u32) {
        let rec = &mut self.handles[h as usize];
        debug_assert!(rec.idle, "unmapping a handle with live data");
        for g in rec.at..rec.at + rec.granules {
            self.mapped[g as usize] = NONE;
        }
        rec.at = NONE;
        rec.idle = false;
        self.spare.insert((rec.granules, h));
    }

    /// Drops stale idle candidates and returns the live ones as `(granules, first granule,
    /// slot)`. Only the backing path calls this.
    fn idle_now(&mut self) -> Vec<(u32, u32, u32)> {
        let handles = &self.handles;
        self.idle_candidates.retain(|&h| {
            let r = &handles[h as usize];
            r.idle && r.at != NONE && r.granules > 0
        });
        self.idle_candidates.sort_unstable();
        self.idle_candidates.dedup();
        self.idle_candidates
            .iter()
            .map(|&h| (handles[h as usize].granules, handles[h as usize].at, h))
            .collect()
    }

    /// The smallest spare handle of `min..=max` granules.
    pub fn spare_fit(&self, min: u32, max: u32) -> Option<u32> {
        self.spare
            .range((min, 0)..=(max, NONE))
            .next()
            .map(|&(_, h)| h)
    }

    /// The smallest idle handle of `min..=max` granules, highest address among equals
    /// (allocation packs low, so high memory is the least likely to be wanted back soon).
    pub fn idle_fit(&mut self, min: u32, max: u32) -> Option<u32> {
        self.idle_now()
            .into_iter()
            .filter(|&(n, _, _)| (min..=max).contains(&n))
            .min_by_key(|&(n, at, _)| (n, u32::MAX - at))
            .map(|t| t.2)
    }

    /// The largest spare handle smaller than `n` granules, else the largest such idle one.
    pub fn largest_below(&mut self, n: u32) -> Option<u32> {
        if let Some(&(_, h)) = self.spare.range(..(n, 0)).next_back() {
            return Some(h);
        }
        self.idle_now()
            .into_iter()
            .filter(|&(g, _, _)| g < n)
            .max_by_key(|&(g, at, _)| (g, at))
            .map(|t| t.2)
    }

    /// The largest spare or idle handle, if any (to release for room).
    pub fn largest_reusable(&mut self) -> Option<u32> {
        let s = self.spare.iter().next_back().map(|&(n, h)| (n, h));
        let i = self
            .idle_now()
            .into_iter()
            .max_by_key(|&(n, at, _)| (n, at))
            .map(|(n, _, h)| (n, h));
        s.max(i).map(|(_, h)| h)
    }

    /// Idle handles, highest address first (for trimming).
    pub fn idle_handles(&mut self) -> Vec<u32> {
        let mut v = self.idle_now();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1));
        v.into_iter().map(|t| t.2).collect()
    }

    pub fn spare_handles(&self) -> Vec<u32> {
        self.spare.iter().map(|&(_, h)| h).collect()
    }

    /// Unmapped granules from `g` upwards, at most `max` of them.
    pub fn unmapped_run(&self, g: u32, max: u32) -> u32 {
        let end = (g as u64 + max as u64).min(self.len() as u64) as u32;
        (g..end).take_while(|&x| !self.is_mapped(x)).count() as u32
    }

    /// Checks the table; `is_free(first, end)` says whether a granule range lies in free space.
    pub fn check(&self, is_free: impl Fn(u32, u32) -> bool) -> Result<(), String> {
        for (g, &h) in self.mapped.iter().enumerate() {
            if h != NONE {
                let rec = &self.handles[h as usize];
                if rec.at == NONE || (g as u32) < rec.at || g as u32 >= rec.at + rec.granules {
                    return Err(format!(
                        "granule {g} maps handle {h}, which is not mapped there"
                    ));
                }
            }
        }
        let mut held = 0;
        for (h, rec) in self
            .handles
            .iter()
            .enumerate()
            .filter(|(_, r)| r.granules > 0)
        {
            held += rec.granules;
            let h = h as u32;
            if rec.at == NONE {
                if !self.spare.contains(&(rec.granules, h)) {
                    return Err(format!("unmapped handle {h} is not in the spare index"));
                }
                continue;
            }
            let free = is_free(rec.at, rec.at + rec.granules);
            if free != rec.idle {
                return Err(format!(
                    "handle {h} at granule {}: idle flag {} but free space says {free}",
                    rec.at, rec.idle
                ));
            }
            if rec.idle && !self.idle_candidates.contains(&h) {
                return Err(format!("idle handle {h} missing from the candidate list"));
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
