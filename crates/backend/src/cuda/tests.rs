//! The CUDA backend: a clean error without a driver; the driver's rules with one.
//!
//! Tests that need a GPU print `skipping: ...` and pass when none is present (no CI machine
//! has one); `scripts/gpu-check.sh` runs the GPU smoke test where one is.

use super::*;
use crate::{Backend, BackendError, DriverCall, StreamId};

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

/// The backend for device 0, or `None` (with a visible message) when there is no GPU.
fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            skip(&format!("no CUDA driver or device ({e})"));
            None
        }
    }
}

#[test]
fn without_a_driver_the_backend_is_unavailable_with_a_reason() {
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
        text.contains("CUDA"),
        "the reason names what is missing: {text}"
    );
    assert!(err.to_string().starts_with("device backend unavailable: "));
}

#[test]
fn a_device_that_does_not_exist_is_unavailable() {
    if driver_status().is_err() {
        skip("no CUDA driver");
        return;
    }
    let err = CudaBackend::new(10_000).unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable(t) if t.contains("no CUDA device 10000")),
        "{err}"
    );
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
    b.destroy_stream(s).unwrap();
    b.mem_free(addr).unwrap();
}
