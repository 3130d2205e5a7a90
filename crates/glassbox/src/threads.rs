//! Thread counts, and the allocator setting the programs share (`tune_allocator`). The library
//! never changes the process environment; a program that embeds it (the `glassbox` binary, the
//! benches, the Python module) calls `candle_env` once at start, before it starts threads, and
//! sets what it returns.
//!
//! Why: candle parallelises large elementwise ops on a pool of spinning worker threads apart
//! from the threads that run the products; on a 2-core machine those workers take cores from
//! the products (path patching ran 1.7× slower with them). `CANDLE_NUM_THREADS=1` runs those
//! ops on the calling thread. candle's matmul also asks for its thread count on every call and,
//! without `RAYON_NUM_THREADS`, counts the physical cores by reading `/proc/cpuinfo` each time
//! (2 % of a Taylor attribution); setting it to the size rayon's pool has changes nothing but
//! the reading.

use std::sync::OnceLock;

use crate::error::{Error, Result};

static KERNEL_THREADS: OnceLock<usize> = OnceLock::new();

/// The environment variables (name, value) that glassbox's programs set before they start
/// threads, for those the user has not set already: `CANDLE_NUM_THREADS=1` and
/// `RAYON_NUM_THREADS` = the number of cores, rayon's default.
pub fn candle_env() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        v.push(("CANDLE_NUM_THREADS", "1".to_string()));
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // rayon's own default, computed without starting rayon's pool.
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        v.push(("RAYON_NUM_THREADS", n.to_string()));
    }
    v
}

/// Keeps freed memory for reuse instead of handing it back to the system at once (glibc's
/// malloc on Linux; elsewhere nothing). By default glibc maps every allocation above a
/// threshold afresh and returns the top of its heap as soon as 128 KB are free there; a long
/// prompt's forward and backward allocate and free megabytes per op, so the system zeroed
/// fresh pages and flushed the other core's address translations on every product (the
/// backward product at 1,000 token rows ran at 15–36 GFLOP/s, 76–96 with this). Sets the
/// mapping threshold to 32 MB (glibc's largest) and the trim threshold to 128 MB. Skipped
/// when `GLIBC_TUNABLES` names a malloc setting (the user's choice wins). Programs call it once
/// at start, as `candle_env`; calling it again does nothing.
pub fn tune_allocator() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes the allocator's parameters (under its own lock); it is
        // safe to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        }
    });
}

/// Sets how many threads the product kernels split each product over (default: rayon's
/// thread count, i.e. `RAYON_NUM_THREADS` or the number of cores). Call it before the first
/// forward pass; afterwards the pool exists and a different count is an error.
pub fn set_kernel_threads(n: usize) -> Result<()> {
    if n == 0 || n > 1024 {
        return Err(Error::Invalid(format!("{n} kernel threads; give 1 to 1024")));
    }
    let got = *KERNEL_THREADS.get_or_init(|| n);
    if got != n {
        return Err(Error::Invalid(format!("the kernels already run on {got} threads; set the count before the first forward pass")));
    }
    Ok(())
}

/// The product kernels' thread count.
pub(crate) fn kernel_threads() -> usize {
    *KERNEL_THREADS.get_or_init(|| rayon::current_num_threads().max(1))
}
