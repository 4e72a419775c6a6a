//! LLM decoding with a growing KV cache, Llama shaped (12 layers, 1024 wide, 16 heads, bf16).
//!
//! Each decode step concatenates one token to every layer's K and V: a new tensor one token
//! longer is allocated, the old one copied and freed. Tensors of slowly growing sizes that die
//! just after their successor is born are the pattern that leaves a moving hole behind.

use super::builder::{Tensor, TraceBuilder};
use super::rng::SplitMix64;
use crate::event::RawEvent;

const LAYERS: u64 = 12;
const HIDDEN: u64 = 1024;
const HEADS: u64 = 16;
const HEAD_DIM: u64 = 64;
const MLP: u64 = 2816;
const VOCAB: u64 = 32_000;
const STREAM: u64 = 0;

fn weights(b: &mut TraceBuilder) -> Vec<Tensor> {
    let h = HIDDEN;
    let mut w = vec![b.alloc(VOCAB * h * 2, STREAM)];
    for _ in 0..LAYERS {
        for size in [
            h * 2,
            h * h * 2,
            h * h * 2,
            h * h * 2,
            h * h * 2,
            h * 2,
            MLP * h * 2,
            MLP * h * 2,
            h * MLP * 2,
        ] {
            w.push(b.alloc(size, STREAM));
        }
    }
    w.push(b.alloc(h * 2, STREAM));
    w.push(b.alloc(VOCAB * h * 2, STREAM));
    w
}

/// Activations of one forward pass over `tokens` tokens with `context` keys visible.
fn forward_temporaries(b: &mut TraceBuilder, batch: u64, tokens: u64, context: u64) {
    let t = batch * tokens;
    let x = b.alloc(t * HIDDEN * 2, STREAM);
    let scores = b.alloc(batch * HEADS * tokens * context * 2, STREAM);
    let probs = b.alloc(batch * HEADS * tokens * context * 2, STREAM);
    b.free(scores);
    let gate = b.alloc(t * MLP * 2, STREAM);
    let up = b.alloc(t * MLP * 2, STREAM);
    b.free_all([probs, gate, up, x]);
}

/// Eight requests of batch 1-8, prompt 16-768 tokens, 16-160 new tokens.
pub fn decode(seed: u64) -> Vec<RawEvent> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TraceBuilder::new();
    let w = weights(&mut b);
    for _ in 0..8 {
        let (batch, prompt, new) = (rng.range(1, 8), rng.range(16, 768), rng.range(16, 160));
        let ids = b.alloc(batch * prompt * 8, STREAM);
        let per_token = batch * HEADS * HEAD_DIM * 2;
        let mut cache: Vec<Tensor> = Vec::new();
        for _ in 0..LAYERS {
            forward_temporaries(&mut b, batch, prompt, prompt);
            cache.push(b.alloc(per_token * prompt, STREAM));
            cache.push(b.alloc(per_token * prompt, STREAM));
        }
        for step in 1..=new {
            let len = prompt + step;
            for layer in 0..LAYERS as usize {
                forward_temporaries(&mut b, batch, 1, len);
                for kv in [2 * layer, 2 * layer + 1] {
                    let grown = b.alloc(per_token * len, STREAM);
                    let old = std::mem::replace(&mut cache[kv], grown);
                    b.free(old);
                }
            }
            let logits = b.alloc(batch * VOCAB * 4, STREAM);
            b.free(logits);
        }
        b.free_all(cache);
        b.free(ids);
    }
    b.free_all(w);
    b.finish()
}
