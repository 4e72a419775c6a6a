//! The host allocator benchmark: the same workload program ([`workloads`]) runs once per
//! allocator and repeat in a child process, the allocator loaded with `LD_PRELOAD` (none for
//! glibc); the driver ([`driver`]) takes medians and prints ratios to glibc and to the best
//! peer, and peak RSS. `coalesce bench host` and `cargo run --release -p coalesce-host-bench`
//! both end up in [`driver::run`].

pub mod driver;
pub mod workloads;
