//! The Python package `python/coalesce_torch` against this build's libcoalesce.so on the
//! simulated backend (python/tests/test_coalesce_torch.py; neither torch nor a GPU needed).

mod common;

use common::{lib_dir, repo_root, text};
use std::process::Command;

#[test]
fn the_python_package_works_on_the_simulated_backend() {
    if Command::new("python3").arg("--version").output().is_err() {
        common::skip("no python3");
        return;
    }
    let lib = lib_dir();
    let o = Command::new("python3")
        .arg(repo_root().join("python/tests/test_coalesce_torch.py"))
        .env("COALESCE_LIB", lib.join("libcoalesce.so"))
        .env("LD_LIBRARY_PATH", &lib)
        .env("COALESCE_BACKEND", "sim")
        .env("COALESCE_SIM_CAPACITY", (1u64 << 30).to_string())
        .env_remove("COALESCE_POLICY")
        .env_remove("COALESCE_MEMORY_LIMIT")
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        stderr.contains("Ran 9 tests") && stderr.trim_end().ends_with("OK"),
        "{}",
        text(&o)
    );
}

/// `scripts/gpu_table.py`, which `gpu-check.sh run` uses to judge the pluggable allocator:
/// it passes when peak reserved is below `expandable` and wall time within 3% of `native`,
/// and fails naming the target otherwise.
#[test]
fn the_gpu_check_table_judges_the_targets() {
    if Command::new("python3").arg("--version").output().is_err() {
        common::skip("no python3");
        return;
    }
    let dir = common::scratch("gpu-table");
    let run = |pluggable_wall: f64| {
        let lines = [
            r#"{"workload": "w", "mode": "native", "wall_s": 100.0, "error": null, "peak_reserved_bytes": 3000}"#.to_owned(),
            r#"{"workload": "w", "mode": "expandable", "wall_s": 101.0, "error": null, "peak_reserved_bytes": 2000}"#.to_owned(),
            format!(r#"{{"workload": "w", "mode": "pluggable", "wall_s": {pluggable_wall}, "error": null, "allocator_stats": {{"peak_reserved_bytes": 1900}}}}"#),
        ];
        let path = dir.join("results.jsonl");
        std::fs::write(&path, lines.join("\n")).unwrap();
        Command::new("python3")
            .arg(repo_root().join("scripts/gpu_table.py"))
            .arg(&path)
            .output()
            .unwrap()
    };
    let ok = run(102.9);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("0.950x"),
        "{}",
        text(&ok)
    );
    let slow = run(103.1);
    assert_eq!(slow.status.code(), Some(1), "{}", text(&slow));
    assert!(
        String::from_utf8_lossy(&slow.stderr).contains("more than 3% over native's 100.0 s"),
        "{}",
        text(&slow)
    );
    let _ = std::fs::remove_dir_all(dir);
}
