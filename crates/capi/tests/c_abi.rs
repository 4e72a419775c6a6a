//! The C ABI as C programs use it: tests/c/abi_test.c is compiled with the system C compiler
//! against this build's libcoalesce.so and run on the simulated backend, and on the CUDA
//! backend over the CPU stand-in for libcuda (streams made by the driver, the stand-in's leak
//! check on at exit). It checks exact
//! accounting, 8 threads x 2500 allocs/frees over three streams with a shadow overlap check,
//! OOM under a memory limit (NULL, a readable error, the pool keeps working), error reporting
//! and a snapshot. Here the printed stats are checked again, and the snapshot is replayed the
//! way `coalesce replay` does.

mod common;

use coalesce_backend::sim::SimConfig;
use coalesce_cli::replay::{ReplayConfig, replay_all};
use coalesce_policy::PolicySpec;
use common::{lib_dir, scratch, text};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles the C test program, or `None` (with a visible message) without a C compiler.
fn build_c_program(out: &Path) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_err() {
        common::skip(&format!("no C compiler ({cc})"));
        return None;
    }
    let lib = lib_dir();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = out.join("abi_test");
    let o = Command::new(&cc)
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/abi_test.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", lib.display()))
        .args(["-lcoalesce", "-pthread", "-ldl"])
        .output()
        .expect("run the C compiler");
    assert!(o.status.success(), "C compile failed: {}", text(&o));
    Some(exe)
}

fn sim_command(exe: &Path) -> Command {
    let mut c = Command::new(exe);
    // cargo's LD_LIBRARY_PATH may list an older libcoalesce.so from `cargo build`; the one
    // built with these tests comes first.
    c.env("LD_LIBRARY_PATH", lib_dir())
        .env("COALESCE_BACKEND", "sim")
        .env("COALESCE_SIM_CAPACITY", (1u64 << 30).to_string())
        .env_remove("COALESCE_POLICY")
        .env_remove("COALESCE_MEMORY_LIMIT")
        .env_remove("COALESCE_TRACE_ENTRIES");
    c
}

fn stats_line(stdout: &str, phase: &str) -> Value {
    let prefix = format!("STATS {phase} ");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// The C program on the CUDA backend over the driver stand-in: `LD_LIBRARY_PATH` is the
/// stand-in's loader directory (`libcuda.so.1` there) then this build's library directory.
/// Streams 1 and 2 are real driver streams (`ABI_TEST_CUDA_STREAMS`), work on them completes
/// after a small lag so events are really pending, and the stand-in prints its leak report at
/// exit (see [`check_standin_leaks`]).
fn cuda_command(exe: &Path) -> Option<Command> {
    let loader = match coalesce_cuda_standin_loader::loader_dir() {
        Ok(dir) => dir,
        Err(e) => {
            common::skip(&format!("no CUDA driver stand-in: {e}"));
            return None;
        }
    };
    let mut path = loader.into_os_string();
    path.push(":");
    path.push(lib_dir());
    let mut c = Command::new(exe);
    // Only the settings below: no fault or other stand-in setting from the caller's environment.
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("COALESCE_STANDIN_") {
            c.env_remove(var);
        }
    }
    c.env("LD_LIBRARY_PATH", path)
        .env("COALESCE_BACKEND", "cuda")
        .env("ABI_TEST_CUDA_STREAMS", "1")
        .env("COALESCE_STANDIN_CAPACITY", "4GiB")
        .env("COALESCE_STANDIN_STREAM_LAG_MS", "0.2")
        .env("COALESCE_STANDIN_LEAK_CHECK", "1")
        .env_remove("COALESCE_POLICY")
        .env_remove("COALESCE_MEMORY_LIMIT")
        .env_remove("COALESCE_TRACE_ENTRIES");
    Some(c)
}

#[test]
fn a_c_program_drives_the_library_from_many_threads() {
    let dir = scratch("c-abi");
    let Some(exe) = build_c_program(&dir) else {
        return;
    };
    check_full_run(sim_command(&exe), "sim", None, &dir);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_c_program_drives_the_cuda_backend_on_the_driver_standin() {
    let dir = scratch("c-abi-standin");
    let Some(exe) = build_c_program(&dir) else {
        return;
    };
    // The default policy maps memory (cuMemCreate/cuMemMap); torch-native allocates it whole
    // (cuMemAlloc), as PyTorch's native allocator.
    for policy in [None, Some("torch-native")] {
        let Some(mut command) = cuda_command(&exe) else {
            return;
        };
        if let Some(p) = policy {
            command.env("COALESCE_POLICY", p);
        }
        let o = check_full_run(command, "cuda", policy, &dir);
        check_standin_leaks(&o);
        let threads = stats_line(&String::from_utf8_lossy(&o.stdout), "threads");
        let calls = &threads["driver_calls_by_kind"];
        // Calls never made are left out.
        let count = |key: &str| calls[key].as_u64().unwrap_or(0);
        let (mapped, classic) = (count("mem_map"), count("mem_alloc"));
        assert!(
            if policy.is_none() {
                mapped > 0
            } else {
                classic > 0 && mapped == 0
            },
            "{policy:?}: {mapped} maps, {classic} cuMemAlloc calls"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The stand-in's leak report at the C program's exit: after the final `coalesce_empty_cache`
/// no physical memory, mapping or allocation is left and no stream work found its memory gone.
/// The pool itself lives until the process exits, so its address reservations (address space,
/// not memory), its pooled events and its context reference are still there, as they would be
/// in PyTorch.
fn check_standin_leaks(o: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    let report = stderr
        .lines()
        .find_map(|l| l.strip_prefix("coalesce-cuda-standin: leak report: "))
        .unwrap_or_else(|| panic!("no leak report from the stand-in: {}", text(o)));
    let report: Value = serde_json::from_str(report).expect("the leak report is JSON");
    for key in [
        "handles_not_released",
        "mappings_left",
        "allocations_not_freed",
        "async_faults",
    ] {
        assert_eq!(report[key], Value::Array(vec![]), "{key}: {report}");
    }
    assert_eq!(report["bytes_in_use"], serde_json::json!([0]), "{report}");
    assert_eq!(report["streams"], 0, "the program destroyed its streams");
}

/// Runs the C program's full run with `command` and checks what it printed and the snapshot
/// it wrote.
fn check_full_run(
    mut command: Command,
    backend: &str,
    policy: Option<&str>,
    dir: &Path,
) -> std::process::Output {
    let snapshot = dir.join("snapshot.csv");
    let o = command.arg(&snapshot).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && out.ends_with("OK\n"), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("coalesce: coalesce_free failed: free of 0x1234"),
        "a bad free is reported on stderr: {}",
        text(&o)
    );

    let threads = stats_line(&out, "threads");
    assert_eq!(u(&threads, "requested_bytes"), 1000);
    assert!(u(&threads, "num_allocs") >= 8 * 2500 / 3, "{threads}");
    assert_eq!(u(&threads, "num_allocs"), u(&threads, "num_frees") + 1);
    assert!(
        u(&threads, "peak_requested_bytes") > 2 << 20,
        "several blocks were live at once"
    );
    assert!(u(&threads, "peak_allocated_bytes") >= u(&threads, "peak_requested_bytes"));
    assert!(u(&threads, "peak_reserved_bytes") >= u(&threads, "peak_allocated_bytes"));
    assert_eq!(threads["backend"], backend);
    if policy.is_none() {
        // The default policy (coalesce) reuses a block freed on one stream for another behind
        // an event; torch-native keeps one pool per stream and needs none here.
        assert!(
            u(&threads["driver_calls_by_kind"], "event_record") > 0,
            "frees on three streams are event-ordered"
        );
    }

    let oom = stats_line(&out, "oom");
    assert_eq!(u(&oom, "num_ooms"), 1);
    assert!(
        u(&oom, "num_alloc_retries") >= 1,
        "the OOM was retried once after emptying the cache"
    );
    assert!(oom["memory_limit"].is_null(), "the limit was removed");

    let last = stats_line(&out, "final");
    for key in ["requested_bytes", "allocated_bytes", "reserved_bytes"] {
        assert_eq!(
            u(&last, key),
            0,
            "{key} after everything is freed and the cache emptied"
        );
    }

    // The snapshot replays like any trace: no warnings, every allocation of the run (the ring
    // holds them all), the one block live at the dump still live at the end.
    let traces = coalesce_cli::replay::load_trace(&snapshot).expect("snapshot loads");
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.stats.allocs, u(&oom, "num_allocs"));
    assert_eq!(t.stats.live_at_end, 1);
    assert!(t.stats.peak_requested_bytes >= u(&threads, "peak_requested_bytes"));
    assert!(!t.segments.is_empty(), "segment_alloc rows");
    let config = ReplayConfig {
        sim: SimConfig::default(),
        repeats: 1,
        series_points: 16,
    };
    let results = replay_all(&traces, &[PolicySpec::named("bfc-classic")], &config).unwrap();
    assert_eq!(results[0].allocs, t.stats.allocs);
    assert_eq!(
        results[0].peak_requested_bytes,
        t.stats.peak_requested_bytes
    );
    assert_eq!(results[0].ooms, 0);
    o
}

#[test]
fn a_bad_environment_is_a_clean_error() {
    let dir = scratch("c-abi-env");
    let Some(exe) = build_c_program(&dir) else {
        return;
    };
    for (var, value, expected) in [
        (
            "COALESCE_POLICY",
            "no-such-policy",
            "COALESCE_POLICY=\"no-such-policy\": unknown policy",
        ),
        (
            "COALESCE_BACKEND",
            "tpu",
            "COALESCE_BACKEND=\"tpu\": expected cuda or sim",
        ),
        (
            "COALESCE_SIM_CAPACITY",
            "lots",
            "COALESCE_SIM_CAPACITY=\"lots\": expected a whole number",
        ),
    ] {
        let o = sim_command(&exe)
            .env(var, value)
            .arg("--config-error")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            out.contains(&format!("ERROR {expected}")),
            "{var}: {}",
            text(&o)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn without_a_gpu_the_cuda_backend_fails_cleanly() {
    if coalesce_backend::cuda::driver_status().is_ok() {
        common::skip("a CUDA driver is present");
        return;
    }
    let dir = scratch("c-abi-cuda");
    let Some(exe) = build_c_program(&dir) else {
        return;
    };
    let o = sim_command(&exe)
        .env("COALESCE_BACKEND", "cuda")
        .arg("--config-error")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("ERROR device backend unavailable: no CUDA driver found"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(dir);
}
