"""coalesce for PyTorch: swap in the coalesce GPU memory pool; torch's memory calls keep working.

Three lines, before the first CUDA allocation::

    import coalesce_torch
    coalesce_torch.install()          # or install("/path/to/libcoalesce.so")
    ...                               # your training or inference, unchanged
    print(torch.cuda.max_memory_allocated())   # answered by coalesce's pool

``install`` hands PyTorch ``libcoalesce.so`` through
``torch.cuda.memory.CUDAPluggableAllocator`` and then patches torch's Python memory functions
(``memory_stats``, ``memory_allocated``, ``max_memory_allocated``, ``memory_reserved``,
``max_memory_reserved``, ``reset_peak_memory_stats``, ``empty_cache``,
``set_per_process_memory_fraction``, ``memory_snapshot``, ``memory_summary``, ``_snapshot``,
``_dump_snapshot``, ``_record_memory_history``, in ``torch.cuda`` and ``torch.cuda.memory``),
which PyTorch does not support for pluggable allocators, to answer from the pool (see
``_patch.py`` and docs/gpu.md). The functions here call the library directly (ctypes; they do
not need torch, and work on the simulated backend with ``COALESCE_BACKEND=sim``).

The library is found, in order: the ``path`` argument, ``$COALESCE_LIB``, the copy bundled in
this package (the wheel's), then ``target/release`` and ``target/debug`` of the repository
this package sits in. The policy and backend come from the environment (``COALESCE_POLICY``,
``COALESCE_BACKEND``, ...; see docs/gpu.md), read when a device's pool is first used.
"""

import ctypes
import json
import os
import sys
from pathlib import Path

__version__ = "0.1.0"

__all__ = [
    "CoalesceError",
    "OutOfMemoryError",
    "reset_peak_stats",
    "patch_torch",
    "unpatch_torch",
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
        here = Path(__file__).resolve().parent
        repo = here.parents[1]
        candidates.append(here / _LIB_NAME)
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
    lib.coalesce_dump_snapshot_pickle.argtypes = [c.c_int, c.c_char_p]
    lib.coalesce_dump_snapshot_pickle.restype = c.c_int
    lib.coalesce_reset_peak_stats.argtypes = [c.c_int]
    lib.coalesce_reset_peak_stats.restype = c.c_int
    lib.coalesce_last_error.argtypes = [c.c_char_p, c.c_size_t]
    lib.coalesce_last_error.restype = c.c_size_t
    _lib, _lib_path = lib, resolved
    return lib


def install(path=None, policy=None, patch=True):
    """Makes coalesce PyTorch's CUDA allocator. Call it before the first CUDA allocation.

    ``policy`` (e.g. ``"bfc-classic"``) sets ``COALESCE_POLICY`` for the pools not yet
    created. With ``patch`` (the default), torch's memory functions then answer from the pool
    (see ``patch_torch``). Returns the ``CUDAPluggableAllocator``.
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
    if patch:
        patch_torch(torch)
    return alloc


def patch_torch(torch=None):
    """Makes torch's memory functions (``torch.cuda.memory_stats``, ``max_memory_allocated``,
    ``_dump_snapshot``, ...) answer from coalesce's pool; returns the names replaced.
    ``install()`` calls it."""
    from . import _patch

    if torch is None:
        import torch
    return _patch.patch(torch, sys.modules[__name__])


def unpatch_torch():
    """Gives torch its own memory functions back."""
    from . import _patch

    _patch.unpatch()


def last_error():
    """The library's last error message for this thread ('' if none)."""
    lib = load()
    n = lib.coalesce_last_error(None, 0)
    buf = ctypes.create_string_buffer(n + 1)
    lib.coalesce_last_error(buf, n + 1)
    return buf.value.decode("utf-8", "replace")


class OutOfMemoryError(CoalesceError):
    """The pool could not allocate. Raised as a subclass that is also
    ``torch.cuda.OutOfMemoryError`` when torch is imported (see ``oom_error``)."""


def oom_error(message, requested=None, device=0):
    """An out-of-memory exception ``except torch.cuda.OutOfMemoryError`` catches, its text the
    library's message, which carries the fragmentation report (requested, reserved, live,
    largest free block, the share of reserved memory free but unusable, and the cause): the
    report is computed once, by the pool."""
    from ._oom import error_class

    return error_class(OutOfMemoryError)(message)


def _fail(what):
    message = last_error()
    if "out of memory" in message:
        import re

        found = re.search(r"cannot allocate (\d+) bytes", message)
        requested = int(found.group(1)) if found else None
        raise oom_error(f"{what}: {message}", requested)
    raise CoalesceError(f"{what}: {message}")


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
    """Writes segments, live blocks and recent events to ``path``: PyTorch's snapshot pickle
    (what ``torch.cuda.memory._dump_snapshot`` writes; https://pytorch.org/memory_viz opens
    it), or a CSV trace when ``path`` ends in ``.csv``. ``coalesce replay path`` replays
    either."""
    lib = load()
    if os.fspath(path).endswith(".csv"):
        ok = lib.coalesce_dump_snapshot(device, os.fsencode(path)) == 0
    else:
        ok = lib.coalesce_dump_snapshot_pickle(device, os.fsencode(path)) == 0
    if not ok:
        _fail("dump_snapshot")


def reset_peak_stats(device=0):
    """Resets the peaks (requested, allocated, reserved) to the current values."""
    if load().coalesce_reset_peak_stats(device) != 0:
        _fail("reset_peak_stats")
