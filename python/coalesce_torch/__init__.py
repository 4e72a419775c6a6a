"""coalesce for PyTorch: swap in the coalesce GPU memory pool, read its stats.

Three lines, before the first CUDA allocation::

    import coalesce_torch
    coalesce_torch.install()          # or install("/path/to/libcoalesce.so")
    ...                               # your training or inference, unchanged
    print(coalesce_torch.memory_stats()["peak_reserved_bytes"])

``install`` hands PyTorch ``libcoalesce.so`` through
``torch.cuda.memory.CUDAPluggableAllocator``. PyTorch's own ``torch.cuda.memory_stats()`` does
not work with a pluggable allocator, so the stats, cache, limit and snapshot functions here
call the library directly (ctypes; they do not need torch, and work on the simulated backend
with ``COALESCE_BACKEND=sim``).

The library is found, in order: the ``path`` argument, ``$COALESCE_LIB``, then
``target/release`` and ``target/debug`` of the repository this package sits in. The policy
and backend come from the environment (``COALESCE_POLICY``, ``COALESCE_BACKEND``, ...; see
docs/gpu.md), read when a device's pool is first used.
"""

import ctypes
import json
import os
from pathlib import Path

__all__ = [
    "CoalesceError",
    "library_path",
    "load",
    "install",
    "memory_stats",
    "empty_cache",
    "set_memory_limit",
    "dump_snapshot",
    "last_error",
]

_LIB_NAME = "libcoalesce.so"
_lib = None
_lib_path = None


class CoalesceError(RuntimeError):
    """A call into libcoalesce failed; the message is the library's own."""


def library_path(path=None):
    """The absolute path of the libcoalesce.so to use (see the module docs for the order)."""
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get("COALESCE_LIB"):
        candidates.append(Path(os.environ["COALESCE_LIB"]))
    else:
        repo = Path(__file__).resolve().parents[2]
        candidates += [repo / "target" / p / _LIB_NAME for p in ("release", "debug")]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{_LIB_NAME} not found (tried {tried}); build it with "
        "`cargo build --release -p coalesce-capi` or pass its path"
    )


def load(path=None):
    """Loads the library once per process and returns it (a ``ctypes.CDLL``)."""
    global _lib, _lib_path
    resolved = library_path(path if path is not None else _lib_path)
    if _lib is not None:
        if resolved != _lib_path:
            raise CoalesceError(f"{_lib_path} is already loaded; cannot switch to {resolved}")
        return _lib
    lib = ctypes.CDLL(resolved)
    c = ctypes
    lib.coalesce_malloc.argtypes = [c.c_size_t, c.c_int, c.c_void_p]
    lib.coalesce_malloc.restype = c.c_void_p
    lib.coalesce_free.argtypes = [c.c_void_p, c.c_size_t, c.c_int, c.c_void_p]
    lib.coalesce_free.restype = None
    lib.coalesce_stats_json.argtypes = [c.c_int, c.c_char_p, c.c_size_t]
    lib.coalesce_stats_json.restype = c.c_size_t
    lib.coalesce_empty_cache.argtypes = [c.c_int]
    lib.coalesce_empty_cache.restype = c.c_int
    lib.coalesce_set_memory_limit.argtypes = [c.c_int, c.c_size_t]
    lib.coalesce_set_memory_limit.restype = c.c_int
    lib.coalesce_dump_snapshot.argtypes = [c.c_int, c.c_char_p]
    lib.coalesce_dump_snapshot.restype = c.c_int
    lib.coalesce_last_error.argtypes = [c.c_char_p, c.c_size_t]
    lib.coalesce_last_error.restype = c.c_size_t
    _lib, _lib_path = lib, resolved
    return lib


def install(path=None, policy=None):
    """Makes coalesce PyTorch's CUDA allocator. Call it before the first CUDA allocation.

    ``policy`` (e.g. ``"bfc-classic"``) sets ``COALESCE_POLICY`` for the pools not yet
    created. Returns the ``CUDAPluggableAllocator``.
    """
    if policy is not None:
        os.environ["COALESCE_POLICY"] = policy
    load(path)
    try:
        import torch
    except ImportError as e:
        raise ImportError("coalesce_torch.install() needs PyTorch (import torch failed)") from e
    alloc = torch.cuda.memory.CUDAPluggableAllocator(_lib_path, "coalesce_malloc", "coalesce_free")
    torch.cuda.memory.change_current_allocator(alloc)
    return alloc


def last_error():
    """The library's last error message for this thread ('' if none)."""
    lib = load()
    n = lib.coalesce_last_error(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    lib.coalesce_last_error(buf, n + 1)
    return buf.value.decode("utf-8", "replace")


def _fail(what):
    raise CoalesceError(f"{what}: {last_error()}")


def memory_stats(device=0):
    """The pool's stats as a dict: requested/allocated/reserved bytes and their peaks,
    num_ooms, driver_calls, largest_free_block, memory_limit, ..."""
    lib = load()
    n = lib.coalesce_stats_json(device, None, 0)
    if n == 0:
        _fail("memory_stats")
    buf = ctypes.create_string_buffer(n + 1)
    if lib.coalesce_stats_json(device, buf, n + 1) != n:
        _fail("memory_stats")
    return json.loads(buf.value.decode())


def empty_cache(device=0):
    """Returns the pool's cached memory to the driver."""
    if load().coalesce_empty_cache(device) != 0:
        _fail("empty_cache")


def set_memory_limit(limit, device=0):
    """Caps the memory the pool reserves: bytes (int), a fraction of the device (float in
    (0, 1]), or None to remove the cap. Growth beyond it fails like a full device."""
    if limit is None:
        nbytes = 0
    elif isinstance(limit, float):
        if not 0.0 < limit <= 1.0:
            raise ValueError(f"a fraction must be in (0, 1], not {limit}")
        nbytes = max(1, int(memory_stats(device)["total_memory"] * limit))
    else:
        nbytes = int(limit)
        if nbytes <= 0:
            raise ValueError(f"a limit in bytes must be positive, not {limit} (None removes it)")
    if load().coalesce_set_memory_limit(device, nbytes) != 0:
        _fail("set_memory_limit")


def dump_snapshot(path, device=0):
    """Writes segments, live blocks and recent events to ``path`` as a CSV trace that
    ``coalesce replay path`` replays."""
    if load().coalesce_dump_snapshot(device, os.fsencode(path)) != 0:
        _fail("dump_snapshot")
