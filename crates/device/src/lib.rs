//! # coalesce-device: device memory pools
//!
//! Layers, bottom up (each a folder):
//! - [`backend`]: where memory comes from. The [`backend::Backend`] trait is the driver as a
//!   policy sees it; [`backend::sim::SimDevice`] implements it for replay and tests,
//!   [`backend::cuda::CudaBackend`] on a GPU.
//! - [`policy`]: allocation policies (ours and faithful models of the peers), each deciding
//!   which addresses to hand out and when to call the backend. Algorithms come from
//!   `coalesce-core`.
//! - [`pool`]: the thread-safe pool front-ends use: one lock around a policy and its backend,
//!   statistics, memory cap, out-of-memory recovery, snapshots.
// `unsafe` is denied everywhere but in `backend::cuda` (FFI to the CUDA driver), which allows it
// explicitly; every block there carries a `// SAFETY:` comment.
#![deny(unsafe_code)]

pub mod backend;
pub mod policy;
pub mod pool;
