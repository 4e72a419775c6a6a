//! LLM serving: many concurrent requests of random prompt and output lengths, batched
//! continuously (a request joins the batch when it arrives and leaves when it is done).
//!
//! Each request's KV cache is one tensor per layer for its prompt, then grows by a chunk of 16
//! tokens per layer. Requests end at random times, so caches of every size die in an order
//! unrelated to their birth: the holes they leave are scattered among live caches.

use super::builder::{Tensor, TraceBuilder};
use super::rng::SplitMix64;
use crate::event::RawEvent;

const LAYERS: u64 = 12;
const HIDDEN: u64 = 1024;
const HEADS: u64 = 16;
const MLP: u64 = 2816;
const VOCAB: u64 = 32_000;
/// K and V of one token in one layer, bf16.
const KV_PER_TOKEN: u64 = 2 * HIDDEN * 2;
const CHUNK: u64 = 16;
const REQUESTS: u64 = 160;
const MAX_ACTIVE: usize = 32;
const STREAM: u64 = 0;

struct Request {
    context: u64,
    /// Tokens the cache has room for.
    capacity: u64,
    remaining: u64,
    cache: Vec<Tensor>,
}

/// One scheduler iteration's activations over `tokens` tokens attending to `context` keys.
fn iteration(b: &mut TraceBuilder, tokens: u64, context: u64) {
    let x = b.alloc(tokens * HIDDEN * 2, STREAM);
    let scores = b.alloc(HEADS * context * 2 * tokens.min(64), STREAM);
    b.free(scores);
    let mlp = b.alloc(tokens * MLP * 2 * 2, STREAM);
    b.free(mlp);
    let logits = b.alloc(tokens.min(MAX_ACTIVE as u64 * 2) * VOCAB * 4, STREAM);
    b.free_all([logits, x]);
}

/// 160 requests, prompts of 16-1024 tokens, 8-384 new tokens; at most 32 run at once, and a
/// new one arrives at each iteration with probability 0.3.
pub fn continuous_batching(seed: u64) -> Vec<RawEvent> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TraceBuilder::new();
    let mut weights = vec![b.alloc(VOCAB * HIDDEN * 2, STREAM)];
    for _ in 0..LAYERS {
        for size in [HIDDEN * HIDDEN * 2 * 4, 3 * MLP * HIDDEN * 2, HIDDEN * 4] {
            weights.push(b.alloc(size, STREAM));
        }
    }
    let (mut arrived, mut active) = (0, Vec::<Request>::new());
    while arrived < REQUESTS || !active.is_empty() {
        let mut prefill = 0;
        while arrived < REQUESTS
            && active.len() < MAX_ACTIVE
            && (active.is_empty() || rng.chance(0.3))
        {
            let prompt = rng.log_uniform(16, 1024);
            let ids = b.alloc(prompt * 8, STREAM);
            let cache = (0..LAYERS)
                .map(|_| b.alloc(prompt * KV_PER_TOKEN, STREAM))
                .collect();
            b.free(ids);
            prefill += prompt;
            active.push(Request {
                context: prompt,
                capacity: prompt,
                remaining: rng.log_uniform(8, 384),
                cache,
            });
            arrived += 1;
        }
        let context = active.iter().map(|r| r.context).max().unwrap_or(0);
        iteration(&mut b, prefill + active.len() as u64, context);
        for r in &mut active {
            if r.context == r.capacity {
                for _ in 0..LAYERS {
                    r.cache.push(b.alloc(CHUNK * KV_PER_TOKEN, STREAM));
                }
                r.capacity += CHUNK;
            }
            r.context += 1;
            r.remaining -= 1;
        }
        let (done, running): (Vec<_>, Vec<_>) = active.into_iter().partition(|r| r.remaining == 0);
        for r in done {
            b.free_all(r.cache);
        }
        active = running;
    }
    b.free_all(weights);
    b.finish()
}
