//! `coalesce-host-bench [--repeats N] [--scale F] [--workloads a,b,c,d]` runs the benchmark;
//! `coalesce-host-bench workload NAME THREADS SCALE [K]` is the child the driver starts per
//! run (K: the size exponent of one `pairs` row).

use coalesce_host_bench::{driver, workloads};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("workload") {
        let name = args.get(1).map(String::as_str).unwrap_or("");
        let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
        let scale: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1.0);
        match name {
            "pairs" => {
                // An optional fifth argument picks one size exponent; default all, 2..=22.
                let k: Option<u32> = args.get(4).and_then(|s| s.parse().ok());
                workloads::pairs(threads, scale, k.map_or(2..=22, |k| k..=k))
            }
            "prodcons" => workloads::prodcons(threads, scale),
            "larson" => workloads::larson(threads, scale),
            "frag" => workloads::fragmentation(scale),
            other => anyhow::bail!("unknown workload {other:?}"),
        }
        return Ok(());
    }
    let opts = driver::Options::parse(&args)?;
    driver::run(&opts)
}
