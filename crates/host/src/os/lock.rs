//! A futex lock that never allocates, with raw lock/unlock for the `fork` handlers.
//!
//! Drepper's three-state mutex ("Futexes are tricky"): 0 unlocked, 1 locked, 2 locked with
//! waiters. Uncontended lock and unlock are one atomic each; waiters sleep in the kernel
//! instead of spinning, which matters on a 2-core machine where the holder may be preempted.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

/// A mutual-exclusion lock around `T`, usable in statics and inside `malloc`.
#[derive(Debug)]
pub struct Lock<T> {
    state: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `state`, as in std's Mutex.
unsafe impl<T: Send> Sync for Lock<T> {}
// SAFETY: moving the lock moves the value; T: Send suffices.
unsafe impl<T: Send> Send for Lock<T> {}

impl<T> Lock<T> {
    pub const fn new(value: T) -> Lock<T> {
        Lock {
            state: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    #[inline]
    pub fn lock(&self) -> LockGuard<'_, T> {
        self.raw_lock();
        LockGuard { lock: self }
    }

    /// Locks without a guard; pair with [`Lock::raw_unlock`] (used around `fork`).
    #[inline]
    pub fn raw_lock(&self) {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[cold]
    fn lock_contended(&self) {
        for _ in 0..100 {
            std::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == 0
                && self
                    .state
                    .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            futex(&self.state, libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, 2);
        }
    }

    /// Releases a lock taken with [`Lock::raw_lock`] or held by a forgotten guard.
    ///
    /// # Safety
    /// The lock must be held, and nothing may use the value through the released hold.
    #[inline]
    pub unsafe fn raw_unlock(&self) {
        if self.state.swap(0, Ordering::Release) == 2 {
            futex(&self.state, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1);
        }
    }

    /// Resets the lock to unlocked in a child after `fork`, where the holders no longer exist.
    ///
    /// # Safety
    /// Only in a single-threaded child process right after `fork`.
    pub unsafe fn reset_after_fork(&self) {
        self.state.store(0, Ordering::Relaxed);
    }
}

fn futex(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: FUTEX_WAIT/WAKE on a valid, aligned u32 that outlives the call; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            val,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Holds a [`Lock`]; unlocks on drop.
#[derive(Debug)]
pub struct LockGuard<'a, T> {
    lock: &'a Lock<T>,
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held, so no one else accesses the value.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref, and `&mut self` makes this the only borrow through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the lock and is going away.
        unsafe { self.lock.raw_unlock() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_under_contention() {
        static L: Lock<u64> = Lock::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        *L.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*L.lock(), 80_000);
    }
}
