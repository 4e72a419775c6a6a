//! `fork` safety: every allocator lock is taken before `fork` and released after it in both
//! parent and child, so a child never inherits a lock held by a thread that does not exist
//! there (it would deadlock on its first `malloc`). Lock order: thread-cache pool, central
//! lists by class, the span cache, arena growth, arena heaps — the same order the allocator nests them in.

use super::{arena, central, span_cache, thread_cache};
use std::sync::Once;

static REGISTER: Once = Once::new();

/// Registers the handlers once per process.
pub(crate) fn register_once() {
    REGISTER.call_once(|| {
        // SAFETY: the three handlers are valid extern "C" fns for the life of the process.
        unsafe {
            libc::pthread_atfork(Some(prepare), Some(release), Some(release));
        }
    });
}

extern "C" fn prepare() {
    thread_cache::lock_pool(true);
    central::lock_all(true);
    span_cache::lock(true);
    arena::lock_all(true);
}

extern "C" fn release() {
    arena::lock_all(false);
    span_cache::lock(false);
    central::lock_all(false);
    thread_cache::lock_pool(false);
}
