#!/usr/bin/env bash
# One command for the host allocator benchmark, from a fresh clone:
#   scripts/bench-host.sh [--quick] [--repeats N] [--scale F] [--workloads a,t,b,c,d,e,f] [--threads 1,2,4,8]
# Installs the peer allocators (Debian's libjemalloc2, libmimalloc2.0, libtcmalloc-minimal4)
# if they are missing, builds the coalesce preload library and the benchmark in release mode,
# and prints the report (markdown) on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-host-peers.sh || echo "peer install failed; benchmarking the peers that are present" >&2
cargo build --release -q -p coalesce-host-preload -p coalesce-host-bench
exec target/release/coalesce-host-bench "$@"
