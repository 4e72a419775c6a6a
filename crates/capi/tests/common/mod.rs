//! Finding the built `libcoalesce.so` and a scratch directory, for the tests that load it from
//! other languages.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;

/// The directory holding this build's `libcoalesce.so`. Cargo builds this package's cdylib
/// with its tests into `<target>/<profile>/deps`, beside the test binary (it only copies it up
/// to `<target>/<profile>` for `cargo build`).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test binary directory").to_owned();
    assert!(
        deps.join("libcoalesce.so").is_file(),
        "libcoalesce.so not found beside the test binary in {}",
        deps.display()
    );
    deps
}

/// A fresh directory for one test's files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coalesce-capi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Says why a test is skipped, on the real stderr: libtest captures `eprintln!`, and a skip
/// must be seen.
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {}: {reason}",
        std::thread::current().name().unwrap_or("test")
    );
}

/// The `LD_LIBRARY_PATH` that makes a child process load the CUDA driver stand-in as
/// `libcuda.so`, or `None` (with a visible message) when it was not built.
pub fn standin_path() -> Option<std::ffi::OsString> {
    match coalesce_cuda_standin_loader::ld_library_path() {
        Ok(p) => Some(p),
        Err(e) => {
            skip(&format!("no CUDA driver stand-in: {e}"));
            None
        }
    }
}

/// `n` streams of device 0's primary context, created through the CUDA driver the process
/// loads (the stand-in in these tests), as the `void *` handles the C ABI takes.
pub fn standin_streams(n: usize) -> Vec<usize> {
    use cudarc::driver::result;
    result::init().expect("cuInit");
    let dev = result::device::get(0).expect("cuDeviceGet");
    // SAFETY: `dev` is a valid device; the context is retained for the life of the process.
    let ctx = unsafe { result::primary_ctx::retain(dev) }.expect("cuDevicePrimaryCtxRetain");
    // SAFETY: `ctx` is the live primary context just retained.
    unsafe { result::ctx::set_current(ctx) }.expect("cuCtxSetCurrent");
    (0..n)
        .map(|_| {
            let s = result::stream::create(result::stream::StreamKind::NonBlocking)
                .expect("cuStreamCreate");
            s as usize
        })
        .collect()
}
