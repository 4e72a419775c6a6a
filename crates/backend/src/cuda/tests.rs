//! The CUDA backend: a clean error without a driver; the driver's rules with one.
//!
//! Unless `COALESCE_TEST_REAL_GPU=1` asks for the real driver, these tests run on the CPU
//! stand-in for libcuda (crates/cuda-standin): it is preloaded into this process before
//! anything opens a driver, so cudarc's `dlopen("libcuda.so")` returns it and the backend makes
//! its real driver calls with no GPU. A test skips, saying so on the real stderr, only when
//! neither the stand-in nor a GPU is found; the tests that need the stand-in's controls (fault
//! injection, stream lag) skip when running on a real GPU.
//!
//! The stand-in is one per process, with global fault switches and stream lag: every test that
//! touches the driver holds one lock ([`gpu`], [`standin`]) and, on the stand-in, checks at its
//! end that it left nothing behind (no handle, mapping, reservation, allocation, stream, event
//! or context reference more than at its start). The tests that need a process without a
//! driver, or with a differently configured stand-in, re-run themselves in a child process
//! ([`in_child`]).

use super::*;
use crate::{Backend, BackendError, BackendResult, DriverCall, StreamId};
use coalesce_cuda_standin_loader::Controls;
use cudarc::driver::sys::CUresult;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// `1`: run on the real driver instead of the stand-in.
const REAL_GPU: &str = "COALESCE_TEST_REAL_GPU";
/// Set in a child process run by [`in_child`]: the name of the one test it runs.
const CHILD: &str = "COALESCE_TEST_CHILD";
/// Set in a child process that must not preload the stand-in.
const NO_STANDIN: &str = "COALESCE_TEST_NO_STANDIN";

const UNKNOWN: u32 = CUresult::CUDA_ERROR_UNKNOWN as u32;
const OUT_OF_MEMORY: u32 = CUresult::CUDA_ERROR_OUT_OF_MEMORY as u32;
const INVALID_VALUE: i32 = CUresult::CUDA_ERROR_INVALID_VALUE as i32;

/// Says why a test is skipped, on the real stderr: libtest captures `eprintln!`, and a skip
/// must be seen.
fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipping {}: {reason}",
        std::thread::current().name().unwrap_or("test")
    );
}

/// The stand-in's controls when this process runs on it; `None` on the real driver (asked for
/// with `COALESCE_TEST_REAL_GPU=1`, or when the stand-in was not built) or in a child that must
/// have no driver. Decided once, before anything opens a driver.
fn standin_controls() -> Option<&'static Controls> {
    static CONTROLS: OnceLock<Option<&'static Controls>> = OnceLock::new();
    *CONTROLS.get_or_init(|| {
        if std::env::var_os(NO_STANDIN).is_some()
            || std::env::var(REAL_GPU).is_ok_and(|v| v.trim() == "1")
        {
            return None;
        }
        match coalesce_cuda_standin_loader::controls() {
            Ok(c) => Some(c),
            Err(e) => {
                skip(&format!(
                    "no CUDA driver stand-in ({e}); the tests use a real driver if there is one"
                ));
                None
            }
        }
    })
}

/// The lock every test that touches the driver holds.
fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the stand-in holds, from its leak report: the leaks it counts (handles, mappings,
/// reservations, allocations, asynchronous faults) and the objects it only lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    leaks: u64,
    streams: u64,
    events: u64,
    context_refs: u64,
}

impl Held {
    fn now(c: &Controls) -> Held {
        let report = c.leak_report();
        let number = |key: &str| -> u64 {
            let pattern = format!("\"{key}\":");
            let at = report
                .find(&pattern)
                .unwrap_or_else(|| panic!("no {key} in the leak report {report}"))
                + pattern.len();
            let digits: String = report[at..]
                .trim_start_matches('[')
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("{key} in {report}"))
        };
        Held {
            leaks: c.leak_count(),
            streams: number("streams"),
            events: number("events"),
            context_refs: number("primary_context_refs"),
        }
    }
}

/// The backend for device 0 and the driver lock; on the stand-in, also its controls, and a
/// check at drop that the test left nothing behind in the driver.
struct Gpu {
    backend: Option<CudaBackend>,
    standin: Option<&'static Controls>,
    before: Option<Held>,
    _lock: MutexGuard<'static, ()>,
}

impl Gpu {
    /// The stand-in's controls (only [`standin`] makes a `Gpu` where they are required).
    fn controls(&self) -> &'static Controls {
        self.standin.expect("made by standin()")
    }

    fn on_standin(&self) -> bool {
        self.standin.is_some()
    }
}

impl std::ops::Deref for Gpu {
    type Target = CudaBackend;
    fn deref(&self) -> &CudaBackend {
        self.backend.as_ref().expect("live until drop")
    }
}

impl std::ops::DerefMut for Gpu {
    fn deref_mut(&mut self) -> &mut CudaBackend {
        self.backend.as_mut().expect("live until drop")
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        drop(self.backend.take());
        let (Some(c), Some(before)) = (self.standin, self.before) else {
            return;
        };
        let after = Held::now(c);
        c.reset();
        if !std::thread::panicking() {
            assert_eq!(
                after,
                before,
                "the test left driver objects behind: {}",
                c.leak_report()
            );
        }
    }
}

/// The backend for device 0 on the stand-in (or the real driver, see the module docs), or
/// `None` (with a visible message) when there is neither.
fn gpu() -> Option<Gpu> {
    let lock = lock();
    let standin = standin_controls();
    let before = standin.map(|c| {
        c.reset();
        Held::now(c)
    });
    let backend = match (CudaBackend::new(0), standin) {
        (Ok(b), _) => b,
        (Err(e), Some(_)) => panic!("the CUDA backend does not open the stand-in: {e}"),
        (Err(e), None) => {
            skip(&format!("neither the CUDA driver stand-in nor a GPU ({e})"));
            return None;
        }
    };
    Some(Gpu {
        backend: Some(backend),
        standin,
        before,
        _lock: lock,
    })
}

/// Like [`gpu`], for tests that need the stand-in's controls; `None` (said) on a real GPU.
fn standin() -> Option<Gpu> {
    let g = gpu()?;
    if !g.on_standin() {
        skip("needs the CUDA driver stand-in's controls (this run uses a real driver)");
        return None;
    }
    Some(g)
}

/// In the child process run for test `name` of this module: `true` (run the test's body).
/// Otherwise runs this test binary again for test `name` alone with `env` added, checks that
/// the test passed there, repeats any skip it reported, and returns `false`.
fn in_child(name: &str, env: &[(&str, &str)]) -> bool {
    let path = format!(
        "{}::{name}",
        module_path!().split_once("::").expect("crate::module").1
    );
    if std::env::var(CHILD).is_ok_and(|c| c == path) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = std::process::Command::new(exe);
    child
        .args(["--exact", &path, "--test-threads=1", "--nocapture"])
        .env(CHILD, &path)
        .env_remove(REAL_GPU);
    for (k, v) in env {
        child.env(k, v);
    }
    let o = child.output().expect("run the test binary again");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && out.contains("1 passed"),
        "{path} in a child process with {env:?}: {}\n--- stdout\n{out}\n--- stderr\n{err}",
        o.status
    );
    let said = format!("skipping {path}: ");
    for reason in err.lines().filter_map(|l| l.strip_prefix(&said)) {
        skip(&format!("(in a child process) {reason}"));
    }
    false
}

/// Asserts `r` is the driver error `code` of `call`, with the driver's message.
#[track_caller]
fn assert_driver_error<T: std::fmt::Debug>(r: BackendResult<T>, call: DriverCall, code: u32) {
    match r {
        Err(BackendError::Driver {
            call: c,
            code: got,
            message,
        }) => {
            assert_eq!((c, got), (call, code as i32), "{message}");
            assert!(!message.is_empty(), "the driver's message is kept");
        }
        other => panic!("expected a {call} driver error {code}, got {other:?}"),
    }
}

#[test]
fn without_a_driver_the_backend_is_unavailable_with_a_reason() {
    // A process that has no driver: the stand-in is neither preloaded nor findable, and this
    // machine's loader path has no libcuda (else the child says it skips).
    if !in_child(
        "without_a_driver_the_backend_is_unavailable_with_a_reason",
        &[(NO_STANDIN, "1"), ("COALESCE_STANDIN_LIB", "/nonexistent")],
    ) {
        return;
    }
    let Err(reason) = driver_status() else {
        skip("a CUDA driver is present");
        return;
    };
    let err = CudaBackend::new(0).unwrap_err();
    assert_eq!(err, reason, "new() and driver_status() agree");
    let BackendError::Unavailable(text) = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        text.contains("no CUDA driver found"),
        "the reason names what is missing: {text}"
    );
    assert!(err.to_string().starts_with("device backend unavailable: "));
}

#[test]
fn a_driver_without_devices_is_unavailable_with_a_reason() {
    // The stand-in reads its device count once, at cuInit: a fresh process.
    if !in_child(
        "a_driver_without_devices_is_unavailable_with_a_reason",
        &[("COALESCE_STANDIN_DEVICES", "0")],
    ) {
        return;
    }
    let Some(_) = standin_controls() else {
        skip("needs the CUDA driver stand-in");
        return;
    };
    let err = CudaBackend::new(0).unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable(t) if t.starts_with("cuInit failed")),
        "{err}"
    );
    assert_eq!(driver_status().unwrap_err(), err);
}

#[test]
fn a_device_that_does_not_exist_is_unavailable() {
    let _lock = lock();
    let on_standin = standin_controls().is_some();
    if !on_standin && driver_status().is_err() {
        skip("neither the CUDA driver stand-in nor a GPU");
        return;
    }
    for ordinal in [10_000, -1] {
        let err = CudaBackend::new(ordinal).unwrap_err();
        assert!(
            matches!(&err, BackendError::Unavailable(t) if t.contains(&format!("no CUDA device {ordinal}"))),
            "{err}"
        );
    }
    if on_standin {
        // The stand-in has one device (COALESCE_STANDIN_DEVICES): 1 is the first past it.
        let err = CudaBackend::new(1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device backend unavailable: no CUDA device 1: the driver sees 1 device(s)"
        );
    }
}

#[test]
fn classic_memory_holds_data_and_is_metered() {
    let Some(mut b) = gpu() else { return };
    let addr = b.mem_alloc(1 << 20).unwrap();
    let pattern: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    b.write_bytes(addr, &pattern).unwrap();
    let mut back = vec![0u8; pattern.len()];
    b.read_bytes(addr, &mut back).unwrap();
    assert_eq!(back, pattern);
    assert_eq!(b.meter().reserved_bytes, 1 << 20);
    assert!(
        b.write_bytes(addr + (1 << 20), &[1]).is_err(),
        "past the end"
    );
    b.mem_free(addr).unwrap();
    assert!(b.mem_free(addr).is_err(), "double free is reported");
    assert_eq!(b.meter().reserved_bytes, 0);
    assert_eq!(b.meter().calls.get(DriverCall::MemAlloc), 1);
}

#[test]
fn virtual_memory_lifecycle_follows_cuda_rules() {
    let Some(mut b) = gpu() else { return };
    let g = b.granularity();
    assert!(g.is_power_of_two() && g >= 4096, "granularity {g}");
    let va = b.address_reserve(4 * g).unwrap();
    let h = b.mem_create(2 * g).unwrap();
    assert!(b.mem_create(g / 2).is_err(), "not a granule multiple");
    b.mem_map(va, h).unwrap();
    b.set_access(va, 2 * g).unwrap();
    let pattern: Vec<u8> = (0..2 * g).map(|i| (i % 253) as u8).collect();
    b.write_bytes(va, &pattern).unwrap();
    let mut back = vec![0u8; pattern.len()];
    b.read_bytes(va, &mut back).unwrap();
    assert_eq!(back, pattern);
    assert!(
        b.mem_unmap(va, g).is_err(),
        "cannot unmap part of a mapping"
    );
    assert!(
        b.address_free(va, 4 * g).is_err(),
        "cannot free a reservation with mappings"
    );
    b.mem_release(h).unwrap();
    assert_eq!(b.meter().reserved_bytes, 2 * g, "released but mapped");
    b.mem_unmap(va, 2 * g).unwrap();
    assert_eq!(b.meter().reserved_bytes, 0, "last mapping gone");
    b.address_free(va, 4 * g).unwrap();
}

#[test]
fn one_handle_mapped_twice_shows_the_same_bytes_once_access_is_set() {
    let Some(mut b) = gpu() else { return };
    let g = b.granularity();
    let va = b.address_reserve(4 * g).unwrap();
    let h = b.mem_create(g).unwrap();
    b.mem_map(va, h).unwrap();
    b.mem_map(va + 2 * g, h).unwrap();
    if b.on_standin() {
        // On a GPU this would be an illegal address, sticky for the context: only here.
        let err = b.read_bytes(va, &mut [0u8; 16]).unwrap_err();
        assert_eq!(
            err.call, "cuMemcpyDtoH",
            "no access before set_access: {err}"
        );
    }
    b.set_access(va, g).unwrap();
    b.set_access(va + 2 * g, g).unwrap();
    let pattern: Vec<u8> = (0..g).map(|i| (i * 13 % 241) as u8).collect();
    b.write_bytes(va, &pattern).unwrap();
    let mut back = vec![0u8; pattern.len()];
    b.read_bytes(va + 2 * g, &mut back).unwrap();
    assert!(back == pattern, "the two mappings alias one handle's bytes");
    assert_eq!(b.meter().reserved_bytes, g, "one handle, counted once");

    // The driver's rules, each reported as the call that broke them.
    assert_driver_error(
        b.set_access(va, 3 * g),
        DriverCall::SetAccess,
        INVALID_VALUE as u32,
    );
    let h2 = b.mem_create(g).unwrap();
    assert_driver_error(b.mem_map(va, h2), DriverCall::MemMap, INVALID_VALUE as u32);
    assert!(b.mem_map(va + 4096, h2).is_err(), "a misaligned map");
    assert!(
        matches!(
            b.mem_unmap(va + g, g),
            Err(BackendError::Invalid {
                call: DriverCall::MemUnmap,
                ..
            })
        ),
        "nothing is mapped there"
    );
    b.mem_map(va + g, h2).unwrap();
    b.set_access(va, 3 * g).unwrap();
    assert_eq!(b.meter().reserved_bytes, 2 * g);

    for at in [va, va + g, va + 2 * g] {
        b.mem_unmap(at, g).unwrap();
    }
    b.mem_release(h).unwrap();
    b.mem_release(h2).unwrap();
    assert!(b.mem_release(h).is_err(), "released twice");
    assert_eq!(b.meter().reserved_bytes, 0);
    b.address_free(va, 4 * g).unwrap();
}

#[test]
fn events_follow_streams_and_unknown_streams_are_refused() {
    let Some(mut b) = gpu() else { return };
    let s = b.create_stream().unwrap();
    let addr = b.mem_alloc(64 << 20).unwrap();
    b.fill_async(addr, 64 << 20, 0xab, s.id()).unwrap();
    let e = b.event_record(s.id()).unwrap();
    b.stream_wait_event(StreamId(0), e).unwrap();
    b.stream_synchronize(s.id()).unwrap();
    assert!(b.event_query(e).unwrap(), "complete after synchronize");
    b.event_release(e);
    assert!(b.event_query(e).is_err(), "released events are unknown");
    let err = b.event_record(StreamId(0xdead_beef)).unwrap_err();
    assert!(err.to_string().contains("not known"), "{err}");
    let mut back = vec![0u8; 4096];
    b.read_bytes(addr + (32 << 20), &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0xab), "the fill ran");
    b.destroy_stream(s).unwrap();
    b.mem_free(addr).unwrap();
}

#[test]
fn events_are_not_ready_until_a_lagging_stream_gets_there() {
    let Some(mut b) = standin() else { return };
    const LAG: Duration = Duration::from_millis(60);
    assert!(b.controls().set_stream_lag_ms(LAG.as_secs_f64() * 1e3));
    let s1 = b.create_stream().unwrap();
    let s2 = b.create_stream().unwrap();
    let len = 1 << 20;
    let addr = b.mem_alloc(len as u64).unwrap();
    b.write_bytes(addr, &vec![0; len]).unwrap();

    let start = Instant::now();
    b.fill_async(addr, len, 0xab, s1.id()).unwrap();
    let e1 = b.event_record(s1.id()).unwrap();
    assert!(!b.event_query(e1).unwrap(), "the fill is still queued");
    b.stream_wait_event(s2.id(), e1).unwrap();
    let e2 = b.event_record(s2.id()).unwrap();
    assert!(!b.event_query(e2).unwrap(), "s2 waits for e1");
    b.stream_synchronize(s2.id()).unwrap();
    assert!(start.elapsed() >= LAG, "synchronize waited for the lag");
    assert!(
        b.event_query(e1).unwrap() && b.event_query(e2).unwrap(),
        "s2 got past e1, so the fill is done"
    );
    let mut back = vec![0u8; len];
    b.read_bytes(addr, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0xab), "the fill wrote its bytes");

    // A reused event reports the new work; the device synchronize waits for all streams.
    b.event_release(e1);
    b.fill_async(addr, len, 0xcd, s1.id()).unwrap();
    let e3 = b.event_record(s1.id()).unwrap();
    assert!(!b.event_query(e3).unwrap());
    b.device_synchronize().unwrap();
    assert!(b.event_query(e3).unwrap());
    b.read_bytes(addr, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0xcd));

    b.event_release(e2);
    b.event_release(e3);
    b.destroy_stream(s1).unwrap();
    b.destroy_stream(s2).unwrap();
    b.mem_free(addr).unwrap();
}

#[test]
fn memory_info_follows_what_is_allocated() {
    let Some(mut b) = gpu() else { return };
    let total = b.total_memory();
    let free = b.free_memory().unwrap();
    assert!(0 < free && free <= total, "free {free} of {total}");
    if !b.on_standin() {
        return; // others may allocate on a real GPU meanwhile
    }
    let g = b.granularity();
    let a = b.mem_alloc(3 << 20).unwrap();
    assert_eq!(b.free_memory().unwrap(), free - (3 << 20));
    let h = b.mem_create(2 * g).unwrap();
    assert_eq!(b.free_memory().unwrap(), free - (3 << 20) - 2 * g);
    b.mem_release(h).unwrap();
    b.mem_free(a).unwrap();
    assert_eq!(b.free_memory().unwrap(), free);
}

#[test]
fn the_devices_capacity_is_an_out_of_memory_error_with_the_free_bytes() {
    let Some(mut b) = standin() else { return };
    let g = b.granularity();
    let kept = b.mem_create(g).unwrap();
    let free = b.free_memory().unwrap();
    let too_big = free.div_ceil(g) * g + g;
    assert_eq!(
        b.mem_create(too_big).unwrap_err(),
        BackendError::OutOfMemory {
            call: DriverCall::MemCreate,
            requested: too_big,
            free,
        }
    );
    assert_eq!(
        b.mem_alloc(free + 1).unwrap_err(),
        BackendError::OutOfMemory {
            call: DriverCall::MemAlloc,
            requested: free + 1,
            free,
        }
    );
    assert_eq!(b.meter().reserved_bytes, g, "failed requests hold nothing");
    // What is left still serves.
    let h = b.mem_create(free).unwrap();
    assert_eq!(b.free_memory().unwrap(), 0);
    b.mem_release(h).unwrap();
    b.mem_release(kept).unwrap();
}

#[test]
fn every_driver_error_names_the_backend_call_that_failed() {
    let Some(mut b) = standin() else { return };
    let c = b.controls();
    let arm = |function: &str, code: u32| assert!(c.fail_nth(function, 1, code), "{function}");
    let g = b.granularity();

    arm("cuMemAlloc_v2", UNKNOWN);
    assert_driver_error(b.mem_alloc(4096), DriverCall::MemAlloc, UNKNOWN);
    assert_eq!(b.meter().reserved_bytes, 0);
    let a = b.mem_alloc(4096).unwrap();
    arm("cuMemFree_v2", UNKNOWN);
    assert_driver_error(b.mem_free(a), DriverCall::MemFree, UNKNOWN);
    assert_eq!(b.meter().reserved_bytes, 4096, "still allocated");
    b.mem_free(a).unwrap();

    arm("cuMemAddressReserve", UNKNOWN);
    assert_driver_error(
        b.address_reserve(2 * g),
        DriverCall::AddressReserve,
        UNKNOWN,
    );
    let va = b.address_reserve(2 * g).unwrap();
    arm("cuMemCreate", UNKNOWN);
    assert_driver_error(b.mem_create(g), DriverCall::MemCreate, UNKNOWN);
    assert_eq!(b.meter().reserved_bytes, 0);
    let h = b.mem_create(g).unwrap();
    arm("cuMemMap", UNKNOWN);
    assert_driver_error(b.mem_map(va, h), DriverCall::MemMap, UNKNOWN);
    b.mem_map(va, h).unwrap();
    arm("cuMemSetAccess", UNKNOWN);
    assert_driver_error(b.set_access(va, g), DriverCall::SetAccess, UNKNOWN);
    b.set_access(va, g).unwrap();
    b.write_bytes(va, &[7; 64]).unwrap();

    // The first record creates the event (none is pooled yet), the next reuses it.
    arm("cuEventCreate", UNKNOWN);
    assert_driver_error(
        b.event_record(StreamId(0)),
        DriverCall::EventRecord,
        UNKNOWN,
    );
    arm("cuEventRecord", UNKNOWN);
    assert_driver_error(
        b.event_record(StreamId(0)),
        DriverCall::EventRecord,
        UNKNOWN,
    );
    let e = b.event_record(StreamId(0)).unwrap();
    arm("cuEventQuery", UNKNOWN);
    assert_driver_error(b.event_query(e), DriverCall::EventQuery, UNKNOWN);
    assert!(b.event_query(e).unwrap());
    arm("cuStreamWaitEvent", UNKNOWN);
    assert_driver_error(
        b.stream_wait_event(StreamId(0), e),
        DriverCall::StreamWaitEvent,
        UNKNOWN,
    );
    b.stream_wait_event(StreamId(0), e).unwrap();
    b.event_release(e);
    arm("cuStreamSynchronize", UNKNOWN);
    assert_driver_error(
        b.stream_synchronize(StreamId(0)),
        DriverCall::Synchronize,
        UNKNOWN,
    );
    b.stream_synchronize(StreamId(0)).unwrap();
    arm("cuCtxSynchronize", UNKNOWN);
    assert_driver_error(b.device_synchronize(), DriverCall::Synchronize, UNKNOWN);
    b.device_synchronize().unwrap();

    arm("cuMemGetInfo_v2", UNKNOWN);
    let err = b.free_memory().unwrap_err();
    assert!(err.to_string().contains("cuMemGetInfo failed"), "{err}");
    arm("cuCtxSetCurrent", UNKNOWN);
    let err = b.mem_alloc(4096).unwrap_err();
    assert!(err.to_string().contains("cuCtxSetCurrent failed"), "{err}");

    arm("cuMemUnmap", UNKNOWN);
    assert_driver_error(b.mem_unmap(va, g), DriverCall::MemUnmap, UNKNOWN);
    let mut back = [0u8; 64];
    b.read_bytes(va, &mut back).unwrap();
    assert_eq!(back, [7; 64], "still mapped, bytes intact");
    b.mem_unmap(va, g).unwrap();
    arm("cuMemRelease", UNKNOWN);
    assert_driver_error(b.mem_release(h), DriverCall::MemRelease, UNKNOWN);
    assert_eq!(b.meter().reserved_bytes, g, "not released");
    b.mem_release(h).unwrap();
    arm("cuMemAddressFree", UNKNOWN);
    assert_driver_error(b.address_free(va, 2 * g), DriverCall::AddressFree, UNKNOWN);
    b.address_free(va, 2 * g).unwrap();
    assert_eq!(b.meter().reserved_bytes, 0);

    // An out-of-memory answer from the driver is the backend's OutOfMemory, whatever the cause.
    let free = b.free_memory().unwrap();
    arm("cuMemCreate", OUT_OF_MEMORY);
    assert_eq!(
        b.mem_create(g).unwrap_err(),
        BackendError::OutOfMemory {
            call: DriverCall::MemCreate,
            requested: g,
            free,
        }
    );
    arm("cuMemAlloc_v2", OUT_OF_MEMORY);
    assert!(b.mem_alloc(512).unwrap_err().is_out_of_memory());
}

#[test]
fn a_backend_that_fails_to_open_holds_nothing() {
    let Some(b) = standin() else { return };
    let c = b.controls();
    for function in [
        "cuDevicePrimaryCtxRetain",
        "cuDeviceTotalMem_v2",
        "cuMemGetAllocationGranularity",
    ] {
        assert!(c.fail_nth(function, 1, UNKNOWN));
        let err = CudaBackend::new(0).unwrap_err();
        assert!(
            matches!(&err, BackendError::Unavailable(t) if t.starts_with(function.trim_end_matches("_v2"))),
            "{err}"
        );
    }
    // `b`'s drop checks that no context reference was left behind.
}

#[test]
fn a_stream_whose_synchronize_fails_is_still_destroyed() {
    let Some(mut b) = standin() else { return };
    let s = b.create_stream().unwrap();
    let id = s.id();
    assert!(b.controls().fail_nth("cuStreamSynchronize", 1, UNKNOWN));
    let err = b.destroy_stream(s).unwrap_err();
    assert_eq!(err.call, "cuStreamSynchronize", "{err}");
    assert!(
        b.event_record(id).is_err(),
        "a destroyed stream is no longer admitted"
    );
    // `b`'s drop checks that the stand-in holds no stream more than before.
}

#[test]
fn two_devices_keep_their_memory_apart_and_the_callers_context() {
    // The stand-in reads its device count once, at cuInit: a fresh process.
    if !in_child(
        "two_devices_keep_their_memory_apart_and_the_callers_context",
        &[("COALESCE_STANDIN_DEVICES", "2")],
    ) {
        return;
    }
    let Some(c) = standin_controls() else {
        skip("needs the CUDA driver stand-in");
        return;
    };
    use cudarc::driver::result;
    let mut b0 = CudaBackend::new(0).unwrap();
    let mut b1 = CudaBackend::new(1).unwrap();
    // The caller works in device 1's primary context, as PyTorch may when it frees a tensor of
    // device 0.
    let dev1 = result::device::get(1).unwrap();
    // SAFETY: `dev1` came from cuDeviceGet; the reference is released at the end.
    let ctx1 = unsafe { result::primary_ctx::retain(dev1) }.unwrap();
    // SAFETY: `ctx1` was just retained.
    unsafe { result::ctx::set_current(ctx1) }.unwrap();

    let free0 = b0.free_memory().unwrap();
    let a0 = b0.mem_alloc(1 << 20).unwrap();
    let e = b0.event_record(StreamId(0)).unwrap();
    assert!(b0.event_query(e).unwrap());
    b0.event_release(e);
    assert_eq!(
        result::ctx::get_current().unwrap(),
        Some(ctx1),
        "the caller's context is current again"
    );
    let a1 = b1.mem_alloc(1 << 20).unwrap();
    let report = c.leak_report();
    for (addr, device) in [(a0, 0), (a1, 1)] {
        assert!(
            report.contains(&format!(
                r#"{{"ptr":{addr},"size":1048576,"device":{device}}}"#
            )),
            "{addr:#x} on device {device}: {report}"
        );
    }
    assert_eq!(b0.free_memory().unwrap(), free0 - (1 << 20));

    // A backend moves between threads (the pool's lock hands it to whichever calls).
    let b0 = std::thread::spawn(move || {
        b0.mem_free(a0).unwrap();
        b0
    })
    .join()
    .unwrap();
    assert_eq!(b0.meter().reserved_bytes, 0);
    b1.mem_free(a1).unwrap();
    drop((b0, b1));
    // SAFETY: unbinding (null) is always allowed; the reference retained above is released.
    unsafe {
        result::ctx::set_current(std::ptr::null_mut()).unwrap();
        result::primary_ctx::release(dev1).unwrap();
    }
    let held = Held::now(c);
    assert_eq!(
        held,
        Held {
            leaks: 0,
            streams: 0,
            events: 0,
            context_refs: 0
        },
        "{}",
        c.leak_report()
    );
}

#[test]
fn unmapping_waits_for_queued_work_on_the_memory() {
    let Some(mut b) = standin() else { return };
    assert!(b.controls().set_stream_lag_ms(40.0));
    let g = b.granularity();
    let s = b.create_stream().unwrap();
    let va = b.address_reserve(g).unwrap();
    let h = b.mem_create(g).unwrap();
    b.mem_map(va, h).unwrap();
    b.set_access(va, g).unwrap();
    b.fill_async(va, g as usize, 0x5a, s.id()).unwrap();
    let e = b.event_record(s.id()).unwrap();
    assert!(!b.event_query(e).unwrap(), "the fill is queued");
    // Without the device synchronize before cuMemUnmap, the fill would run on unmapped memory:
    // an asynchronous fault, which the stand-in reports (and `b`'s drop would count).
    b.mem_unmap(va, g).unwrap();
    assert!(b.event_query(e).unwrap(), "the unmap waited for the fill");
    b.event_release(e);
    b.mem_release(h).unwrap();
    b.address_free(va, g).unwrap();
    b.destroy_stream(s).unwrap();
    b.device_synchronize().unwrap();
}
