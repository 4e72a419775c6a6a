//! The GPU smoke test (`examples/gpu_smoke.rs`, what `scripts/gpu-check.sh` runs on a GPU)
//! against the CUDA driver stand-in: policies on `DevicePool<CudaBackend>`, bytes written
//! and read back, threads, streams, an OOM under a limit, a snapshot, and no leak at exit
//! (the stand-in's exit check in `abort` mode fails the run otherwise). A GPU session then
//! runs code that has already run.

use std::path::PathBuf;
use std::process::Command;

/// The example cargo built with this test (`target/<profile>/examples/gpu_smoke`).
fn smoke_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples/gpu_smoke");
    path.is_file().then_some(path)
}

#[test]
fn gpu_smoke_passes_on_the_driver_standin() {
    use std::io::Write;
    let skip = |why: String| {
        let _ = writeln!(
            std::io::stderr(),
            "skipping gpu_smoke on the stand-in: {why}"
        );
    };
    let Some(smoke) = smoke_binary() else {
        return skip("examples/gpu_smoke was not built (cargo test builds examples)".into());
    };
    let path = match coalesce_cuda_standin_loader::ld_library_path() {
        Ok(p) => p,
        Err(e) => return skip(format!("no CUDA driver stand-in: {e}")),
    };
    // Three policies (one that maps granules, PyTorch's expandable segments, a classic one)
    // and two threads keep it to seconds; a GPU session runs all of them.
    let policies = ["coalesce", "torch-expandable", "bfc-classic"];
    let o = Command::new(&smoke)
        .args(policies.iter().flat_map(|p| ["--policy", p]))
        .args(["--threads", "2"])
        .env("LD_LIBRARY_PATH", path)
        .env("COALESCE_STANDIN_CAPACITY", "8GiB")
        .env("COALESCE_STANDIN_STREAM_LAG_MS", "0.05")
        .env("COALESCE_STANDIN_LEAK_CHECK", "abort")
        .output()
        .expect("run gpu_smoke");
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "{}\n--- stdout\n{out}\n--- stderr\n{err}",
        o.status
    );
    let all = format!("{out}{err}");
    assert!(all.contains("gpu_smoke: all checks passed"), "{all}");
    for policy in policies {
        assert!(
            all.contains(&format!("policy {policy}:")),
            "{policy} was not checked:\n{all}"
        );
    }
    assert!(
        all.contains("\"leaks\":0"),
        "the stand-in's exit report: {all}"
    );
}
