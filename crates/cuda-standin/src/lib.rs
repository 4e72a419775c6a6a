//! A CPU stand-in for the CUDA driver (`libcuda`), so that coalesce's CUDA backend, the C
//! library over it and the Python package run, and are tested, on machines without a GPU.
//!
//! It exports every driver function the CUDA backend resolves (see `faults::NAMES`; the
//! backend's list is `SYMBOLS` in `crates/backend/src/cuda/driver.rs`), with the C
//! signatures of `cudarc::driver::sys`, implemented over real host memory so bytes behave as
//! on a GPU: device pointers are host addresses, and a test may write and read through them.
//!
//! # Loading it
//!
//! The library is built as `libcuda_standin.so`, never `libcuda.so`: a file of that name in
//! `target/` would shadow a real driver for every program cargo runs. Its ELF soname is
//! `libcuda.so` (set by `build.rs`). Use the `coalesce-cuda-standin-loader` crate:
//! - **In-process** (Rust tests): `coalesce_cuda_standin_loader::preload()` opens the built
//!   library by absolute path (`RTLD_NOW | RTLD_GLOBAL | RTLD_NODELETE`) before anything opens
//!   a driver. glibc's `dlopen` matches a requested name against the sonames of loaded objects,
//!   so cudarc's later `dlopen("libcuda.so")` returns the stand-in, even on a machine with a
//!   real driver. It checks that this worked and says why not (a driver was already loaded).
//! - **Child processes** (C programs, Python): `coalesce_cuda_standin_loader::loader_dir()`
//!   makes a directory with `libcuda.so` and `libcuda.so.1` symlinks to the built library;
//!   put it first on `LD_LIBRARY_PATH`.
//!
//! A crate that needs the stand-in built adds `coalesce-cuda-standin` as a (dev-)dependency
//! **and never names it**: cargo then builds the cdylib, while rustc links no code of this
//! crate into the test binary (a crate passed with `--extern` is linked only if used). Naming
//! it would put `cuMemMap` and friends into the test binary itself; that is why the loading
//! helpers live in a separate crate that does not depend on this one's code.
//!
//! # Environment
//!
//! Read once, at the first driver call (a malformed value makes `cuInit` fail with
//! `CUDA_ERROR_INVALID_VALUE` and a message on stderr):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `COALESCE_STANDIN_CAPACITY` | bytes per device (`8GiB`, `512MiB`, `1.5G`, `4096`) | 16 GiB |
//! | `COALESCE_STANDIN_GRANULARITY` | VMM granularity, a power of two, a page multiple | 2 MiB |
//! | `COALESCE_STANDIN_DEVICES` | device count (0: `cuInit` fails with `NO_DEVICE`) | 1 |
//! | `COALESCE_STANDIN_STREAM_LAG_MS` | stream work completes this long after it is enqueued | 0 |
//! | `COALESCE_STANDIN_STREAM_LAG_QUERIES` | after each record, this many `cuEventQuery` calls of the event answer `NOT_READY` (a deterministic lag; a synchronize ends it) | 0 |
//! | `COALESCE_STANDIN_FAIL` | `fn:k:CODE[,fn:k:CODE...]`: the k-th call of `fn` fails with `CODE` | none |
//! | `COALESCE_STANDIN_FAIL_RATE` | `fn:p:CODE[,...]`: each call of `fn` fails with probability `p` | none |
//! | `COALESCE_STANDIN_SEED` | seed of the fault-rate generator | 0 |
//! | `COALESCE_STANDIN_LEAK_CHECK` | `1`: print the leak report to stderr at exit; `abort`: also exit with status 86 if something leaked | off |
//! | `COALESCE_STANDIN_STRICT_RELEASE` | `1`: refuse `cuMemRelease` of a mapped handle | off |
//!
//! `CODE` is a name with or without `CUDA_ERROR_` (`OUT_OF_MEMORY`, `UNKNOWN`) or a number.
//!
//! # The contract enforced
//!
//! All codes are the real `CUresult` values, calibrated against an H100 with driver
//! 580.159.04: `scripts/probe.py` makes the same edge-case calls through ctypes against either
//! library, `scripts/probe-h100-580.txt` holds the real driver's answers, and a test checks the
//! stand-in gives the same ones except where it is deliberately stricter (marked below).
//! - Every call but `cuGetErrorString`/`cuGetErrorName`/`cuDriverGetVersion` fails with
//!   `CUDA_ERROR_NOT_INITIALIZED` before `cuInit`. Calls that need a context (`cuMemAlloc`,
//!   `cuMemFree`, `cuMemGetInfo`, `cuCtxSynchronize`, `cuCtxGetDevice`, stream and event
//!   creation, synchronous copies and fills, anything on the default stream) fail with
//!   `CUDA_ERROR_INVALID_CONTEXT` without a current context whose primary context is retained
//!   (as the driver does for `cuEventRecord` and `cuStreamWaitEvent` on the null stream; the
//!   VMM calls and calls on a created stream or an event need none).
//! - Bad pointers and handles: null out-parameters, unknown handles, pointers that are not an
//!   allocation's start, double frees and releases: `CUDA_ERROR_INVALID_VALUE`
//!   (`cuMemFree(0)` succeeds, as on the driver; an unknown handle to `cuMemMap` is refused,
//!   where driver 580 crashes). Unknown streams and events: `CUDA_ERROR_INVALID_HANDLE`. Bad
//!   ordinals: `CUDA_ERROR_INVALID_DEVICE` (`cuMemGetAllocationGranularity` answers for any
//!   ordinal, as the driver does).
//! - `cuMemCreate`, `cuMemAddressReserve`, `cuMemMap`, `cuMemUnmap` and `cuMemSetAccess`
//!   sizes must be non-zero multiples of the granularity, and addresses and alignments
//!   aligned to it (an alignment must be 0 or a power of two): `CUDA_ERROR_INVALID_VALUE`.
//!   `cuMemMap` with a non-zero offset or more bytes than the handle has:
//!   `CUDA_ERROR_NOT_SUPPORTED` (as the driver).
//! - `cuMemMap` maps only over nothing mapped and only inside one reservation (stricter: driver
//!   580 maps past the end of a reservation). `cuMemUnmap` and `cuMemSetAccess` take whole
//!   mappings only, one or several adjacent; a range that cuts one is refused as on the
//!   driver, and so is one with nothing mapped (stricter: driver 580 accepts an unmap where
//!   nothing is mapped). `cuMemAddressFree` takes only a whole reservation with nothing mapped
//!   in it.
//! - Mapped memory is `PROT_NONE` until `cuMemSetAccess`: touching it faults (`SIGSEGV`),
//!   and copies and fills to it fail with `CUDA_ERROR_INVALID_VALUE`.
//! - `cuMemRelease` of a mapped handle is allowed, as the CUDA documentation says: "the
//!   memory allocation will be freed when all outstanding mappings to the memory are
//!   unmapped". The memory (and its capacity) goes at the last unmap; until then the handle
//!   can still be mapped (as on the driver). `COALESCE_STANDIN_STRICT_RELEASE=1` refuses such a release instead, for
//!   code that means never to do it.
//! - `cuMemCreate` and `cuMemAlloc` beyond the device's capacity: `CUDA_ERROR_OUT_OF_MEMORY`.
//!   `cuMemAlloc` charges its size rounded up to the page size. `cuMemGetInfo` and
//!   `cuDeviceTotalMem` report the capacity and what is left.
//! - Streams and events: see the `streams` module. With a lag, `cuEventQuery` returns
//!   `CUDA_ERROR_NOT_READY` until the recorded work completes; the synchronize calls sleep
//!   until it does. Fills run when their stream gets to them, and one that finds its memory
//!   gone is an asynchronous fault (sticky `CUDA_ERROR_ILLEGAL_ADDRESS` from synchronize).
//! - A call failed by fault injection, or refused, changes nothing.
//!
//! # Controls for in-process tests
//!
//! Exported C functions (not counted, never failed):
//! - `int coalesce_standin_fail_nth(const char *fn, uint64_t n, int code)`: the n-th call of
//!   `fn` from now (1: the next) fails with `code`.
//! - `int coalesce_standin_fail_rate(const char *fn, double p, int code, uint64_t seed)`.
//! - `void coalesce_standin_reset(void)`: forgets counts and faults, clears the sticky fault,
//!   restores the environment's lags; live objects stay.
//! - `uint64_t coalesce_standin_calls(const char *fn)`: calls so far (`UINT64_MAX`: unknown).
//! - `int coalesce_standin_set_stream_lag_ms(double ms)`,
//!   `void coalesce_standin_set_stream_lag_queries(uint64_t n)`.
//! - `size_t coalesce_standin_leak_report(char *buf, size_t len)`: the report as JSON
//!   (`handles_not_released`, `mappings_left`, `reservations_not_freed`,
//!   `allocations_not_freed`, `async_faults`, `bytes_in_use`, `primary_context_refs`,
//!   `streams`, `events`, `leaks`), `snprintf`-style.
//! - `uint64_t coalesce_standin_leak_count(void)`.
//!
//! The driver is thread-safe: one mutex guards its state, released while synchronize calls
//! sleep. No panic crosses the C ABI (a caught panic is `CUDA_ERROR_UNKNOWN`).

mod api;
mod classic;
mod codes;
mod config;
mod context;
mod faults;
mod leaks;
mod physical;
mod state;
mod streams;
mod vmm;
