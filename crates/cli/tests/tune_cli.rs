//! `coalesce tune` as a user runs it: on every bundled trace it finds a setting that reserves
//! less than PyTorch's default, and `coalesce replay` under that setting confirms the figure.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn coalesce(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coalesce"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run coalesce")
}

fn json_lines(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn bundled() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo_root().join("traces"))
        .unwrap()
        .map(|e| format!("traces/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".csv.gz"))
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

/// Peak reserved bytes of `coalesce replay` under `policy`.
fn replayed_reserved(trace: &str, policy: &str) -> u64 {
    let lines = json_lines(&coalesce(&[
        "replay",
        trace,
        "-p",
        policy,
        "--repeats",
        "1",
        "--json",
    ]));
    assert_eq!(lines.len(), 1);
    lines[0]["peak_reserved_bytes"].as_u64().unwrap()
}

#[test]
fn finds_a_setting_that_reserves_less_than_the_default_on_every_bundled_trace() {
    for trace in bundled() {
        let out = json_lines(&coalesce(&["tune", &trace, "--quick", "--json"]));
        let v = &out[0];
        let best = v["best"]["conf"].as_str().unwrap();
        assert!(!best.is_empty(), "{trace}: the default won: {v}");
        let saved = v["best"]["saved_bytes"].as_i64().unwrap();
        assert!(saved > 0, "{trace}: {v}");

        let default = replayed_reserved(&trace, "torch-native");
        let tuned = replayed_reserved(&trace, &format!("torch-native:{best}"));
        assert_eq!(
            default,
            v["default"]["peak_reserved_bytes"].as_u64().unwrap()
        );
        assert_eq!(tuned, v["best"]["peak_reserved_bytes"].as_u64().unwrap());
        assert_eq!(default - tuned, saved as u64, "{trace}");
    }
}

#[test]
fn capacity_names_the_settings_that_avoid_the_defaults_out_of_memory() {
    let o = coalesce(&[
        "tune",
        "traces/resnet50_train.trace.csv.gz",
        "--quick",
        "--capacity",
        "8.7GiB",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("out-of-memory error(s) and"), "{text}");
    assert!(text.contains("PYTORCH_CUDA_ALLOC_CONF="), "{text}");
    assert!(text.contains("instead of"), "{text}");
}

#[test]
fn every_flag_has_help() {
    let o = coalesce(&["tune", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--capacity",
        "--quick",
        "--no-expandable",
        "--top",
        "--jobs",
        "--json",
    ] {
        let line = help.lines().find(|l| l.contains(flag)).unwrap();
        // The flag, its value name, then at least a few words of help.
        let documented = line.split_whitespace().count() >= 5;
        assert!(documented, "{flag}: {help}");
    }
}
