#!/usr/bin/env bash
# A/B reruns of the cells flagged in a report: glibc and coalesce alternating, 7 runs each, medians.
# Usage: scripts/bench-host-recheck.sh REPORT.md   (after scripts/bench-host.sh > REPORT.md)
# Prints a markdown row per cell the report flags as >5% slower than glibc: glibc and coalesce
# medians of 7 runs of that cell alone, run alternately, so a change in machine load between
# allocators cannot decide the ratio.
set -eu
cd "$(dirname "$0")/.."
report=$(realpath "$1")
B=target/release/coalesce-host-bench; C=$PWD/target/release/libcoalesce_host_preload.so
grep -o '[at] [a-z]* t=[0-9]* 2^[0-9]* ([0-9.]*x)' "$report" | while read w _ t k _; do
  t=${t#t=}; k=${k#2^}; wl=$([ "$w" = a ] && echo own || echo pairs)
  g=(); c=()
  for i in 1 2 3 4 5 6 7; do
    g+=($($B workload $wl $t 1 $k 2>/dev/null | awk "NR==1" | cut -d' ' -f2))
    c+=($(LD_PRELOAD=$C $B workload $wl $t 1 $k 2>/dev/null | awk "NR==1" | cut -d' ' -f2))
  done
  mg=$(printf '%s\n' "${g[@]}" | sort -g | sed -n 4p); mc=$(printf '%s\n' "${c[@]}" | sort -g | sed -n 4p)
  awk -v w="$w" -v t="$t" -v k="$k" -v g="$mg" -v c="$mc" 'BEGIN { printf "| %s t=%s 2^%s | %.1f | %.1f | %.2f |\n", w, t, k, g, c, c / g }'
done
