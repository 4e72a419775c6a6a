//! Through the pool, as `coalesce replay --oracle` measures: no policy ever reserves less than
//! the bound that holds for it, and the `oracle` row reserves exactly its placement.

use super::*;
use crate::replay::{self, ReplayConfig, ReplayResult, measured_pass};
use coalesce_backend::sim::SimConfig;
use coalesce_policy::oracle::INFO as ORACLE;
use coalesce_policy::{OFFLINE, PolicySpec, REGISTRY};
use coalesce_trace::synth::GENERATORS;

/// The measured pass of every online policy and of the oracle on `trace`, each with the
/// trace's oracle figures.
fn every_policy(trace: &Trace) -> (TraceOracle, Vec<ReplayResult>) {
    let config = ReplayConfig {
        sim: SimConfig::default(),
        repeats: 1,
        series_points: 4,
    };
    let oracle = TraceOracle::new(trace, &oracle_config(&config.sim));
    let results = REGISTRY
        .iter()
        .chain(OFFLINE)
        .map(|info| {
            let spec = PolicySpec::named(info.name);
            let mut r = measured_pass(trace, &spec, &config, Some(&oracle), &mut |_| {})
                .unwrap_or_else(|e| panic!("{e}"));
            r.oracle = Some(oracle.figures);
            r
        })
        .collect();
    (oracle, results)
}

/// No policy below its bound; the oracle's row at its placement; the bounds consistent with
/// the trace.
fn check_trace(trace: &Trace) {
    let (oracle, results) = every_policy(trace);
    let f = oracle.figures;
    // Classic memory's bound (1-byte granules and alignment) is the peak of live bytes.
    assert_eq!(f.peak_live_bytes, trace.stats.peak_requested_bytes);
    assert!(f.peak_live_bytes <= f.bound_bytes && f.bound_bytes <= f.placement_bytes);
    assert_eq!(results.len(), REGISTRY.len() + OFFLINE.len());
    for r in &results {
        assert_eq!(r.ooms, 0, "{} on {}", r.policy, trace.name);
        let g = r.gap().unwrap();
        assert!(
            r.peak_reserved_bytes >= g.bound_bytes && g.vs_bound >= 1.0,
            "{} on {}: reserved {} < bound {}",
            r.policy,
            trace.name,
            r.peak_reserved_bytes,
            g.bound_bytes
        );
        if r.policy == ORACLE.name {
            assert!(!r.used_classic_memory());
            assert_eq!(r.peak_reserved_bytes, f.placement_bytes, "{}", trace.name);
            assert_eq!(g.vs_oracle, 1.0);
        }
    }
}

fn bundled(name: &str) -> Trace {
    let paths = replay::bundled_traces().unwrap();
    let path = paths
        .iter()
        .find(|p| replay::trace_name(p) == name)
        .unwrap_or_else(|| panic!("{name} is not bundled"));
    let mut traces = replay::load_trace(path).unwrap();
    assert_eq!(traces.len(), 1);
    traces.pop().unwrap()
}

/// The bundled traces this file covers: all of them (a new one fails here until it has a
/// test below).
#[test]
fn every_bundled_trace_is_covered() {
    let names: Vec<String> = replay::bundled_traces()
        .unwrap()
        .iter()
        .map(|p| replay::trace_name(p))
        .collect();
    assert_eq!(names, ["gpt2_train", "llama_generate", "resnet50_train"]);
}

#[test]
fn no_policy_below_the_bound_on_gpt2_train() {
    check_trace(&bundled("gpt2_train"));
}

#[test]
fn no_policy_below_the_bound_on_llama_generate() {
    check_trace(&bundled("llama_generate"));
}

#[test]
fn no_policy_below_the_bound_on_resnet50_train() {
    check_trace(&bundled("resnet50_train"));
}

/// Seed 3: not a seed the policies' defaults were chosen on.
#[test]
fn no_policy_below_the_bound_on_the_generators() {
    for g in GENERATORS {
        check_trace(&replay::synth_trace(&format!("{}@3", g.name)).unwrap());
    }
}

/// A zero-byte allocation is refused by the pool before any policy sees it: the oracle leaves
/// it out of its plan, so the allocations after it still get their planned addresses.
#[test]
fn zero_byte_allocations_are_left_out_of_the_plan() {
    use coalesce_trace::{Action, RawEvent, resolve};
    let ev = |action, addr, size| RawEvent {
        action,
        addr,
        size,
        stream: 0,
        location: 0,
    };
    let events = [
        ev(Action::Alloc, 1 << 20, 3 << 20),
        ev(Action::Alloc, 2 << 30, 0),
        ev(Action::Alloc, 3 << 30, 1 << 20),
        ev(Action::FreeCompleted, 2 << 30, 0),
        ev(Action::FreeCompleted, 1 << 20, 3 << 20),
        ev(Action::Alloc, 4 << 30, 2 << 20),
    ];
    let trace = resolve("zeros", &events);
    assert_eq!(trace.stats.allocs, 4);
    let input = oracle_input(&trace);
    assert_eq!(input.blocks.len(), 3);
    assert_eq!(input.blocks[1].size, 1 << 20);
    check_trace(&trace);
}
