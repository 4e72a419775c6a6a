"""Checks the C allocation API through ctypes, in a process whose malloc is (supposedly) the
preloaded coalesce library: first that the symbols really resolve into that library, then
the contract of each function. Exits non-zero with a message on the first failure."""
import ctypes
import ctypes.util
import sys

libc = ctypes.CDLL(None, use_errno=True)
vp, sz = ctypes.c_void_p, ctypes.c_size_t
for name, res, args in [
    ("malloc", vp, [sz]), ("free", None, [vp]), ("calloc", vp, [sz, sz]),
    ("realloc", vp, [vp, sz]), ("posix_memalign", ctypes.c_int, [ctypes.POINTER(vp), sz, sz]),
    ("aligned_alloc", vp, [sz, sz]), ("memalign", vp, [sz, sz]), ("valloc", vp, [sz]),
    ("pvalloc", vp, [sz]), ("malloc_usable_size", sz, [vp]),
]:
    f = getattr(libc, name)
    f.restype, f.argtypes = res, args


def check(cond, what):
    if not cond:
        print("FAIL:", what)
        sys.exit(1)


def owner_of(addr):
    for line in open("/proc/self/maps"):
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= addr < hi:
            return parts[-1] if len(parts) >= 6 else ""
    return ""


for name in ["malloc", "free", "calloc", "realloc", "posix_memalign", "aligned_alloc",
             "memalign", "valloc", "pvalloc", "malloc_usable_size"]:
    addr = ctypes.cast(getattr(libc, name), vp).value
    check("coalesce_host_preload" in owner_of(addr), f"{name} resolves to {owner_of(addr)!r}")

for size in [0, 1, 8, 17, 1000, 40000, 1 << 20, 70 << 20]:
    p = libc.malloc(size)
    check(p and p % (16 if size > 8 else 8) == 0, f"malloc({size}) = {p}")
    check(libc.malloc_usable_size(p) >= size, f"usable_size of malloc({size})")
    ctypes.memset(p, 0x5A, size)
    q = libc.realloc(p, size * 2 + 10)
    check(q and ctypes.string_at(q, size) == b"\x5a" * size, f"realloc kept contents of {size}")
    libc.free(q)

c = libc.calloc(1000, 33)
check(ctypes.string_at(c, 33000) == bytes(33000), "calloc zeroes")
libc.free(c)
check(libc.calloc(1 << 62, 1 << 10) is None, "calloc overflow returns NULL")
libc.free(None)
check(libc.realloc(libc.malloc(10), 0) is None, "realloc(p, 0) frees and returns NULL")

for align in [8, 16, 64, 4096, 65536, 1 << 21]:
    out = vp()
    check(libc.posix_memalign(ctypes.byref(out), align, 100) == 0, f"posix_memalign {align}")
    check(out.value % align == 0, f"posix_memalign alignment {align}")
    libc.free(out)
    for f in (libc.aligned_alloc, libc.memalign):
        p = f(align, 3000)
        check(p and p % align == 0, f"{f.__name__} alignment {align}")
        libc.free(p)
out = vp()
check(libc.posix_memalign(ctypes.byref(out), 24, 100) == 22, "posix_memalign EINVAL")
p = libc.valloc(10)
check(p % 4096 == 0, "valloc page-aligned")
libc.free(p)
p = libc.pvalloc(5000)
check(p % 4096 == 0 and libc.malloc_usable_size(p) >= 8192, "pvalloc rounds to pages")
libc.free(p)
print("c api ok")
