//! Bad calls through the C ABI: a clear error through `coalesce_last_error`, counted in the
//! stats, never a crash or a lost block. Double free, a foreign pointer, a free on the wrong
//! device, sizes of 0 and 2^63, a device past the count; a live block's bytes survive them all.
//!
//! The library reads its configuration once per process, so this binary holds one test: two
//! simulated devices on the simulated backend.

use coalesce::{
    coalesce_clear_error, coalesce_free, coalesce_last_error, coalesce_malloc, coalesce_stats_json,
};
use std::ffi::c_void;

fn last_error() -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { coalesce_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned()
}

fn stats(device: i32) -> serde_json::Value {
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { coalesce_stats_json(device, buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n > 0 && n < buf.len(), "stats: {}", last_error());
    serde_json::from_slice(&buf[..n]).unwrap()
}

fn expect_error(what: &str, needle: &str) {
    let e = last_error();
    assert!(e.contains(needle), "{what}: {needle:?} not in {e:?}");
    coalesce_clear_error();
}

#[test]
fn bad_calls_are_reported_counted_and_lose_nothing() {
    // SAFETY: set before any pool exists (the only test in this binary), read once.
    unsafe {
        std::env::set_var("COALESCE_BACKEND", "sim");
        std::env::set_var("COALESCE_SIM_DEVICES", "2");
        std::env::set_var("COALESCE_SIM_CAPACITY", (1u64 << 30).to_string());
        std::env::remove_var("COALESCE_POLICY");
        std::env::remove_var("COALESCE_MEMORY_LIMIT");
    }
    let null = std::ptr::null_mut::<c_void>();
    // A live block on device 0 whose bytes must survive everything below (the simulated
    // device's addresses are not host memory: its identity and accounting are checked).
    let kept = coalesce_malloc(4096, 0, null);
    assert!(!kept.is_null(), "{}", last_error());
    let other = coalesce_malloc(8192, 1, null);
    assert!(!other.is_null(), "{}", last_error());

    assert!(coalesce_malloc(0, 0, null).is_null(), "size 0");
    expect_error("size 0", "cannot allocate 0 bytes");
    assert!(
        coalesce_malloc(1usize << 63, 0, null).is_null(),
        "size 2^63"
    );
    expect_error("size 2^63", "cannot allocate 9223372036854775808 bytes");
    assert!(
        coalesce_malloc(16, 2, null).is_null(),
        "device past the count"
    );
    expect_error("device 2", "device 2 is out of range");
    assert!(coalesce_malloc(16, -1, null).is_null(), "device -1");
    expect_error("device -1", "device -1 is out of range");

    coalesce_free(other, 8192, 0, null);
    expect_error("wrong device", "allocated on device 1");
    coalesce_free(0x1234 as *mut c_void, 16, 0, null);
    expect_error("foreign pointer", "not a live allocation");
    let freed = coalesce_malloc(100, 0, null);
    coalesce_free(freed, 100, 0, null);
    coalesce_free(freed, 100, 0, null);
    expect_error("double free", "double free or foreign pointer");

    let s0 = stats(0);
    assert_eq!(s0["num_invalid_requests"], 2, "{s0}");
    assert_eq!(s0["num_invalid_frees"], 3, "{s0}");
    assert_eq!(
        s0["requested_bytes"], 4096,
        "only the kept block is live: {s0}"
    );
    let s1 = stats(1);
    assert_eq!(
        s1["requested_bytes"], 8192,
        "the block freed on the wrong device lives: {s1}"
    );
    // Both blocks are still theirs: they free cleanly on the right devices.
    coalesce_free(other, 8192, 1, null);
    coalesce_free(kept, 4096, 0, null);
    assert_eq!(last_error(), "", "the right frees succeed");
    assert_eq!(stats(0)["requested_bytes"], 0);
    assert_eq!(stats(1)["requested_bytes"], 0);
}
