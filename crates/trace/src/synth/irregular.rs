//! A training loop that repeats the same step, with a few irregular steps in between.
//!
//! A steady loop allocates the same sizes in the same order every step: an allocator that
//! learns from earlier steps is right almost always. The irregular steps are what it must
//! survive: an evaluation pass (forward only, larger batch, activations freed layer by layer),
//! a longer-sequence step, and metrics kept alive across a few steps.

use super::builder::{Tensor, TraceBuilder};
use super::rng::SplitMix64;
use crate::event::RawEvent;

const LAYERS: u64 = 8;
const HIDDEN: u64 = 1024;
const HEADS: u64 = 16;
const VOCAB: u64 = 32_000;
const BATCH: u64 = 8;
const SEQ: u64 = 256;
const STEPS: u64 = 24;
const STREAM: u64 = 0;

/// Parameter sizes (fp32): embedding, then per layer attention and MLP weights and norms.
fn parameters() -> Vec<u64> {
    let h = HIDDEN;
    let mut p = vec![VOCAB * h * 4];
    for _ in 0..LAYERS {
        p.extend([
            h * 4,
            3 * h * h * 4,
            h * h * 4,
            h * 4,
            4 * h * h * 4,
            4 * h * h * 4,
        ]);
    }
    p
}

/// One layer's forward pass over `batch` x `seq` tokens; returns what backward needs.
fn layer_forward(b: &mut TraceBuilder, batch: u64, seq: u64) -> Vec<Tensor> {
    let (t, h) = (batch * seq, HIDDEN);
    let ln = b.alloc(t * h * 2, STREAM);
    let qkv = b.alloc(t * 3 * h * 2, STREAM);
    let scores = b.alloc(batch * HEADS * seq * seq * 2, STREAM);
    let attn = b.alloc(t * h * 2, STREAM);
    let proj = b.alloc(t * h * 2, STREAM);
    b.free(proj);
    let fc = b.alloc(t * 4 * h * 2, STREAM);
    let act = b.alloc(t * 4 * h * 2, STREAM);
    let out = b.alloc(t * h * 4, STREAM);
    vec![ln, qkv, scores, attn, fc, act, out]
}

/// A training step: forward, backward, AdamW (moments created at the first step).
fn train_step(b: &mut TraceBuilder, weights: &[Tensor], moments: &mut Vec<Tensor>, seq: u64) {
    let input = b.alloc(BATCH * seq * 8, STREAM);
    let saved: Vec<Vec<Tensor>> = (0..LAYERS).map(|_| layer_forward(b, BATCH, seq)).collect();
    let logits = b.alloc(BATCH * seq * VOCAB * 2, STREAM);
    let loss = b.alloc(4, STREAM);
    let grad_logits = b.alloc(BATCH * seq * VOCAB * 2, STREAM);
    b.free_all([logits, loss]);
    let grads: Vec<Tensor> = weights.iter().map(|w| b.alloc(w.size(), STREAM)).collect();
    let mut grad = b.alloc(BATCH * seq * HIDDEN * 4, STREAM);
    b.free(grad_logits);
    for layer in saved.into_iter().rev() {
        let g_fc = b.alloc(BATCH * seq * 4 * HIDDEN * 2, STREAM);
        let g_next = b.alloc(BATCH * seq * HIDDEN * 4, STREAM);
        b.free_all([g_fc, grad]);
        b.free_all(layer);
        grad = g_next;
    }
    b.free_all([grad, input]);
    if moments.is_empty() {
        *moments = weights
            .iter()
            .flat_map(|w| [w.size(), w.size()])
            .map(|s| b.alloc(s, STREAM))
            .collect();
    }
    for w in weights {
        let tmp = b.alloc(w.size(), STREAM);
        b.free(tmp);
    }
    b.free_all(grads);
}

/// An evaluation pass: no gradients, so each layer's activations die before the next layer.
fn eval_step(b: &mut TraceBuilder, batch: u64) {
    let input = b.alloc(batch * SEQ * 8, STREAM);
    for _ in 0..LAYERS {
        let acts = layer_forward(b, batch, SEQ);
        b.free_all(acts);
    }
    let logits = b.alloc(batch * SEQ * VOCAB * 2, STREAM);
    b.free_all([logits, input]);
}

/// 24 steps of batch 8 x 256 tokens; 3 to 5 of them (drawn per seed) are irregular: an
/// evaluation pass at batch 12-24, or a step at 320-512 tokens. Every step leaves a small
/// metrics tensor alive for 1-4 steps.
pub fn irregular(seed: u64) -> Vec<RawEvent> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TraceBuilder::new();
    let weights: Vec<Tensor> = parameters()
        .into_iter()
        .map(|s| b.alloc(s, STREAM))
        .collect();
    let mut moments = Vec::new();
    let odd = rng.range(3, 5);
    let mut irregular: Vec<u64> = (0..odd).map(|_| rng.range(2, STEPS - 1)).collect();
    irregular.sort_unstable();
    let mut metrics: Vec<(u64, Tensor)> = Vec::new();
    for step in 0..STEPS {
        if !irregular.contains(&step) {
            train_step(&mut b, &weights, &mut moments, SEQ);
        } else if rng.chance(0.5) {
            eval_step(&mut b, rng.range(12, 24));
        } else {
            train_step(&mut b, &weights, &mut moments, rng.range(320, 512));
        }
        let (done, kept): (Vec<_>, Vec<_>) = metrics.into_iter().partition(|m| m.0 <= step);
        b.free_all(done.into_iter().map(|m| m.1));
        metrics = kept;
        metrics.push((step + rng.range(1, 4), b.alloc(rng.range(4, 4096), STREAM)));
    }
    b.free_all(metrics.into_iter().map(|m| m.1));
    b.free_all(moments);
    b.free_all(weights);
    b.finish()
}
