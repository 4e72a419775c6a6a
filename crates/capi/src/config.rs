//! Configuration from the environment, read once per device when its pool is created.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `COALESCE_BACKEND` | `cuda` (the GPU) or `sim` (a simulated device, for tests) | `cuda` |
//! | `COALESCE_POLICY` | policy spec, PyTorch syntax: `name[:key:value,...]` | `coalesce`, else `bfc-classic` |
//! | `COALESCE_MEMORY_LIMIT` | cap in bytes (`21474836480`) or as a fraction of the device (`0.9`) | none |
//! | `COALESCE_TRACE_ENTRIES` | events kept for snapshots | 100000 |
//! | `COALESCE_SIM_CAPACITY` | bytes of the simulated device | 80 GiB |
//! | `COALESCE_SIM_DEVICES` | simulated devices | 1 |

use coalesce_backend::Backend;
use coalesce_backend::cuda::CudaBackend;
use coalesce_backend::sim::{SimConfig, SimDevice};
use coalesce_policy::PolicySpec;
use coalesce_pool::{DEFAULT_TRACE_ENTRIES, MemoryLimit, PoolConfig, default_policy};

/// Which backend the pools use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Cuda,
    Sim,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn bad(name: &str, value: &str, expected: &str) -> String {
    format!("{name}={value:?}: expected {expected}")
}

fn parse_u64(name: &str, value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| bad(name, value, "a whole number of bytes"))
}

pub fn backend_kind() -> Result<BackendKind, String> {
    match var("COALESCE_BACKEND").as_deref().map(str::trim) {
        None | Some("cuda") => Ok(BackendKind::Cuda),
        Some("sim") => Ok(BackendKind::Sim),
        Some(other) => Err(bad("COALESCE_BACKEND", other, "cuda or sim")),
    }
}

/// The backend for `device`, as the environment chooses.
pub fn backend(device: i32) -> Result<Box<dyn Backend>, String> {
    match backend_kind()? {
        BackendKind::Sim => {
            let count = match var("COALESCE_SIM_DEVICES") {
                Some(v) => parse_u64("COALESCE_SIM_DEVICES", &v)?,
                None => 1,
            };
            if device < 0 || device as u64 >= count {
                return Err(format!(
                    "device {device} is out of range: the simulated backend has {count} \
                     device(s) (COALESCE_SIM_DEVICES)"
                ));
            }
            let mut sim = SimConfig {
                device,
                ..SimConfig::default()
            };
            if let Some(v) = var("COALESCE_SIM_CAPACITY") {
                sim.capacity = parse_u64("COALESCE_SIM_CAPACITY", &v)?;
            }
            Ok(Box::new(SimDevice::new(sim)))
        }
        BackendKind::Cuda => {
            let mut cuda = CudaBackend::new(device).map_err(|e| e.to_string())?;
            // SAFETY: coalesce.h requires every stream passed to this library to be 0 or a
            // live stream of the device's primary context, which is what PyTorch passes.
            unsafe { cuda.admit_all_streams() };
            Ok(Box::new(cuda))
        }
    }
}

/// The pool configuration the environment asks for.
pub fn pool_config() -> Result<PoolConfig, String> {
    let policy = match var("COALESCE_POLICY") {
        Some(spec) => {
            PolicySpec::parse(&spec).map_err(|e| format!("COALESCE_POLICY={spec:?}: {e}"))?
        }
        None => default_policy(),
    };
    let memory_limit = var("COALESCE_MEMORY_LIMIT")
        .map(|v| memory_limit(&v))
        .transpose()?;
    let trace_entries = match var("COALESCE_TRACE_ENTRIES") {
        Some(v) => parse_u64("COALESCE_TRACE_ENTRIES", &v)? as usize,
        None => DEFAULT_TRACE_ENTRIES,
    };
    Ok(PoolConfig {
        policy,
        memory_limit,
        trace_entries,
    })
}

/// `0.9` is a fraction of the device, `21474836480` a number of bytes.
fn memory_limit(v: &str) -> Result<MemoryLimit, String> {
    const NAME: &str = "COALESCE_MEMORY_LIMIT";
    if v.contains('.') {
        let f: f64 = v
            .trim()
            .parse()
            .map_err(|_| bad(NAME, v, "bytes or a fraction like 0.9"))?;
        return Ok(MemoryLimit::Fraction(f));
    }
    parse_u64(NAME, v).map(MemoryLimit::Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bytes_or_fractions() {
        assert_eq!(memory_limit("1024"), Ok(MemoryLimit::Bytes(1024)));
        assert_eq!(memory_limit("0.5"), Ok(MemoryLimit::Fraction(0.5)));
        assert_eq!(
            memory_limit("20GB").unwrap_err(),
            "COALESCE_MEMORY_LIMIT=\"20GB\": expected a whole number of bytes"
        );
    }
}
