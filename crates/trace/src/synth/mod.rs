//! Synthetic allocator traces: the workload patterns that fragment GPU memory, written down
//! as generators so policies can be measured on traces they were not tuned on.
//!
//! Every generator is deterministic for a given seed (a SplitMix64 stream, spelled out here so
//! traces stay bit-identical across dependency versions) and emits PyTorch-style events:
//! `alloc` with the requested size and `free_completed` on the allocation's stream.

mod builder;
mod fragmenter;
mod irregular;
mod kv_cache;
mod lifetimes;
mod rng;
mod serving;
mod streams;
mod training;

pub use builder::TraceBuilder;
pub use rng::SplitMix64;

use crate::event::RawEvent;

/// A named generator.
#[derive(Debug)]
pub struct Generator {
    pub name: &'static str,
    pub summary: &'static str,
    pub generate: fn(seed: u64) -> Vec<RawEvent>,
}

/// Every generator, in report order.
pub static GENERATORS: &[Generator] = &[
    Generator {
        name: "synth-training",
        summary: "transformer training, batch and sequence length drawn anew each step (like gpt2_train)",
        generate: training::varying_batch,
    },
    Generator {
        name: "synth-growing-seq",
        summary: "training whose sequence length grows step by step (curriculum, long-context warm-up)",
        generate: training::growing_sequence,
    },
    Generator {
        name: "synth-kv-cache",
        summary: "LLM decoding: per-layer KV caches reallocated one token longer at every step",
        generate: kv_cache::decode,
    },
    Generator {
        name: "synth-lifetimes",
        summary: "interleaved long- and short-lived tensors of log-uniform sizes",
        generate: lifetimes::interleaved,
    },
    Generator {
        name: "synth-streams",
        summary: "four streams (compute, data, communication, side) allocating concurrently",
        generate: streams::many_streams,
    },
    Generator {
        name: "synth-fragmenter",
        summary: "adversarial: fill, free every other block, then ask for larger blocks",
        generate: fragmenter::holes,
    },
    Generator {
        name: "synth-training-irregular",
        summary: "a training loop repeating one step, with a few irregular steps (evaluation, longer sequences)",
        generate: irregular::irregular,
    },
    Generator {
        name: "synth-serving",
        summary: "LLM serving: many concurrent requests of random lengths, KV caches growing in chunks",
        generate: serving::continuous_batching,
    },
];

pub fn lookup(name: &str) -> Option<&'static Generator> {
    GENERATORS.iter().find(|g| g.name == name)
}

#[cfg(test)]
mod tests;
