//! Adversarial fragmentation: fill memory with blocks, free every other one, then ask for
//! blocks half again as large, which fit none of the holes.
//!
//! A policy bound to addresses must grow by the full size of the second wave; one that can
//! move physical memory out of the holes need not.

use super::builder::{Tensor, TraceBuilder};
use super::rng::SplitMix64;
use crate::event::RawEvent;

/// Six rounds over block sizes from 1 to 48 MiB, a few survivors kept from each round.
pub fn holes(seed: u64) -> Vec<RawEvent> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TraceBuilder::new();
    let mut survivors: Vec<Tensor> = Vec::new();
    for _ in 0..6 {
        let size = rng.log_uniform(1 << 20, 48 << 20);
        let count = ((2u64 << 30) / size).clamp(8, 512);
        let mut wave: Vec<Tensor> = (0..count).map(|_| b.alloc(size, 0)).collect();
        let mut kept = Vec::new();
        for (i, t) in wave.drain(..).enumerate() {
            if i % 2 == 0 { b.free(t) } else { kept.push(t) }
        }
        let larger: Vec<Tensor> = (0..count / 2).map(|_| b.alloc(size * 3 / 2, 0)).collect();
        survivors.extend(kept.iter().step_by(16).copied());
        for (i, t) in kept.into_iter().enumerate() {
            if i % 16 != 0 {
                b.free(t);
            }
        }
        b.free_all(larger);
    }
    b.free_all(survivors);
    b.finish()
}
