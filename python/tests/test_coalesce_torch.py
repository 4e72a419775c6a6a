"""coalesce_torch against the simulated backend, or the CUDA backend on the CPU stand-in for
libcuda: no GPU and no torch needed.

Run by crates/capi/tests/python.rs with COALESCE_LIB set to the freshly built library, twice:
COALESCE_BACKEND=sim with COALESCE_SIM_CAPACITY=1 GiB, and COALESCE_BACKEND=cuda with the
stand-in first on LD_LIBRARY_PATH and COALESCE_STANDIN_CAPACITY=1GiB (one device of 1 GiB in
both). Tests run in order: they share one pool.
"""

import ctypes
import os
import pickle
import sys
import tempfile
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import coalesce_torch as ct  # noqa: E402

MIB = 1 << 20
BACKEND = os.environ.get("COALESCE_BACKEND", "cuda").strip()


def malloc(size, stream=0):
    return ct.load().coalesce_malloc(size, 0, stream)


def free(ptr, size, stream=0):
    ct.load().coalesce_free(ptr, size, 0, stream)


class Sim(unittest.TestCase):
    def test_1_stats_count_exactly(self):
        s = ct.memory_stats()
        for key in ("reserved_bytes", "peak_reserved_bytes", "allocated_bytes",
                    "peak_allocated_bytes", "requested_bytes", "peak_requested_bytes",
                    "num_ooms", "driver_calls"):
            self.assertIn(key, s)
        self.assertEqual(s["backend"], BACKEND)
        a, b = malloc(1000), malloc(3 * MIB)
        self.assertTrue(a and b)
        s = ct.memory_stats()
        self.assertEqual(s["requested_bytes"], 1000 + 3 * MIB)
        self.assertLessEqual(s["requested_bytes"], s["allocated_bytes"])
        self.assertLessEqual(s["allocated_bytes"], s["reserved_bytes"])
        free(a, 1000)
        free(b, 3 * MIB)
        s = ct.memory_stats()
        self.assertEqual(s["requested_bytes"], 0)
        self.assertEqual(s["peak_requested_bytes"], 1000 + 3 * MIB)

    def test_2_limit_gives_a_readable_oom_and_the_pool_survives(self):
        ct.empty_cache()
        self.assertEqual(ct.memory_stats()["reserved_bytes"], 0)
        ct.set_memory_limit(64 * MIB)
        self.assertEqual(ct.memory_stats()["memory_limit"], 64 * MIB)
        self.assertFalse(malloc(256 * MIB))
        err = ct.last_error()
        self.assertIn("out of memory on device 0: cannot allocate 268435456 bytes", err)
        self.assertIn("memory limit", err)
        self.assertEqual(ct.memory_stats()["num_ooms"], 1)
        p = malloc(MIB)
        self.assertTrue(p, "the pool keeps working")
        free(p, MIB)
        ct.set_memory_limit(0.5)
        self.assertEqual(ct.memory_stats()["memory_limit"], 512 * MIB)
        ct.set_memory_limit(None)
        self.assertIsNone(ct.memory_stats()["memory_limit"])
        with self.assertRaises(ValueError):
            ct.set_memory_limit(1.5)

    def test_3_snapshot_is_a_replayable_trace(self):
        kept = malloc(4096, stream=0)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "snap.csv")
            ct.dump_snapshot(path)
            with open(path) as f:
                lines = f.read().splitlines()
            self.assertEqual(lines[0], "action,addr,size,stream")
            self.assertIn(f"alloc,{kept},4096,0", lines)
            with self.assertRaises(ct.CoalesceError) as e:
                ct.dump_snapshot(os.path.join(d, "missing", "snap.csv"))
            self.assertIn("cannot write snapshot", str(e.exception))
        free(kept, 4096)

    def test_4_errors_raise_with_the_library_message(self):
        with self.assertRaises(ct.CoalesceError) as e:
            ct.memory_stats(device=999)
        self.assertIn("device 999 is out of range", str(e.exception))
        with self.assertRaises(ct.CoalesceError) as e:
            ct.memory_stats(device=1)  # the first device past the count
        self.assertIn("no CUDA device 1" if BACKEND == "cuda" else "device 1 is out of range",
                      str(e.exception))
        with self.assertRaises(FileNotFoundError):
            ct.library_path("/nonexistent/libcoalesce.so")

    def test_5_install_hands_the_library_to_pytorch(self):
        calls = []
        memory = types.SimpleNamespace(
            CUDAPluggableAllocator=lambda *a: calls.append(("new", a)) or "alloc",
            change_current_allocator=lambda a: calls.append(("change", a)),
        )
        fake = types.SimpleNamespace(cuda=types.SimpleNamespace(memory=memory))
        saved = sys.modules.get("torch")
        sys.modules["torch"] = fake
        try:
            self.assertEqual(ct.install(policy="cuda-malloc"), "alloc")
        finally:
            if saved is None:
                del sys.modules["torch"]
            else:
                sys.modules["torch"] = saved
        lib = ct.library_path()
        self.assertEqual(calls, [("new", (lib, "coalesce_malloc", "coalesce_free")),
                                 ("change", "alloc")])
        self.assertEqual(os.environ["COALESCE_POLICY"], "cuda-malloc")

    def test_6_install_without_torch_says_so(self):
        saved = sys.modules.get("torch")
        sys.modules["torch"] = None  # makes `import torch` fail
        try:
            with self.assertRaises(ImportError) as e:
                ct.install()
            self.assertIn("needs PyTorch", str(e.exception))
        finally:
            if saved is None:
                del sys.modules["torch"]
            else:
                sys.modules["torch"] = saved

    def test_7_dump_snapshot_writes_pytorchs_pickle(self):
        kept = malloc(3 * MIB)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "snap.pickle")
            ct.dump_snapshot(path)
            with open(path, "rb") as f:
                snap = pickle.load(f)
        free(kept, 3 * MIB)
        self.assertEqual(set(snap), {"segments", "device_traces", "allocator_settings"})
        blocks = [b for seg in snap["segments"] for b in seg["blocks"]]
        mine = [b for b in blocks if b["address"] == kept]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["state"], "active_allocated")
        self.assertEqual(mine[0]["requested_size"], 3 * MIB)
        trace = snap["device_traces"][0]
        self.assertIn({"action": "alloc", "addr": kept, "size": 3 * MIB},
                      [{k: e[k] for k in ("action", "addr", "size")} for e in trace])

    def test_8_torchs_own_calls_answer_from_the_pool(self):
        torch = fake_torch()
        replaced = ct.patch_torch(torch)
        try:
            self.assertIn("memory_stats", replaced)
            self.assertIn("_dump_snapshot", replaced)
            for module in (torch.cuda, torch.cuda.memory):
                self.assertTrue(module.memory_stats._coalesce)
            p = malloc(5 * MIB)
            s = ct.memory_stats()
            stats = torch.cuda.memory_stats()
            self.assertEqual(list(stats), sorted(stats), "sorted like torch's")
            self.assertEqual(stats["allocated_bytes.all.current"], s["allocated_bytes"])
            self.assertEqual(stats["reserved_bytes.all.peak"], s["peak_reserved_bytes"])
            self.assertEqual(stats["requested_bytes.all.current"], s["requested_bytes"])
            self.assertEqual(stats["num_ooms"], s["num_ooms"])
            self.assertEqual(stats["allocation.all.current"], s["num_allocs"] - s["num_frees"])
            self.assertEqual(torch.cuda.memory_allocated(), s["allocated_bytes"])
            self.assertEqual(torch.cuda.memory_allocated("cuda:0"), s["allocated_bytes"])
            self.assertEqual(torch.cuda.memory.max_memory_allocated(0), s["peak_allocated_bytes"])
            self.assertEqual(torch.cuda.memory_reserved(), s["reserved_bytes"])
            self.assertEqual(torch.cuda.max_memory_reserved(), s["peak_reserved_bytes"])
            free(p, 5 * MIB)
            torch.cuda.reset_peak_memory_stats()
            s = ct.memory_stats()
            self.assertEqual(s["peak_requested_bytes"], s["requested_bytes"])
            self.assertEqual(torch.cuda.max_memory_allocated(), s["allocated_bytes"])
            torch.cuda.empty_cache()
            self.assertEqual(torch.cuda.memory_reserved(), ct.memory_stats()["reserved_bytes"])
            torch.cuda.set_per_process_memory_fraction(0.25)
            self.assertEqual(ct.memory_stats()["memory_limit"], 256 * MIB)
            ct.set_memory_limit(None)
            self.assertIsInstance(torch.cuda.memory_snapshot(), list)
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "torch.pickle")
                torch.cuda.memory._record_memory_history(enabled=None)
                torch.cuda.memory._dump_snapshot(path)
                with open(path, "rb") as f:
                    self.assertIn("device_traces", pickle.load(f))
            self.assertIn("coalesce pool on device 0", torch.cuda.memory_summary())
            self.assertEqual(ct.patch_torch(torch), replaced, "patching twice is patching once")
        finally:
            ct.unpatch_torch()
        with self.assertRaises(RuntimeError) as e:
            torch.cuda.memory_stats()
        self.assertIn("does not yet support", str(e.exception))

    def test_9_out_of_memory_is_torchs_exception_with_a_fragmentation_report(self):
        torch = fake_torch()
        saved = sys.modules.get("torch")
        sys.modules["torch"] = torch
        try:
            ct.set_memory_limit(64 * MIB)
            self.assertFalse(malloc(256 * MIB))
            with self.assertRaises(torch.cuda.OutOfMemoryError) as e:
                ct._fail("malloc")
            self.assertIsInstance(e.exception, ct.OutOfMemoryError)
            text = str(e.exception)
            # The report comes from the library's message when it has one (it says what is
            # unusable), else from coalesce_torch's own: the same facts, either wording.
            self.assertIn("cannot allocate 268435456 bytes", text)
            self.assertIn("256.00 MiB", text)
            self.assertIn("% of reserved", text)
            self.assertIn("unusable for this request", text)
        finally:
            ct.set_memory_limit(None)
            if saved is None:
                del sys.modules["torch"]
            else:
                sys.modules["torch"] = saved

    def test_10_real_torch_answers_from_the_pool(self):
        """With torch installed (no GPU needed: the calls below are the patched ones), torch's
        own functions return coalesce's figures, and torch's `_memory_viz` reads the snapshot
        torch's `_dump_snapshot` wrote."""
        try:
            import torch
            from torch.cuda import _memory_viz
        except Exception as e:  # ImportError, or torch failing to load its libraries
            self.skipTest(f"torch is not importable: {e}")
        replaced = ct.patch_torch(torch)
        try:
            self.assertIn("memory_stats", replaced)
            p = malloc(7 * MIB)
            s = ct.memory_stats()
            stats = torch.cuda.memory_stats()
            self.assertEqual(stats["allocated_bytes.all.current"], s["allocated_bytes"])
            self.assertEqual(stats["requested_bytes.all.allocated"], s["total_requested_bytes"])
            self.assertEqual(torch.cuda.memory_allocated(), s["allocated_bytes"])
            self.assertEqual(torch.cuda.max_memory_allocated(), s["peak_allocated_bytes"])
            self.assertEqual(torch.cuda.memory_reserved(), s["reserved_bytes"])
            self.assertEqual(torch.cuda.max_memory_reserved(), s["peak_reserved_bytes"])
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "snapshot.pickle")
                torch.cuda.memory._dump_snapshot(path)
                with open(path, "rb") as f:
                    snap = pickle.load(f)
            self.assertIn("total_reserved", _memory_viz.segsum(snap))
            self.assertIn("MemoryViz.js", _memory_viz.segment_plot(snap))
            free(p, 7 * MIB)
            torch.cuda.reset_peak_memory_stats()
            self.assertEqual(torch.cuda.max_memory_allocated(), ct.memory_stats()["allocated_bytes"])
        finally:
            ct.unpatch_torch()


def fake_torch():
    """A stand-in `torch` whose memory functions fail as PyTorch's do under a pluggable
    allocator."""

    def unsupported(*args, **kwargs):
        raise RuntimeError("CUDAPluggableAllocator does not yet support getDeviceStats")

    names = ["memory_stats", "memory_allocated", "max_memory_allocated", "memory_reserved",
             "max_memory_reserved", "reset_peak_memory_stats", "empty_cache",
             "set_per_process_memory_fraction", "memory_snapshot", "memory_summary"]
    memory = types.SimpleNamespace(**{n: unsupported for n in names},
                                   _snapshot=unsupported, _dump_snapshot=unsupported,
                                   _record_memory_history=unsupported)
    cuda = types.SimpleNamespace(**{n: unsupported for n in names}, memory=memory,
                                 current_device=lambda: 0,
                                 OutOfMemoryError=type("OutOfMemoryError", (RuntimeError,), {}))
    return types.SimpleNamespace(cuda=cuda)


if __name__ == "__main__":
    unittest.main(verbosity=2)
