"""Makes torch's own memory calls answer from coalesce's pool.

Under ``CUDAPluggableAllocator`` PyTorch raises "does not yet support" for
``memory_stats``, ``max_memory_*``, ``reset_peak_memory_stats``, ``memory_snapshot`` and
``_record_memory_history``, and ``empty_cache`` / ``set_per_process_memory_fraction`` do
nothing (their hooks can only be set from C++). ``patch(torch, ct)`` replaces these Python
functions in ``torch.cuda`` and ``torch.cuda.memory`` with ones that call coalesce through
ctypes; torch's other Python helpers that look them up at call time (``memory_allocated``,
``reset_max_memory_allocated``, ...) then work too.

Invariants: only attributes that exist in the installed torch are replaced (older releases
lack some); the originals are kept in ``ORIGINALS`` and ``unpatch`` restores them; patching
twice is the same as once. Names imported before ``install()`` (``from torch.cuda import
memory_stats``) keep torch's own function.
"""

import os
import pickle
import tempfile
import warnings

ORIGINALS = {}


def device_index(torch, device):
    """torch's ``device`` argument (None, int, ``"cuda:1"``, ``torch.device``) as an int."""
    if device is None:
        try:
            return int(torch.cuda.current_device())
        except Exception:
            return 0
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        _, _, index = device.partition(":")
        return int(index) if index else device_index(torch, None)
    index = getattr(device, "index", None)
    return device_index(torch, None) if index is None else int(index)


def replacements(torch, ct):
    """The functions to install, by name."""
    from ._stats import summary, torch_memory_stats

    def stats(device=None):
        return ct.memory_stats(device_index(torch, device))

    def memory_stats(device=None):
        return torch_memory_stats(stats(device))

    def memory_allocated(device=None):
        return stats(device)["allocated_bytes"]

    def max_memory_allocated(device=None):
        return stats(device)["peak_allocated_bytes"]

    def memory_reserved(device=None):
        return stats(device)["reserved_bytes"]

    def max_memory_reserved(device=None):
        return stats(device)["peak_reserved_bytes"]

    def reset_peak_memory_stats(device=None):
        ct.reset_peak_stats(device_index(torch, device))

    def empty_cache():
        ct.empty_cache(device_index(torch, None))

    def set_per_process_memory_fraction(fraction, device=None):
        ct.set_memory_limit(float(fraction), device_index(torch, device))

    def snapshot(device=None, *args, **kwargs):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "snapshot.pickle")
            ct.dump_snapshot(path, device_index(torch, device))
            with open(path, "rb") as f:
                return pickle.load(f)

    def memory_snapshot(*args, **kwargs):
        return snapshot()["segments"]

    def dump_snapshot(filename="dump_snapshot.pickle"):
        ct.dump_snapshot(filename, device_index(torch, None))

    def record_memory_history(*args, **kwargs):
        # coalesce always records its last events (COALESCE_TRACE_ENTRIES); stack frames and
        # the per-call settings are not supported.
        enabled = args[0] if args else kwargs.get("enabled", "all")
        if enabled in (None, False):
            return
        warnings.warn(
            "coalesce records allocation history always (without stack frames); "
            "_record_memory_history's arguments are ignored",
            stacklevel=2,
        )

    def memory_summary(device=None, abbreviated=False):
        return summary(stats(device))

    return {
        "memory_stats": memory_stats,
        "memory_allocated": memory_allocated,
        "max_memory_allocated": max_memory_allocated,
        "memory_reserved": memory_reserved,
        "max_memory_reserved": max_memory_reserved,
        "memory_cached": memory_reserved,
        "max_memory_cached": max_memory_reserved,
        "reset_peak_memory_stats": reset_peak_memory_stats,
        "empty_cache": empty_cache,
        "set_per_process_memory_fraction": set_per_process_memory_fraction,
        "memory_snapshot": memory_snapshot,
        "memory_summary": memory_summary,
        "_snapshot": snapshot,
        "_dump_snapshot": dump_snapshot,
        "_record_memory_history": record_memory_history,
    }


def _targets(torch):
    cuda = getattr(torch, "cuda", None)
    return [m for m in (cuda, getattr(cuda, "memory", None)) if m is not None]


def patch(torch, ct):
    """Replaces torch's memory functions; returns the names replaced (sorted)."""
    replaced = set()
    for name, fn in replacements(torch, ct).items():
        fn.__name__ = name
        fn.__qualname__ = name
        fn.__doc__ = f"coalesce_torch's {name}: answers from the coalesce pool."
        fn._coalesce = True
        for module in _targets(torch):
            current = getattr(module, name, None)
            if current is None:
                continue
            if not getattr(current, "_coalesce", False):
                ORIGINALS[(id(module), name)] = (module, name, current)
            setattr(module, name, fn)
            replaced.add(name)
    return sorted(replaced)


def unpatch():
    """Puts torch's own functions back."""
    for module, name, fn in ORIGINALS.values():
        setattr(module, name, fn)
    ORIGINALS.clear()
