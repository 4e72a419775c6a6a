//! `coalesce bench` as a user runs it.

use std::path::Path;
use std::process::Command;

fn coalesce(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_coalesce"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .expect("run coalesce")
}

fn tiny_trace() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coalesce-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.csv");
    let mut csv = String::from("action,addr,size,stream\n");
    // Blocks of 3-21 MB, each freed two allocations later, all freed by the end.
    for i in 0..202u64 {
        if i < 200 {
            csv.push_str(&format!(
                "alloc,{},{},0\n",
                4096 * (i + 1),
                (i % 7 + 1) * 3_000_000
            ));
        }
        if i >= 2 {
            csv.push_str(&format!("free_completed,{},{},0\n", 4096 * (i - 1), 0));
        }
    }
    std::fs::write(&path, csv).unwrap();
    path
}

#[test]
fn json_lines_carry_every_bench_figure_for_every_policy() {
    let trace = tiny_trace();
    let o = coalesce(&[
        "bench",
        "--only",
        trace.to_str().unwrap(),
        "--repeats",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let policies: Vec<&str> = lines
        .iter()
        .map(|l| l["policy"].as_str().unwrap())
        .collect();
    for p in [
        "coalesce",
        "torch-native",
        "torch-expandable",
        "cuda-malloc",
        "oracle",
    ] {
        assert!(policies.contains(&p), "{p} missing from {policies:?}");
    }
    for l in &lines {
        for key in [
            "reserved_ratio",
            "oracle_bound_bytes",
            "oracle_placement_bytes",
            "bound_bytes",
            "vs_oracle",
            "vs_bound",
            "driver_calls_per_1000_allocs",
            "est_driver_us",
            "ns_per_op",
            "cpu_vs_torch_native",
        ] {
            assert!(!l[key].is_null(), "{}: {key} missing", l["policy"]);
        }
        assert!(l["vs_bound"].as_f64().unwrap() >= 1.0, "{l}");
        if l["policy"] == "oracle" {
            assert_eq!(l["peak_reserved_bytes"], l["oracle_placement_bytes"]);
            assert_eq!(l["vs_oracle"], 1.0);
        }
        if l["policy"] == "torch-native" {
            assert!((l["cpu_vs_torch_native"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        }
        if l["policy"] == "cuda-malloc" {
            // One cuMemAlloc and one cuMemFree per request: the cost table's 85 us pair at most
            // a little more for these sizes.
            let per_alloc = l["est_driver_us"].as_f64().unwrap() / 200.0;
            assert!((84.0..100.0).contains(&per_alloc), "{per_alloc}");
        }
    }
}

#[test]
fn the_goal_table_judges_coalesce_against_its_peers() {
    let trace = tiny_trace();
    let o = coalesce(&["bench", "--only", trace.to_str().unwrap(), "--repeats", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Goals of `coalesce`",
        "reserved ≤ 1.02x",
        "CPU ≤ 100 ns and < torch-native",
        "driver time ≤ torch-expandable",
        "tiny",
    ] {
        assert!(out.contains(needle), "lacks {needle:?}:\n{out}");
    }
    let summary = out
        .lines()
        .find(|l| l.starts_with("goals met on 1 traces: reserved "))
        .unwrap_or_else(|| panic!("no summary line:\n{out}"));
    // The summary counts what the table says, goal by goal.
    let table_ratio_ok = out
        .lines()
        .any(|l| l.contains("tiny") && l.contains("┆ yes ("));
    assert_eq!(
        summary.contains("reserved 1/1"),
        table_ratio_ok,
        "{summary}\n{out}"
    );
}

#[test]
fn seeds_add_every_generator_at_each_seed() {
    let o = coalesce(&[
        "bench",
        "--seeds",
        "2",
        "--repeats",
        "1",
        "-p",
        "coalesce",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let traces: Vec<String> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["trace"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for name in [
        "gpt2_train",
        "synth-kv-cache",
        "synth-kv-cache@2",
        "synth-fragmenter@2",
    ] {
        assert!(
            traces.iter().any(|t| t == name),
            "{name} missing from {traces:?}"
        );
    }
    assert!(
        !traces
            .iter()
            .any(|t| t.ends_with("@1") || t.ends_with("@3")),
        "{traces:?}"
    );
}

#[test]
fn a_cost_table_missing_a_call_is_refused_with_exit_2() {
    let dir = std::env::temp_dir().join(format!("coalesce-bench-costs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let costs = dir.join("costs.json");
    std::fs::write(
        &costs,
        r#"{"calls": {"mem_alloc": {"us": 1, "us_per_mib": 0, "source": "x"}}}"#,
    )
    .unwrap();
    let o = coalesce(&["bench", "--only", "--costs", costs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no cost for mem_free"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn no_oracle_drops_its_row_columns_and_figures() {
    let trace = tiny_trace();
    let path = trace.to_str().unwrap();
    let o = coalesce(&["bench", "--only", path, "--repeats", "1", "-p", "coalesce"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("vs oracle") && out.contains("vs bound"),
        "{out}"
    );
    let o = coalesce(&[
        "bench",
        "--only",
        path,
        "--repeats",
        "1",
        "--no-oracle",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for l in String::from_utf8(o.stdout).unwrap().lines() {
        let l: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_ne!(l["policy"], "oracle");
        assert!(l["vs_oracle"].is_null() && l["vs_bound"].is_null(), "{l}");
    }
    let o = coalesce(&["bench", "--only", path, "--repeats", "1", "--no-oracle"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("vs oracle") && !out.contains(" oracle "),
        "{out}"
    );
}
