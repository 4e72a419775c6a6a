//! The stand-in's settings, read once from the environment when the library is first used.

use crate::codes;
use cudarc::driver::sys::CUresult;
use std::time::Duration;

/// Settings from `COALESCE_STANDIN_*` variables (see the crate docs for each).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Bytes of memory per device.
    pub capacity: usize,
    /// The VMM granularity: a power of two and a multiple of the host page size.
    pub granularity: usize,
    /// Number of devices (0 makes `cuInit` fail with `CUDA_ERROR_NO_DEVICE`).
    pub devices: i32,
    /// How long after it is enqueued stream work completes.
    pub lag: Duration,
    /// How many `cuEventQuery` calls answer `CUDA_ERROR_NOT_READY` after each record.
    pub lag_queries: u64,
    /// `(function, call number, code)`: the given call (1-based) fails with the code.
    pub fail_nth: Vec<(&'static str, u64, CUresult)>,
    /// `(function, probability, code)`.
    pub fail_rate: Vec<(&'static str, f64, CUresult)>,
    pub seed: u64,
    pub leak_check: LeakCheck,
    /// Refuse `cuMemRelease` of a mapped handle (real CUDA allows it).
    pub strict_release: bool,
}

/// What happens at exit if something leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeakCheck {
    Off,
    Report,
    Abort,
}

pub(crate) const DEFAULT_CAPACITY: usize = 16 << 30;
pub(crate) const DEFAULT_GRANULARITY: usize = 2 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: DEFAULT_CAPACITY,
            granularity: DEFAULT_GRANULARITY,
            devices: 1,
            lag: Duration::ZERO,
            lag_queries: 0,
            fail_nth: Vec::new(),
            fail_rate: Vec::new(),
            seed: 0,
            leak_check: LeakCheck::Off,
            strict_release: false,
        }
    }
}

impl Config {
    /// Reads the environment; an error names the variable and what is wrong with it.
    pub fn from_env() -> Result<Config, String> {
        let mut c = Config::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let bad = |name: &str, v: &str, why: &str| format!("{name}={v:?}: {why}");
        if let Some(v) = var("COALESCE_STANDIN_CAPACITY") {
            c.capacity =
                parse_size(&v).ok_or_else(|| bad("COALESCE_STANDIN_CAPACITY", &v, "not a size"))?;
        }
        if let Some(v) = var("COALESCE_STANDIN_GRANULARITY") {
            let g = parse_size(&v)
                .ok_or_else(|| bad("COALESCE_STANDIN_GRANULARITY", &v, "not a size"))?;
            if !g.is_power_of_two() || g % page_size() != 0 {
                return Err(bad(
                    "COALESCE_STANDIN_GRANULARITY",
                    &v,
                    "must be a power of two and a multiple of the page size",
                ));
            }
            c.granularity = g;
        }
        if let Some(v) = var("COALESCE_STANDIN_DEVICES") {
            c.devices = v
                .trim()
                .parse()
                .ok()
                .filter(|d| (0..=64).contains(d))
                .ok_or_else(|| bad("COALESCE_STANDIN_DEVICES", &v, "not a count in 0..=64"))?;
        }
        if let Some(v) = var("COALESCE_STANDIN_STREAM_LAG_MS") {
            let ms: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
                .ok_or_else(|| {
                    bad(
                        "COALESCE_STANDIN_STREAM_LAG_MS",
                        &v,
                        "not a number of milliseconds",
                    )
                })?;
            c.lag = Duration::from_secs_f64(ms / 1000.0);
        }
        if let Some(v) = var("COALESCE_STANDIN_STREAM_LAG_QUERIES") {
            c.lag_queries = v
                .trim()
                .parse()
                .map_err(|_| bad("COALESCE_STANDIN_STREAM_LAG_QUERIES", &v, "not a count"))?;
        }
        if let Some(v) = var("COALESCE_STANDIN_FAIL") {
            for item in v.split(',').filter(|s| !s.trim().is_empty()) {
                let (name, n, code) =
                    parse_fault(item).map_err(|why| bad("COALESCE_STANDIN_FAIL", &v, &why))?;
                let n: u64 = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    bad(
                        "COALESCE_STANDIN_FAIL",
                        &v,
                        &format!("{n:?} is not a call number (1, 2, ...)"),
                    )
                })?;
                c.fail_nth.push((name, n, code));
            }
        }
        if let Some(v) = var("COALESCE_STANDIN_FAIL_RATE") {
            for item in v.split(',').filter(|s| !s.trim().is_empty()) {
                let (name, p, code) =
                    parse_fault(item).map_err(|why| bad("COALESCE_STANDIN_FAIL_RATE", &v, &why))?;
                let p: f64 = p
                    .parse()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| {
                        bad(
                            "COALESCE_STANDIN_FAIL_RATE",
                            &v,
                            &format!("{p:?} is not a probability"),
                        )
                    })?;
                c.fail_rate.push((name, p, code));
            }
        }
        if let Some(v) = var("COALESCE_STANDIN_SEED") {
            c.seed = v
                .trim()
                .parse()
                .map_err(|_| bad("COALESCE_STANDIN_SEED", &v, "not an integer"))?;
        }
        if let Some(v) = var("COALESCE_STANDIN_LEAK_CHECK") {
            c.leak_check = match v.trim() {
                "0" | "off" | "false" => LeakCheck::Off,
                "1" | "on" | "true" | "report" => LeakCheck::Report,
                "abort" => LeakCheck::Abort,
                _ => {
                    return Err(bad(
                        "COALESCE_STANDIN_LEAK_CHECK",
                        &v,
                        "expected 0, 1 or abort",
                    ));
                }
            };
        }
        if let Some(v) = var("COALESCE_STANDIN_STRICT_RELEASE") {
            c.strict_release = matches!(v.trim(), "1" | "on" | "true");
        }
        Ok(c)
    }
}

/// `function:value:code`, the function a known driver entry point.
fn parse_fault(item: &str) -> Result<(&'static str, &str, CUresult), String> {
    let mut parts = item.trim().splitn(3, ':');
    let (Some(name), Some(value), Some(code)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{item:?} is not function:value:code"));
    };
    let name = crate::faults::known_name(name)
        .ok_or_else(|| format!("{name:?} is not a driver function the stand-in exports"))?;
    let code =
        codes::parse(code).ok_or_else(|| format!("{code:?} is not a CUresult name or value"))?;
    Ok((name, value.trim(), code))
}

/// Bytes, with an optional binary suffix: `4096`, `64k`, `512MiB`, `8GiB`, `1.5G`, `1T`.
pub(crate) fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(1u64 << shift)
            .and_then(|b| usize::try_from(b).ok());
    }
    let f: f64 = num.parse().ok()?;
    let bytes = f * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < usize::MAX as f64).then_some(bytes as usize)
}

/// The host page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("2m"), Some(2 << 20));
        assert_eq!(parse_size("1.5 KiB"), Some(1536));
        assert_eq!(parse_size("3 parsecs"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn faults() {
        let (name, n, code) = parse_fault("cuMemCreate:3:OUT_OF_MEMORY").unwrap();
        assert_eq!(
            (name, n, code),
            ("cuMemCreate", "3", CUresult::CUDA_ERROR_OUT_OF_MEMORY)
        );
        assert!(parse_fault("cuMemCreat:3:OUT_OF_MEMORY").is_err());
        assert!(parse_fault("cuMemCreate:3:NOPE").is_err());
        assert_eq!(
            parse_fault("cuMemMap:0.5:999").unwrap().2,
            CUresult::CUDA_ERROR_UNKNOWN
        );
    }
}
