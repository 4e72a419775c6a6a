//! Real programs under `LD_PRELOAD` of the coalesce malloc: python3 (the C API contract through
//! ctypes, and a multi-threaded script), git and `cargo build` of part of this repository.
//! Each run must succeed and produce the same output as the same run on glibc.
//!
//! The library under test is the cdylib cargo built for this test run, found next to the test
//! executable (`target/<profile>/deps/`), so no nested cargo build is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

fn preload_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = "libcoalesce_host_preload.so";
    [deps.join(name), deps.parent().unwrap().join(name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found next to {}", exe.display()))
}

fn run(mut cmd: Command, preload: bool) -> Output {
    if preload {
        cmd.env("LD_PRELOAD", preload_lib());
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} (preload: {preload}) failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coalesce-preload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn python_c_api_contract() {
    let mut cmd = Command::new("python3");
    cmd.arg(script("c_api.py"));
    let out = run(cmd, true);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "c api ok");
}

#[test]
fn python_multithreaded_script_matches_glibc() {
    let py = |preload| {
        let mut cmd = Command::new("python3");
        cmd.arg(script("threads.py"));
        run(cmd, preload).stdout
    };
    let t = Instant::now();
    let ours = py(true);
    eprintln!("python3 threads.py under coalesce: {:?}", t.elapsed());
    assert_eq!(ours, py(false));
    assert_eq!(ours.len(), 65, "a sha256 line");
}

/// A git session in a scratch repository with fixed identities and dates, so commit ids are
/// reproducible: init, 120 files, two commits, gc, fsck, log.
fn git_session(dir: &Path, preload: bool) -> String {
    let git = |args: &[&str]| {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .env("GIT_AUTHOR_NAME", "a")
            .env("GIT_AUTHOR_EMAIL", "a@example.com")
            .env("GIT_COMMITTER_NAME", "a")
            .env("GIT_COMMITTER_EMAIL", "a@example.com")
            .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z");
        String::from_utf8(run(cmd, preload).stdout).unwrap()
    };
    git(&["init", "-q", "-b", "main", "."]);
    for i in 0..120 {
        let body: String = (0..i * 5)
            .map(|j| format!("line {j} of file {i}\n"))
            .collect();
        std::fs::write(dir.join(format!("f{i}.txt")), body).unwrap();
    }
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    std::fs::write(dir.join("f7.txt"), "changed\n").unwrap();
    git(&["commit", "-q", "-am", "second"]);
    git(&["gc", "-q"]);
    git(&["fsck", "--strict"]);
    git(&["log", "--stat", "--format=%H %s"])
}

#[test]
fn git_matches_glibc() {
    let (a, b) = (scratch("git-ours"), scratch("git-glibc"));
    let t = Instant::now();
    let ours = git_session(&a, true);
    eprintln!("git session under coalesce: {:?}", t.elapsed());
    assert_eq!(ours, git_session(&b, false));
    assert!(ours.contains("second") && ours.contains("first"));
    let _ = (std::fs::remove_dir_all(a), std::fs::remove_dir_all(b));
}

/// `cargo build` of the core and host crates of this repository (with their dependencies,
/// proc macros included) into a scratch target directory, with cargo, rustc and the build
/// scripts all running on the preloaded malloc. Offline: the outer build fetched everything.
#[test]
fn cargo_builds_part_of_this_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = scratch("cargo");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args([
            "build",
            "--offline",
            "-q",
            "-p",
            "coalesce-core",
            "-p",
            "coalesce-host",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let t = Instant::now();
    run(cmd, true);
    eprintln!("cargo build under coalesce: {:?}", t.elapsed());
    let rlib = std::fs::read_dir(target.join("debug/deps"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("libcoalesce_host-")
        });
    assert!(rlib, "the host crate was built");
    let _ = std::fs::remove_dir_all(target);
}
