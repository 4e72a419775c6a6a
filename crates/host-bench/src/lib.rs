//! The host allocator benchmark: the same workload program ([`workloads`]) runs once per
//! allocator and repeat in a child process, the allocator loaded with `LD_PRELOAD` (none for
//! glibc); the driver ([`driver`]) takes medians and prints ratios to glibc and to the best
//! peer, and peak RSS.
//!
//! Entry point for any binary: [`main`]. The `coalesce-host-bench` binary calls
//! `main(args, &[])`; a CLI that offers the benchmark as `coalesce bench host [ARGS]` calls
//! `main(ARGS, &["bench", "host"])`, so that the children it starts (`coalesce bench host
//! workload ...`) come back to the same function.

pub mod driver;
pub mod workloads;

/// Runs the benchmark, or (when `args` starts with `workload`) one child workload.
/// `child_prefix`: the arguments that make the current executable call this function again.
pub fn main(args: &[String], child_prefix: &[&str]) -> anyhow::Result<()> {
    if args.first().map(String::as_str) == Some("workload") {
        return run_workload(&args[1..]);
    }
    let mut opts = driver::Options::parse(args)?;
    opts.child_prefix = child_prefix.iter().map(|s| s.to_string()).collect();
    driver::run(&opts)
}

/// `NAME THREADS SCALE [K]`: one workload in this process, results on stdout.
fn run_workload(args: &[String]) -> anyhow::Result<()> {
    let name = args.first().map(String::as_str).unwrap_or("");
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let scale: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    match name {
        "pairs" | "own" => {
            // An optional size exponent picks one row; default all, 3..=26.
            let k: Option<u32> = args.get(3).and_then(|s| s.parse().ok());
            let touch = name == "pairs";
            workloads::pairs(threads, scale, k.map_or(3..=26, |k| k..=k), touch)
        }
        "prodcons" => workloads::prodcons(threads, scale),
        "scratch" => workloads::scratch(threads, scale),
        "large" => workloads::large(threads, scale),
        "larson" => workloads::larson(threads, scale),
        "frag" => workloads::fragmentation(scale),
        other => anyhow::bail!("unknown workload {other:?}"),
    }
    Ok(())
}
