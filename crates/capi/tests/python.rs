//! The Python package `python/coalesce_torch` against this build's libcoalesce.so on the
//! simulated backend (python/tests/test_coalesce_torch.py; neither torch nor a GPU needed).

mod common;

use common::{lib_dir, repo_root, text};
use std::process::Command;

#[test]
fn the_python_package_works_on_the_simulated_backend() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipping: no python3");
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
        stderr.contains("Ran 6 tests") && stderr.trim_end().ends_with("OK"),
        "{}",
        text(&o)
    );
}
