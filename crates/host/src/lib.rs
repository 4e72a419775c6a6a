//! # coalesce-host: host-memory allocators
//!
//! Layered bottom-up, each layer usable on its own:
//! - [`os`]: the only code that talks to the kernel (mmap, madvise, futex, pthread keys).
//! - [`buddy`]: the core binary buddy ([`coalesce_core::buddy`]) over OS pages, a page source.
//! - [`slab`]: typed object caches in the kmem_cache style, with per-thread magazines.
//! - [`pool`]: a fixed-size block pool and a bump arena freed all at once.
//! - [`malloc`]: the thread-caching general-purpose allocator (`GlobalAlloc`; the
//!   `coalesce-host-preload` crate exports it as the C `malloc` family).
//!
//! See `docs/host.md` for the design and the benchmark.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod buddy;
pub mod malloc;
pub mod os;
pub mod pool;
pub mod slab;
