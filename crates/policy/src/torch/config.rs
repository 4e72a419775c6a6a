//! PyTorch's allocator settings (`PYTORCH_CUDA_ALLOC_CONF`) and its size rules.
//!
//! Sources: pytorch/pytorch `c10/cuda/CUDACachingAllocator.cpp` (`round_size`,
//! `roundup_power2_next_division`, `get_allocation_size`, the `k*` constants) and
//! `c10/core/AllocatorConfig.cpp` (option parsing, defaults and their checks).

use crate::spec::{PolicySpec, SpecError};

const MIB: u64 = 1 << 20;
/// `kMinBlockSize`: every request is rounded up to a multiple of 512 bytes.
pub const MIN_BLOCK: u64 = 512;
/// `kSmallSize`: requests up to 1 MiB go to the small pool; also the large-pool split threshold.
pub const SMALL_SIZE: u64 = MIB;
/// `kSmallBuffer`: small-pool segments (and small-pool expandable pages) are 2 MiB.
pub const SMALL_BUFFER: u64 = 2 * MIB;
/// `kMinLargeAlloc`: large requests below 10 MiB get a shared 20 MiB segment.
pub const MIN_LARGE_ALLOC: u64 = 10 * MIB;
/// `kLargeBuffer`: segment for 1-10 MiB requests, large-pool expandable page size, and the
/// default `max_non_split_rounding_mb`.
pub const LARGE_BUFFER: u64 = 20 * MIB;
/// `kRoundLarge`: larger segments are the request rounded up to 2 MiB.
pub const ROUND_LARGE: u64 = 2 * MIB;
/// `roundup_power2_divisions` holds one value per power-of-two interval from 1 MiB to 64 GiB.
const POWER2_INTERVALS: usize = 16;

/// The option keys the torch policies accept, with help, in `coalesce policies` order.
pub const OPTIONS: &[(&str, &str)] = &[
    (
        "max_split_size_mb",
        "blocks this large (MiB, >= 20) are never split; default unlimited",
    ),
    (
        "max_non_split_rounding_mb",
        "an oversize request may take a cached block up to this much larger (MiB, >= 20; default 20)",
    ),
    (
        "roundup_power2_divisions",
        "round requests up to N steps per power of two: N, or [256:1,512:2,>:8] per MiB interval",
    ),
    (
        "garbage_collection_threshold",
        "(0,1): before growing past this fraction of per_process_memory_fraction, free old cached blocks",
    ),
    (
        "per_process_memory_fraction",
        "(0,1]: the allocator may reserve at most this share of the device (as torch.cuda.set_per_process_memory_fraction)",
    ),
    (
        "expandable_segments",
        "True: one growing virtual segment per pool and stream (torch-expandable's default)",
    ),
    ("backend", "only `native` can be simulated"),
    (
        "release_lock_on_cudamalloc",
        "accepted for pasted settings; no effect on a single-threaded replay",
    ),
    (
        "pinned_use_cuda_host_register",
        "accepted for pasted settings; host memory only",
    ),
    (
        "pinned_num_register_threads",
        "accepted for pasted settings; host memory only",
    ),
    (
        "pinned_use_background_threads",
        "accepted for pasted settings; host memory only",
    ),
];

/// The settings that change what the allocator does.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchConfig {
    /// Blocks of at least this size are not split (`u64::MAX`: no limit, the default).
    pub max_split_size: u64,
    /// An oversize request takes a cached block only if it is less than this much larger.
    pub max_non_split_rounding: u64,
    /// Divisions per power-of-two interval `[2^i MiB, 2^(i+1) MiB)`; 0 or 1: plain 512 B rounding.
    pub roundup_power2_divisions: [u64; POWER2_INTERVALS],
    /// Fraction of `allowed_memory_maximum` above which cached blocks are collected (0: off).
    pub garbage_collection_threshold: f64,
    /// Cap on reserved memory as a fraction of the device (PyTorch's `set_fraction`).
    pub per_process_memory_fraction: Option<f64>,
    pub expandable_segments: bool,
}

impl Default for TorchConfig {
    fn default() -> Self {
        TorchConfig {
            max_split_size: u64::MAX,
            max_non_split_rounding: LARGE_BUFFER,
            roundup_power2_divisions: [0; POWER2_INTERVALS],
            garbage_collection_threshold: 0.0,
            per_process_memory_fraction: None,
            expandable_segments: false,
        }
    }
}

impl TorchConfig {
    /// Reads the options of `spec` (keys were already checked against [`OPTIONS`]).
    pub fn from_spec(spec: &PolicySpec, expandable_default: bool) -> Result<Self, SpecError> {
        let d = TorchConfig::default();
        let config = TorchConfig {
            max_split_size: spec.parse_option("max_split_size_mb", d.max_split_size, parse_mb)?,
            max_non_split_rounding: spec.parse_option(
                "max_non_split_rounding_mb",
                d.max_non_split_rounding,
                parse_mb,
            )?,
            roundup_power2_divisions: spec.parse_option(
                "roundup_power2_divisions",
                d.roundup_power2_divisions,
                parse_divisions,
            )?,
            garbage_collection_threshold: spec.parse_option(
                "garbage_collection_threshold",
                0.0,
                |v| parse_fraction(v, false),
            )?,
            per_process_memory_fraction: spec.parse_option(
                "per_process_memory_fraction",
                None,
                |v| parse_fraction(v, true).map(Some),
            )?,
            expandable_segments: spec.parse_option(
                "expandable_segments",
                expandable_default,
                parse_bool,
            )?,
        };
        spec.parse_option("backend", (), |v| match v {
            "native" => Ok(()),
            "cudaMallocAsync" => Err("cudaMallocAsync is the driver's closed-source pool and \
                cannot be simulated; see the measured cuda-async rows of `coalesce replay`"
                .into()),
            other => Err(format!(
                "unknown backend {other:?} (native or cudaMallocAsync)"
            )),
        })?;
        for key in [
            "release_lock_on_cudamalloc",
            "pinned_use_cuda_host_register",
            "pinned_use_background_threads",
        ] {
            spec.parse_option(key, false, parse_bool)?;
        }
        spec.parse_option("pinned_num_register_threads", 1, |v| {
            v.parse::<u64>()
                .ok()
                .filter(|n| n.is_power_of_two() && *n <= 128)
                .ok_or_else(|| format!("{v:?} is not a power of two up to 128"))
        })?;
        Ok(config)
    }

    /// `round_size`: the request rounded up to 512 B, or to the next of
    /// `roundup_power2_divisions` equal steps between two powers of two.
    pub fn round_size(&self, size: u64) -> u64 {
        if size < MIN_BLOCK {
            return MIN_BLOCK;
        }
        let divisions = self.divisions_for(size);
        if divisions > 1 && size > MIN_BLOCK * divisions {
            roundup_power2_next_division(size, divisions)
        } else {
            size.div_ceil(MIN_BLOCK) * MIN_BLOCK
        }
    }

    /// The divisions configured for `size`'s power-of-two interval (sizes below 1 MiB use the
    /// first interval, sizes above 64 GiB the last, as in `AllocatorConfig`).
    fn divisions_for(&self, size: u64) -> u64 {
        let log = 63 - size.leading_zeros() as usize;
        let index = log.saturating_sub(20).min(POWER2_INTERVALS - 1);
        self.roundup_power2_divisions[index]
    }
}

/// `get_allocation_size`: the segment a new request of `size` (rounded) bytes gets.
pub fn allocation_size(size: u64) -> u64 {
    if size <= SMALL_SIZE {
        SMALL_BUFFER
    } else if size < MIN_LARGE_ALLOC {
        LARGE_BUFFER
    } else {
        size.div_ceil(ROUND_LARGE) * ROUND_LARGE
    }
}

/// Rounds `size` up to the next of `divisions` (a power of two) equal steps between the powers of
/// two around it; e.g. 1200 with 4 divisions lies in [1024, 2048) and becomes 1280.
fn roundup_power2_next_division(size: u64, divisions: u64) -> u64 {
    if size.is_power_of_two() {
        return size;
    }
    let floor = 1u64 << (63 - size.leading_zeros());
    let step = floor >> divisions.trailing_zeros();
    if step == 0 {
        return floor << 1;
    }
    let rounded_down = size & !(step - 1);
    if rounded_down == size {
        size
    } else {
        rounded_down + step
    }
}

fn parse_mb(v: &str) -> Result<u64, String> {
    let mb: u64 = v
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number of MiB"))?;
    if mb < LARGE_BUFFER / MIB {
        return Err(format!(
            "{mb} is too small, must be >= {}",
            LARGE_BUFFER / MIB
        ));
    }
    Ok(mb.saturating_mul(MIB))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "True" => Ok(true),
        "False" => Ok(false),
        _ => Err(format!("{v:?}: expected True or False")),
    }
}

/// A fraction in (0, 1), or (0, 1] with `inclusive`.
fn parse_fraction(v: &str, inclusive: bool) -> Result<f64, String> {
    let x: f64 = v.parse().map_err(|_| format!("{v:?} is not a number"))?;
    let ok = x > 0.0 && (x < 1.0 || (inclusive && x == 1.0));
    if !ok {
        let range = if inclusive { "(0, 1]" } else { "(0, 1)" };
        return Err(format!("{v} is not in {range}"));
    }
    Ok(x)
}

/// `N` (every interval) or `[a:N,b:M,>:K]` with `a`, `b` powers of two in MiB. As in PyTorch's
/// parser, the first entry also covers the intervals below it, `>` covers those after the last
/// entry, intervals not named stay 0 (no power-of-two rounding), and every N is a power of two
/// or 0.
fn parse_divisions(v: &str) -> Result<[u64; POWER2_INTERVALS], String> {
    let power_of_two_or_zero = |n: &str| -> Result<u64, String> {
        n.trim()
            .parse::<u64>()
            .ok()
            .filter(|&d| d == 0 || d.is_power_of_two())
            .ok_or_else(|| format!("divisions {n:?} must be a power of two or 0"))
    };
    let Some(list) = v.strip_prefix('[') else {
        return Ok([power_of_two_or_zero(v)?; POWER2_INTERVALS]);
    };
    let list = list
        .strip_suffix(']')
        .ok_or_else(|| format!("{v:?}: missing ']'"))?;
    let mut out = [0; POWER2_INTERVALS];
    let mut last: Option<usize> = None;
    for entry in list.split(',').filter(|e| !e.trim().is_empty()) {
        let (interval, divisions) = entry
            .split_once(':')
            .ok_or_else(|| format!("{entry:?} is not interval:divisions"))?;
        let divisions = power_of_two_or_zero(divisions)?;
        if interval.trim() == ">" {
            let from = last.map_or(0, |i| i + 1);
            out[from.min(POWER2_INTERVALS)..].fill(divisions);
            continue;
        }
        let mb: u64 = interval
            .trim()
            .parse()
            .ok()
            .filter(|m: &u64| m.is_power_of_two())
            .ok_or_else(|| format!("interval {interval:?} must be a power of two (MiB)"))?;
        let index = (mb.trailing_zeros() as usize).min(POWER2_INTERVALS - 1);
        if last.is_none() {
            out[..index].fill(divisions);
        }
        out[index] = divisions;
        last = Some(index);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(options: &str) -> Result<TorchConfig, SpecError> {
        TorchConfig::from_spec(&PolicySpec::parse(&format!("t:{options}")).unwrap(), false)
    }

    #[test]
    fn rounding_follows_round_size() {
        let c = TorchConfig::default();
        assert_eq!(c.round_size(1), 512);
        assert_eq!(c.round_size(512), 512);
        assert_eq!(c.round_size(513), 1024);
        assert_eq!(c.round_size(3 * MIB + 1), 3 * MIB + 512);
        // PyTorch's own example: 1200 with 4 divisions rounds to 1280 (only above 512 * 4).
        assert_eq!(roundup_power2_next_division(1200, 4), 1280);
        let c = config("roundup_power2_divisions:4").unwrap();
        assert_eq!(
            c.round_size(1200),
            1536,
            "below 2048 only 512 B rounding applies"
        );
        assert_eq!(c.round_size(5 * MIB + 1), 6 * MIB);
        assert_eq!(c.round_size(8 * MIB), 8 * MIB);
    }

    #[test]
    fn segment_sizes_follow_get_allocation_size() {
        assert_eq!(allocation_size(512), SMALL_BUFFER);
        assert_eq!(allocation_size(MIB), SMALL_BUFFER);
        assert_eq!(allocation_size(MIB + 512), LARGE_BUFFER);
        assert_eq!(allocation_size(10 * MIB - 512), LARGE_BUFFER);
        assert_eq!(allocation_size(10 * MIB), 10 * MIB);
        assert_eq!(allocation_size(10 * MIB + 512), 12 * MIB);
    }

    #[test]
    fn division_lists_parse_like_pytorch() {
        // From c10/test/core/AllocatorConfig_test.cpp.
        let c = config("roundup_power2_divisions:[64:8,128:2,256:4,512:2,1024:4,>:1]").unwrap();
        let d = |mb: u64| c.divisions_for(mb * MIB);
        assert_eq!([d(32), d(64), d(128), d(256), d(512)], [8, 8, 2, 4, 2]);
        assert_eq!([d(1024), d(2048), d(8192)], [4, 1, 1]);
        let c = config("roundup_power2_divisions:[128:8,256:16,512:1,2048:8,>:2]").unwrap();
        let d = |mb: u64| c.divisions_for(mb * MIB);
        assert_eq!([d(64), d(128), d(256), d(512)], [8, 8, 16, 1]);
        assert_eq!([d(1024), d(2048), d(4096)], [0, 8, 2]);
    }

    #[test]
    fn options_are_checked_as_pytorch_checks_them() {
        let c = config("max_split_size_mb:512,garbage_collection_threshold:0.8").unwrap();
        assert_eq!(c.max_split_size, 512 * MIB);
        assert_eq!(c.garbage_collection_threshold, 0.8);
        for (bad, why) in [
            ("max_split_size_mb:10", "too small"),
            ("garbage_collection_threshold:1.0", "not in (0, 1)"),
            ("roundup_power2_divisions:3", "power of two"),
            ("expandable_segments:yes", "True or False"),
            ("backend:cudaMallocAsync", "cannot be simulated"),
        ] {
            let e = config(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
