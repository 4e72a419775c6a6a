#!/usr/bin/env python3
"""Calibrates the stand-in against a real driver: runs the same edge-case driver calls through
ctypes and prints `probe code` lines. Run it once on a GPU machine and once with the stand-in
first on LD_LIBRARY_PATH (coalesce_cuda_standin_loader::loader_dir()), then diff the outputs.

    python3 crates/cuda-standin/scripts/probe.py > real.txt                       # on a GPU
    LD_LIBRARY_PATH=target/debug/deps/cuda-standin python3 .../probe.py > standin.txt

Probes that would poison a real context (illegal addresses) or crash it are left out: on
driver 580 a cuMemMap of an unknown handle segfaults, and a map running past its reservation
succeeds (the stand-in refuses both). probe-h100-580.txt holds the answers of an H100 with
driver 580.159.04; the stand-in's tests compare against it.
"""
import ctypes as C
import sys

lib = C.CDLL("libcuda.so.1")
u64, sz, vp = C.c_ulonglong, C.c_size_t, C.c_void_p


class Loc(C.Structure):
    _fields_ = [("type_", C.c_uint), ("id", C.c_int)]


class AllocFlags(C.Structure):
    _fields_ = [("compressionType", C.c_ubyte), ("gpuDirectRDMACapable", C.c_ubyte),
                ("usage", C.c_ushort), ("reserved", C.c_ubyte * 4)]


class Prop(C.Structure):
    _fields_ = [("type_", C.c_uint), ("requestedHandleTypes", C.c_uint), ("location", Loc),
                ("win32HandleMetaData", vp), ("allocFlags", AllocFlags)]


class Access(C.Structure):
    _fields_ = [("location", Loc), ("flags", C.c_uint)]


def fn(name, *args):
    f = getattr(lib, name)
    f.argtypes = list(args)
    f.restype = C.c_int
    return f


cuInit = fn("cuInit", C.c_uint)
cuDeviceGet = fn("cuDeviceGet", C.POINTER(C.c_int), C.c_int)
cuDeviceGetCount = fn("cuDeviceGetCount", C.POINTER(C.c_int))
retain = fn("cuDevicePrimaryCtxRetain", C.POINTER(vp), C.c_int)
set_current = fn("cuCtxSetCurrent", vp)
ctx_sync = fn("cuCtxSynchronize")
mem_alloc = fn("cuMemAlloc_v2", C.POINTER(u64), sz)
mem_free = fn("cuMemFree_v2", u64)
granularity = fn("cuMemGetAllocationGranularity", C.POINTER(sz), C.POINTER(Prop), C.c_uint)
reserve = fn("cuMemAddressReserve", C.POINTER(u64), sz, sz, u64, u64)
address_free = fn("cuMemAddressFree", u64, sz)
create = fn("cuMemCreate", C.POINTER(u64), sz, C.POINTER(Prop), u64)
release = fn("cuMemRelease", u64)
mem_map = fn("cuMemMap", u64, sz, sz, u64, u64)
unmap = fn("cuMemUnmap", u64, sz)
set_access = fn("cuMemSetAccess", u64, sz, C.POINTER(Access), sz)
event_create = fn("cuEventCreate", C.POINTER(vp), C.c_uint)
event_record = fn("cuEventRecord", vp, vp)
event_query = fn("cuEventQuery", vp)
stream_create = fn("cuStreamCreate", C.POINTER(vp), C.c_uint)
stream_wait = fn("cuStreamWaitEvent", vp, vp, C.c_uint)
stream_sync = fn("cuStreamSynchronize", vp)
error_string = fn("cuGetErrorString", C.c_int, C.POINTER(C.c_char_p))


def out(name, code):
    print(f"{name} {code}")
    sys.stdout.flush()


def prop(device=0):
    p = Prop()
    p.type_ = 1
    p.location.type_ = 1
    p.location.id = device
    return p


def rw(device=0):
    a = Access()
    a.location.type_ = 1
    a.location.id = device
    a.flags = 3
    return a


p64, h = u64(), u64()
n = C.c_int()
out("before_init_mem_alloc", mem_alloc(C.byref(p64), 4096))
out("before_init_device_count", cuDeviceGetCount(C.byref(n)))
out("init", cuInit(0))
dev = C.c_int()
out("device_get_99", cuDeviceGet(C.byref(dev), 99))
cuDeviceGet(C.byref(dev), 0)
ctx = vp()
retain(C.byref(ctx), dev.value)
set_current(None)
out("no_ctx_mem_alloc", mem_alloc(C.byref(p64), 4096))
ev = vp()
out("no_ctx_event_create", event_create(C.byref(ev), 2))
out("no_ctx_ctx_synchronize", ctx_sync())
g = sz()
out("no_ctx_granularity", granularity(C.byref(g), C.byref(prop()), 0))
G = g.value
out("no_ctx_reserve", reserve(C.byref(p64), 2 * G, 0, 0, 0))
if p64.value:
    address_free(p64.value, 2 * G)
out("no_ctx_create", create(C.byref(h), 2 * G, C.byref(prop()), 0))
if h.value:
    release(h.value)
set_current(ctx)
stream = vp()
stream_create(C.byref(stream), 1)
event_create(C.byref(ev), 2)
out("event_query_never_recorded", event_query(ev))
out("stream_create_flags_2", stream_create(C.byref(vp()), 2))
set_current(None)
out("no_ctx_event_record_null_stream", event_record(ev, None))
out("no_ctx_event_record_stream", event_record(ev, stream))
out("no_ctx_stream_wait_null_stream", stream_wait(None, ev, 0))
out("no_ctx_stream_wait_stream", stream_wait(stream, ev, 0))
out("no_ctx_stream_sync", stream_sync(stream))
out("no_ctx_event_query", event_query(ev))
set_current(ctx)
out("granularity_bad_device", granularity(C.byref(g), C.byref(prop(99)), 0))
out("granularity_bad_option", granularity(C.byref(g), C.byref(prop()), 7))
out("reserve_size_not_multiple", reserve(C.byref(p64), G + 4096, 0, 0, 0))
out("reserve_alignment_3g", reserve(C.byref(p64), G, 3 * G, 0, 0))
out("reserve_zero", reserve(C.byref(p64), 0, 0, 0, 0))
out("create_size_not_multiple", create(C.byref(h), G + 1, C.byref(prop()), 0))
out("create_zero", create(C.byref(h), 0, C.byref(prop()), 0))
va = u64()
reserve(C.byref(va), 8 * G, 0, 0, 0)
va = va.value
gone = u64()
reserve(C.byref(gone), 2 * G, 0, 0, 0)
address_free(gone.value, 2 * G)
h1, h2, h3 = u64(), u64(), u64()
create(C.byref(h1), 2 * G, C.byref(prop()), 0)
create(C.byref(h2), 2 * G, C.byref(prop()), 0)
create(C.byref(h3), 2 * G, C.byref(prop()), 0)
h1, h2, h3 = h1.value, h2.value, h3.value
out("map_misaligned", mem_map(va + 4096, 2 * G, 0, h1, 0))
out("map_offset_page", mem_map(va, G, 4096, h1, 0))
out("map_bigger_than_handle", mem_map(va, 4 * G, 0, h1, 0))
out("map_not_reserved", mem_map(gone.value, 2 * G, 0, h1, 0))
out("map_offset_granule", mem_map(va + 6 * G, G, G, h3, 0))
out("unmap_offset_granule", unmap(va + 6 * G, G))
out("map", mem_map(va, 2 * G, 0, h1, 0))
out("map_again", mem_map(va, 2 * G, 0, h1, 0))
out("map_overlapping", mem_map(va + G, 2 * G, 0, h2, 0))
out("map_second_alias", mem_map(va + 4 * G, 2 * G, 0, h1, 0))
out("map_adjacent", mem_map(va + 2 * G, 2 * G, 0, h2, 0))
a = rw()
out("set_access_sub_range", set_access(va, G, C.byref(a), 1))
out("set_access_two_mappings", set_access(va, 4 * G, C.byref(a), 1))
out("set_access_hole", set_access(va, 8 * G, C.byref(a), 1))
out("set_access_misaligned", set_access(va + 4096, G, C.byref(a), 1))
out("set_access_zero_count", set_access(va, 2 * G, C.byref(a), 0))
out("unmap_partial", unmap(va, G))
out("unmap_cuts_two", unmap(va + G, 2 * G))
out("address_free_mapped", address_free(va, 8 * G))
out("address_free_part", address_free(va, 2 * G))
out("release_mapped", release(h1))
out("release_twice", release(h1))
out("map_released", mem_map(va + 6 * G, 2 * G, 0, h1, 0))
out("unmap_two_adjacent", unmap(va, 4 * G))
out("unmap_alias", unmap(va + 4 * G, 2 * G))
out("unmap_nothing", unmap(va, 2 * G))
release(h2)
release(h3)
out("address_free", address_free(va, 8 * G))
out("address_free_twice", address_free(va, 8 * G))
out("mem_alloc_zero", mem_alloc(C.byref(p64), 0))
mem_alloc(C.byref(p64), 10000)
out("mem_free_inside", mem_free(p64.value + 8))
out("mem_free", mem_free(p64.value))
out("mem_free_twice", mem_free(p64.value))
out("mem_free_null", mem_free(0))
s = C.c_char_p()
out("error_string_unknown_code", error_string(12345, C.byref(s)))
