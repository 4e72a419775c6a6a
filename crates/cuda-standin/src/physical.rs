//! Physical memory for `cuMemCreate`: ranges of one sparse memfd for the whole process.
//!
//! One file rather than one per handle, so a pool holding thousands of handles needs no
//! thousands of file descriptors (a common soft limit is 1024). Invariants: ranges are handed
//! out by a bump pointer and never reused, so a stale mapping can never alias a newer handle's
//! bytes; a range's pages are given back to the system (`FALLOC_FL_PUNCH_HOLE`) when its
//! handle dies, so only live handles use memory, and only the pages they touched.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The file and its bump pointer.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    fd: Option<OwnedFd>,
    /// The next unused offset.
    next: u64,
    /// The file's size.
    len: u64,
}

impl Arena {
    /// A fresh zero-filled range of `size` bytes: its offset, or `None` when the system
    /// refuses (then nothing changed).
    pub fn take(&mut self, size: usize) -> Option<u64> {
        let fd = match &self.fd {
            Some(fd) => fd.as_raw_fd(),
            None => {
                // SAFETY: a valid NUL-terminated name and flags.
                let raw = unsafe {
                    libc::memfd_create(c"coalesce-cuda-standin".as_ptr(), libc::MFD_CLOEXEC)
                };
                if raw < 0 {
                    return None;
                }
                // SAFETY: `raw` is a fresh descriptor that nothing else owns.
                self.fd
                    .insert(unsafe { OwnedFd::from_raw_fd(raw) })
                    .as_raw_fd()
            }
        };
        let end = self.next.checked_add(size as u64)?;
        if end > self.len {
            let len = end.max(self.len.saturating_mul(2)).max(1 << 40);
            // SAFETY: `fd` is the arena's memfd; growing a sparse file allocates nothing.
            if unsafe { libc::ftruncate(fd, i64::try_from(len).ok()?) } != 0 {
                return None;
            }
            self.len = len;
        }
        let offset = self.next;
        self.next = end;
        Some(offset)
    }

    /// Gives a dead handle's pages back; the range is never handed out again.
    pub fn give_back(&mut self, offset: u64, size: usize) {
        if let Some(fd) = &self.fd {
            // SAFETY: punching a hole in our own memfd; no one maps this range any more.
            unsafe {
                libc::fallocate(
                    fd.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    size as libc::off_t,
                )
            };
        }
    }

    /// The file, once a range was taken.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }
}
