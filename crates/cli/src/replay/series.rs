//! Requested and reserved bytes over a replay, downsampled for plotting.

/// Per bucket of consecutive ops, the maxima of requested and reserved bytes, so that peaks
/// survive downsampling.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Ops per bucket (at least 1).
    bucket: usize,
    /// `(first op index, max requested, max reserved)` per bucket.
    points: Vec<(usize, u64, u64)>,
}

impl Series {
    /// A series for `ops` operations, kept to about `points` points.
    pub fn new(ops: usize, points: usize) -> Self {
        let bucket = ops.div_ceil(points.max(1)).max(1);
        Series {
            bucket,
            points: Vec::with_capacity(ops / bucket + 1),
        }
    }

    #[inline]
    pub fn record(&mut self, op: usize, requested: u64, reserved: u64) {
        let b = op / self.bucket;
        match self.points.get_mut(b) {
            Some(p) => {
                p.1 = p.1.max(requested);
                p.2 = p.2.max(reserved);
            }
            None => self.points.push((b * self.bucket, requested, reserved)),
        }
    }

    /// `(op index, requested, reserved)`.
    pub fn points(&self) -> &[(usize, u64, u64)] {
        &self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_peaks_per_bucket() {
        let mut s = Series::new(10, 3); // buckets of 4 ops
        for (i, v) in [1u64, 9, 2, 3, 4, 5, 6, 2, 1, 1].iter().enumerate() {
            s.record(i, *v, v * 2);
        }
        assert_eq!(s.points(), &[(0, 9, 18), (4, 6, 12), (8, 1, 2)]);
    }
}
