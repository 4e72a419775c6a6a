//! Virtual memory management of the simulated device: reservations, physical handles,
//! mappings and access, with CUDA's rules enforced.

use std::collections::BTreeMap;

use crate::PhysHandle;
use rustc_hash::FxHashMap;

#[derive(Debug)]
struct Handle {
    size: u64,
    /// Live mappings of this handle (CUDA allows several).
    maps: u32,
    /// `mem_release` was called; the memory goes away with the last mapping.
    released: bool,
}

#[derive(Debug)]
struct Mapping {
    size: u64,
    handle: u64,
    accessible: bool,
}

/// A range a stream may still be using: `(end, stream, done_at)` keyed by start.
type PendingUses = BTreeMap<u64, Vec<(u64, crate::StreamId, u64)>>;

#[derive(Debug)]
pub(super) struct VirtualMemory {
    granularity: u64,
    next_va: u64,
    /// start -> size
    reservations: BTreeMap<u64, u64>,
    handles: FxHashMap<u64, Handle>,
    next_handle: u64,
    /// start -> mapping
    mappings: FxHashMap<u64, Mapping>,
    /// Whether to check every call against CUDA's rules (see [`super::SimConfig::validate`]).
    validate: bool,
    /// Mapping starts in order, for the overlap and containment checks (validating only).
    starts: std::collections::BTreeSet<u64>,
    mapped_bytes: u64,
    /// Ranges streams may still be using (from [`SimDevice::use_until`]), for hazard checks.
    pending: PendingUses,
}

type Res<T> = Result<T, String>;

impl VirtualMemory {
    pub fn new(base: u64, granularity: u64, validate: bool) -> Self {
        VirtualMemory {
            validate,
            starts: Default::default(),
            granularity,
            next_va: base,
            reservations: BTreeMap::new(),
            handles: FxHashMap::default(),
            next_handle: 1,
            mappings: FxHashMap::default(),
            mapped_bytes: 0,
            pending: BTreeMap::new(),
        }
    }

    pub fn check_granular(&self, size: u64) -> Res<()> {
        if size == 0 || !size.is_multiple_of(self.granularity) {
            return Err(format!(
                "size {size} is not a positive multiple of the granularity {}",
                self.granularity
            ));
        }
        Ok(())
    }

    pub fn reserve(&mut self, size: u64) -> Res<u64> {
        self.check_granular(size)?;
        let va = self.next_va;
        // Leave an unreserved granule between reservations so overruns are caught.
        self.next_va = va
            .checked_add(size + self.granularity)
            .ok_or("virtual address space exhausted")?;
        self.reservations.insert(va, size);
        Ok(va)
    }

    pub fn free_reservation(&mut self, addr: u64, size: u64) -> Res<()> {
        match self.reservations.get(&addr) {
            Some(&s) if s == size => {}
            Some(&s) => {
                return Err(format!(
                    "reservation at {addr:#x} has {s} bytes, not {size}"
                ));
            }
            None => return Err(format!("{addr:#x} is not the start of a reservation")),
        }
        if let Some(&m) = self.starts.range(addr..addr + size).next() {
            return Err(format!(
                "reservation at {addr:#x} still has a mapping at {m:#x}"
            ));
        }
        self.reservations.remove(&addr);
        Ok(())
    }

    pub fn create(&mut self, size: u64) -> PhysHandle {
        let id = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(
            id,
            Handle {
                size,
                maps: 0,
                released: false,
            },
        );
        PhysHandle(id)
    }

    /// Returns the bytes freed now (0 while mappings keep the memory alive).
    pub fn release(&mut self, h: PhysHandle) -> Res<u64> {
        let handle = self
            .handles
            .get_mut(&h.0)
            .ok_or_else(|| format!("unknown handle {}", h.0))?;
        if handle.released {
            return Err(format!("handle {} released twice", h.0));
        }
        handle.released = true;
        Ok(self.drop_if_dead(h.0))
    }

    fn drop_if_dead(&mut self, h: u64) -> u64 {
        match self.handles.get(&h) {
            Some(handle) if handle.released && handle.maps == 0 => {
                let size = handle.size;
                self.handles.remove(&h);
                size
            }
            _ => 0,
        }
    }

    /// Maps handle `h` at `addr`; returns the bytes mapped.
    pub fn map(&mut self, addr: u64, h: PhysHandle) -> Res<u64> {
        let handle = self
            .handles
            .get(&h.0)
            .ok_or_else(|| format!("unknown handle {}", h.0))?;
        if handle.released {
            return Err(format!("handle {} was released", h.0));
        }
        let size = handle.size;
        if self.validate {
            if !addr.is_multiple_of(self.granularity) {
                return Err(format!("address {addr:#x} is not granule-aligned"));
            }
            if !self.inside_reservation(addr, size) {
                return Err(format!(
                    "[{addr:#x}, +{size}) is not inside one reservation"
                ));
            }
            if self.overlapping_mapping(addr, size).is_some() {
                return Err(format!("[{addr:#x}, +{size}) overlaps an existing mapping"));
            }
            self.starts.insert(addr);
        } else if self.mappings.contains_key(&addr) {
            return Err(format!("{addr:#x} is mapped already"));
        }
        self.mappings.insert(
            addr,
            Mapping {
                size,
                handle: h.0,
                accessible: false,
            },
        );
        self.handles.get_mut(&h.0).expect("checked above").maps += 1;
        self.mapped_bytes += size;
        Ok(size)
    }

    /// Records that `stream` may use `[addr, addr + size)` until time `done_at`.
    pub fn note_use(&mut self, addr: u64, size: u64, stream: crate::StreamId, done_at: u64) {
        self.pending
            .entry(addr)
            .or_default()
            .push((addr + size, stream, done_at));
    }

    /// The first use of `[addr, addr + size)` not finished at time `now`, if any.
    fn pending_use(&mut self, addr: u64, size: u64, now: u64) -> Option<(u64, crate::StreamId)> {
        self.pending.retain(|_, uses| {
            uses.retain(|u| u.2 > now);
            !uses.is_empty()
        });
        self.pending
            .range(..addr + size)
            .flat_map(|(&start, uses)| uses.iter().map(move |u| (start, u)))
            .find(|(_, u)| u.0 > addr)
            .map(|(start, u)| (start, u.1))
    }

    /// Returns the bytes freed now (non-zero when the handle was already released).
    /// Fails if a stream may still be using the range at time `now`.
    pub fn unmap_at(&mut self, addr: u64, size: u64, now: u64) -> Res<u64> {
        if self.validate
            && let Some((start, stream)) = self.pending_use(addr, size, now)
        {
            return Err(format!(
                "[{addr:#x}, +{size}) is unmapped while stream {} may still use the block at {start:#x}",
                stream.0
            ));
        }
        self.unmap(addr, size)
    }

    /// Returns the bytes freed now (non-zero when the handle was already released).
    fn unmap(&mut self, addr: u64, size: u64) -> Res<u64> {
        match self.mappings.get(&addr) {
            Some(m) if m.size == size => {}
            Some(m) => {
                return Err(format!(
                    "mapping at {addr:#x} has {} bytes; cuMemUnmap cannot unmap {size}",
                    m.size
                ));
            }
            None => return Err(format!("no mapping starts at {addr:#x}")),
        }
        let m = self.mappings.remove(&addr).expect("checked above");
        self.starts.remove(&addr);
        self.mapped_bytes -= size;
        self.handles
            .get_mut(&m.handle)
            .expect("mapped handle exists")
            .maps -= 1;
        Ok(self.drop_if_dead(m.handle))
    }

    /// The range must consist of whole, contiguous mappings.
    pub fn set_access(&mut self, addr: u64, size: u64) -> Res<()> {
        let starts = self.whole_mappings(addr, size)?;
        for s in starts {
            self.mappings.get_mut(&s).expect("found above").accessible = true;
        }
        Ok(())
    }

    /// Starts of the mappings that exactly tile `[addr, addr + size)`.
    fn whole_mappings(&self, addr: u64, size: u64) -> Res<Vec<u64>> {
        let (mut at, end, mut starts) = (addr, addr + size, vec![]);
        if size == 0 {
            return Err("empty range".into());
        }
        while at < end {
            let m = self
                .mappings
                .get(&at)
                .ok_or_else(|| format!("no mapping starts at {at:#x}"))?;
            starts.push(at);
            at += m.size;
        }
        if at != end {
            return Err(format!(
                "range ends at {end:#x}, inside the mapping that ends at {at:#x}"
            ));
        }
        Ok(starts)
    }

    /// The mapping covering `addr`, if any (validating devices only).
    fn mapping_at(&self, addr: u64) -> Option<(u64, &Mapping)> {
        let &s = self.starts.range(..=addr).next_back()?;
        let m = &self.mappings[&s];
        (s + m.size > addr).then_some((s, m))
    }

    /// Whether the range is mapped with access set (validating devices only: others answer
    /// `false`, having kept no ordered index).
    pub fn is_accessible(&self, addr: u64, size: u64) -> bool {
        let (mut at, end) = (addr, addr + size.max(1));
        while at < end {
            match self.mapping_at(at) {
                Some((s, m)) if m.accessible => at = s + m.size,
                _ => return false,
            }
        }
        true
    }

    fn inside_reservation(&self, addr: u64, size: u64) -> bool {
        self.reservations
            .range(..=addr)
            .next_back()
            .is_some_and(|(&s, &len)| addr + size <= s + len)
    }

    fn overlapping_mapping(&self, addr: u64, size: u64) -> Option<u64> {
        if let Some((s, _)) = self.mapping_at(addr) {
            return Some(s);
        }
        self.starts.range(addr..addr + size).next().copied()
    }

    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes
    }

    pub fn live_handles(&self) -> usize {
        self.handles.len()
    }
}
