#!/usr/bin/env bash
# GPU check of coalesce: the CUDA backend and pool on a real device, then PyTorch workloads
# under PyTorch's allocators and under libcoalesce.so. See docs/gpu.md ("GPU check").
#
#   scripts/gpu-check.sh build       on a machine with the Rust toolchain (no GPU needed):
#                                    builds the release artifacts into target/gpu-check/
#   scripts/gpu-check.sh run [opts]  on the GPU machine (python3 with torch, transformers,
#                                    torchvision; no toolchain or network needed):
#       --out DIR          results directory (default: $OUT, else gpu-check-out)
#       --workloads "W.."  subset of: gpt2_train resnet50_train llama_generate (default: all)
#       --steps N          steps per workload, passed to workloads.py (default: its own)
#       --skip-smoke       only the workloads
#
# The GPU machine needs target/gpu-check/ (carry it: it holds libcoalesce.so and gpu_smoke)
# and workloads.py: $WORKLOADS_PY, or shared/gpu/workloads.py, or ../shared/gpu/workloads.py,
# or the copy in scripts/.
# `run` exits non-zero if the smoke test fails, a workload fails, or the pluggable allocator
# misses the targets (peak reserved below `expandable`, wall time within 3% of `native`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
bundle="$root/target/gpu-check"

die() { echo "gpu-check: $*" >&2; exit 1; }

build() {
    command -v cargo >/dev/null || die "build needs cargo; on the GPU machine use: $0 run"
    (cd "$root" && cargo build --release -p coalesce-capi \
        && cargo build --release -p coalesce-pool --example gpu_smoke)
    mkdir -p "$bundle"
    cp "$root/target/release/libcoalesce.so" "$root/target/release/examples/gpu_smoke" "$bundle/"
    # Debug info is for local profiling; the carried copies only need to run.
    if command -v strip >/dev/null; then strip "$bundle/libcoalesce.so" "$bundle/gpu_smoke"; fi
    echo "built (carry this path to the GPU machine): target/gpu-check"
    ls -l "$bundle"
}

find_workloads() {
    local c
    for c in "${WORKLOADS_PY:-}" "$root/shared/gpu/workloads.py" "$root/../shared/gpu/workloads.py" \
             "$here/workloads.py"; do
        if [ -n "$c" ] && [ -f "$c" ]; then echo "$c"; return; fi
    done
    die "workloads.py not found: set WORKLOADS_PY"
}

run() {
    local out="${OUT:-$root/gpu-check-out}" workloads="gpt2_train resnet50_train llama_generate"
    local steps="" smoke=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --out) out="$2"; shift 2 ;;
            --workloads) workloads="$2"; shift 2 ;;
            --steps) steps="$2"; shift 2 ;;
            --skip-smoke) smoke=0; shift ;;
            *) die "unknown option $1" ;;
        esac
    done
    local lib="$bundle/libcoalesce.so" smoke_bin="$bundle/gpu_smoke"
    [ -f "$lib" ] && [ -x "$smoke_bin" ] \
        || die "missing $bundle/{libcoalesce.so,gpu_smoke}: run '$0 build' where cargo is, and carry target/gpu-check"
    local wl; wl=$(find_workloads)
    mkdir -p "$out"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"

    if [ "$smoke" = 1 ]; then
        echo "== smoke test: $smoke_bin"
        OUT="$out" "$smoke_bin" 2>&1 | tee "$out/smoke.txt"
        [ "${PIPESTATUS[0]}" = 0 ] || die "smoke test failed (see $out/smoke.txt)"
    fi

    local results="$out/results.jsonl" failed=0 w mode name log line
    : > "$results"
    for w in $workloads; do
        for mode in native expandable async "pluggable:$lib"; do
            name=${mode%%:*}
            log="$out/$w.$name.log"
            echo "== $w under $name (log: $log)"
            # One process per run: the allocator is chosen before CUDA starts, and the
            # library's peaks are per process.
            line=$(COALESCE_BACKEND=cuda python3 "$wl" "$w" "$mode" --out "$out" \
                       ${steps:+--steps "$steps"} 2>"$log" | grep '^{' | tail -n 1) || true
            if [ -n "$line" ]; then
                echo "$line" | tee -a "$results"
            else
                tail -n 20 "$log" >&2
                echo "{\"workload\": \"$w\", \"mode\": \"$name\", \"error\": \"run failed, see $log\"}" >> "$results"
                failed=1
            fi
        done
    done
    python3 "$here/gpu_table.py" "$results" --markdown "$out/gpu-results.md" || failed=1
    echo "results: $results, table: $out/gpu-results.md"
    return "$failed"
}

case "${1:-}" in
    build) shift; build "$@" ;;
    run) shift; run "$@" ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
esac
