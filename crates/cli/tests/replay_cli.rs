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
