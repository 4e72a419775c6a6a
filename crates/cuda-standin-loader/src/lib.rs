//! Finds the built CUDA driver stand-in (`libcuda_standin.so`, crate `coalesce-cuda-standin`)
//! and makes programs use it instead of a real `libcuda`.
//!
//! This crate links none of the stand-in's code, so a test binary that uses it does not define
//! `cuMemMap` and friends itself. To have cargo build the stand-in, also add
//! `coalesce-cuda-standin` as a dev-dependency and never name it in code:
//!
//! ```toml
//! [dev-dependencies]
//! coalesce-cuda-standin = { path = "../cuda-standin" }        # builds libcuda_standin.so
//! coalesce-cuda-standin-loader = { path = "../cuda-standin-loader" }
//! ```
//!
//! - In-process: call [`preload`] before anything opens a CUDA driver (cudarc opens it lazily,
//!   at the backend's first use). cudarc's `dlopen("libcuda.so")` then returns the stand-in.
//!   [`controls`] gives safe access to its fault injection, call counts and leak report.
//! - Child processes: put [`loader_dir`] first on `LD_LIBRARY_PATH` (or use
//!   [`ld_library_path`]); it holds `libcuda.so` and `libcuda.so.1` symlinks to the stand-in.
//!
//! The library is looked up at `COALESCE_STANDIN_LIB` (a path to the file) if set, else
//! beside the running executable (cargo puts test binaries and dependency cdylibs in
//! `target/<profile>/deps`) or one directory up (`target/<profile>`, where `cargo build`
//! copies it).

use std::ffi::{CStr, CString, OsString, c_char, c_double, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The stand-in's file name.
pub const LIBRARY_NAME: &str = "libcuda_standin.so";

/// Why the stand-in could not be found or loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// The built `libcuda_standin.so`.
pub fn library_path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("COALESCE_STANDIN_LIB").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error(format!(
                "COALESCE_STANDIN_LIB={} is not a file",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe().map_err(|e| Error(format!("no executable path: {e}")))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error("executable has no directory".into()))?;
    let candidates = [dir.join(LIBRARY_NAME), dir.join("..").join(LIBRARY_NAME)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error(format!(
                "{LIBRARY_NAME} not found in {} or its parent (add coalesce-cuda-standin as a \
             dev-dependency so cargo builds it, or set COALESCE_STANDIN_LIB)",
                dir.display()
            ))
        })
}

/// A directory holding `libcuda.so` and `libcuda.so.1`, symlinks to [`library_path`], for the
/// `LD_LIBRARY_PATH` of child processes. It is `cuda-standin/` beside the library (not a
/// directory cargo puts on any search path), made once per process and safe to make from
/// several processes at once.
pub fn loader_dir() -> Result<PathBuf, Error> {
    static DIR: OnceLock<Result<PathBuf, Error>> = OnceLock::new();
    DIR.get_or_init(|| {
        let lib = std::fs::canonicalize(library_path()?)
            .map_err(|e| Error(format!("canonicalize: {e}")))?;
        let dir = lib
            .parent()
            .expect("a file has a directory")
            .join("cuda-standin");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("create {}: {e}", dir.display())))?;
        for name in ["libcuda.so", "libcuda.so.1"] {
            link(&lib, &dir.join(name))?;
        }
        Ok(dir)
    })
    .clone()
}

/// Points `at` to `target`, atomically (a fresh link renamed over whatever is there).
fn link(target: &Path, at: &Path) -> Result<(), Error> {
    if std::fs::read_link(at).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let tmp = at.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| Error(format!("symlink {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, at).map_err(|e| Error(format!("rename to {}: {e}", at.display())))
}

/// `LD_LIBRARY_PATH` for a child process: [`loader_dir`] before the current value.
pub fn ld_library_path() -> Result<OsString, Error> {
    let mut v = loader_dir()?.into_os_string();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    Ok(v)
}

/// The stand-in, loaded into this process; never unloaded.
#[derive(Debug, Clone, Copy)]
struct Handle(*mut c_void);

// SAFETY: a dlopen handle is a process-wide token; dlsym on it is thread-safe.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// Loads the stand-in so that this process's later `dlopen("libcuda.so")` (cudarc's first
/// choice) returns it. Idempotent. Fails, saying why, when the library is missing or a
/// `libcuda.so` was loaded before (then the process already talks to another driver).
pub fn preload() -> Result<(), Error> {
    handle().map(|_| ())
}

fn handle() -> Result<Handle, Error> {
    static HANDLE: OnceLock<Result<Handle, Error>> = OnceLock::new();
    HANDLE.get_or_init(load).clone()
}

fn load() -> Result<Handle, Error> {
    let path = library_path()?;
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| Error("path has a NUL".into()))?;
    let soname = c"libcuda.so";
    // SAFETY: valid NUL-terminated names; RTLD_NOLOAD only looks.
    let before = unsafe { libc::dlopen(soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    // SAFETY: as above; the stand-in's initializers only set up statics.
    let h = unsafe {
        libc::dlopen(
            c_path.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_GLOBAL | libc::RTLD_NODELETE,
        )
    };
    if h.is_null() {
        return Err(Error(format!("dlopen {}: {}", path.display(), dl_error())));
    }
    // SAFETY: as above.
    let after = unsafe { libc::dlopen(soname.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    // SAFETY: each non-null handle came from a dlopen that added a reference; drop those.
    unsafe {
        if !before.is_null() {
            libc::dlclose(before);
        }
        if !after.is_null() {
            libc::dlclose(after);
        }
    }
    if after != h {
        return Err(Error(format!(
            "dlopen(\"libcuda.so\") does not resolve to {} ({})",
            path.display(),
            if before.is_null() {
                "its soname is not libcuda.so?"
            } else {
                "a CUDA driver was loaded before preload()"
            }
        )));
    }
    Ok(Handle(h))
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null and NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

type FailNth = unsafe extern "C" fn(*const c_char, u64, c_int) -> c_int;
type FailRate = unsafe extern "C" fn(*const c_char, c_double, c_int, u64) -> c_int;
type Reset = unsafe extern "C" fn();
type Calls = unsafe extern "C" fn(*const c_char) -> u64;
type SetLag = unsafe extern "C" fn(c_double) -> c_int;
type SetLagQueries = unsafe extern "C" fn(u64);
type LeakReport = unsafe extern "C" fn(*mut c_char, usize) -> usize;
type LeakCount = unsafe extern "C" fn() -> u64;

/// The stand-in's control functions (`coalesce_standin_*`), for in-process tests.
#[derive(Debug)]
pub struct Controls {
    fail_nth: FailNth,
    fail_rate: FailRate,
    reset: Reset,
    calls: Calls,
    set_lag: SetLag,
    set_lag_queries: SetLagQueries,
    leak_report: LeakReport,
    leak_count: LeakCount,
}

/// The controls of the stand-in, [`preload`]ing it first.
pub fn controls() -> Result<&'static Controls, Error> {
    static CONTROLS: OnceLock<Result<Controls, Error>> = OnceLock::new();
    CONTROLS
        .get_or_init(|| {
            let h = handle()?;
            let sym = |name: &CStr| {
                // SAFETY: `h` is a live handle and `name` NUL-terminated.
                let p = unsafe { libc::dlsym(h.0, name.as_ptr()) };
                if p.is_null() {
                    Err(Error(format!("the stand-in lacks {name:?}")))
                } else {
                    Ok(p)
                }
            };
            // SAFETY: each symbol is the stand-in's function of exactly this C signature
            // (crates/cuda-standin/src/api/control.rs).
            unsafe {
                Ok(Controls {
                    fail_nth: std::mem::transmute::<*mut c_void, FailNth>(sym(
                        c"coalesce_standin_fail_nth",
                    )?),
                    fail_rate: std::mem::transmute::<*mut c_void, FailRate>(sym(
                        c"coalesce_standin_fail_rate",
                    )?),
                    reset: std::mem::transmute::<*mut c_void, Reset>(sym(
                        c"coalesce_standin_reset",
                    )?),
                    calls: std::mem::transmute::<*mut c_void, Calls>(sym(
                        c"coalesce_standin_calls",
                    )?),
                    set_lag: std::mem::transmute::<*mut c_void, SetLag>(sym(
                        c"coalesce_standin_set_stream_lag_ms",
                    )?),
                    set_lag_queries: std::mem::transmute::<*mut c_void, SetLagQueries>(sym(
                        c"coalesce_standin_set_stream_lag_queries",
                    )?),
                    leak_report: std::mem::transmute::<*mut c_void, LeakReport>(sym(
                        c"coalesce_standin_leak_report",
                    )?),
                    leak_count: std::mem::transmute::<*mut c_void, LeakCount>(sym(
                        c"coalesce_standin_leak_count",
                    )?),
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn c_name(function: &str) -> CString {
    CString::new(function).unwrap_or_default()
}

impl Controls {
    /// Makes the `n`-th call of driver function `function` from now (1: the next) fail with
    /// CUresult `code`; false for an unknown function or code or `n` = 0.
    pub fn fail_nth(&self, function: &str, n: u64, code: u32) -> bool {
        let Ok(code) = c_int::try_from(code) else {
            return false;
        };
        // SAFETY: a valid C string; the function has no other precondition.
        unsafe { (self.fail_nth)(c_name(function).as_ptr(), n, code) == 0 }
    }

    /// Makes each call of `function` fail with probability `p` (0 disarms), seeded.
    pub fn fail_rate(&self, function: &str, p: f64, code: u32, seed: u64) -> bool {
        let Ok(code) = c_int::try_from(code) else {
            return false;
        };
        // SAFETY: as in `fail_nth`.
        unsafe { (self.fail_rate)(c_name(function).as_ptr(), p, code, seed) == 0 }
    }

    /// Forgets call counts and armed faults, clears a sticky asynchronous fault, restores the
    /// environment's stream lag. Live driver objects stay.
    pub fn reset(&self) {
        // SAFETY: no preconditions.
        unsafe { (self.reset)() }
    }

    /// Calls of `function` since start or the last reset (`None`: not a stand-in export).
    pub fn calls(&self, function: &str) -> Option<u64> {
        // SAFETY: as in `fail_nth`.
        let n = unsafe { (self.calls)(c_name(function).as_ptr()) };
        (n != u64::MAX).then_some(n)
    }

    /// Sets the stream lag for work enqueued from now on.
    pub fn set_stream_lag_ms(&self, ms: f64) -> bool {
        // SAFETY: no preconditions.
        unsafe { (self.set_lag)(ms) == 0 }
    }

    /// Makes the next `n` queries of each event recorded from now on answer `NOT_READY`.
    pub fn set_stream_lag_queries(&self, n: u64) {
        // SAFETY: no preconditions.
        unsafe { (self.set_lag_queries)(n) }
    }

    /// The leak report, one JSON object.
    pub fn leak_report(&self) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { (self.leak_report)(buf.as_mut_ptr().cast(), buf.len()) };
            if n < buf.len() {
                buf.truncate(n);
                return String::from_utf8_lossy(&buf).into_owned();
            }
            buf.resize(n + 1, 0);
        }
    }

    /// How many leaks the report lists.
    pub fn leak_count(&self) -> u64 {
        // SAFETY: no preconditions.
        unsafe { (self.leak_count)() }
    }
}
