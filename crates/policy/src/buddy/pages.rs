//! Physical pages behind the buddy's virtual range: one handle per granule, mapped on first use
//! and kept until `empty_cache` finds the whole granule free.

use crate::PolicyError;
use coalesce_backend::{Backend, BackendError, PhysHandle};

/// The granules of one reserved range and their handles.
#[derive(Clone, Debug)]
pub struct Pages {
    pub base: u64,
    /// Granule size (2 MiB on current GPUs); a power of two.
    pub page: u64,
    pub handles: Vec<Option<PhysHandle>>,
    pub mapped: usize,
}

impl Pages {
    pub fn new(base: u64, size: u64, page: u64) -> Self {
        Pages {
            base,
            page,
            handles: vec![None; (size / page) as usize],
            mapped: 0,
        }
    }

    /// Page indices overlapping `[addr, addr + size)`.
    pub fn covering(&self, addr: u64, size: u64) -> std::ops::Range<usize> {
        let first = (addr - self.base) / self.page;
        let end = (addr + size - self.base).div_ceil(self.page);
        first as usize..end as usize
    }

    pub fn is_mapped(&self, i: usize) -> bool {
        self.handles[i].is_some()
    }

    /// Maps the unmapped pages under `[addr, addr + size)`, each run of them made accessible at
    /// once. On out-of-memory, what this call mapped is taken back and the error returned.
    pub fn ensure_mapped(
        &mut self,
        dev: &mut dyn Backend,
        addr: u64,
        size: u64,
    ) -> Result<Result<(), BackendError>, PolicyError> {
        let range = self.covering(addr, size);
        let mut fresh = Vec::new();
        for i in range {
            if self.is_mapped(i) {
                continue;
            }
            match dev.mem_create(self.page) {
                Ok(h) => {
                    dev.mem_map(self.addr(i), h)?;
                    self.handles[i] = Some(h);
                    self.mapped += 1;
                    fresh.push(i);
                }
                Err(e) if e.is_out_of_memory() => {
                    for &j in &fresh {
                        self.unmap(dev, j)?;
                    }
                    return Ok(Err(e));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut run = 0;
        while run < fresh.len() {
            let mut end = run + 1;
            while end < fresh.len() && fresh[end] == fresh[end - 1] + 1 {
                end += 1;
            }
            let pages = (fresh[end - 1] - fresh[run] + 1) as u64;
            dev.set_access(self.addr(fresh[run]), pages * self.page)?;
            run = end;
        }
        Ok(Ok(()))
    }

    /// Unmaps and releases page `i`.
    pub fn unmap(&mut self, dev: &mut dyn Backend, i: usize) -> Result<(), PolicyError> {
        let h = self.handles[i].take().expect("unmapping a mapped page");
        dev.mem_unmap(self.addr(i), self.page)?;
        dev.mem_release(h)?;
        self.mapped -= 1;
        Ok(())
    }

    pub fn addr(&self, i: usize) -> u64 {
        self.base + i as u64 * self.page
    }
}
