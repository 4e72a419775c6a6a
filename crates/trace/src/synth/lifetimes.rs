//! Interleaved long- and short-lived tensors of log-uniform sizes.
//!
//! Long-lived tensors scattered between short-lived ones are what pin memory in place: when
//! the short ones go, the holes they leave are bounded by the long ones.

use super::builder::{Tensor, TraceBuilder};
use super::rng::SplitMix64;
use crate::event::RawEvent;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// 20000 allocations, 512 B to 64 MiB; 85% live for 1-20 allocations, 15% for 500-5000.
pub fn interleaved(seed: u64) -> Vec<RawEvent> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TraceBuilder::new();
    // (death time, sequence number for a stable order, tensor)
    let mut live: BinaryHeap<Reverse<(u64, u64, TensorKey)>> = BinaryHeap::new();
    let mut tensors: Vec<Option<Tensor>> = Vec::new();
    for now in 0..20_000u64 {
        while let Some(Reverse((death, _, key))) = live.peek().copied() {
            if death > now {
                break;
            }
            live.pop();
            b.free(tensors[key.0].take().expect("freed once"));
        }
        let size = if rng.chance(0.7) {
            rng.log_uniform(512, 1 << 20)
        } else {
            rng.log_uniform(1 << 20, 64 << 20)
        };
        let life = if rng.chance(0.85) {
            rng.range(1, 20)
        } else {
            rng.range(500, 5000)
        };
        tensors.push(Some(b.alloc(size, 0)));
        live.push(Reverse((now + life, now, TensorKey(tensors.len() - 1))));
    }
    while let Some(Reverse((_, _, key))) = live.pop() {
        b.free(tensors[key.0].take().expect("freed once"));
    }
    b.finish()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TensorKey(usize);
