//! Region records: the address ranges a [`Bfc`](super::Bfc) manages.

/// Handle of a region inside one [`Bfc`](super::Bfc). Slots of removed regions are reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u32);

#[derive(Clone, Debug)]
pub(crate) struct Region {
    pub base: u64,
    pub size: u64,
    /// First and last chunk in address order.
    pub first: u32,
    pub last: u32,
    pub in_use_bytes: u64,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}
