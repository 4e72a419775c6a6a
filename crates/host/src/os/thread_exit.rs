//! Thread-exit callbacks through a pthread key, the one mechanism that works inside an
//! `LD_PRELOAD` malloc: Rust's `thread_local!` destructors register through std (which
//! allocates), a pthread key does not (glibc stores keys below 32 inline in the thread).

use std::ffi::c_void;

/// A pthread key whose destructor runs at thread exit for threads that set a value.
#[derive(Debug)]
pub struct ThreadExitKey(libc::pthread_key_t);

impl ThreadExitKey {
    /// Creates the key; `dtor` receives the value a thread set. `None` if keys are exhausted.
    pub fn new(dtor: unsafe extern "C" fn(*mut c_void)) -> Option<ThreadExitKey> {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is writable; the destructor is a valid extern "C" fn for the process.
        let rc = unsafe { libc::pthread_key_create(&mut key, Some(dtor)) };
        (rc == 0).then_some(ThreadExitKey(key))
    }

    /// Makes `dtor(value)` run when the calling thread exits (if `value` is non-null).
    ///
    /// # Safety
    /// `value` must stay valid for the destructor until the thread exits.
    pub unsafe fn set(&self, value: *mut c_void) {
        // SAFETY: the key was created by pthread_key_create; the value is only stored.
        unsafe {
            libc::pthread_setspecific(self.0, value);
        }
    }
}
