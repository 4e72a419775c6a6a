//! Alignment arithmetic. All alignments are powers of two.

/// Rounds `value` up to the next multiple of `align` (a power of two).
/// Returns `None` on overflow.
#[inline]
pub fn checked_align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// Rounds `value` up to the next multiple of `align` (a power of two).
///
/// # Panics
/// On overflow; use [`checked_align_up`] for untrusted sizes.
#[inline]
pub fn align_up(value: u64, align: u64) -> u64 {
    checked_align_up(value, align).expect("align_up overflow")
}

/// Rounds `value` down to a multiple of `align` (a power of two).
#[inline]
pub fn align_down(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    value & !(align - 1)
}

/// Whether `value` is a multiple of `align` (a power of two).
#[inline]
pub fn is_aligned(value: u64, align: u64) -> bool {
    debug_assert!(align.is_power_of_two());
    value & (align - 1) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding() {
        assert_eq!(align_up(0, 512), 0);
        assert_eq!(align_up(1, 512), 512);
        assert_eq!(align_up(512, 512), 512);
        assert_eq!(align_up(513, 512), 1024);
        assert_eq!(align_down(1023, 512), 512);
        assert!(is_aligned(4096, 512));
        assert!(!is_aligned(4097, 512));
        assert_eq!(checked_align_up(u64::MAX, 512), None);
    }
}
