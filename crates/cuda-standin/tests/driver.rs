//! The stand-in, driven through cudarc's bindings after `preload()`: the contract it enforces,
//! the bytes it keeps, its streams, faults and leak report. Behaviour that needs a fresh
//! process (calls before `cuInit`, the environment, a fault that kills, the exit check) runs in
//! a child: this binary again, with `STANDIN_CHILD` naming the scenario.

mod common;

use coalesce_cuda_standin_loader as loader;
use common::*;
use cudarc::driver::sys::{self, CUresult};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn cudarc_opens_the_preloaded_stand_in() {
    let _t = setup();
    // SAFETY: the names cudarc tries are plain dlopen names.
    assert!(unsafe { sys::is_culib_present() });
    // SAFETY: the library is present, so `culib` does not panic; looking up does not call.
    let lib = unsafe { sys::culib() };
    // SAFETY: only looked up.
    assert!(unsafe { lib.get::<unsafe extern "C" fn()>(b"coalesce_standin_reset") }.is_ok());
    let mut version = 0;
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { sys::cuDriverGetVersion(&mut version) }, OK);
    assert_eq!(version, 12040);
}

#[test]
fn vmm_round_trip_and_aliasing() {
    let _t = setup();
    let (free0, total) = mem_info();
    assert_eq!(total, 16 << 30);
    let va = reserve(8 * G);
    assert_eq!(va % G as u64, 0);
    let h = create(2 * G);
    assert_eq!(mem_info().0, free0 - 2 * G);
    // Two mappings of one handle alias the same bytes.
    assert_eq!(map(va, 2 * G, h), OK);
    assert_eq!(map(va + 4 * G as u64, 2 * G, h), OK);
    assert_eq!(
        protection(va),
        "---s",
        "mapped memory is inaccessible before cuMemSetAccess"
    );
    assert_eq!(set_rw(va, 2 * G), OK);
    assert_eq!(set_rw(va + 4 * G as u64, 2 * G), OK);
    assert_eq!(protection(va), "rw-s");
    // SAFETY: both ranges are mapped read/write.
    unsafe {
        *((va + 12345) as *mut u8) = 0xAB;
        assert_eq!(*((va + 4 * G as u64 + 12345) as *const u8), 0xAB);
    }
    // memcpy round-trips through the second mapping.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let mut back = vec![0u8; data.len()];
    // SAFETY: host buffers valid for their lengths.
    unsafe {
        assert_eq!(
            sys::cuMemcpyHtoD_v2(va + (1 << 20), data.as_ptr().cast(), data.len()),
            OK
        );
        assert_eq!(
            sys::cuMemcpyDtoH_v2(
                back.as_mut_ptr().cast(),
                va + 4 * G as u64 + (1 << 20),
                data.len()
            ),
            OK
        );
    }
    assert_eq!(back, data);
    // Release while mapped is allowed (CUDA docs); the memory stays until the last unmap.
    assert_eq!(release(h), OK);
    assert_eq!(release(h), INVALID, "double release");
    // While a mapping keeps it alive, a released handle can still be mapped (driver 580).
    assert_eq!(map(va + 2 * G as u64, 2 * G, h), OK);
    assert_eq!(unmap(va + 2 * G as u64, 2 * G), OK);
    assert_eq!(unmap(va, 2 * G), OK);
    assert_eq!(protection(va), "---p");
    // SAFETY: the other mapping is still read/write.
    assert_eq!(unsafe { *((va + 4 * G as u64 + 12345) as *const u8) }, 0xAB);
    assert_eq!(mem_info().0, free0 - 2 * G, "still mapped once");
    assert_eq!(unmap(va + 4 * G as u64, 2 * G), OK);
    assert_eq!(mem_info().0, free0, "freed at the last unmap");
    assert_eq!(address_free(va, 8 * G), OK);
    assert_eq!(address_free(va, 8 * G), INVALID, "double address free");
}

#[test]
fn vmm_contract_violations_are_refused() {
    let _t = setup();
    let va = reserve(4 * G);
    let h = create(2 * G);
    let not_reserved = reserve(2 * G);
    assert_eq!(address_free(not_reserved, 2 * G), OK);
    // Misaligned address, size not a granule multiple, zero size, offset misaligned.
    assert_eq!(map(va + 4096, 2 * G, h), INVALID, "misaligned map");
    assert_eq!(map(va, G + 4096, h), INVALID);
    assert_eq!(map(va, 0, h), INVALID);
    // SAFETY: the stand-in checks the range.
    let r = unsafe { sys::cuMemMap(va, G, G, h, 0) };
    assert_eq!(
        r,
        CUresult::CUDA_ERROR_NOT_SUPPORTED,
        "an offset (driver 580)"
    );
    assert_eq!(
        map(va, 4 * G, h),
        CUresult::CUDA_ERROR_NOT_SUPPORTED,
        "larger than the handle (driver 580)"
    );
    assert_eq!(map(not_reserved, 2 * G, h), INVALID, "not reserved");
    assert_eq!(
        map(va + 3 * G as u64, 2 * G, h),
        INVALID,
        "runs past the reservation"
    );
    assert_eq!(map(va, 2 * G, 987_654), INVALID, "unknown handle");
    assert_eq!(try_create(G + 1), Err(INVALID));
    assert_eq!(try_create(0), Err(INVALID));
    let mut p = 0;
    // SAFETY: valid out-pointer.
    let r = unsafe { sys::cuMemAddressReserve(&mut p, G + 4096, 0, 0, 0) };
    assert_eq!(r, INVALID);
    // SAFETY: valid out-pointer.
    let r = unsafe { sys::cuMemAddressReserve(&mut p, G, 3 * G, 0, 0) };
    assert_eq!(r, INVALID, "alignment not a power of two");
    // SAFETY: valid out-pointer; a big alignment is honoured.
    let r = unsafe { sys::cuMemAddressReserve(&mut p, G, 64 * G, 0, 0) };
    assert_eq!(r, OK);
    assert_eq!(p % (64 * G) as u64, 0);
    assert_eq!(address_free(p, G), OK);

    assert_eq!(map(va, 2 * G, h), OK);
    assert_eq!(map(va, 2 * G, h), INVALID, "already mapped");
    assert_eq!(map(va + G as u64, 2 * G, h), INVALID, "overlaps a mapping");
    assert_eq!(
        set_rw(va, 4 * G),
        INVALID,
        "access to a range not fully mapped"
    );
    assert_eq!(set_rw(va + 4096, G), INVALID, "misaligned access");
    assert_eq!(set_rw(va, G), INVALID, "access to part of a mapping");
    assert_eq!(unmap(va, G), INVALID, "partial unmap");
    assert_eq!(unmap(va + G as u64, G), INVALID, "partial unmap");
    assert_eq!(unmap(va, 4 * G), INVALID, "unmap past the mapping");
    assert_eq!(
        address_free(va, 4 * G),
        INVALID,
        "address free with something mapped"
    );
    assert_eq!(address_free(va, 2 * G), INVALID, "part of a reservation");
    // Copies to memory without access are refused rather than faulting.
    let byte = [1u8];
    // SAFETY: valid host pointer.
    let r = unsafe { sys::cuMemcpyHtoD_v2(va, byte.as_ptr().cast(), 1) };
    assert_eq!(r, INVALID);
    // Nothing above changed anything: the mapping is whole and unmaps in one piece.
    assert_eq!(unmap(va, 2 * G), OK);
    assert_eq!(release(h), OK);
    assert_eq!(address_free(va, 4 * G), OK);
    assert_eq!(controls().leak_count(), 0, "{}", controls().leak_report());
}

#[test]
fn unmap_takes_several_adjacent_whole_mappings() {
    let _t = setup();
    let va = reserve(4 * G);
    let (a, b) = (create(2 * G), create(2 * G));
    assert_eq!(map(va, 2 * G, a), OK);
    assert_eq!(map(va + 2 * G as u64, 2 * G, b), OK);
    assert_eq!(set_rw(va, 4 * G), OK, "access across two mappings");
    assert_eq!(unmap(va + G as u64, 2 * G), INVALID, "cuts both");
    assert_eq!(unmap(va, 4 * G), OK);
    assert_eq!(
        (release(a), release(b), address_free(va, 4 * G)),
        (OK, OK, OK)
    );
}

#[test]
fn capacity_and_out_of_memory() {
    let _t = setup();
    let (free, total) = mem_info();
    assert_eq!(
        try_create(total + 2 * G),
        Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY)
    );
    let mut p = 0;
    // SAFETY: valid out-pointer.
    let r = unsafe { sys::cuMemAlloc_v2(&mut p, free + 1) };
    assert_eq!(r, CUresult::CUDA_ERROR_OUT_OF_MEMORY);
    assert_eq!(mem_info().0, free, "a refused create charges nothing");
    let mut bytes = 0;
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { sys::cuDeviceTotalMem_v2(&mut bytes, 0) }, OK);
    assert_eq!(bytes, total);
}

#[test]
fn classic_alloc_free_and_copies() {
    let _t = setup();
    let free0 = mem_info().0;
    let (mut a, mut b) = (0, 0);
    // SAFETY: valid out-pointers.
    unsafe {
        assert_eq!(sys::cuMemAlloc_v2(&mut a, 10_000), OK);
        assert_eq!(sys::cuMemAlloc_v2(&mut b, 10_000), OK);
        assert_eq!(sys::cuMemAlloc_v2(&mut b, 0), INVALID);
    }
    assert_eq!(mem_info().0, free0 - 2 * 12288);
    // SAFETY: device pointers are host addresses of read/write memory.
    unsafe {
        assert_eq!(sys::cuMemsetD8_v2(a, 0x5A, 10_000), OK);
        assert_eq!(sys::cuMemcpyDtoD_v2(b, a, 10_000), OK);
        assert_eq!(*((b + 9_999) as *const u8), 0x5A);
        assert_eq!(
            sys::cuMemsetD8_v2(a, 0, 10_001),
            INVALID,
            "runs past the allocation"
        );
        assert_eq!(
            sys::cuMemFree_v2(a + 8),
            INVALID,
            "not an allocation's start"
        );
        assert_eq!(sys::cuMemFree_v2(a), OK);
        assert_eq!(sys::cuMemFree_v2(a), INVALID, "double free");
        assert_eq!(
            sys::cuMemFree_v2(0),
            OK,
            "freeing 0 does nothing (driver 580)"
        );
        assert_eq!(sys::cuMemcpyDtoD_v2(b, a, 1), INVALID, "from freed memory");
        assert_eq!(sys::cuMemFree_v2(b), OK);
    }
    assert_eq!(mem_info().0, free0);
}

#[test]
fn no_context_is_invalid_context() {
    let _t = setup();
    std::thread::spawn(|| {
        let mut p = 0;
        // SAFETY: valid out-pointers; this thread has no current context.
        unsafe {
            assert_eq!(
                sys::cuMemAlloc_v2(&mut p, 4096),
                CUresult::CUDA_ERROR_INVALID_CONTEXT
            );
            assert_eq!(
                sys::cuCtxSynchronize(),
                CUresult::CUDA_ERROR_INVALID_CONTEXT
            );
            let mut ctx = std::ptr::null_mut();
            assert_eq!(sys::cuCtxGetCurrent(&mut ctx), OK);
            assert!(ctx.is_null());
            assert_eq!(
                sys::cuCtxSetCurrent(std::ptr::without_provenance_mut(0x1234)),
                CUresult::CUDA_ERROR_INVALID_CONTEXT
            );
        }
    })
    .join()
    .unwrap();
}

#[test]
fn events_lag_then_complete_and_fills_run_in_stream_order() {
    let _t = setup();
    assert!(controls().set_stream_lag_ms(400.0));
    let mut p = 0;
    let (mut stream, mut event) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: valid out-pointers; the fill targets an allocation.
    unsafe {
        assert_eq!(sys::cuMemAlloc_v2(&mut p, 4096), OK);
        assert_eq!(sys::cuStreamCreate(&mut stream, 1), OK);
        assert_eq!(sys::cuEventCreate(&mut event, 2), OK);
        assert_eq!(sys::cuEventQuery(event), OK, "never recorded: complete");
        assert_eq!(sys::cuMemsetD8Async(p, 7, 4096, stream), OK);
        assert_eq!(sys::cuEventRecord(event, stream), OK);
        assert_eq!(sys::cuEventQuery(event), CUresult::CUDA_ERROR_NOT_READY);
        assert_eq!(*(p as *const u8), 0, "the fill has not run yet");
        // The null stream and the legacy stream are accepted.
        assert_eq!(sys::cuStreamWaitEvent(std::ptr::null_mut(), event, 0), OK);
        assert_eq!(
            sys::cuStreamWaitEvent(std::ptr::without_provenance_mut(1), event, 0),
            OK
        );
        let start = Instant::now();
        assert_eq!(sys::cuEventSynchronize(event), OK);
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(sys::cuEventQuery(event), OK);
        assert_eq!(
            *(p as *const u8),
            7,
            "the fill ran when the stream got there"
        );
        assert_eq!(sys::cuStreamSynchronize(stream), OK);
        assert_eq!(sys::cuCtxSynchronize(), OK);
        assert_eq!(sys::cuEventDestroy_v2(event), OK);
        assert_eq!(
            sys::cuEventQuery(event),
            CUresult::CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(sys::cuStreamDestroy_v2(stream), OK);
        assert_eq!(
            sys::cuStreamDestroy_v2(stream),
            CUresult::CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(sys::cuMemFree_v2(p), OK);
    }
    controls().reset();
}

#[test]
fn a_fill_that_outlives_its_memory_is_a_sticky_fault() {
    let _t = setup();
    assert!(controls().set_stream_lag_ms(400.0));
    let mut p = 0;
    let mut stream = std::ptr::null_mut();
    // SAFETY: valid out-pointers.
    unsafe {
        assert_eq!(sys::cuMemAlloc_v2(&mut p, 4096), OK);
        assert_eq!(sys::cuStreamCreate(&mut stream, 1), OK);
        assert_eq!(sys::cuMemsetD8Async(p, 1, 4096, stream), OK);
        assert_eq!(
            sys::cuMemFree_v2(p),
            OK,
            "freed while the fill is pending: a pool bug"
        );
        assert_eq!(
            sys::cuStreamSynchronize(stream),
            CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
        );
        assert!(
            controls()
                .leak_report()
                .contains("ran after its memory was freed")
        );
        controls().reset();
        assert_eq!(sys::cuStreamSynchronize(stream), OK);
        assert_eq!(sys::cuStreamDestroy_v2(stream), OK);
    }
}

#[test]
fn injected_faults_fail_the_nth_call_and_change_nothing() {
    let _t = setup();
    let c = controls();
    let va = reserve(2 * G);
    let h = create(2 * G);
    let free = mem_info().0;
    assert!(c.fail_nth("cuMemCreate", 2, CUresult::CUDA_ERROR_OUT_OF_MEMORY as u32));
    assert!(c.fail_nth("cuMemMap", 1, CUresult::CUDA_ERROR_UNKNOWN as u32));
    assert!(!c.fail_nth("cuMemMapp", 1, 1), "unknown function");
    assert!(!c.fail_nth("cuMemMap", 1, 12345), "unknown code");
    let calls = c.calls("cuMemCreate").unwrap();
    let h2 = create(2 * G);
    assert_eq!(try_create(2 * G), Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY));
    assert_eq!(c.calls("cuMemCreate"), Some(calls + 2));
    assert_eq!(
        mem_info().0,
        free - 2 * G,
        "the failed create charged nothing"
    );
    assert_eq!(map(va, 2 * G, h), CUresult::CUDA_ERROR_UNKNOWN);
    assert_eq!(protection(va), "---p", "the failed map mapped nothing");
    assert_eq!(map(va, 2 * G, h), OK, "the range is still free");
    // A rate of 1 fails every call; 0 disarms.
    assert!(c.fail_rate(
        "cuMemUnmap",
        1.0,
        CUresult::CUDA_ERROR_INVALID_VALUE as u32,
        1
    ));
    assert_eq!(unmap(va, 2 * G), INVALID);
    assert!(c.fail_rate("cuMemUnmap", 0.0, 1, 1));
    assert_eq!(unmap(va, 2 * G), OK);
    assert_eq!(
        (release(h), release(h2), address_free(va, 2 * G)),
        (OK, OK, OK)
    );
    assert_eq!(c.calls("cuNotAFunction"), None);
}

#[test]
fn leak_report_lists_what_is_left() {
    let _t = setup();
    let c = controls();
    assert_eq!(c.leak_count(), 0, "{}", c.leak_report());
    let va = reserve(4 * G);
    let h = create(2 * G);
    let h2 = create(2 * G);
    assert_eq!(map(va, 2 * G, h2), OK);
    assert_eq!(release(h2), OK);
    let mut p = 0;
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { sys::cuMemAlloc_v2(&mut p, 100) }, OK);
    let report = c.leak_report();
    assert_eq!(c.leak_count(), 4, "{report}");
    assert!(
        report.contains(&format!(r#""handles_not_released":[{{"handle":{h},"#)),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            r#""mappings_left":[{{"ptr":{va},"size":{},"handle":{h2}}}]"#,
            2 * G
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            r#""reservations_not_freed":[{{"ptr":{va},"size":{}}}]"#,
            4 * G
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            r#""allocations_not_freed":[{{"ptr":{p},"size":100"#
        )),
        "{report}"
    );
    assert_eq!(unmap(va, 2 * G), OK);
    // SAFETY: `p` is an allocation.
    assert_eq!(unsafe { sys::cuMemFree_v2(p) }, OK);
    assert_eq!((release(h), address_free(va, 4 * G)), (OK, OK));
    assert_eq!(c.leak_count(), 0, "{}", c.leak_report());
}

#[test]
fn error_names_and_strings() {
    let _t = setup();
    let mut s = std::ptr::null();
    // SAFETY: valid out-pointer; the strings are static.
    unsafe {
        assert_eq!(
            sys::cuGetErrorName(CUresult::CUDA_ERROR_NOT_READY, &mut s),
            OK
        );
        assert_eq!(
            std::ffi::CStr::from_ptr(s).to_str().unwrap(),
            "CUDA_ERROR_NOT_READY"
        );
        assert_eq!(
            sys::cuGetErrorString(CUresult::CUDA_ERROR_OUT_OF_MEMORY, &mut s),
            OK
        );
        assert_eq!(
            std::ffi::CStr::from_ptr(s).to_str().unwrap(),
            "out of memory"
        );
    }
}

// ---- child processes ----

/// Runs scenario `name` in a fresh process (this test binary) with `env`.
fn child(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "child_scenario",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("STANDIN_CHILD", name);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run child")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The scenarios; a no-op unless `STANDIN_CHILD` names one.
#[test]
fn child_scenario() {
    let Ok(name) = std::env::var("STANDIN_CHILD") else {
        return;
    };
    loader::preload().unwrap();
    match name.as_str() {
        "before_init" => {
            let mut p = 0;
            let mut n = 0;
            // SAFETY: valid out-pointers.
            unsafe {
                assert_eq!(
                    sys::cuMemAlloc_v2(&mut p, 4096),
                    CUresult::CUDA_ERROR_NOT_INITIALIZED
                );
                assert_eq!(
                    sys::cuDeviceGetCount(&mut n),
                    CUresult::CUDA_ERROR_NOT_INITIALIZED
                );
                assert_eq!(
                    sys::cuMemAddressReserve(&mut p, G, 0, 0, 0),
                    CUresult::CUDA_ERROR_NOT_INITIALIZED
                );
                assert_eq!(sys::cuInit(0), OK);
                assert_eq!(
                    sys::cuMemAlloc_v2(&mut p, 4096),
                    CUresult::CUDA_ERROR_INVALID_CONTEXT
                );
            }
        }
        "touch_before_access" => {
            init_context();
            let va = reserve(2 * G);
            assert_eq!(map(va, 2 * G, create(2 * G)), OK);
            eprintln!("touching");
            // SAFETY: not safe: the range is PROT_NONE and this must die of SIGSEGV.
            unsafe { std::ptr::write_volatile(va as *mut u8, 1) };
            eprintln!("survived the touch");
        }
        "touch_after_unmap" => {
            init_context();
            let va = reserve(2 * G);
            assert_eq!(map(va, 2 * G, create(2 * G)), OK);
            assert_eq!(set_rw(va, 2 * G), OK);
            // SAFETY: mapped read/write.
            unsafe { std::ptr::write_volatile(va as *mut u8, 1) };
            assert_eq!(unmap(va, 2 * G), OK);
            eprintln!("touching");
            // SAFETY: not safe: unmapped, so PROT_NONE again; must die.
            unsafe { std::ptr::write_volatile(va as *mut u8, 1) };
            eprintln!("survived the touch");
        }
        "environment" => {
            init_context();
            let mut n = 0;
            let mut g = 0;
            // SAFETY: valid out-pointers.
            unsafe {
                assert_eq!(sys::cuDeviceGetCount(&mut n), OK);
                assert_eq!(
                    sys::cuMemGetAllocationGranularity(
                        &mut g,
                        &prop(1),
                        sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED
                    ),
                    OK
                );
                assert_eq!(
                    sys::cuMemGetAllocationGranularity(
                        &mut g,
                        &prop(5),
                        sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED
                    ),
                    OK,
                    "driver 580 answers for any ordinal"
                );
                let mut h = 0;
                assert_eq!(
                    sys::cuMemCreate(&mut h, 64 << 10, &prop(2), 0),
                    CUresult::CUDA_ERROR_INVALID_DEVICE
                );
            }
            assert_eq!((n, g), (2, 64 << 10));
            assert_eq!(mem_info(), (1 << 20, 1 << 20));
            // Each device has its own capacity.
            let mut h = 0;
            // SAFETY: valid pointers.
            unsafe {
                assert_eq!(sys::cuMemCreate(&mut h, 1 << 20, &prop(0), 0), OK);
                assert_eq!(
                    sys::cuMemCreate(&mut h, 64 << 10, &prop(0), 0),
                    CUresult::CUDA_ERROR_OUT_OF_MEMORY
                );
                assert_eq!(sys::cuMemCreate(&mut h, 1 << 20, &prop(1), 0), OK);
            }
            assert_eq!(mem_info(), (0, 1 << 20));
            // COALESCE_STANDIN_FAIL: the 5th cuMemCreate fails, then the 6th with another code.
            assert_eq!(try_create(64 << 10), Err(CUresult::CUDA_ERROR_UNKNOWN));
            assert_eq!(
                try_create(64 << 10),
                Err(CUresult::CUDA_ERROR_INVALID_VALUE)
            );
        }
        "leak_abort" => {
            init_context();
            create(2 * G);
            reserve(2 * G);
        }
        "fail_rate" => {
            init_context();
            // One character per cuMemCreate: whether it failed with the configured code.
            let outcomes: String = (0..64)
                .map(|_| match try_create(2 * G) {
                    Ok(h) => {
                        assert_eq!(release(h), OK);
                        '.'
                    }
                    Err(CUresult::CUDA_ERROR_OUT_OF_MEMORY) => 'x',
                    Err(e) => panic!("{e:?}"),
                })
                .collect();
            println!("outcomes {outcomes}");
        }
        "strict_release" => {
            init_context();
            let va = reserve(2 * G);
            let h = create(2 * G);
            assert_eq!(map(va, 2 * G, h), OK);
            assert_eq!(
                release(h),
                INVALID,
                "strict: a mapped handle is not released"
            );
            assert_eq!(unmap(va, 2 * G), OK);
            assert_eq!(release(h), OK);
            assert_eq!(address_free(va, 2 * G), OK);
        }
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn calls_before_init_are_not_initialized() {
    let o = child("before_init", &[]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn touching_memory_without_access_faults() {
    use std::os::unix::process::ExitStatusExt;
    for scenario in ["touch_before_access", "touch_after_unmap"] {
        let o = child(scenario, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGSEGV),
            "{scenario}: {}",
            text(&o)
        );
        assert!(
            err.contains("touching") && !err.contains("survived"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn environment_sets_devices_capacity_granularity_and_faults() {
    let o = child(
        "environment",
        &[
            ("COALESCE_STANDIN_DEVICES", "2"),
            ("COALESCE_STANDIN_CAPACITY", "1MiB"),
            ("COALESCE_STANDIN_GRANULARITY", "64KiB"),
            (
                "COALESCE_STANDIN_FAIL",
                "cuMemCreate:5:UNKNOWN,cuMemCreate:6:1",
            ),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_malformed_setting_fails_cu_init() {
    let o = child("before_init", &[("COALESCE_STANDIN_CAPACITY", "lots")]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("COALESCE_STANDIN_CAPACITY=\"lots\""),
        "{}",
        text(&o)
    );
}

#[test]
fn leak_check_at_exit_reports_and_aborts() {
    let o = child("leak_abort", &[("COALESCE_STANDIN_LEAK_CHECK", "abort")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(86), "{}", text(&o));
    assert!(
        err.contains("handles_not_released\":[{\"handle\":1,") && err.contains("\"leaks\":2"),
        "{}",
        text(&o)
    );
    let o = child("leak_abort", &[("COALESCE_STANDIN_LEAK_CHECK", "1")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("leak report"),
        "{}",
        text(&o)
    );
}

#[test]
fn loader_dir_serves_child_processes() {
    let dir = loader::loader_dir().expect("loader dir");
    for name in ["libcuda.so", "libcuda.so.1"] {
        let target = std::fs::canonicalize(dir.join(name)).unwrap();
        assert_eq!(
            target,
            std::fs::canonicalize(loader::library_path().unwrap()).unwrap()
        );
    }
    let script = "import ctypes; l = ctypes.CDLL('libcuda.so.1'); print(l.cuInit(0), l.coalesce_standin_leak_count())";
    let Ok(o) = Command::new("python3")
        .args(["-c", script])
        .env("LD_LIBRARY_PATH", loader::ld_library_path().unwrap())
        .output()
    else {
        eprintln!("skipping the python check: no python3");
        return;
    };
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0 0");
}

#[test]
fn exports_every_symbol_the_cuda_backend_resolves() {
    // The backend's list, read from its source so the two cannot drift apart.
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../backend/src/cuda/driver.rs"
    ))
    .expect("read the backend's driver.rs");
    let list = source
        .split("const SYMBOLS: &[&str] = &[")
        .nth(1)
        .and_then(|s| s.split("];").next())
        .expect("SYMBOLS list");
    let names: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
    assert!(names.len() >= 30, "{names:?}");
    // SAFETY: loading the stand-in runs no code but its statics' setup.
    let lib = unsafe { libloading::Library::new(loader::library_path().unwrap()) }.unwrap();
    for name in names {
        // SAFETY: only looked up, never called through this type.
        let found = unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_ok();
        assert!(found, "{name} is not exported");
    }
}

#[test]
fn threads_map_write_and_verify_their_own_memory() {
    let _t = setup();
    let workers: Vec<_> = (0..8u8)
        .map(|t| {
            std::thread::spawn(move || {
                init_context();
                for round in 0..20u8 {
                    let va = reserve(4 * G);
                    let h = create(2 * G);
                    assert_eq!(map(va + 2 * G as u64, 2 * G, h), OK);
                    assert_eq!(set_rw(va + 2 * G as u64, 2 * G), OK);
                    let fill = t.wrapping_mul(31).wrapping_add(round);
                    // SAFETY: the range is mapped read/write and this thread's alone.
                    unsafe {
                        assert_eq!(sys::cuMemsetD8_v2(va + 2 * G as u64, fill, 2 * G), OK);
                        let bytes =
                            std::slice::from_raw_parts((va + 2 * G as u64) as *const u8, 2 * G);
                        assert!(bytes.iter().all(|b| *b == fill));
                    }
                    assert_eq!(
                        (
                            unmap(va + 2 * G as u64, 2 * G),
                            release(h),
                            address_free(va, 4 * G)
                        ),
                        (OK, OK, OK)
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(controls().leak_count(), 0, "{}", controls().leak_report());
}

#[test]
fn fault_rate_from_the_environment_is_seeded() {
    let run = |seed: &str| {
        let o = child(
            "fail_rate",
            &[
                (
                    "COALESCE_STANDIN_FAIL_RATE",
                    "cuMemCreate:0.5:OUT_OF_MEMORY",
                ),
                ("COALESCE_STANDIN_SEED", seed),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.lines()
            .find_map(|l| l.split("outcomes ").nth(1))
            .expect("outcomes line")
            .to_string()
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a, b, "same seed, same faults");
    assert_ne!(a, c, "another seed, other faults");
    let failed = a.matches('x').count();
    assert!((16..=48).contains(&failed), "{a}");
}

#[test]
fn thousands_of_handles_need_no_file_descriptors() {
    let _t = setup();
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    let n = 3000;
    let va = reserve(n * G);
    let handles: Vec<u64> = (0..n).map(|_| create(G)).collect();
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(map(va + (i * G) as u64, G, *h), OK);
        assert_eq!(release(*h), OK);
    }
    assert!(
        fds() <= before + 8,
        "{} descriptors for {n} handles",
        fds() - before
    );
    assert_eq!(set_rw(va, n * G), OK);
    // SAFETY: the whole range is mapped read/write.
    unsafe { *((va + (n * G) as u64 - 1) as *mut u8) = 9 };
    assert_eq!(
        unmap(va, n * G),
        OK,
        "one call unmaps all {n} adjacent mappings"
    );
    assert_eq!(address_free(va, n * G), OK);
    assert_eq!(controls().leak_count(), 0, "{}", controls().leak_report());
}

#[test]
fn strict_release_refuses_a_mapped_handle() {
    let o = child(
        "strict_release",
        &[
            ("COALESCE_STANDIN_STRICT_RELEASE", "1"),
            ("COALESCE_STANDIN_LEAK_CHECK", "abort"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_lag_in_queries_is_deterministic_and_ends_at_a_synchronize() {
    let _t = setup();
    controls().set_stream_lag_queries(2);
    let (mut stream, mut event) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: valid out-pointers; handles made here.
    unsafe {
        assert_eq!(sys::cuStreamCreate(&mut stream, 1), OK);
        assert_eq!(sys::cuEventCreate(&mut event, 2), OK);
        assert_eq!(sys::cuEventRecord(event, stream), OK);
        assert_eq!(sys::cuEventQuery(event), CUresult::CUDA_ERROR_NOT_READY);
        assert_eq!(sys::cuEventQuery(event), CUresult::CUDA_ERROR_NOT_READY);
        assert_eq!(sys::cuEventQuery(event), OK);
        assert_eq!(sys::cuEventRecord(event, stream), OK);
        assert_eq!(sys::cuEventQuery(event), CUresult::CUDA_ERROR_NOT_READY);
        assert_eq!(sys::cuStreamSynchronize(stream), OK);
        assert_eq!(
            sys::cuEventQuery(event),
            OK,
            "the stream's synchronize ended the lag"
        );
        assert_eq!(sys::cuEventRecord(event, std::ptr::null_mut()), OK);
        assert_eq!(sys::cuCtxSynchronize(), OK);
        assert_eq!(
            sys::cuEventQuery(event),
            OK,
            "the context's synchronize ended the lag"
        );
        assert_eq!(sys::cuEventDestroy_v2(event), OK);
        assert_eq!(sys::cuStreamDestroy_v2(stream), OK);
    }
    controls().reset();
}

#[test]
fn answers_the_probes_as_a_real_driver_did() {
    // Where the stand-in is deliberately stricter than driver 580 (which accepts an unmap of
    // a range with nothing mapped, against the documented contract).
    const STRICTER: &[&str] = &["unmap_offset_granule", "unmap_nothing"];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let Ok(o) = Command::new("python3")
        .arg(format!("{dir}/probe.py"))
        .env("LD_LIBRARY_PATH", loader::ld_library_path().unwrap())
        .output()
    else {
        eprintln!("skipping the probe comparison: no python3");
        return;
    };
    assert!(o.status.success(), "{}", text(&o));
    let ours = String::from_utf8_lossy(&o.stdout).into_owned();
    let real = std::fs::read_to_string(format!("{dir}/probe-h100-580.txt")).unwrap();
    let (ours, real): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), real.lines().collect());
    assert_eq!(ours.len(), real.len(), "{ours:?}");
    for (o, r) in ours.iter().zip(&real) {
        let name = r.split(' ').next().unwrap();
        if !STRICTER.contains(&name) {
            assert_eq!(o, r, "the stand-in answers differently from driver 580");
        }
    }
}
