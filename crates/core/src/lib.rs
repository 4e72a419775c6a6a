//! # coalesce-core: allocation algorithms over abstract address ranges
//!
//! This crate is the bottom layer of coalesce. Everything here manages plain `u64` addresses
//! handed to it by its owner; it never touches memory, never calls a driver and never does I/O.
//! That is what lets the same best-fit-with-coalescing core serve a simulated device in trace
//! replay, a CUDA device in production, and host memory.
//!
//! - [`bfc`]: best fit with coalescing over one or more regions (TensorFlow's BFC, made exact).
//! - [`buddy`]: a binary buddy system with O(1) buddy lookups through bitmaps.
//! - [`align`]: alignment arithmetic shared by all of them.
#![forbid(unsafe_code)]

pub mod align;
pub mod bfc;
pub mod buddy;
