//! The Python package `python/coalesce_torch` against this build's libcoalesce.so, on the
//! simulated backend and on the CUDA backend over the CPU stand-in for libcuda
//! (python/tests/test_coalesce_torch.py; neither torch nor a GPU needed).

mod common;

use common::{lib_dir, repo_root, text};
use std::process::Command;

/// `python3 test_coalesce_torch.py` with this build's library and no pool setting from the
/// caller's environment, or `None` (said) without python3.
fn python_test() -> Option<Command> {
    if Command::new("python3").arg("--version").output().is_err() {
        common::skip("no python3");
        return None;
    }
    let mut c = Command::new("python3");
    c.arg(repo_root().join("python/tests/test_coalesce_torch.py"))
        .env("COALESCE_LIB", lib_dir().join("libcoalesce.so"))
        .env_remove("COALESCE_POLICY")
        .env_remove("COALESCE_MEMORY_LIMIT");
    // Where torch was installed for these tests (CI installs it; no GPU needed).
    if let Some(site) = std::env::var_os("COALESCE_TORCH_SITE") {
        c.env("PYTHONPATH", site);
    }
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("COALESCE_STANDIN_") {
            c.env_remove(var);
        }
    }
    Some(c)
}

/// All ten tests passed; the one with real torch may be skipped when torch is not
/// importable, which is said on stderr.
fn check_passed(o: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(o));
    let ok = stderr.lines().any(|l| l == "OK");
    let skipped = stderr.lines().any(|l| l == "OK (skipped=1)");
    assert!(
        stderr.contains("Ran 10 tests") && (ok || skipped),
        "{}",
        text(o)
    );
    if skipped {
        common::skip(
            "torch is not importable (set COALESCE_TORCH_SITE to a site-packages holding it), \
             so torch's own calls were checked on a stand-in torch module only",
        );
    }
}

#[test]
fn the_python_package_works_on_the_simulated_backend() {
    let Some(mut python) = python_test() else {
        return;
    };
    let o = python
        .env("LD_LIBRARY_PATH", lib_dir())
        .env("COALESCE_BACKEND", "sim")
        .env("COALESCE_SIM_CAPACITY", (1u64 << 30).to_string())
        .output()
        .expect("run python3");
    check_passed(&o);
}

/// The same tests through the CUDA backend: `LD_LIBRARY_PATH` is the stand-in's loader
/// directory (`libcuda.so.1` there) then this build's library directory; the stand-in's device
/// has 1 GiB, as the simulated one above, so memory fractions mean the same bytes.
#[test]
fn the_python_package_works_on_the_cuda_backend_over_the_driver_standin() {
    let Some(mut python) = python_test() else {
        return;
    };
    let loader = match coalesce_cuda_standin_loader::loader_dir() {
        Ok(dir) => dir,
        Err(e) => {
            common::skip(&format!("no CUDA driver stand-in: {e}"));
            return;
        }
    };
    let mut path = loader.into_os_string();
    path.push(":");
    path.push(lib_dir());
    let o = python
        .env("LD_LIBRARY_PATH", path)
        .env("COALESCE_BACKEND", "cuda")
        .env("COALESCE_STANDIN_CAPACITY", "1GiB")
        .env("COALESCE_STANDIN_LEAK_CHECK", "1")
        .output()
        .expect("run python3");
    check_passed(&o);
    // The stand-in's report at exit shows it was the driver in use; the package's calls left
    // no stream work that found its memory gone.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let report = stderr
        .lines()
        .find_map(|l| l.strip_prefix("coalesce-cuda-standin: leak report: "))
        .unwrap_or_else(|| panic!("no leak report from the stand-in: {}", text(&o)));
    let report: serde_json::Value = serde_json::from_str(report).expect("the report is JSON");
    assert_eq!(report["async_faults"], serde_json::json!([]), "{report}");
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
