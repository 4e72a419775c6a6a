//! `coalesce-host-bench [--repeats N] [--scale F] [--workloads a,b,c,d]` runs the benchmark;
//! `coalesce-host-bench workload NAME THREADS SCALE [K]` is the child the driver starts per
//! run (K: the size exponent of one `pairs` row). Both go through [`coalesce_host_bench::main`].

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    coalesce_host_bench::main(&args, &[])
}
