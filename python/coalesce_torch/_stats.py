"""coalesce's pool stats under the names ``torch.cuda.memory_stats()`` uses.

PyTorch's keys are ``<stat>.<pool>.<metric>``: stat ``allocated_bytes``, ``reserved_bytes``,
``active_bytes``, ``requested_bytes``, ``segment``, ``allocation``, ``active``; pool ``all``,
``large_pool``, ``small_pool``; metric ``current``, ``peak``, ``allocated``, ``freed``; plus
the scalars ``num_alloc_retries``, ``num_ooms``, ``num_device_alloc``, ``num_device_free``,
``num_sync_all_streams``.

What is mapped, and how (invariant: every value given is coalesce's own figure, never an
estimate; a key coalesce cannot answer is left out rather than filled with a made-up number):

- ``allocated_bytes``: bytes of blocks handed out (after the policy's rounding), current and
  peak; ``requested_bytes``: bytes the program asked for; ``reserved_bytes``: bytes held from
  the driver; ``active_bytes``: as allocated (coalesce does not count the bytes of blocks
  held for stream ordering separately).
- ``allocation``/``active``: live allocations (``current``), allocations and frees so far
  (``allocated``/``freed``); ``segment.current``: segments held.
- The ``.allocated``/``.freed`` byte totals come from ``total_allocated_bytes``/
  ``total_freed_bytes`` (block sizes) and ``total_requested_bytes``/
  ``total_requested_freed_bytes`` (requested sizes).
- coalesce has one pool per device, not PyTorch's small and large pools: everything is under
  ``all`` and ``large_pool``; ``small_pool`` is zero.
"""

from collections import OrderedDict

_BYTES = {
    "allocated_bytes": ("allocated_bytes", "peak_allocated_bytes"),
    "requested_bytes": ("requested_bytes", "peak_requested_bytes"),
    "reserved_bytes": ("reserved_bytes", "peak_reserved_bytes"),
    "active_bytes": ("allocated_bytes", "peak_allocated_bytes"),
}


def torch_memory_stats(s):
    """``torch.cuda.memory_stats()``'s dict (sorted by key, as torch returns it) from the dict
    of ``coalesce_torch.memory_stats()``."""
    out = {}

    def put(stat, metric, value):
        out[f"{stat}.all.{metric}"] = value
        out[f"{stat}.large_pool.{metric}"] = value
        out[f"{stat}.small_pool.{metric}"] = 0

    for stat, (current, peak) in _BYTES.items():
        put(stat, "current", s[current])
        put(stat, "peak", s[peak])
    if "total_allocated_bytes" in s and "total_freed_bytes" in s:
        for stat in ("allocated_bytes", "active_bytes"):
            put(stat, "allocated", s["total_allocated_bytes"])
            put(stat, "freed", s["total_freed_bytes"])
    if "total_requested_bytes" in s and "total_requested_freed_bytes" in s:
        put("requested_bytes", "allocated", s["total_requested_bytes"])
        put("requested_bytes", "freed", s["total_requested_freed_bytes"])
    live = s["num_allocs"] - s["num_frees"]
    for stat in ("allocation", "active"):
        put(stat, "current", live)
        put(stat, "allocated", s["num_allocs"])
        put(stat, "freed", s["num_frees"])
    put("segment", "current", s["segments"])
    calls = s.get("driver_calls_by_kind", {})
    out["num_alloc_retries"] = s["num_alloc_retries"]
    out["num_ooms"] = s["num_ooms"]
    # torch counts cudaMalloc and cuMemMap calls, and cudaFree and cuMemUnmap calls.
    out["num_device_alloc"] = calls.get("mem_alloc", 0) + calls.get("mem_map", 0)
    out["num_device_free"] = calls.get("mem_free", 0) + calls.get("mem_unmap", 0)
    out["num_sync_all_streams"] = calls.get("synchronize", 0)
    return OrderedDict(sorted(out.items()))


def summary(s):
    """A short text in place of ``torch.cuda.memory_summary()`` (whose table needs stats
    coalesce does not keep)."""

    def mib(n):
        return f"{n / (1 << 20):,.1f} MiB"

    rows = [
        ("requested", s["requested_bytes"], s["peak_requested_bytes"]),
        ("allocated", s["allocated_bytes"], s["peak_allocated_bytes"]),
        ("reserved", s["reserved_bytes"], s["peak_reserved_bytes"]),
    ]
    lines = [f"coalesce pool on device {s['device']} (policy {s['policy']}, backend {s['backend']})"]
    lines += [f"  {name:<10} {mib(cur):>14} now, {mib(peak):>14} peak" for name, cur, peak in rows]
    lines.append(
        f"  largest free block {mib(s['largest_free_block'])}, {s['segments']} segments, "
        f"{s['num_ooms']} OOMs, {s['num_alloc_retries']} cache flushes"
    )
    return "\n".join(lines) + "\n"
