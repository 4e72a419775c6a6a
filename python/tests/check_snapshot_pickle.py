"""Checks a coalesce snapshot pickle the way PyTorch's tools read it.

Usage: check_snapshot_pickle.py SNAPSHOT LIVE_BLOCKS RESERVED_BYTES

Prints "pickle ok" when plain ``pickle`` reads it with PyTorch's invariants holding (each
segment tiled by its blocks, allocated + free == total_size as ``_memory_viz.segsum`` asserts,
``LIVE_BLOCKS`` active blocks, segments summing to ``RESERVED_BYTES``), then, when torch is
importable, runs ``torch.cuda._memory_viz``'s own functions on it and prints "memory_viz ok";
otherwise prints "no torch: ..." (the caller reports the skip). Exits non-zero on a failure.
"""

import pickle
import sys


def check_pickle(data, live, reserved):
    assert set(data) >= {"segments", "device_traces", "allocator_settings"}, list(data)
    active = 0
    total = 0
    for seg in data["segments"]:
        at = seg["address"]
        for b in seg["blocks"]:
            assert b["address"] == at, (seg["address"], b)
            assert b["state"] in ("active_allocated", "active_pending_free", "inactive"), b
            assert b["requested_size"] <= b["size"], b
            at += b["size"]
        assert at == seg["address"] + seg["total_size"], seg["address"]
        allocated = sum(b["size"] for b in seg["blocks"] if b["state"] == "active_allocated")
        assert allocated == seg["allocated_size"], seg["address"]
        assert seg["segment_type"] in ("small", "large")
        active += sum(1 for b in seg["blocks"] if b["state"] != "inactive")
        total += seg["total_size"]
    assert active == live, (active, live)
    assert total == reserved, (total, reserved)
    actions = {e["action"] for t in data["device_traces"] for e in t}
    assert actions <= {"segment_alloc", "alloc", "free_requested", "free_completed"}, actions
    print("pickle ok")


def load_memory_viz():
    """``torch.cuda._memory_viz``: imported with torch where torch imports, else loaded from
    torch's installed files (it needs only the standard library), so a torch installed without
    its CUDA libraries (``pip install --no-deps torch``) serves too. None without torch."""
    try:
        from torch.cuda import _memory_viz as mv

        return mv
    except Exception as e:  # ImportError, or torch failing to load its CUDA libraries
        reason = e
    import importlib.util
    import os

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        print(f"no torch: {reason}")
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "cuda", "_memory_viz.py")
    viz = importlib.util.spec_from_file_location("torch_cuda_memory_viz", path)
    mv = importlib.util.module_from_spec(viz)
    viz.loader.exec_module(mv)
    return mv


def check_memory_viz(data):
    mv = load_memory_viz()
    if mv is None:
        return
    summary = mv.segsum(data)  # asserts allocated + free == reserved for every segment
    assert "total_reserved" in summary, summary
    listing = mv.trace(data)
    assert "cudaMalloc(" in listing and " = " in listing, listing[:500]
    for html in (mv.trace_plot(data), mv.trace_plot(data, plot_segments=True), mv.segment_plot(data)):
        assert "snapshot.pickle" in html and "MemoryViz.js" in html, html[:300]
    # Flamegraph input (format_flamegraph is a parameter: no flamegraph.pl download).
    lines = mv.memory(data, format_flamegraph=lambda text: text)
    assert "active_allocated" in lines, lines[:300]
    mv.segments(data, format_flamegraph=lambda text: text)
    print("memory_viz ok")


def main():
    path, live, reserved = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open(path, "rb") as f:
        data = pickle.load(f)
    check_pickle(data, live, reserved)
    check_memory_viz(data)


if __name__ == "__main__":
    main()
