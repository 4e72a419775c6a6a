//! The `coalesce replay` command as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn coalesce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coalesce"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run coalesce")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "coalesce failed: {}", stderr(o));
    String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coalesce-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn bundled_traces_report_their_exact_peaks_and_cuda_malloc_is_the_unit() {
    let lines = json_lines(&coalesce(&[
        "replay",
        "--json",
        "--repeats",
        "1",
        "--policy",
        "cuda-malloc,bfc-classic",
    ]));
    assert_eq!(lines.len(), 6, "3 traces x 2 policies");
    let expected = [
        ("gpt2_train", 20_530_102_300u64),
        ("llama_generate", 731_571_329),
        ("resnet50_train", 9_298_465_232),
    ];
    for (trace, peak) in expected {
        for line in lines.iter().filter(|l| l["trace"] == trace) {
            assert_eq!(line["peak_requested_bytes"], peak, "{trace}");
            for key in [
                "events",
                "allocs",
                "peak_reserved_bytes",
                "reserved_ratio",
                "driver_calls",
                "ns_per_op",
                "wall_s",
            ] {
                assert!(!line[key].is_null(), "{trace}: missing {key}");
            }
            assert!(line["ns_per_op"].as_f64().unwrap() > 0.0);
            if line["policy"] == "cuda-malloc" {
                let ratio = line["reserved_ratio"].as_f64().unwrap();
                assert!(
                    (ratio - 1.0).abs() < 1e-3,
                    "{trace}: cuda-malloc ratio {ratio}"
                );
                assert_eq!(line["driver_calls"]["mem_alloc"], line["allocs"]);
            } else {
                assert!(line["reserved_ratio"].as_f64().unwrap() >= 1.0);
            }
        }
    }
}

#[test]
fn the_human_table_names_every_trace_and_policy() {
    let trace = temp_file(
        "tiny.csv",
        "action,addr,size,stream\nalloc,4096,1000,0\nfree_completed,4096,1000,0\n",
    );
    let o = coalesce(&["replay", trace.to_str().unwrap(), "--repeats", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "tiny",
        "bfc-classic",
        "cuda-malloc",
        "peak reserved",
        "1000 B",
    ] {
        assert!(out.contains(needle), "table lacks {needle:?}:\n{out}");
    }
}

#[test]
fn a_malformed_trace_exits_2_naming_file_and_line() {
    let trace = temp_file(
        "bad.csv",
        "action,addr,size,stream\nalloc,4096,1000,0\nalloc,oops,1000,0\n",
    );
    let o = coalesce(&["replay", trace.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("bad.csv:3: addr \"oops\" is not a non-negative integer"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_negative_size_exits_2_naming_the_line() {
    let trace = temp_file("neg.csv", "action,addr,size,stream\nalloc,4096,-1000,0\n");
    let o = coalesce(&["replay", trace.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("neg.csv:2: negative size -1000"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unknown_free_is_a_warning_with_its_line() {
    let trace = temp_file(
        "unknown-free.csv",
        "action,addr,size,stream\nfree_completed,8192,10,0\nalloc,4096,1000,0\nfree_completed,4096,1000,0\n",
    );
    let o = coalesce(&[
        "replay",
        trace.to_str().unwrap(),
        "--json",
        "--repeats",
        "1",
        "--policy",
        "cuda-malloc",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("entry 2: free of unknown address 0x2000 (ignored)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(json_lines(&o)[0]["allocs"], 1);
}

#[test]
fn unknown_policies_and_options_exit_2_with_the_alternatives() {
    let o = coalesce(&["replay", "--policy", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown policy \"nope\"; known policies: "),
        "{}",
        stderr(&o)
    );
    let o = coalesce(&["replay", "--policy", "bfc-classic:frob:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown option \"frob\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_missing_file_exits_2_naming_it() {
    let o = coalesce(&["replay", "/nonexistent/trace.csv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/trace.csv"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn plots_are_svg_with_a_line_per_policy() {
    let trace = temp_file(
        "plotme.csv",
        "action,addr,size,stream\nalloc,4096,3000000,0\nalloc,9999999,5000,0\nfree_completed,4096,3000000,0\n",
    );
    let dir = trace.parent().unwrap().join("plots");
    let o = coalesce(&[
        "replay",
        trace.to_str().unwrap(),
        "--repeats",
        "1",
        "--plot",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(dir.join("plotme.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    for needle in [
        "requested (live tensors)",
        "bfc-classic reserved",
        "cuda-malloc reserved",
        "GiB",
    ] {
        assert!(svg.contains(needle), "plot lacks {needle:?}");
    }
}

#[test]
fn the_oracle_row_reserves_its_placement_and_every_row_shows_its_gaps() {
    let lines = json_lines(&coalesce(&[
        "replay",
        "traces/resnet50_train.trace.csv.gz",
        "--json",
        "--repeats",
        "1",
        "--policy",
        "cuda-malloc,oracle,coalesce",
    ]));
    let policies: Vec<&str> = lines
        .iter()
        .map(|l| l["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        policies,
        ["cuda-malloc", "oracle", "coalesce"],
        "in --policy order"
    );
    let placement = lines[0]["oracle_placement_bytes"].as_u64().unwrap();
    let bound = lines[0]["oracle_bound_bytes"].as_u64().unwrap();
    let peak = 9_298_465_232u64;
    assert!(peak <= bound && bound <= placement, "{bound} {placement}");
    for l in &lines {
        // The trace's figures are the same on every row.
        assert_eq!(l["oracle_placement_bytes"], placement);
        assert_eq!(l["oracle_bound_bytes"], bound);
        assert_eq!(l["oracle_peak_live_bytes"], peak);
        let reserved = l["peak_reserved_bytes"].as_u64().unwrap();
        let row_bound = l["bound_bytes"].as_u64().unwrap();
        assert!(reserved >= row_bound, "{l}");
        let vs = |key: &str| l[key].as_f64().unwrap();
        assert!((vs("vs_oracle") - reserved as f64 / placement as f64).abs() < 1e-12);
        assert!((vs("vs_bound") - reserved as f64 / row_bound as f64).abs() < 1e-12);
    }
    // cuMemAlloc is charged by the byte: its bound is the peak of live bytes.
    assert_eq!(lines[0]["bound_bytes"], peak);
    assert_eq!(lines[1]["peak_reserved_bytes"], placement);
    assert_eq!(lines[1]["bound_bytes"], bound);
    assert_eq!(lines[1]["vs_oracle"], 1.0);
    assert!(lines[2]["vs_oracle"].as_f64().unwrap() > 1.0);
}

#[test]
fn without_oracle_its_fields_are_null_and_its_columns_absent() {
    let trace = temp_file(
        "plain.csv",
        "action,addr,size,stream\nalloc,4096,3000000,0\nfree_completed,4096,3000000,0\n",
    );
    let path = trace.to_str().unwrap();
    let lines = json_lines(&coalesce(&["replay", path, "--json", "--repeats", "1"]));
    assert!(lines.iter().all(|l| l["policy"] != "oracle"));
    for l in &lines {
        for key in [
            "oracle_placement_bytes",
            "bound_bytes",
            "vs_oracle",
            "vs_bound",
        ] {
            assert!(l[key].is_null(), "{key}: {l}");
        }
    }
    let o = coalesce(&["replay", path, "--repeats", "1"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        !table.contains("vs oracle") && !table.contains(" oracle "),
        "{table}"
    );
    let o = coalesce(&["replay", path, "--repeats", "1", "--oracle"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    let cells: Vec<&str> = table
        .lines()
        .map(|l| l.split('┆').map(str::trim).collect::<Vec<_>>())
        .find(|c| c.get(1) == Some(&"oracle"))
        .unwrap_or_else(|| panic!("--oracle adds the oracle's row:\n{table}"));
    // 3 MB in 2 MiB granules: two granules at best, and the bound is two granules.
    assert_eq!(
        cells[4..8],
        ["4.00 MiB", "1.398x", "1.0000x", "1.0000x"],
        "{table}"
    );
    assert!(
        table.contains("vs oracle") && table.contains("vs bound"),
        "{table}"
    );
}

#[test]
fn the_oracle_row_refuses_stream_lag_and_options() {
    let o = coalesce(&["replay", "-p", "oracle", "--stream-lag", "5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--stream-lag 0"), "{}", stderr(&o));
    let o = coalesce(&["replay", "-p", "oracle:frob:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("policy oracle: unknown option \"frob\""),
        "{}",
        stderr(&o)
    );
}
