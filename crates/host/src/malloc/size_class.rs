//! Size classes of the thread-cached path. Pure arithmetic, computed at compile time.
//!
//! Classes: 8, then multiples of 16 up to 128, then four classes per doubling (spacing of a
//! quarter of the lower power of two) up to [`SMALL_MAX`] = 32 KiB (41 *small* classes), and
//! on in the same spacing up to [`MEDIUM_MAX`] = 1 MiB (20 *medium* classes, 40 KiB ..
//! 1 MiB, all multiples of the 8 KiB granule): 61 classes. Rounding waste is at most 25% of a
//! request above 128 bytes (jemalloc and tcmalloc use the same spacing).
//! Every class above 8 bytes is a multiple of 16, so every object is 16-byte aligned; objects
//! are carved at multiples of their size from a span aligned to at least 8 KiB, so a class
//! whose size is a multiple of `2^k` (for `2^k` <= 4096) also gives `2^k` alignment.

/// Largest request of the small classes (served by lookup tables, spans of >= 8 objects
/// up to 2 KiB).
pub const SMALL_MAX: usize = 32 * 1024;

/// Largest request served by size classes; larger ones take whole page-heap blocks.
pub const MEDIUM_MAX: usize = 1 << 20;

/// Number of size classes (small and medium).
pub const NUM_CLASSES: usize = count_classes(MEDIUM_MAX);

/// Index of the first medium class (40 KiB); classes below it are small.
pub const FIRST_MEDIUM: usize = count_classes(SMALL_MAX);

const fn class_size_at(i: usize) -> usize {
    if i == 0 {
        8
    } else if i <= 8 {
        16 * i
    } else {
        let j = i - 9; // 0.. for 160, 192, 224, 256, 320, ...
        let pow = 128 << (j / 4);
        pow + (pow / 4) * (j % 4 + 1)
    }
}

/// Classes up to and including the one of size `max`.
const fn count_classes(max: usize) -> usize {
    let mut i = 0;
    while class_size_at(i) < max {
        i += 1;
    }
    i + 1
}

/// Object size of each class.
pub const CLASS_SIZE: [u32; NUM_CLASSES] = {
    let mut t = [0u32; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        t[i] = class_size_at(i) as u32;
        i += 1;
    }
    t
};

/// Class by `(size + 7) / 8` for sizes up to 1024.
const SMALL_LOOKUP: [u8; 129] = build_lookup(8, 129);
/// Class by `(size + 127) / 128` for sizes up to `SMALL_MAX`.
const LARGE_LOOKUP: [u8; 257] = build_lookup(128, 257);

const fn build_lookup<const N: usize>(step: usize, n: usize) -> [u8; N] {
    let mut t = [0u8; N];
    let mut i = 0;
    let mut c = 0;
    while i < n {
        let size = i * step;
        while CLASS_SIZE[c] < size as u32 {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
}

/// The class of a request of `size` bytes with the default (16-byte) alignment, or `None`
/// above [`MEDIUM_MAX`].
#[inline]
pub fn class_of(size: usize) -> Option<usize> {
    if size <= 1024 {
        Some(SMALL_LOOKUP[(size + 7) >> 3] as usize)
    } else if size <= SMALL_MAX {
        Some(LARGE_LOOKUP[(size + 127) >> 7] as usize)
    } else if size <= MEDIUM_MAX {
        Some(medium_class(size))
    } else {
        None
    }
}

/// The medium class of `size` in `(SMALL_MAX, MEDIUM_MAX]`: with `s = size - 1` and `k` its
/// highest set bit, the quarter-steps of `2^k` above `2^k` give the index within the doubling.
#[inline]
fn medium_class(size: usize) -> usize {
    let s = size - 1;
    let k = (usize::BITS - 1 - s.leading_zeros()) as usize; // 15..=19
    let quarter = (s >> (k - 2)) - 4; // 0..=3
    FIRST_MEDIUM + (k - 15) * 4 + quarter
}

/// The class that serves `size` bytes at alignment `align` (a power of two): the smallest
/// class that is large enough and a multiple of `align`. `None` if none is (the request then
/// goes to the page heap, whose blocks are aligned to their size).
#[inline]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    let c = class_of(size)?;
    if align <= 8 || (align <= 16 && c > 0) {
        return Some(c);
    }
    if align > 4096 {
        return None;
    }
    (c..NUM_CLASSES).find(|&c| (CLASS_SIZE[c] as usize).is_multiple_of(align))
}

/// Bytes of the page-heap blocks a class is carved from (a multiple of the 8 KiB granule).
///
/// Small classes: a power of two, at least one granule, with room for at least 8 objects up
/// to 2 KiB and for at least 2 above. Small spans empty out (and return to the page heap,
/// where any size can reuse them) far more often than large ones when a program keeps a
/// scattered few objects alive; the bigger classes cost a microsecond to fill anyway, so
/// carving them from small spans costs little.
///
/// Medium classes (multiples of the granule): the fewest whole objects that reach
/// [`MEDIUM_SPAN`], so no byte of the span is wasted; from 256 KiB up a span is one object.
pub const fn span_bytes(class: usize) -> usize {
    let size = CLASS_SIZE[class] as usize;
    if class >= FIRST_MEDIUM {
        return size * MEDIUM_SPAN.div_ceil(size);
    }
    let need = size * if size <= 2048 { 8 } else { 2 };
    let mut k = 13;
    while (1usize << k) < need {
        k += 1;
    }
    1 << k
}

/// Target span size of the medium classes.
pub const MEDIUM_SPAN: usize = 256 << 10;

/// Objects moved per transfer between a thread cache and the central list. Small classes:
/// as many as fit in 64 KiB, clamped to 2..=64 (tcmalloc's rule with a higher cap). Medium
/// classes: as many as fit in 256 KiB, at least 1 (a batch is at most about one span).
pub const fn batch_size(class: usize) -> u32 {
    let size = CLASS_SIZE[class];
    if class >= FIRST_MEDIUM {
        let n = (MEDIUM_SPAN as u32) / size;
        return if n < 1 { 1 } else { n };
    }
    let n = 65536 / size;
    if n < 2 {
        2
    } else if n > 64 {
        64
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_increasing_aligned_and_end_at_medium_max() {
        assert_eq!(FIRST_MEDIUM, 41);
        assert_eq!(NUM_CLASSES, 61);
        assert_eq!(CLASS_SIZE[FIRST_MEDIUM - 1] as usize, SMALL_MAX);
        assert_eq!(CLASS_SIZE[NUM_CLASSES - 1] as usize, MEDIUM_MAX);
        // Medium objects are whole granules, so spans of them waste nothing.
        assert!(CLASS_SIZE[FIRST_MEDIUM..].iter().all(|s| s % 8192 == 0));
        for w in CLASS_SIZE.windows(2) {
            assert!(w[0] < w[1]);
            let waste = (w[1] - w[0]) as f64 / w[1] as f64;
            assert!(w[1] <= 128 || waste <= 0.25, "{w:?}");
        }
        assert!(CLASS_SIZE[1..].iter().all(|s| s % 16 == 0));
    }

    #[test]
    fn lookup_gives_the_smallest_fitting_class_for_every_size() {
        let medium = (SMALL_MAX..=MEDIUM_MAX).step_by(509);
        let edges = CLASS_SIZE
            .iter()
            .flat_map(|&s| [s as usize - 1, s as usize, s as usize + 1]);
        for size in (0..=SMALL_MAX).chain(medium).chain(edges) {
            if size > MEDIUM_MAX {
                continue;
            }
            let c = class_of(size).unwrap();
            assert!(CLASS_SIZE[c] as usize >= size, "size {size}");
            assert!(
                c == 0 || (CLASS_SIZE[c - 1] as usize) < size.max(1),
                "size {size}"
            );
        }
        assert_eq!(class_of(MEDIUM_MAX + 1), None);
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for size in (0..=MEDIUM_MAX).step_by(7) {
                if let Some(c) = class_for(size, align) {
                    let s = CLASS_SIZE[c] as usize;
                    assert!(s >= size && (s.is_multiple_of(align) || (align <= 8 && c == 0)));
                    let span = span_bytes(c);
                    assert!(span.is_multiple_of(align) && span.is_multiple_of(8192));
                }
            }
        }
        assert_eq!(class_for(100, 8192), None);
    }

    #[test]
    fn spans_hold_enough_objects_and_batches_are_bounded() {
        for (c, &size) in CLASS_SIZE.iter().enumerate() {
            let per_span = span_bytes(c) / size as usize;
            if c < FIRST_MEDIUM {
                assert!(per_span >= if size <= 2048 { 8 } else { 2 });
                assert!((2..=64).contains(&batch_size(c)));
            } else {
                assert_eq!(
                    span_bytes(c) % size as usize,
                    0,
                    "medium spans waste nothing"
                );
                assert!(span_bytes(c) >= MEDIUM_SPAN && per_span <= 7);
                let batch = batch_size(c) as usize;
                assert!(
                    batch >= 1
                        && batch <= per_span.max(1)
                        && batch * size as usize <= MEDIUM_SPAN.max(size as usize)
                );
            }
        }
    }
}
