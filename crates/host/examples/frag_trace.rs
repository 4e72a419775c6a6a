//! Traces the benchmark's fragmentation workload through the malloc API, printing the
//! allocator's statistics after every phase (a diagnostic, not a benchmark).
use coalesce_host::malloc;

fn main() {
    let phases: [(usize, usize); 6] = [
        (16, 64),
        (64, 512),
        (512, 4096),
        (4096, 32768),
        (32768, 262144),
        (16, 64),
    ];
    let budget = 160usize << 20;
    let mut x = 42u64;
    let mut rnd = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut survivors = Vec::new();
    for (lo, hi) in phases {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while bytes < budget {
            let size = lo + rnd(hi - lo);
            let p = malloc::malloc(size);
            // SAFETY: fresh block of `size` bytes.
            unsafe { p.write_bytes(1, size) };
            batch.push(p);
            bytes += size;
        }
        for p in batch {
            if rnd(10) == 0 {
                survivors.push(p);
            } else {
                // SAFETY: live block, forgotten here.
                unsafe { malloc::free(p) };
            }
        }
        let s = malloc::stats();
        println!(
            "{lo}-{hi}: rss {} MiB, spans {} ({} MiB), large {} MiB, dirty free {} MiB",
            coalesce_host::os::rss_bytes().unwrap_or(0) >> 20,
            s.spans,
            s.span_bytes >> 20,
            s.large_bytes >> 20,
            s.dirty_free_bytes >> 20
        );
    }
}
