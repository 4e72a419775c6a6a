//! Four streams allocating concurrently: compute, data loading, communication, side work.
//!
//! Each stream frees its own blocks (PyTorch's rule), but their lifetimes interleave, so
//! memory freed on one stream is wanted by another while its stream may still be using it.

use super::builder::{Tensor, TraceBuilder};
use super::rng::SplitMix64;
use crate::event::RawEvent;

const COMPUTE: u64 = 0x10;
const DATA: u64 = 0x20;
const COMM: u64 = 0x30;
const SIDE: u64 = 0x40;

/// 24 steps of a convolutional network with prefetched inputs, bucketed gradient all-reduce
/// and small side-stream temporaries.
pub fn many_streams(seed: u64) -> Vec<RawEvent> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TraceBuilder::new();
    let weights: Vec<Tensor> = (0..50)
        .map(|i| b.alloc((1 + i % 7) * 2_359_296, COMPUTE))
        .collect();
    let mut next_input = b.alloc(rng.range(16, 128) * 602_112, DATA);
    for _ in 0..24 {
        let batch = next_input.size() / 602_112;
        // The data stream prefetches the next batch while this one is computed.
        let input = std::mem::replace(&mut next_input, b.alloc(rng.range(16, 128) * 602_112, DATA));
        let mut acts = Vec::new();
        for layer in 0..16u64 {
            let side = b.alloc(rng.log_uniform(512, 256 << 10), SIDE);
            acts.push(b.alloc(batch * (802_816 >> (layer / 4)), COMPUTE));
            b.free(side);
        }
        let mut buckets: Vec<Tensor> = Vec::new();
        while let Some(a) = acts.pop() {
            let g = b.alloc(a.size(), COMPUTE);
            b.free(a);
            if acts.len() % 4 == 0 {
                buckets.push(b.alloc(25 << 20, COMM));
            }
            if buckets.len() > 2 {
                b.free(buckets.remove(0));
            }
            b.free(g);
        }
        b.free_all(buckets);
        b.free(input);
    }
    b.free(next_input);
    b.free_all(weights);
    b.finish()
}
