//! The one thread-local slot of the malloc: a pointer to the thread's cache.
//!
//! On x86-64 Linux the slot is an *initial-exec* TLS variable defined in assembly and read
//! with one `%fs`-relative load. Rust's `thread_local!` in a shared library compiles to the
//! general-dynamic model, a call to `__tls_get_addr` per access, which would double the cost
//! of the LD_PRELOAD fast path. Initial-exec TLS lives in the static TLS block, so reading it
//! never allocates (a preloaded library's block is set up before `main`). Elsewhere the slot
//! is a `const`-initialised, destructor-free `thread_local!`, which never allocates either.

use super::thread_cache::ThreadCache;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod imp {
    use super::ThreadCache;
    use std::arch::{asm, global_asm};

    // An 8-byte, zero-initialised, hidden TLS symbol in .tbss.
    global_asm!(
        ".pushsection .tbss.coalesce_tc_slot,\"awT\",@nobits",
        ".p2align 3",
        ".globl coalesce_tc_slot",
        ".hidden coalesce_tc_slot",
        ".type coalesce_tc_slot, @object",
        ".size coalesce_tc_slot, 8",
        "coalesce_tc_slot:",
        ".zero 8",
        ".popsection",
    );

    #[inline(always)]
    pub(crate) fn get() -> *mut ThreadCache {
        let v: usize;
        // SAFETY: reads this thread's copy of the 8-byte TLS slot defined above: the GOT
        // entry holds its offset from the thread pointer (%fs base).
        unsafe {
            asm!(
                "mov {off}, qword ptr [rip + coalesce_tc_slot@GOTTPOFF]",
                "mov {v}, qword ptr fs:[{off}]",
                off = out(reg) _,
                v = out(reg) v,
                options(nostack, readonly, preserves_flags),
            );
        }
        v as *mut ThreadCache
    }

    #[inline(always)]
    pub(crate) fn set(p: *mut ThreadCache) {
        // SAFETY: writes this thread's copy of the TLS slot (see `get`).
        unsafe {
            asm!(
                "mov {off}, qword ptr [rip + coalesce_tc_slot@GOTTPOFF]",
                "mov qword ptr fs:[{off}], {v}",
                off = out(reg) _,
                v = in(reg) p as usize,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod imp {
    use super::ThreadCache;
    use std::cell::Cell;

    thread_local! {
        static SLOT: Cell<*mut ThreadCache> = const { Cell::new(std::ptr::null_mut()) };
    }

    #[inline(always)]
    pub(crate) fn get() -> *mut ThreadCache {
        SLOT.get()
    }

    #[inline(always)]
    pub(crate) fn set(p: *mut ThreadCache) {
        SLOT.set(p)
    }
}

pub(crate) use imp::{get, set};
