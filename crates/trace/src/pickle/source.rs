//! The byte stream under the decoder: buffered reads that count the offset.

use std::io::{self, ErrorKind, Read};

/// Size of the read buffer. Bytes of a string are also gathered this much at a time, never
/// allocated up front from a length the input declares.
const CHUNK: usize = 1 << 16;

/// A buffered reader that knows the offset of its next byte. End of input inside a read is an
/// `UnexpectedEof` error, which the decoder reports as truncation.
///
/// Invariant: `pos <= end <= buf.len()`; `buf[pos..end]` are read but not yet consumed, and
/// `base` is the stream offset of `buf[0]`.
#[derive(Debug)]
pub(super) struct Source<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    base: u64,
}

impl<R: Read> Source<R> {
    pub(super) fn new(inner: R) -> Self {
        Source {
            inner,
            buf: vec![0; CHUNK].into_boxed_slice(),
            pos: 0,
            end: 0,
            base: 0,
        }
    }

    /// Bytes consumed so far: the offset of the next byte.
    pub(super) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The next byte, or `None` at the end of the input.
    #[inline]
    pub(super) fn next_byte(&mut self) -> io::Result<Option<u8>> {
        if self.pos == self.end && !self.refill()? {
            return Ok(None);
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(Some(b))
    }

    /// Exactly `N` bytes.
    #[inline]
    pub(super) fn array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0; N];
        self.read_exact(&mut out)?;
        Ok(out)
    }

    /// Exactly `out.len()` bytes into `out`.
    #[inline]
    pub(super) fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let n = out.len();
        if self.end - self.pos >= n {
            out.copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
        } else {
            for b in out {
                *b = self.next_byte()?.ok_or(ErrorKind::UnexpectedEof)?;
            }
        }
        Ok(())
    }

    /// Exactly `len` bytes, into a buffer that grows only as the input delivers them.
    pub(super) fn bytes(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(len).map_or(CHUNK, |n| n.min(CHUNK)));
        let mut left = len;
        while left > 0 {
            if self.pos == self.end && !self.refill()? {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            let take =
                usize::try_from(left).map_or(self.end - self.pos, |l| l.min(self.end - self.pos));
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            left -= take as u64;
        }
        Ok(out)
    }

    /// Text up to a newline (not included), at most `max` bytes; `None` if longer.
    pub(super) fn line(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        loop {
            match self.next_byte()?.ok_or(ErrorKind::UnexpectedEof)? {
                b'\n' => return Ok(Some(out)),
                _ if out.len() == max => return Ok(None),
                b => out.push(b),
            }
        }
    }

    /// Reads the next chunk once the buffer is used up; `false` at the end of the input.
    #[cold]
    fn refill(&mut self) -> io::Result<bool> {
        debug_assert_eq!(self.pos, self.end);
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.base += self.end as u64;
                    self.pos = 0;
                    self.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out one byte per read, to exercise the refill paths.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn reads_across_buffer_boundaries_and_counts() {
        let mut s = Source::new(Trickle(b"abcdefgh\nrest"));
        assert_eq!(s.array::<3>().unwrap(), *b"abc");
        assert_eq!(s.bytes(2).unwrap(), b"de");
        assert_eq!(s.line(8).unwrap(), Some(b"fgh".to_vec()));
        assert_eq!(s.offset(), 9);
        assert_eq!(s.next_byte().unwrap(), Some(b'r'));
        assert_eq!(s.bytes(5).unwrap_err().kind(), ErrorKind::UnexpectedEof);
        assert_eq!(s.offset(), 13);
        assert_eq!(s.next_byte().unwrap(), None);
    }

    #[test]
    fn a_huge_declared_length_fails_without_allocating_it() {
        let mut s = Source::new(&b"short"[..]);
        let err = s.bytes(u64::MAX).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
        assert_eq!(s.offset(), 5);
    }

    #[test]
    fn long_lines_are_cut_off() {
        let mut s = Source::new(&b"123456789\n"[..]);
        assert_eq!(s.line(4).unwrap(), None);
    }
}
