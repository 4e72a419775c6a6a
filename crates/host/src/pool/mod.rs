//! The classic memory-pool patterns for short-lived allocations of known lifetime:
//! - [`FixedPool`]: blocks of one size, O(1) alloc and free from an intrusive free list;
//! - [`Arena`]: bump allocation, everything freed at once by [`Arena::reset`] or drop.
//!
//! Both take their memory from the OS in chunks ([`crate::os::map`]) and are single-owner
//! (`&mut self` or `&self` on one thread): put one per thread, or behind a lock.

mod arena;
mod fixed;

pub use arena::{Arena, ArenaStats};
pub use fixed::{FixedPool, PoolError, PoolStats};
