//! Transformer training steps, GPT-2 small shaped (12 layers, 768 wide, bf16 autocast, AdamW).
//!
//! What fragments memory here is what fragments it in `gpt2_train`: every step draws a new
//! batch and sequence length, so every activation has a new size, while weights, optimizer
//! state and gradients keep theirs.

use super::builder::{Tensor, TraceBuilder};
use super::rng::SplitMix64;
use crate::event::RawEvent;

const LAYERS: u64 = 12;
const HIDDEN: u64 = 768;
const HEADS: u64 = 12;
const VOCAB: u64 = 50_257;
const STREAM: u64 = 0;

/// Parameter tensor sizes in bytes (fp32), embeddings first.
fn parameters() -> Vec<u64> {
    let h = HIDDEN;
    let mut p = vec![VOCAB * h * 4, 1024 * h * 4];
    for _ in 0..LAYERS {
        p.extend([
            2 * h * 4,
            h * 3 * h * 4,
            3 * h * 4,
            h * h * 4,
            h * 4,
            2 * h * 4,
            h * 4 * h * 4,
            4 * h * 4,
            4 * h * h * 4,
            h * 4,
        ]);
    }
    p.push(2 * h * 4);
    p
}

struct Model {
    weights: Vec<Tensor>,
    /// AdamW moments, created at the first step.
    moments: Vec<Tensor>,
}

/// One forward + backward + optimizer step on `batch` sequences of `seq` tokens.
fn step(b: &mut TraceBuilder, m: &mut Model, batch: u64, seq: u64) {
    let (t, h) = (batch * seq, HIDDEN);
    let input = b.alloc(t * 8, STREAM);
    // Autocast keeps bf16 copies of the weights for the whole forward and backward pass.
    let casts: Vec<Tensor> = m
        .weights
        .iter()
        .filter(|w| w.size() > 64 * 1024)
        .map(|w| b.alloc(w.size() / 2, STREAM))
        .collect();
    let mut saved: Vec<Vec<Tensor>> = Vec::new();
    let mut residual = b.alloc(t * h * 4, STREAM);
    for _ in 0..LAYERS {
        let ln = b.alloc(t * h * 2, STREAM);
        let qkv = b.alloc(t * 3 * h * 2, STREAM);
        let scores = b.alloc(batch * HEADS * seq * seq * 2, STREAM);
        let probs = b.alloc(batch * HEADS * seq * seq * 2, STREAM);
        let attn = b.alloc(t * h * 2, STREAM);
        let proj = b.alloc(t * h * 2, STREAM);
        let next = b.alloc(t * h * 4, STREAM);
        b.free(proj);
        let ln2 = b.alloc(t * h * 2, STREAM);
        let fc = b.alloc(t * 4 * h * 2, STREAM);
        let gelu = b.alloc(t * 4 * h * 2, STREAM);
        let out = b.alloc(t * h * 2, STREAM);
        let next2 = b.alloc(t * h * 4, STREAM);
        b.free(out);
        saved.push(vec![
            residual, ln, qkv, scores, probs, attn, next, ln2, fc, gelu,
        ]);
        residual = next2;
    }
    let logits = b.alloc(t * VOCAB * 2, STREAM);
    let logits32 = b.alloc(t * VOCAB * 4, STREAM);
    let loss = b.alloc(4, STREAM);
    let grad_logits = b.alloc(t * VOCAB * 4, STREAM);
    b.free_all([logits32, loss]);
    let mut grad = b.alloc(t * h * 4, STREAM);
    b.free_all([grad_logits, logits, residual]);
    let grads: Vec<Tensor> = m
        .weights
        .iter()
        .map(|w| b.alloc(w.size(), STREAM))
        .collect();
    while let Some(layer) = saved.pop() {
        // Gradients of the layer's activations are born and die while its saved tensors go.
        let g_fc = b.alloc(t * 4 * h * 2, STREAM);
        let g_scores = b.alloc(batch * HEADS * seq * seq * 2, STREAM);
        let g_next = b.alloc(t * h * 4, STREAM);
        b.free_all([g_fc, g_scores, grad]);
        b.free_all(layer);
        grad = g_next;
    }
    b.free_all([grad, input]);
    b.free_all(casts);
    if m.moments.is_empty() {
        m.moments = m
            .weights
            .iter()
            .flat_map(|w| [w.size(), w.size()])
            .map(|s| b.alloc(s, STREAM))
            .collect();
    }
    // foreach AdamW: one temporary per parameter, then gradients are set to None.
    for w in &m.weights {
        let tmp = b.alloc(w.size(), STREAM);
        b.free(tmp);
    }
    b.free_all(grads);
}

fn run(seed: u64, steps: u64, shape: impl Fn(&mut SplitMix64, u64) -> (u64, u64)) -> Vec<RawEvent> {
    let mut rng = SplitMix64::new(seed);
    let mut b = TraceBuilder::new();
    let weights = parameters()
        .into_iter()
        .map(|s| b.alloc(s, STREAM))
        .collect();
    let mut model = Model {
        weights,
        moments: vec![],
    };
    for i in 0..steps {
        let (batch, seq) = shape(&mut rng, i);
        step(&mut b, &mut model, batch, seq);
    }
    b.free_all(model.moments);
    b.free_all(model.weights);
    b.finish()
}

/// Batch 2-16 and sequence 64-512 drawn anew every step, 16 steps.
pub fn varying_batch(seed: u64) -> Vec<RawEvent> {
    run(seed, 16, |rng, _| (rng.range(2, 16), rng.range(64, 512)))
}

/// Batch 8, sequence growing from 64 to 1024 tokens over 16 steps (with a little jitter).
pub fn growing_sequence(seed: u64) -> Vec<RawEvent> {
    run(seed, 16, |rng, i| (8, 64 + i * 60 + rng.range(0, 16)))
}
