/* Drives libcoalesce.so through its C ABI the way PyTorch and C users do. Run by
 * tests/c_abi.rs, which also checks what it prints, on the simulated backend
 * (COALESCE_BACKEND=sim) and on the CUDA backend (COALESCE_BACKEND=cuda) over the CPU stand-in
 * for libcuda (crates/cuda-standin, first on LD_LIBRARY_PATH).
 *
 *   abi_test SNAPSHOT_PATH     the full run; prints "STATS <phase> <json>" lines and "OK"
 *   abi_test --config-error    expects the pool to refuse a bad environment cleanly
 *
 * Streams: the program uses three, numbered 0 to 2. On the simulated backend any value names
 * a stream, so stream n is the value n. The CUDA backend hands streams to the driver, which
 * needs real ones: with ABI_TEST_CUDA_STREAMS=1 the program opens the driver itself
 * (dlopen "libcuda.so.1", cuInit, cuDevicePrimaryCtxRetain, cuCtxSetCurrent), and stream 0 is
 * the null stream while streams 1 and 2 come from cuStreamCreate (non-blocking), as PyTorch's
 * would; they are destroyed at the end.
 */
#include "coalesce.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fputc('\n', stderr);                                           \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

#define MIB ((size_t)1 << 20)
#define THREADS 8
#define OPS_PER_THREAD 2500
#define LIVE_PER_THREAD 48

/* ------------------------------------------------------------------ streams */

static void *cuda_streams[2];
static int use_cuda_streams;
static int on_cuda; /* COALESCE_BACKEND=cuda */

static void *stream(uintptr_t s) {
    if (!use_cuda_streams || s == 0) return (void *)s;
    CHECK(s <= 2, "stream %lu", (unsigned long)s);
    return cuda_streams[s - 1];
}

/* The few driver calls needed to make streams, with their C signatures (CUresult is an int,
 * CUdevice an int, CUcontext and CUstream pointers). */
typedef int (*cu_init_t)(unsigned);
typedef int (*cu_device_get_t)(int *, int);
typedef int (*cu_ctx_retain_t)(void **, int);
typedef int (*cu_ctx_release_t)(int);
typedef int (*cu_ctx_set_current_t)(void *);
typedef int (*cu_stream_create_t)(void **, unsigned);
typedef int (*cu_stream_destroy_t)(void *);

static void *libcuda;
static int cuda_device = -1;

static void *cuda_symbol(const char *name) {
    void *f = dlsym(libcuda, name);
    CHECK(f != NULL, "the CUDA driver lacks %s", name);
    return f;
}

#define CU(call) CHECK((call) == 0, "%s failed", #call)

static void cuda_streams_create(void) {
    libcuda = dlopen("libcuda.so.1", RTLD_NOW);
    CHECK(libcuda != NULL, "dlopen libcuda.so.1: %s", dlerror());
    cu_init_t init;
    cu_device_get_t device_get;
    cu_ctx_retain_t retain;
    cu_ctx_set_current_t set_current;
    cu_stream_create_t create;
    /* POSIX's way of turning dlsym's object pointer into a function pointer. */
    *(void **)&init = cuda_symbol("cuInit");
    *(void **)&device_get = cuda_symbol("cuDeviceGet");
    *(void **)&retain = cuda_symbol("cuDevicePrimaryCtxRetain");
    *(void **)&set_current = cuda_symbol("cuCtxSetCurrent");
    *(void **)&create = cuda_symbol("cuStreamCreate");
    void *ctx = NULL;
    CU(init(0));
    CU(device_get(&cuda_device, 0));
    CU(retain(&ctx, cuda_device));
    CU(set_current(ctx));
    for (int i = 0; i < 2; i++) CU(create(&cuda_streams[i], 1 /* CU_STREAM_NON_BLOCKING */));
    use_cuda_streams = 1;
}

static void cuda_streams_destroy(void) {
    cu_stream_destroy_t destroy;
    cu_ctx_release_t release;
    *(void **)&destroy = cuda_symbol("cuStreamDestroy_v2");
    *(void **)&release = cuda_symbol("cuDevicePrimaryCtxRelease_v2");
    for (int i = 0; i < 2; i++) CU(destroy(cuda_streams[i]));
    CU(release(cuda_device));
    use_cuda_streams = 0;
}

/* ------------------------------------------------------------------ JSON and errors */

static char *stats(void) {
    size_t n = coalesce_stats_json(0, NULL, 0);
    CHECK(n > 2, "stats_json failed");
    char *buf = malloc(n + 1);
    CHECK(coalesce_stats_json(0, buf, n) == n, "too small a buffer still returns the length");
    CHECK(coalesce_stats_json(0, buf, n + 1) == n, "length changed");
    CHECK(buf[n] == '\0' && buf[0] == '{', "not a NUL-terminated object: %s", buf);
    return buf;
}

/* The unsigned number after "key": in a flat JSON object. */
static unsigned long long field(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(json, pattern);
    CHECK(at != NULL, "no %s in %s", key, json);
    return strtoull(at + strlen(pattern), NULL, 10);
}

static unsigned long long stat_of(const char *key) {
    char *json = stats();
    unsigned long long v = field(json, key);
    free(json);
    return v;
}

static void print_stats(const char *phase) {
    char *json = stats();
    printf("STATS %s %s\n", phase, json);
    free(json);
}

static char *last_error(void) {
    size_t n = coalesce_last_error(NULL, 0);
    char *buf = malloc(n + 1);
    CHECK(coalesce_last_error(buf, n + 1) == n, "last_error length changed");
    return buf;
}

static void expect_error(const char *needle) {
    char *e = last_error();
    CHECK(strstr(e, needle) != NULL, "expected \"%s\" in the last error: \"%s\"", needle, e);
    free(e);
    coalesce_clear_error();
}

/* ------------------------------------------------------------------ shadow of live blocks */

/* Every live block of every thread. A thread adds its block after coalesce_malloc returns and
 * removes it before calling coalesce_free, so two overlapping entries mean the pool handed out
 * the same memory twice. */
static struct {
    uintptr_t addr;
    size_t size;
} shadow[THREADS * LIVE_PER_THREAD];
static pthread_mutex_t shadow_lock = PTHREAD_MUTEX_INITIALIZER;

static void shadow_add(int slot, uintptr_t addr, size_t size) {
    pthread_mutex_lock(&shadow_lock);
    for (int i = 0; i < THREADS * LIVE_PER_THREAD; i++) {
        uintptr_t a = shadow[i].addr;
        size_t s = shadow[i].size;
        CHECK(a == 0 || addr + size <= a || a + s <= addr, "block %#lx+%zu overlaps live %#lx+%zu",
              (unsigned long)addr, size, (unsigned long)a, s);
    }
    shadow[slot].addr = addr;
    shadow[slot].size = size;
    pthread_mutex_unlock(&shadow_lock);
}

static void shadow_remove(int slot) {
    pthread_mutex_lock(&shadow_lock);
    shadow[slot].addr = 0;
    shadow[slot].size = 0;
    pthread_mutex_unlock(&shadow_lock);
}

/* ------------------------------------------------------------------ phases */

/* Exact accounting on one stream. Returns the block it leaves live (1000 bytes). */
static void *exact_accounting(void) {
    void *a = coalesce_malloc(1000, 0, stream(0));
    void *b = coalesce_malloc(2048, 0, stream(0));
    void *c = coalesce_malloc(3 * MIB, 0, stream(0));
    CHECK(a && b && c, "malloc failed");
    CHECK((uintptr_t)a % 512 == 0 && (uintptr_t)c % 512 == 0, "not 512-aligned");
    unsigned long long total = 1000 + 2048 + 3 * MIB;
    CHECK(stat_of("requested_bytes") == total, "requested");
    CHECK(stat_of("peak_requested_bytes") == total, "peak requested");
    CHECK(stat_of("allocated_bytes") >= total, "allocated >= requested");
    CHECK(stat_of("reserved_bytes") >= stat_of("allocated_bytes"), "reserved >= allocated");
    CHECK(stat_of("driver_calls") >= 1, "at least one driver call");
    coalesce_free(c, 3 * MIB, 0, stream(0));
    coalesce_free(b, 2048, 0, stream(0));
    CHECK(stat_of("requested_bytes") == 1000, "requested after frees");
    CHECK(stat_of("peak_requested_bytes") == total, "the peak stays");
    CHECK(stat_of("num_allocs") == 3 && stat_of("num_frees") == 2, "counts");
    return a;
}

static void *worker(void *arg) {
    int t = (int)(intptr_t)arg;
    void *s = stream((uintptr_t)(t % 3)); /* several streams: frees are held behind events */
    void *mine[LIVE_PER_THREAD] = {0};
    size_t sizes[LIVE_PER_THREAD] = {0};
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(t + 1);
    for (int op = 0; op < OPS_PER_THREAD; op++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        int i = (int)(rng % LIVE_PER_THREAD);
        int slot = t * LIVE_PER_THREAD + i;
        if (mine[i] == NULL) {
            size_t size = 1 + (size_t)(rng >> 20) % (2 * MIB);
            mine[i] = coalesce_malloc(size, 0, s);
            CHECK(mine[i] != NULL, "thread %d: malloc(%zu) failed", t, size);
            sizes[i] = size;
            shadow_add(slot, (uintptr_t)mine[i], size);
        } else {
            shadow_remove(slot);
            coalesce_free(mine[i], sizes[i], 0, s);
            mine[i] = NULL;
        }
    }
    for (int i = 0; i < LIVE_PER_THREAD; i++) {
        if (mine[i]) {
            shadow_remove(t * LIVE_PER_THREAD + i);
            coalesce_free(mine[i], sizes[i], 0, s);
        }
    }
    return NULL;
}

static void many_threads(void) {
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++)
        CHECK(pthread_create(&threads[t], NULL, worker, (void *)(intptr_t)t) == 0, "spawn");
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    CHECK(stat_of("requested_bytes") == 1000, "only the first block is live: %llu",
          stat_of("requested_bytes"));
    CHECK(stat_of("num_allocs") == stat_of("num_frees") + 1, "every thread freed what it allocated");
    print_stats("threads");
}

static void out_of_memory_under_a_limit(void) {
    CHECK(coalesce_empty_cache(0) == 0, "empty_cache");
    unsigned long long ooms = stat_of("num_ooms");
    CHECK(coalesce_set_memory_limit(0, 64 * MIB) == 0, "set limit");
    coalesce_clear_error();
    void *big = coalesce_malloc(256 * MIB, 0, stream(0));
    CHECK(big == NULL, "256 MiB under a 64 MiB limit must fail");
    expect_error("out of memory on device 0: cannot allocate 268435456 bytes");
    CHECK(stat_of("num_ooms") == ooms + 1, "the OOM is counted");
    void *small = coalesce_malloc(MIB, 0, stream(0));
    CHECK(small != NULL, "the pool keeps working after an OOM");
    CHECK(stat_of("reserved_bytes") <= 64 * MIB, "the limit holds");
    coalesce_free(small, MIB, 0, stream(0));
    CHECK(coalesce_set_memory_limit(0, 0) == 0, "remove the limit");
    big = coalesce_malloc(256 * MIB, 0, stream(0));
    CHECK(big != NULL, "fits without the limit");
    coalesce_free(big, 256 * MIB, 0, stream(0));
    print_stats("oom");
}

static void errors_are_reported(void) {
    CHECK(coalesce_malloc(16, 999, stream(0)) == NULL, "device 999");
    expect_error("device 999 is out of range");
    /* The first device past the count: the backend says so (one device in both runs). */
    CHECK(coalesce_malloc(16, 1, stream(0)) == NULL, "device 1");
    expect_error(on_cuda ? "no CUDA device 1: the driver sees 1 device(s)"
                         : "device 1 is out of range: the simulated backend has 1 device(s)");
    coalesce_free((void *)0x1234, 16, 0, stream(0)); /* reported on stderr */
    expect_error("not a live allocation");
    CHECK(coalesce_dump_snapshot(0, NULL) == -1, "NULL path");
    expect_error("path is NULL");
    CHECK(coalesce_dump_snapshot(0, "/nonexistent/dir/x.csv") == -1, "bad path");
    expect_error("cannot write snapshot /nonexistent/dir/x.csv");
    char tiny[4] = {'x', 'x', 'x', 'x'};
    coalesce_malloc(16, 999, stream(0));
    size_t n = coalesce_last_error(tiny, sizeof tiny);
    CHECK(n > sizeof tiny && tiny[0] == 'x', "a short buffer is left untouched");
    coalesce_clear_error();
    CHECK(coalesce_last_error(NULL, 0) == 0, "cleared");
    coalesce_free(NULL, 0, 0, stream(0));
    CHECK(coalesce_last_error(NULL, 0) == 0, "free(NULL) is a no-op, as in C");
}

static int config_error(void) {
    void *p = coalesce_malloc(16, 0, stream(0));
    CHECK(p == NULL, "a bad environment must refuse to allocate");
    char *e = last_error();
    printf("ERROR %s\n", e);
    free(e);
    CHECK(coalesce_stats_json(0, NULL, 0) == 0, "no pool, no stats");
    return 0;
}

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: abi_test SNAPSHOT_PATH | --config-error");
    if (strcmp(argv[1], "--config-error") == 0) return config_error();
    const char *backend = getenv("COALESCE_BACKEND");
    on_cuda = backend == NULL || strcmp(backend, "cuda") == 0;
    const char *want_streams = getenv("ABI_TEST_CUDA_STREAMS");
    if (want_streams != NULL && strcmp(want_streams, "1") == 0) cuda_streams_create();
    void *kept = exact_accounting();
    many_threads();
    out_of_memory_under_a_limit();
    errors_are_reported();
    CHECK(coalesce_dump_snapshot(0, argv[1]) == 0, "dump_snapshot");
    coalesce_free(kept, 1000, 0, stream(0));
    CHECK(stat_of("requested_bytes") == 0, "all freed");
    CHECK(coalesce_empty_cache(0) == 0 && stat_of("reserved_bytes") == 0, "empty_cache returns all");
    print_stats("final");
    if (use_cuda_streams) cuda_streams_destroy();
    puts("OK");
    return 0;
}
