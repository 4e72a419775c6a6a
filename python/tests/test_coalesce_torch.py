"""coalesce_torch against the simulated backend: no GPU and no torch needed.

Run by crates/capi/tests/python.rs with COALESCE_LIB set to the freshly built library and
COALESCE_BACKEND=sim, COALESCE_SIM_CAPACITY=1 GiB. Tests run in order: they share one pool.
"""

import ctypes
import os
import sys
import tempfile
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import coalesce_torch as ct  # noqa: E402

MIB = 1 << 20


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
        self.assertEqual(s["backend"], "sim")
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
