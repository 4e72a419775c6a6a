//! GPU smoke test of the CUDA backend and the pool: run by `scripts/gpu-check.sh` on a
//! machine with a GPU (it builds here, and exits 2 with the reason where there is no driver).
//!
//! ```text
//! gpu_smoke [--device N] [--policy SPEC]... [--threads N]
//! ```
//!
//! 1. The backend alone, both modes: a classic allocation and a VMM mapping (reserve, create,
//!    map, set access, unmap, release), each written with a pattern and read back.
//! 2. For every policy (all registered ones unless `--policy` is given), a `DevicePool` on the
//!    GPU: blocks of awkward sizes written and read back together (overlaps would corrupt
//!    them); many threads allocating, writing, verifying and freeing at once; stream-ordered
//!    reuse between two streams under queued work; an OOM under a memory limit that the pool
//!    survives; a snapshot; `empty_cache` returning every byte.

use coalesce_backend::cuda::CudaBackend;
use coalesce_backend::{Backend, StreamId};
use coalesce_policy::{PolicySpec, REGISTRY};
use coalesce_pool::{DevicePool, MemoryLimit, PoolConfig};
use std::process::ExitCode;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

type Check = Result<(), String>;

fn fail(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// Bytes of a pattern that differs per `seed` and position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(31).wrapping_add(seed * 131) % 251) as u8)
        .collect()
}

fn write_and_verify(b: &CudaBackend, addr: u64, data: &[u8]) -> Check {
    b.write_bytes(addr, data).map_err(fail)?;
    verify(b, addr, data)
}

fn verify(b: &CudaBackend, addr: u64, data: &[u8]) -> Check {
    let mut back = vec![0u8; data.len()];
    b.read_bytes(addr, &mut back).map_err(fail)?;
    if back != data {
        let at = back.iter().zip(data).position(|(x, y)| x != y).unwrap_or(0);
        return Err(format!(
            "{addr:#x}: byte {at} reads {} instead of {}",
            back[at], data[at]
        ));
    }
    Ok(())
}

fn backend_modes(device: i32) -> Check {
    let mut b = CudaBackend::new(device).map_err(fail)?;
    let classic = b.mem_alloc(3 * MIB + 17).map_err(fail)?;
    write_and_verify(&b, classic, &pattern(1, (3 * MIB + 17) as usize))?;
    b.mem_free(classic).map_err(fail)?;
    let g = b.granularity();
    let va = b.address_reserve(8 * g).map_err(fail)?;
    let h1 = b.mem_create(2 * g).map_err(fail)?;
    let h2 = b.mem_create(g).map_err(fail)?;
    b.mem_map(va, h1).map_err(fail)?;
    b.mem_map(va + 2 * g, h2).map_err(fail)?;
    b.set_access(va, 3 * g).map_err(fail)?;
    write_and_verify(&b, va, &pattern(2, (3 * g) as usize))?;
    for (addr, size, h) in [(va, 2 * g, h1), (va + 2 * g, g, h2)] {
        b.mem_unmap(addr, size).map_err(fail)?;
        b.mem_release(h).map_err(fail)?;
    }
    b.address_free(va, 8 * g).map_err(fail)?;
    if b.meter().reserved_bytes != 0 {
        return Err(format!("{} bytes still reserved", b.meter().reserved_bytes));
    }
    println!(
        "backend: classic and VMM ok (granularity {} KiB, {} GiB on device {device})",
        g >> 10,
        b.total_memory() >> 30
    );
    Ok(())
}

type Pool = DevicePool<CudaBackend>;

fn awkward_sizes(pool: &Pool) -> Check {
    let sizes = [1u64, 511, 512, 4097, MIB + 3, 20 * MIB, 100 * MIB + 1];
    let mut blocks = vec![];
    for (i, &size) in sizes.iter().enumerate() {
        let b = pool.alloc(size, StreamId(0)).map_err(fail)?;
        let data = pattern(i as u64, size as usize);
        pool.with_backend(|be| be.write_bytes(b.addr, &data))
            .map_err(fail)?
            .map_err(fail)?;
        blocks.push((b, data));
    }
    // Read back only once every block is written: overlapping blocks would clobber each other.
    for (b, data) in &blocks {
        pool.with_backend(|be| verify(be, b.addr, data))
            .map_err(fail)??;
        pool.free(b.addr, StreamId(0)).map_err(fail)?;
    }
    Ok(())
}

fn many_threads(pool: &Arc<Pool>, threads: u64) -> Check {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let pool = Arc::clone(pool);
            std::thread::spawn(move || -> Check {
                let mut rng = 0x2545_f491_4f6c_dd1du64 ^ (t + 1);
                for i in 0..300u64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let size = 1 + rng % (4 * MIB);
                    let b = pool.alloc(size, StreamId(0)).map_err(fail)?;
                    let data = pattern(t * 1000 + i, size as usize);
                    pool.with_backend(|be| write_and_verify(be, b.addr, &data))
                        .map_err(fail)??;
                    pool.free(b.addr, StreamId(0)).map_err(fail)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a thread panicked".to_string())??;
    }
    Ok(())
}

/// A block freed on s1 behind queued work must not be overwritten by s2 before s1 is done.
fn stream_reuse(pool: &Pool) -> Check {
    let s1 = pool
        .with_backend(|b| b.create_stream())
        .map_err(fail)?
        .map_err(fail)?;
    let s2 = pool
        .with_backend(|b| b.create_stream())
        .map_err(fail)?
        .map_err(fail)?;
    let size = 256 * MIB;
    let warm = pool.alloc(MIB, s2.id()).map_err(fail)?; // two streams in use
    let x = pool.alloc(size, s1.id()).map_err(fail)?;
    pool.with_backend(|b| -> Check {
        for _ in 0..50 {
            b.fill_async(x.addr, size as usize, 0xaa, s1.id())
                .map_err(fail)?;
        }
        Ok(())
    })
    .map_err(fail)??;
    pool.free(x.addr, s1.id()).map_err(fail)?;
    let pending = pool.stats().map_err(fail)?.pending_frees;
    let y = pool.alloc(size, s2.id()).map_err(fail)?;
    pool.with_backend(|b| -> Check {
        b.fill_async(y.addr, size as usize, 0x55, s2.id())
            .map_err(fail)?;
        b.stream_synchronize(s1.id()).map_err(fail)?;
        b.stream_synchronize(s2.id()).map_err(fail)?;
        let mut ends = vec![0u8; MIB as usize];
        for at in [y.addr, y.addr + size - MIB] {
            b.read_bytes(at, &mut ends).map_err(fail)?;
            if ends.iter().any(|&v| v != 0x55) {
                return Err(format!(
                    "s2's block at {at:#x} was overwritten by s1's queued work"
                ));
            }
        }
        Ok(())
    })
    .map_err(fail)??;
    println!(
        "  stream reuse ok (free held behind an event: {}, same block reused: {})",
        pending > 0,
        x.addr == y.addr
    );
    pool.free(y.addr, s2.id()).map_err(fail)?;
    pool.free(warm.addr, s2.id()).map_err(fail)?;
    pool.empty_cache().map_err(fail)?;
    for s in [s1, s2] {
        pool.with_backend(|b| b.destroy_stream(s))
            .map_err(fail)?
            .map_err(fail)?;
    }
    Ok(())
}

fn oom_under_a_limit(pool: &Pool) -> Check {
    let reserved = pool.stats().map_err(fail)?.reserved_bytes;
    pool.set_memory_limit(Some(MemoryLimit::Bytes(reserved + 64 * MIB)))
        .map_err(fail)?;
    match pool.alloc(1 << 30, StreamId(0)) {
        Err(e) if e.is_out_of_memory() => println!("  oom ok: {e}"),
        Err(e) => return Err(format!("expected out-of-memory, got {e}")),
        Ok(_) => return Err("1 GiB was allocated under a 64 MiB headroom".into()),
    }
    let b = pool.alloc(MIB, StreamId(0)).map_err(fail)?;
    pool.free(b.addr, StreamId(0)).map_err(fail)?;
    pool.set_memory_limit(None).map_err(fail)
}

fn pool_checks(device: i32, spec: &PolicySpec, threads: u64) -> Check {
    let backend = CudaBackend::new(device).map_err(fail)?;
    let config = PoolConfig {
        policy: spec.clone(),
        ..PoolConfig::default()
    };
    let pool = Arc::new(DevicePool::new(backend, config).map_err(fail)?);
    awkward_sizes(&pool)?;
    many_threads(&pool, threads)?;
    stream_reuse(&pool)?;
    oom_under_a_limit(&pool)?;
    let out = std::env::var_os("OUT").map_or_else(std::env::temp_dir, Into::into);
    let snap = out.join(format!("gpu_smoke_{}.csv", spec.name));
    pool.dump_snapshot(&snap).map_err(fail)?;
    pool.empty_cache().map_err(fail)?;
    let s = pool.stats().map_err(fail)?;
    if s.reserved_bytes != 0 || s.requested_bytes != 0 {
        return Err(format!("after freeing everything and empty_cache: {s:?}"));
    }
    println!(
        "  {} allocs, peak requested {} MiB, peak reserved {} MiB, {} driver calls, snapshot {}",
        s.num_allocs,
        s.peak_requested_bytes / MIB,
        s.peak_reserved_bytes / MIB,
        s.driver_calls.total(),
        snap.display()
    );
    Ok(())
}

struct Args {
    device: i32,
    policies: Vec<PolicySpec>,
    threads: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        device: 0,
        policies: vec![],
        threads: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--device" => args.device = value.parse().map_err(fail)?,
            "--threads" => args.threads = value.parse().map_err(fail)?,
            "--policy" => args.policies.push(PolicySpec::parse(&value).map_err(fail)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.policies.is_empty() {
        args.policies = REGISTRY.iter().map(|p| PolicySpec::named(p.name)).collect();
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpu_smoke: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = coalesce_backend::cuda::driver_status() {
        eprintln!("gpu_smoke: {e}");
        return ExitCode::from(2);
    }
    let mut failed = 0;
    if let Err(e) = backend_modes(args.device) {
        eprintln!("FAIL backend: {e}");
        failed += 1;
    }
    for spec in &args.policies {
        println!("policy {spec}:");
        match pool_checks(args.device, spec, args.threads) {
            Ok(()) => println!("  ok"),
            Err(e) => {
                eprintln!("FAIL policy {spec}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("gpu_smoke: {failed} check(s) failed");
        return ExitCode::FAILURE;
    }
    println!("gpu_smoke: all checks passed");
    ExitCode::SUCCESS
}
