//! `coalesce`: best fit with coalescing over one large virtual range, backed by physical
//! memory only where live data is, moving idle physical memory before creating more.
//! (Under measurement: see docs/design.md once written.)

mod granules;
mod space;

use super::registry::PolicyInfo;
use super::spec::PolicySpec;
use super::{Block, Policy, PolicyError, Segment, SpecError, Usage};
use crate::backend::{Backend, DevAddr, StreamId};
use space::{Growth, Space};

pub(super) const INFO: PolicyInfo = PolicyInfo {
    name: "coalesce",
    summary: "BFC over a virtual range; physical memory only under live data, moved before more is created",
    options: &[
        (
            "va_factor",
            "virtual range reserved, as a multiple of device memory (default 2)",
        ),
        (
            "grow_div",
            "new physical handles cover at least pinned/grow_div granules (default 128)",
        ),
        (
            "cap_div",
            "new physical handles cover at most pinned/cap_div granules (default 128)",
        ),
        (
            "burst_div",
            "during growth with no free in between, handles may reach burst/burst_div granules (default 2)",
        ),
        (
            "max_handle_mb",
            "largest physical handle created, MiB (default 64)",
        ),
        (
            "search",
            "free chunks examined for an already backed one when the best fit is not (default 32)",
        ),
    ],
    build,
};

fn parse_u32(v: &str) -> Result<u32, String> {
    v.parse::<u32>().map_err(|e| e.to_string())
}

fn build(spec: &PolicySpec) -> Result<Box<dyn Policy>, SpecError> {
    let va_factor = spec.parse_option("va_factor", 2u32, parse_u32)?;
    let divisor = spec.parse_option("grow_div", 128u32, parse_u32)?;
    let cap_div = spec.parse_option("cap_div", 128u32, parse_u32)?;
    let burst_div = spec.parse_option("burst_div", 2u32, parse_u32)?;
    let max_mb = spec.parse_option("max_handle_mb", 64u32, parse_u32)?;
    let search = spec.parse_option("search", 32u32, parse_u32)?;
    Ok(Box::new(Coalesce::new(Config {
        va_factor: va_factor.max(1),
        growth_divisor: divisor.max(1),
        cap_divisor: cap_div.max(1),
        burst_divisor: burst_div.max(1),
        max_handle: (max_mb.max(2) as u64) << 20,
        search: search as usize,
    })))
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub va_factor: u32,
    pub growth_divisor: u32,
    pub cap_divisor: u32,
    pub burst_divisor: u32,
    pub max_handle: u64,
    pub search: usize,
}

#[derive(Debug)]
pub struct Coalesce {
    config: Config,
    space: Option<Space>,
}

impl Coalesce {
    pub fn new(config: Config) -> Self {
        Coalesce {
            config,
            space: None,
        }
    }

    fn space(&mut self, dev: &mut dyn Backend) -> Result<&mut Space, PolicyError> {
        if self.space.is_none() {
            let growth = Growth {
                divisor: self.config.growth_divisor,
                cap_divisor: self.config.cap_divisor,
                burst_divisor: self.config.burst_divisor,
                max_granules: (self.config.max_handle / dev.granularity()).max(1) as u32,
            };
            let size = dev
                .total_memory()
                .saturating_mul(self.config.va_factor as u64);
            self.space = Some(Space::reserve(dev, size, growth)?);
        }
        Ok(self.space.as_mut().expect("just created"))
    }
}

impl Policy for Coalesce {
    fn name(&self) -> &str {
        INFO.name
    }

    fn alloc(
        &mut self,
        dev: &mut dyn Backend,
        size: u64,
        _stream: StreamId,
    ) -> Result<Block, PolicyError> {
        let search = self.config.search;
        let space = self.space(dev)?;
        let rounded = space.bfc.round(size).ok_or(PolicyError::TooLarge(size))?;
        let chunk = space
            .choose(rounded, search)
            .ok_or(PolicyError::TooLarge(size))?;
        let (addr, size) = space.take(dev, chunk, size)?;
        Ok(Block { addr, size })
    }

    fn free(
        &mut self,
        _dev: &mut dyn Backend,
        addr: DevAddr,
        _stream: StreamId,
    ) -> Result<(), PolicyError> {
        let space = self
            .space
            .as_mut()
            .ok_or(PolicyError::UnknownAddress(addr))?;
        space
            .give_back(addr)
            .map(|_| ())
            .ok_or(PolicyError::UnknownAddress(addr))
    }

    fn empty_cache(&mut self, dev: &mut dyn Backend) -> Result<(), PolicyError> {
        let Some(space) = self.space.as_mut() else {
            return Ok(());
        };
        for h in space
            .granules
            .idle_handles()
            .into_iter()
            .chain(space.granules.spare_handles())
        {
            space.release(dev, h)?;
        }
        Ok(())
    }

    fn usage(&self) -> Usage {
        let Some(space) = &self.space else {
            return Usage::default();
        };
        let s = space.bfc.stats();
        Usage {
            allocated_bytes: s.in_use_bytes,
            largest_free_block: s.largest_free,
            segments: 1,
        }
    }

    fn segments(&self) -> Vec<Segment> {
        let Some(space) = &self.space else {
            return vec![];
        };
        let r = space.bfc.regions().next().expect("one region");
        let blocks = space
            .bfc
            .chunks_of(r)
            .filter(|c| c.in_use)
            .map(|c| (c.addr, c.size))
            .collect();
        vec![Segment {
            addr: space.base,
            size: space.size,
            stream: StreamId::default(),
            blocks,
        }]
    }

    fn check_invariants(&self) -> Result<(), String> {
        self.space.as_ref().map_or(Ok(()), Space::check)
    }
}
