//! The simulated device enforces the driver's rules and counts what it is asked to do.

use super::*;

const G: u64 = 2 << 20;

fn sim() -> SimDevice {
    SimDevice::new(SimConfig {
        capacity: 64 * G,
        ..SimConfig::default()
    })
}

#[test]
fn classic_allocations_count_reserved_bytes_and_calls() {
    let mut d = sim();
    let a = d.mem_alloc(1000).unwrap();
    let b = d.mem_alloc(3 * G).unwrap();
    assert_eq!(a % 512, 0);
    assert_eq!(b % G, 0);
    assert!(d.is_accessible(b, 3 * G));
    assert_eq!(d.meter().reserved_bytes, 3 * G + 1000);
    d.mem_free(a).unwrap();
    assert!(d.mem_free(a).is_err(), "double free is reported");
    assert_eq!(d.meter().reserved_bytes, 3 * G);
    assert_eq!(d.meter().peak_reserved_bytes, 3 * G + 1000);
    assert_eq!(d.meter().calls.get(DriverCall::MemAlloc), 2);
    assert_eq!(d.meter().calls.get(DriverCall::MemFree), 2);
}

#[test]
fn capacity_is_enforced_with_out_of_memory() {
    let mut d = sim();
    d.mem_alloc(60 * G).unwrap();
    let err = d.mem_create(8 * G).unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "out of device memory: mem_create of {} bytes with {} bytes free on the device",
            8 * G,
            4 * G
        )
    );
}

#[test]
fn vmm_lifecycle_follows_cuda_rules() {
    let mut d = sim();
    let va = d.address_reserve(8 * G).unwrap();
    let h1 = d.mem_create(2 * G).unwrap();
    let h2 = d.mem_create(G).unwrap();
    assert_eq!(
        d.meter().reserved_bytes,
        3 * G,
        "created physical memory counts as reserved"
    );
    d.mem_map(va, h1).unwrap();
    d.mem_map(va + 2 * G, h2).unwrap();
    assert!(!d.is_accessible(va, G), "mapped but no access yet");
    d.set_access(va, 3 * G).unwrap();
    assert!(d.is_accessible(va, 3 * G));
    assert!(!d.is_accessible(va, 3 * G + 1));
    assert!(
        d.mem_unmap(va, G).is_err(),
        "cannot unmap part of a mapping"
    );
    assert!(
        d.address_free(va, 8 * G).is_err(),
        "cannot free a reservation with mappings"
    );
    d.mem_release(h1).unwrap();
    assert_eq!(
        d.meter().reserved_bytes,
        3 * G,
        "released but still mapped: memory stays"
    );
    d.mem_unmap(va, 2 * G).unwrap();
    assert_eq!(
        d.meter().reserved_bytes,
        G,
        "last mapping gone: memory freed"
    );
    d.mem_unmap(va + 2 * G, G).unwrap();
    d.mem_release(h2).unwrap();
    d.address_free(va, 8 * G).unwrap();
    assert_eq!(d.meter().reserved_bytes, 0);
    assert_eq!(d.live_objects(), (0, 0));
}

#[test]
fn vmm_misuse_is_reported() {
    let mut d = sim();
    let va = d.address_reserve(4 * G).unwrap();
    let h = d.mem_create(2 * G).unwrap();
    assert!(d.mem_create(G / 2).is_err(), "not a granule multiple");
    assert!(d.mem_map(va + 512, h).is_err(), "unaligned");
    assert!(
        d.mem_map(va + 3 * G, h).is_err(),
        "runs past the reservation"
    );
    assert!(
        d.mem_map(0x1234_0000_0000, h).is_err(),
        "outside any reservation"
    );
    d.mem_map(va, h).unwrap();
    let h2 = d.mem_create(2 * G).unwrap();
    assert!(d.mem_map(va + G, h2).is_err(), "overlaps a mapping");
    assert!(d.set_access(va, 4 * G).is_err(), "range not fully mapped");
    assert!(d.mem_release(PhysHandle(999)).is_err());
    d.mem_release(h2).unwrap();
    assert!(d.mem_release(h2).is_err(), "double release");
    assert!(
        d.mem_map(va + 2 * G, h2).is_err(),
        "released handles cannot be mapped"
    );
}

#[test]
fn events_complete_when_the_work_before_them_has() {
    let mut d = SimDevice::new(SimConfig {
        stream_lag: 3,
        ..SimConfig::default()
    });
    let (s1, s2) = (StreamId(1), StreamId(2));
    let idle = d.event_record(s1).unwrap();
    assert!(
        d.event_query(idle).unwrap(),
        "nothing pending: complete at once"
    );
    d.work(s1); // done at 3
    let e = d.event_record(s1).unwrap();
    assert!(!d.event_query(e).unwrap());
    d.tick();
    d.tick();
    assert!(!d.event_query(e).unwrap());
    d.tick();
    assert!(d.event_query(e).unwrap());
    // A stream that waits on another's event completes no earlier than that event.
    d.work(s1); // done at 6
    let e1 = d.event_record(s1).unwrap();
    d.tick(); // now 4
    d.stream_wait_event(s2, e1).unwrap();
    d.work(s2); // max(4 + 3, 6) = 7
    let e2 = d.event_record(s2).unwrap();
    d.tick();
    d.tick(); // now 6
    assert!(d.event_query(e1).unwrap());
    assert!(!d.event_query(e2).unwrap());
    d.work(s1); // done at 9
    let e3 = d.event_record(s1).unwrap();
    assert!(!d.is_ordered_after(s2, e3), "s2 has not waited for e3");
    d.stream_wait_event(s2, e3).unwrap();
    assert!(
        d.is_ordered_after(s2, e3),
        "after waiting, s2's new work is ordered after e3"
    );
    d.stream_synchronize(s2).unwrap();
    assert!(
        d.event_query(e2).unwrap(),
        "synchronize waits for the stream's work"
    );
    assert_eq!(d.meter().calls.get(DriverCall::Synchronize), 1);
}

#[test]
fn zero_lag_events_complete_at_once() {
    let mut d = sim();
    let e = d.event_record(StreamId(0)).unwrap();
    assert!(d.event_query(e).unwrap());
    d.event_release(e);
    assert!(d.event_query(e).is_err(), "released events are unknown");
}

#[test]
fn unmapping_memory_a_stream_may_still_use_is_an_error() {
    let mut d = SimDevice::new(SimConfig {
        stream_lag: 2,
        ..SimConfig::default()
    });
    let va = d.address_reserve(4 * G).unwrap();
    let h = d.mem_create(2 * G).unwrap();
    d.mem_map(va, h).unwrap();
    d.set_access(va, 2 * G).unwrap();
    d.use_until_now(va + 4096, 512, StreamId(3)); // a kernel on stream 3, done at tick 2
    let err = d.mem_unmap(va, 2 * G).unwrap_err().to_string();
    assert!(err.contains("while stream 3 may still use"), "{err}");
    d.tick();
    assert!(d.mem_unmap(va, 2 * G).is_err(), "still running at tick 1");
    d.tick();
    d.mem_unmap(va, 2 * G).unwrap();
}
