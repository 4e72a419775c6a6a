#!/usr/bin/env python3
"""Table of a GPU check: peak reserved and wall time per workload and allocator mode.

    gpu_table.py RESULTS.jsonl [--markdown FILE]

RESULTS.jsonl holds workloads.py's JSON lines (one per workload and mode). Prints the table,
checks the targets of the pluggable allocator against PyTorch on the same machine (peak
reserved below `expandable`, wall time within 3% of `native`) and exits 1 if a run failed or
a target is missed.
"""
import argparse
import json
import sys

MODES = ["native", "expandable", "async", "pluggable"]
WALL_TOLERANCE = 0.03


def peak_reserved(r):
    if "allocator_stats" in r:
        return r["allocator_stats"].get("peak_reserved_bytes")
    return r.get("peak_reserved_bytes")


def gib(n):
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--markdown")
    a = ap.parse_args()
    runs = {}
    with open(a.results) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs[(r["workload"], r["mode"])] = r
    workloads = list(dict.fromkeys(w for w, _ in runs))
    rows, problems = [], []
    for w in workloads:
        native, expandable = runs.get((w, "native"), {}), runs.get((w, "expandable"), {})
        for m in MODES:
            r = runs.get((w, m))
            if r is None:
                continue
            res, wall = peak_reserved(r), r.get("wall_s")
            vs_exp = vs_nat = ""
            if res and peak_reserved(expandable):
                vs_exp = f"{res / peak_reserved(expandable):.3f}x"
            if wall and native.get("wall_s"):
                vs_nat = f"{wall / native['wall_s']:.3f}x"
            rows.append([w, m, gib(res), f"{wall:.1f} s" if wall else "-", vs_exp, vs_nat,
                         r.get("error") or ""])
            if r.get("error"):
                problems.append(f"{w} {m}: {r['error']}")
        p = runs.get((w, "pluggable"), {})
        if p and not p.get("error"):
            if peak_reserved(expandable) and not peak_reserved(p) < peak_reserved(expandable):
                problems.append(f"{w}: pluggable peak reserved {gib(peak_reserved(p))} is not "
                                f"below expandable's {gib(peak_reserved(expandable))}")
            if native.get("wall_s") and p["wall_s"] > native["wall_s"] * (1 + WALL_TOLERANCE):
                problems.append(f"{w}: pluggable wall {p['wall_s']:.1f} s is more than "
                                f"{WALL_TOLERANCE:.0%} over native's {native['wall_s']:.1f} s")
    head = ["workload", "mode", "peak reserved", "wall", "reserved vs expandable",
            "wall vs native", "error"]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in [head] + rows:
        print("  ".join(str(x).ljust(n) for x, n in zip(row, widths)).rstrip())
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
            for row in rows:
                f.write("| " + " | ".join(row) + " |\n")
    for p in problems:
        print("MISSED: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
