//! # coalesce-capi: the pool as a C library
//!
//! `libcoalesce.so` exports PyTorch's pluggable-allocator pair and a few calls of its own; the
//! contract for C callers is `include/coalesce.h`. Every entry point:
//! - runs inside `catch_unwind`, so no panic crosses the boundary (a panic is reported as an
//!   error);
//! - reports failure by its return value (NULL, 0 or -1) and leaves a message for
//!   [`coalesce_last_error`] in the calling thread;
//! - is thread-safe: one lazily created [`DevicePool`](coalesce_pool::DevicePool) per
//!   device, configured from the environment (see `config.rs`).

mod config;
mod exports;
mod exports_torch;
mod ffi;
mod pools;
mod stats_json;

pub use exports::*;
pub use exports_torch::*;
