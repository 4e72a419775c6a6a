use super::*;
use crate::sim::{SimConfig, SimDevice};
use crate::{Backend, BackendError, DriverCall};

const MIB: u64 = 1 << 20;

fn sim() -> SimDevice {
    SimDevice::new(SimConfig::default())
}

#[test]
fn growth_beyond_the_limit_is_refused_before_the_driver() {
    let mut dev = sim();
    let mut limited = Limit::new(ByRef(&mut dev), Some(8 * MIB));
    let a = limited.mem_alloc(6 * MIB).unwrap();
    let err = limited.mem_create(4 * MIB).unwrap_err();
    assert_eq!(
        err,
        BackendError::OutOfMemory {
            call: DriverCall::MemCreate,
            requested: 4 * MIB,
            free: 2 * MIB
        }
    );
    assert!(limited.refused());
    limited.mem_create(2 * MIB).unwrap();
    limited.mem_free(a).unwrap();
    assert_eq!(
        dev.meter().calls.get(DriverCall::MemCreate),
        1,
        "the refused call never reached the device"
    );
}

#[test]
fn no_limit_forwards_everything() {
    let mut open = Limit::new(sim(), None);
    open.mem_alloc(60 << 30).unwrap();
    assert!(!open.refused());
    assert_eq!(open.meter().reserved_bytes, 60 << 30);
}

#[test]
fn the_nth_call_fails_once_and_changes_nothing() {
    let mut dev = Faults::new(sim());
    let error = BackendError::Driver {
        call: DriverCall::MemCreate,
        code: 2,
        message: "injected".into(),
    };
    dev.arm(Fault {
        call: DriverCall::MemCreate,
        nth: 2,
        error: error.clone(),
    });
    dev.mem_create(2 * MIB).unwrap();
    assert_eq!(dev.mem_create(2 * MIB).unwrap_err(), error);
    assert_eq!(
        dev.meter().reserved_bytes,
        2 * MIB,
        "the failed call reserved nothing"
    );
    assert_eq!(dev.meter().calls.get(DriverCall::MemCreate), 1);
    dev.mem_create(2 * MIB).unwrap();
    assert_eq!(dev.fired().len(), 1);
}

#[test]
fn adaptors_compose_and_the_log_sees_outcomes() {
    // A log over a limit over the device: the log sees the limit's refusal as an error.
    let mut dev = Log::new(Limit::new(sim(), Some(4 * MIB)), 16);
    let h = dev.mem_create(2 * MIB).unwrap();
    assert!(dev.mem_create(4 * MIB).is_err());
    dev.mem_release(h).unwrap();
    let logged: Vec<_> = dev.entries().map(|e| (e.call, e.error.is_some())).collect();
    assert_eq!(
        logged,
        vec![
            (Call::MemCreate { size: 2 * MIB }, false),
            (Call::MemCreate { size: 4 * MIB }, true),
            (Call::MemRelease { handle: h }, false),
        ]
    );
    assert_eq!(dev.meter().reserved_bytes, 0);
}

#[test]
fn calls_print_as_the_driver_functions() {
    assert_eq!(Call::MemCreate { size: 4 }.to_string(), "cuMemCreate(4)");
    assert_eq!(
        Call::MemUnmap {
            addr: 0x200000,
            size: 2 * MIB
        }
        .to_string(),
        "cuMemUnmap(0x200000, 2097152)"
    );
}
