/*
 * coalesce.h: the coalesce GPU memory pool as a C library (libcoalesce.so).
 *
 * One pool per device, created on first use and configured from the environment:
 *   COALESCE_BACKEND        cuda (default) or sim (a simulated device, for tests without a GPU)
 *   COALESCE_POLICY         allocation policy, PyTorch option syntax: name[:key:value,...]
 *                           (default: coalesce where available, else bfc-classic)
 *   COALESCE_MEMORY_LIMIT   cap in bytes (21474836480) or as a fraction of the device (0.9)
 *   COALESCE_TRACE_ENTRIES  events kept for snapshots (default 100000)
 *   COALESCE_SIM_CAPACITY   bytes of the simulated device (default 80 GiB)
 *
 * Contract:
 * - Every function is thread-safe and may be called from any thread.
 * - No function aborts or lets a Rust panic escape; failures are reported by the return value
 *   (NULL, 0 or -1) and coalesce_last_error() then describes them, per thread.
 * - Streams are `cudaStream_t` / `CUstream` values: 0 (the legacy default stream) or a live
 *   stream of the device's primary context (PyTorch passes exactly these). Another value is
 *   undefined behaviour inside the CUDA driver. The simulated backend accepts any value.
 * - A block freed on stream S is reused on another stream only once S has passed the free.
 * - Text out-parameters follow one rule: the functions return the text's length n; the text
 *   and a terminating NUL are written only when len > n, so a caller can size its buffer
 *   with a first call (buf = NULL, len = 0) and repeat.
 */
#ifndef COALESCE_H
#define COALESCE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* PyTorch's CUDAPluggableAllocator pair:
 *   torch.cuda.memory.CUDAPluggableAllocator(path, "coalesce_malloc", "coalesce_free") */

/* At least `size` bytes on `device` for use on `stream`, 512-byte aligned. NULL when memory
 * runs out (after the pool released its cached memory and retried once) or on error. */
void *coalesce_malloc(size_t size, int device, void *stream);

/* Frees `ptr` from coalesce_malloc on `device`; `stream` orders the free (PyTorch passes the
 * allocation stream). `size` is ignored; NULL is ignored. A pointer the pool did not hand out
 * is reported on stderr and in coalesce_last_error(). */
void coalesce_free(void *ptr, size_t size, int device, void *stream);

/* The pool's stats as a JSON object with at least reserved_bytes, peak_reserved_bytes,
 * allocated_bytes, peak_allocated_bytes, requested_bytes, peak_requested_bytes, num_ooms,
 * num_alloc_retries, driver_calls (total), driver_calls_by_kind, largest_free_block,
 * memory_limit (null if none). Returns the JSON's length, 0 on error. */
size_t coalesce_stats_json(int device, char *buf, size_t len);

/* Returns cached memory to the driver (completing frees held for stream ordering, which
 * synchronizes the device if there are any). 0 on success, -1 on error. */
int coalesce_empty_cache(int device);

/* Caps the memory the pool reserves at `bytes`; 0 removes the cap. Memory already reserved
 * is kept; growth beyond the cap fails like a full device. 0 on success, -1 on error. */
int coalesce_set_memory_limit(int device, size_t bytes);

/* Writes segments, live blocks and recent events to `path` as a CSV trace
 * (action,addr,size,stream) that `coalesce replay path` replays. 0 on success, -1 on error. */
int coalesce_dump_snapshot(int device, const char *path);

/* The calling thread's last error message; returns its length (0: none). */
size_t coalesce_last_error(char *buf, size_t len);

/* Clears the calling thread's last error. */
void coalesce_clear_error(void);

/* For PyTorch users (crates/capi/src/exports_torch.rs). */

/* Writes a snapshot of `device`'s pool to `path` in PyTorch's snapshot pickle format (as
 * torch.cuda.memory._dump_snapshot writes: segments with their blocks and states,
 * device_traces, allocator_settings). https://pytorch.org/memory_viz and
 * torch.cuda._memory_viz open it; `coalesce replay path` replays it to the pool's state.
 * 0 on success, -1 on error. */
int coalesce_dump_snapshot_pickle(int device, const char *path);

/* Resets the peaks of `device`'s stats (peak requested, allocated and reserved bytes) to the
 * current values, as torch.cuda.reset_peak_memory_stats. 0 on success, -1 on error. */
int coalesce_reset_peak_stats(int device);

#ifdef __cplusplus
}
#endif

#endif /* COALESCE_H */
