//! The physical pool: every physical handle, and every space's mapping table.
//!
//! A *granule* is the device's mapping granularity (2 MiB). A *handle* is one physical
//! allocation (`cuMemCreate`) of one or more granules, either mapped at a run of granules of
//! one space, or *spare* (unmapped, still holding memory). Keeping all of them in one place is
//! what makes physical memory fungible: an idle handle in any space can back a block in any
//! other.
//!
//! The pool does not track which handles are idle: a mapped handle is idle exactly when a free
//! chunk of its space's BFC contains it, so the owner derives idle handles from the BFC's large
//! free chunks on the rare path that needs them ([`Pool::handles_within`]). That keeps
//! allocation and free free of any per-handle work. What the hot path does need, whether a
//! range is already mapped, is a bitmap per space: one bit per granule.
//!
//! Invariants (checked by [`Pool::check`] and [`Pool::check_space`]): a table entry names the
//! handle whose mapping covers that granule, and its bit is set exactly then; spare handles are
//! in the spare index; the held-granule counter matches the handles.

use coalesce_backend::PhysHandle;
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
}

/// The mapping state of one space. The table and bitmap cover granules up to the highest
/// ever mapped (`high`, rounded up to a bitmap word), not the whole reservation: a space
/// reserves twice the device's memory, and its tables must not cost memory (and page faults)
/// in proportion to that.
#[derive(Debug)]
struct SpaceMap {
    base: u64,
    /// Granules in the space's reservation.
    granules: u32,
    /// The handle mapped under each granule below the table's length, or `NONE`.
    table: Vec<u32>,
    /// One bit per granule below the table's length: mapped. Granules beyond are unmapped.
    bits: Vec<u64>,
    /// No granule at or above this has ever been mapped (bounds scans of huge free ranges).
    high: u32,
    /// Granules mapped in this space.
    mapped: u64,
}

impl SpaceMap {
    /// Makes the table and bitmap cover granules below `end`.
    fn cover(&mut self, end: u32) {
        let words = end.div_ceil(64) as usize;
        if words > self.bits.len() {
            self.bits.resize(words, 0);
            self.table.resize(words * 64, NONE);
        }
    }

    #[inline]
    fn word(&self, g: u32) -> u64 {
        self.bits.get((g / 64) as usize).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
pub(super) struct Pool {
    /// Bytes per granule.
    granule: u64,
    spaces: Vec<SpaceMap>,
    handles: Vec<Handle>,
    vacant: Vec<u32>,
    /// Spare handles by `(granules, slot)`.
    spare: BTreeSet<(u32, u32)>,
    /// Granules held in handles (mapped or spare): the reserved memory.
    held: u64,
    /// The most granules ever held at once.
    peak_held: u64,
    /// Granules held in spare handles.
    spare_granules: u64,
}

impl Pool {
    pub fn new(granule: u64) -> Self {
        Pool {
            granule,
            spaces: Vec::new(),
            handles: Vec::new(),
            vacant: Vec::new(),
            spare: BTreeSet::new(),
            held: 0,
            peak_held: 0,
            spare_granules: 0,
        }
    }

    /// Adds the mapping state of a new space at `base` of `granules` granules; returns its id.
    pub fn add_space(&mut self, base: u64, granules: u32) -> u16 {
        self.spaces.push(SpaceMap {
            base,
            granules,
            table: Vec::new(),
            bits: Vec::new(),
            high: 0,
            mapped: 0,
        });
        u16::try_from(self.spaces.len() - 1).expect("fewer than 65536 spaces")
    }

    #[inline]
    pub fn handle(&self, h: u32) -> &Handle {
        &self.handles[h as usize]
    }

    /// Granules held in handles: the reserved memory.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// The most granules ever held at once: reserved memory's high-water mark.
    pub fn peak_held(&self) -> u64 {
        self.peak_held
    }

    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Bytes mapped in `space`.
    pub fn space_mapped_bytes(&self, space: u16) -> u64 {
        self.spaces[space as usize].mapped * self.granule
    }

    /// Bytes mapped in all spaces.
    pub fn mapped_bytes(&self) -> u64 {
        (self.held - self.spare_granules) * self.granule
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

    /// Whether every granule of `g0..=g1` in `space` is mapped.
    #[inline]
    pub fn all_mapped(&self, space: u16, g0: u32, g1: u32) -> bool {
        let bits = &self.spaces[space as usize].bits;
        let (w0, w1) = ((g0 / 64) as usize, (g1 / 64) as usize);
        if w1 >= bits.len() {
            return false;
        }
        let lo = !0u64 << (g0 % 64);
        let hi = !0u64 >> (63 - g1 % 64);
        if w0 == w1 {
            return bits[w0] & lo & hi == lo & hi;
        }
        bits[w0] & lo == lo && bits[w0 + 1..w1].iter().all(|&w| w == !0) && bits[w1] & hi == hi
    }

    #[inline]
    fn is_mapped(&self, space: u16, g: u32) -> bool {
        self.spaces[space as usize].word(g) & (1 << (g % 64)) != 0
    }

    /// The first run of mapped granules of `space` within `from..to`, as `(start, end)`.
    /// Scans the bitmap a word at a time.
    pub fn mapped_run(&self, space: u16, from: u32, to: u32) -> Option<(u32, u32)> {
        let map = &self.spaces[space as usize];
        let to = to.min(map.high);
        let start = next_bit(&map.bits, from, to, true)?;
        let end = next_bit(&map.bits, start, to, false).unwrap_or(to);
        Some((start, end))
    }

    /// Unmapped granules of `space` from `g` upwards, at most `max`.
    pub fn unmapped_run(&self, space: u16, g: u32, max: u32) -> u32 {
        let map = &self.spaces[space as usize];
        let end = (g as u64 + max as u64).min(map.granules as u64) as u32;
        if g >= map.high {
            return end.saturating_sub(g);
        }
        (g..end).take_while(|&x| !self.is_mapped(space, x)).count() as u32
    }

    /// Calls `visit` with every handle mapped entirely within granules `from..to` of `space`.
    /// Skips unmapped stretches a word of the bitmap at a time.
    pub fn handles_within(&self, space: u16, from: u32, to: u32, mut visit: impl FnMut(u32)) {
        let map = &self.spaces[space as usize];
        let to = to.min(map.high);
        let mut g = from;
        while g < to {
            if map.word(g) >> (g % 64) == 0 {
                g = (g / 64 + 1) * 64;
                continue;
            }
            match map.table[g as usize] {
                NONE => g += 1,
                h => {
                    let rec = &self.handles[h as usize];
                    let Place::Mapped { at, .. } = rec.place else {
                        unreachable!("table names a spare handle")
                    };
                    let end = at + rec.granules;
                    if at >= from && end <= to {
                        visit(h);
                    }
                    g = end;
                }
            }
        }
    }

    /// Registers a new spare handle; returns its slot.
    pub fn add_handle(&mut self, phys: PhysHandle, granules: u32) -> u32 {
        self.held += granules as u64;
        self.peak_held = self.peak_held.max(self.held);
        let rec = Handle {
            phys,
            granules,
            place: Place::Spare,
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
        self.spare_granules += granules as u64;
        h
    }

    /// Forgets a spare handle (after `cuMemRelease`); returns its physical handle.
    pub fn remove_handle(&mut self, h: u32) -> PhysHandle {
        let rec = &mut self.handles[h as usize];
        debug_assert_eq!(rec.place, Place::Spare, "removing a mapped handle");
        self.spare.remove(&(rec.granules, h));
        self.spare_granules -= rec.granules as u64;
        self.held -= rec.granules as u64;
        rec.granules = 0;
        self.vacant.push(h);
        rec.phys
    }

    /// Records that spare handle `h` is now mapped at granule `at` of `space` (all unmapped
    /// before).
    pub fn set_mapped(&mut self, h: u32, space: u16, at: u32) {
        let n = self.handles[h as usize].granules;
        self.spare.remove(&(n, h));
        self.spare_granules -= n as u64;
        let map = &mut self.spaces[space as usize];
        map.cover(at + n);
        for g in at..at + n {
            debug_assert_eq!(map.table[g as usize], NONE, "granule {g} mapped twice");
            map.table[g as usize] = h;
            map.bits[(g / 64) as usize] |= 1 << (g % 64);
        }
        map.high = map.high.max(at + n);
        map.mapped += n as u64;
        self.handles[h as usize].place = Place::Mapped { space, at };
    }

    /// Records that handle `h` is no longer mapped; it becomes spare.
    pub fn set_unmapped(&mut self, h: u32) {
        let rec = &mut self.handles[h as usize];
        let Place::Mapped { space, at } = rec.place else {
            unreachable!("unmapping a spare handle")
        };
        let n = rec.granules;
        rec.place = Place::Spare;
        let map = &mut self.spaces[space as usize];
        map.mapped -= n as u64;
        for g in at..at + n {
            map.table[g as usize] = NONE;
            map.bits[(g / 64) as usize] &= !(1 << (g % 64));
        }
        self.spare.insert((n, h));
        self.spare_granules += n as u64;
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

    /// The largest spare handle, as `(granules, slot)`.
    pub fn largest_spare(&self) -> Option<(u32, u32)> {
        self.spare.iter().next_back().copied()
    }

    /// Checks `space`'s table and bitmap against the handles.
    pub fn check_space(&self, space: u16) -> Result<(), String> {
        let map = &self.spaces[space as usize];
        let mapped = map.table.iter().filter(|&&h| h != NONE).count() as u64;
        if mapped != map.mapped {
            return Err(format!(
                "space {space}: {mapped} granules mapped, counter says {}",
                map.mapped
            ));
        }
        if map.table.len() != map.bits.len() * 64
            || map.table.len() > map.granules.next_multiple_of(64) as usize
        {
            return Err(format!("space {space}: table and bitmap sizes disagree"));
        }
        for (g, &h) in map.table.iter().enumerate() {
            let g = g as u32;
            if self.is_mapped(space, g) != (h != NONE) {
                return Err(format!(
                    "space {space} granule {g}: bitmap and table disagree"
                ));
            }
            if h == NONE {
                continue;
            }
            if g >= map.high {
                return Err(format!(
                    "space {space} granule {g} mapped above the high mark {}",
                    map.high
                ));
            }
            match self.handles[h as usize].place {
                Place::Mapped { space: s, at }
                    if s == space && at <= g && g < at + self.handles[h as usize].granules => {}
                place => {
                    return Err(format!(
                        "space {space} granule {g} names handle {h}, which is {place:?}"
                    ));
                }
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
            if let Place::Mapped { space, at } = rec.place {
                let table = &self.spaces[space as usize].table;
                if (at..at + rec.granules).any(|g| table[g as usize] != h as u32) {
                    return Err(format!(
                        "handle {h} is mapped at {at} but the table disagrees"
                    ));
                }
            }
        }
        if held != self.held {
            return Err(format!(
                "held counter {} but handles hold {held} granules",
                self.held
            ));
        }
        let spare: u64 = self.spare.iter().map(|&(n, _)| n as u64).sum();
        if spare != self.spare_granules {
            return Err(format!(
                "spare counter {} but spare handles hold {spare} granules",
                self.spare_granules
            ));
        }
        Ok(())
    }
}

/// The first bit in `from..to` equal to `set`.
fn next_bit(bits: &[u64], from: u32, to: u32, set: bool) -> Option<u32> {
    let mut g = from;
    while g < to {
        let stored = bits.get((g / 64) as usize).copied().unwrap_or(0);
        let word = if set { stored } else { !stored };
        let rest = word >> (g % 64);
        if rest != 0 {
            let found = g + rest.trailing_zeros();
            return (found < to).then_some(found);
        }
        g = (g / 64 + 1) * 64;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bitmap_answers_range_queries_across_words() {
        let mut p = Pool::new(2 << 20);
        let s = p.add_space(0, 300);
        let h = p.add_handle(PhysHandle(1), 100);
        p.set_mapped(h, s, 60);
        assert!(p.all_mapped(s, 60, 159));
        assert!(p.all_mapped(s, 63, 64));
        assert!(!p.all_mapped(s, 59, 60));
        assert!(!p.all_mapped(s, 150, 160));
        assert_eq!(p.unmapped_run(s, 0, 1000), 60);
        assert_eq!(p.unmapped_run(s, 160, 1000), 140);
        assert_eq!(p.mapped_run(s, 0, 300), Some((60, 160)));
        assert_eq!(p.mapped_run(s, 100, 130), Some((100, 130)), "clipped");
        assert_eq!(p.mapped_run(s, 160, 300), None);
        assert_eq!(p.mapped_run(s, 0, 60), None);
        let mut seen = vec![];
        p.handles_within(s, 0, 300, |h| seen.push(h));
        assert_eq!(seen, vec![h]);
        seen.clear();
        p.handles_within(s, 61, 300, |h| seen.push(h));
        assert!(seen.is_empty(), "not entirely within");
        p.set_unmapped(h);
        assert!(!p.all_mapped(s, 60, 60));
        p.check_space(s).unwrap();
        p.check().unwrap();
    }
}
