//! Matrix products for the skinny shapes of interpretability work: a few dozen token rows
//! against large weight matrices. `gemm` (behind candle's matmul) packs the whole weight for
//! every call, which costs more than the product itself at 15 rows; these kernels stream each
//! weight row once, keep the token rows in cache, and split the weight across threads.
//! Quantized weights (`quant::QMatrix`) are streamed as their blocks and dequantized on the
//! way, a few rows at a time into a buffer in cache. x86-64 with AVX2, FMA and F16C only;
//! callers fall back to candle's matmul elsewhere (and the loader then keeps f32 weights).

use candle_core::quantized::GgmlDType;

use crate::model::quant::QMatrix;

/// Whether the kernels beat `gemm` for `m` token rows against an `n × k` weight: up to 256
/// rows for layer-sized weights, up to 32 rows for vocabulary-sized ones (where `gemm`'s
/// packing pays off). Measured with `cargo run --release -p glassbox --example mm`.
pub fn preferred(m: usize, n: usize) -> bool {
    available() && (m <= 32 || (m <= 256 && n <= 8192))
}

/// Whether the kernels run: the CPU has AVX2, FMA and F16C, and `GLASSBOX_KERNELS` is not
/// `portable` (which runs candle's portable products everywhere, as on CPUs without them;
/// `.ci/run` runs the test suite both ways).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_kernels() && std::env::var("GLASSBOX_KERNELS").as_deref() != Ok("portable"))
}

pub(crate) fn cpu_has_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn threads() -> usize {
    crate::threads::kernel_threads()
}

/// Streams of work running at once under `concurrently`.
static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether two streams run at once: each product's parts then run one after another on its
/// caller's thread (each stream keeps its own core busy). The parts stay the same, so the
/// figures do not depend on which way they ran.
fn streams_running() -> bool {
    STREAMS.load(std::sync::atomic::Ordering::Relaxed) >= 2
}

/// Runs `a` on a new thread and `b` on this one, at once. While both run, each product and
/// fused op runs on its caller's thread alone: the two streams keep two cores busy, where one
/// stream alternates split products with serial steps that leave a core idle. When either
/// finishes, the other's products run on all the threads again. The figures are the same bit
/// for bit either way (a product is cut into the same parts, summed in the same order).
pub fn concurrently<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    use std::sync::atomic::Ordering::Relaxed;
    /// Counts its stream out when dropped (a panic included).
    struct Stream;
    impl Drop for Stream {
        fn drop(&mut self) {
            STREAMS.fetch_sub(1, Relaxed);
        }
    }
    STREAMS.fetch_add(2, Relaxed);
    let a = std::sync::Mutex::new(Some(a));
    let take_a = || a.lock().ok().and_then(|mut a| a.take());
    let (ra, rb) = std::thread::scope(|scope| {
        let handle = std::thread::Builder::new().spawn_scoped(scope, || {
            let _stream = Stream;
            take_a().map(|a| a())
        });
        let rb = {
            let _stream = Stream;
            b()
        };
        let ra = match handle {
            Ok(h) => match h.join() {
                Ok(ra) => ra,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            // The system would not start a thread: the first stream's counter was never
            // taken, so release it here; `a` runs below on this thread.
            Err(_) => {
                STREAMS.fetch_sub(1, Relaxed);
                None
            }
        };
        (ra, rb)
    });
    let ra = match ra {
        Some(ra) => ra,
        None => match take_a() {
            Some(a) => a(),
            None => unreachable_stream(),
        },
    };
    (ra, rb)
}

/// `a` was taken by its thread, which then returned nothing: impossible (it returns `a`'s
/// value or panics, and a panic is resumed above).
fn unreachable_stream<A>() -> A {
    unreachable!("the first stream's closure ran without a result")
}

/// `f` over `items`, in two streams (`concurrently`): the even-indexed items on a second
/// thread, the odd ones on this one. The results come back in the items' order. Fewer than
/// two items run here alone.
pub fn map_in_two_streams<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 {
        return items.iter().map(f).collect();
    }
    let stream = |first: usize| items.iter().skip(first).step_by(2).map(&f).collect::<Vec<R>>();
    let (even, odd) = concurrently(|| stream(0), || stream(1));
    let (mut even, mut odd) = (even.into_iter(), odd.into_iter());
    (0..items.len()).filter_map(|i| if i % 2 == 0 { even.next() } else { odd.next() }).collect()
}

/// The kernels' own pool: one worker fewer than the parts, since the calling thread runs the
/// first part. (Sharing rayon's global pool left one of its workers spinning on a core the
/// product needed.) `None` where the system would not start the threads: the parts then run
/// one after another on the calling thread, with the same figures.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads().saturating_sub(1).max(1))
            .thread_name(|i| format!("glassbox-kernel-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (both row-major). Requires `available()`.
pub fn x_wt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(cpu_has_kernels() && x.len() == m * k && w.len() == n * k);
    by_columns(m, n, &|j0, j1, y| {
        // Safety: every part writes only columns j0..j1 of y.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx::x_wt_cols(avx::Fwd { x: x.as_ptr(), w: w.as_ptr(), y, m, k, n }, (j0, j1))
        }
    })
}

/// An `m × n` output whose columns are split into one range per thread (ranges rounded to the
/// 4-row blocks so each part writes its own columns): `cols(j0, j1, y)` fills columns j0..j1.
fn by_columns(m: usize, n: usize, cols: &(dyn Fn(usize, usize, *mut f32) + Sync)) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let parts = threads().min(n.div_ceil(64)).max(1);
    let per = n.div_ceil(parts).div_ceil(4) * 4;
    let yp = SendPtr(y.as_mut_ptr());
    let run = |t: usize| {
        let (j0, j1) = (t * per, ((t + 1) * per).min(n));
        if j0 < j1 {
            cols(j0, j1, yp.get());
        }
    };
    in_parts(parts, &run);
    y
}

/// An `m × k` sum over the `n` weight rows, split into one range of rows per thread:
/// `rows(j0, j1, acc)` adds rows j0..j1's share into its own zeroed `acc`; the parts are summed.
fn by_rows(m: usize, n: usize, k: usize, rows: &(dyn Fn(usize, usize, *mut f32) + Sync)) -> Vec<f32> {
    let parts = threads().min(n.div_ceil(64)).max(1);
    let per = n.div_ceil(parts);
    let mut partial: Vec<Vec<f32>> = (0..parts).map(|_| vec![0f32; m * k]).collect();
    let ptrs: Vec<SendPtr> = partial.iter_mut().map(|acc| SendPtr(acc.as_mut_ptr())).collect();
    let run = |t: usize| rows(t * per, ((t + 1) * per).min(n), ptrs[t].get());
    in_parts(parts, &run);
    let mut out = partial.pop().unwrap_or_else(|| vec![0f32; m * k]);
    for p in partial {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Runs `run(0..parts)`: part 0 on the calling thread, the others on the kernels' pool. (With
/// `rayon::scope` a caller outside the pool hands the whole body to a worker and sleeps until
/// it is done, a wake-up and a hand-off for every product.)
fn in_parts(parts: usize, run: &(dyn Fn(usize) + Sync)) {
    let pool = match pool() {
        Some(pool) if parts > 1 && !streams_running() => pool,
        _ => {
            (0..parts).for_each(run);
            return;
        }
    };
    pool.in_place_scope(|s| {
        for t in 1..parts {
            s.spawn(move |_| run(t));
        }
        run(0);
    });
}

/// Runs `f(start, end)` over `0..n` in one range per thread, each of at least `min` items
/// (one range when `n < 2 min`), the first on the calling thread. For the fused ops' rows and
/// heads; any CPU.
pub fn for_ranges(n: usize, min: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let parts = threads().min(n / min.max(1)).max(1);
    let per = n.div_ceil(parts);
    in_parts(parts, &|t| {
        let (a, b) = (t * per, ((t + 1) * per).min(n));
        if a < b {
            f(a, b);
        }
    });
}

/// `out[i] = exp(−x[i])`, eight at a time (Cephes' polynomial: relative error below 2ε; inputs
/// are clamped to [−88, 87], which changes no sigmoid or SiLU in f32). Requires `available()`.
pub fn exp_neg(x: &[f32], out: &mut [f32]) {
    assert!(cpu_has_kernels() && out.len() == x.len());
    // Safety: `out` holds as many floats as `x`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx::exp_neg(x.as_ptr(), out.as_mut_ptr(), x.len())
    }
}

/// `dx[m, k] = g[m, n] · w[n, k]` (both row-major). Requires `available()`.
pub fn g_w(g: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert!(cpu_has_kernels() && g.len() == m * n && w.len() == n * k);
    by_rows(m, n, k, &|j0, j1, acc| {
        #[cfg(target_arch = "x86_64")]
        // Safety: acc is this part's own m×k buffer; g and w are read-only.
        unsafe {
            avx::g_w_rows(avx::Bwd { g: g.as_ptr(), acc, m, n, k }, avx::Rows::F32(w.as_ptr()), (j0, j1))
        }
    })
}

/// One row of `format` blocks to f32 with the vector kernels, bit for bit as candle's
/// `to_float` (the same products and differences, rounded in the same order; no fused
/// multiply-adds where candle rounds twice). `false` for formats without a kernel here
/// (the caller then runs candle's). Requires `cpu_has_kernels()`; `src` must hold exactly
/// the blocks of `out.len()` values.
pub(crate) fn dequant_row(format: GgmlDType, src: &[u8], out: &mut [f32]) -> bool {
    assert!(cpu_has_kernels());
    let (block, bytes) = (format.block_size(), format.type_size());
    let fits = |b: usize, t: usize| b == block && t == bytes && out.len().is_multiple_of(b) && src.len() == out.len() / b * t;
    #[cfg(target_arch = "x86_64")]
    // Safety: each arm runs only when `src` holds the blocks of exactly `out.len()` values of
    // its format (`fits`: 34, 22, 144 and 210 bytes for 32, 32, 256 and 256 values).
    unsafe {
        match format {
            GgmlDType::Q4_1 if fits(32, 20) => avx::dequant_q41_row(src.as_ptr(), out.as_mut_ptr(), out.len()),
            GgmlDType::Q8_0 if fits(32, 34) => avx::dequant_q80_row(src.as_ptr(), out.as_mut_ptr(), out.len()),
            GgmlDType::Q5_0 if fits(32, 22) => avx::dequant_q50_row(src.as_ptr(), out.as_mut_ptr(), out.len()),
            GgmlDType::Q4K if fits(256, 144) => avx::dequant_q4k_row(src.as_ptr(), out.as_mut_ptr(), out.len()),
            GgmlDType::Q6K if fits(256, 210) => avx::dequant_q6k_row(src.as_ptr(), out.as_mut_ptr(), out.len()),
            _ => return false,
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (fits, src, out);
        false
    }
}

/// `x_wt` for a quantized weight (`n = q.rows`, `k = q.cols`): each part dequantizes four
/// weight rows at a time into a buffer and multiplies them as `x_wt` does, so the figures
/// are bit for bit those of `x_wt` on the dequantized weight. Any `m`.
pub fn x_wt_q(x: &[f32], q: &QMatrix, m: usize) -> Vec<f32> {
    let (k, n) = (q.cols(), q.rows());
    assert!(cpu_has_kernels() && x.len() == m * k);
    by_columns(m, n, &|j0, j1, y| {
        // Safety: every part writes only columns j0..j1 of y.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx::x_wt_cols_q(avx::Fwd { x: x.as_ptr(), w: std::ptr::null(), y, m, k, n }, q, (j0, j1))
        }
    })
}

/// `g_w` for a quantized weight (`n = q.rows`, `k = q.cols`), bit for bit as on the
/// dequantized one: Q4_1 blocks are dequantized into the product's panels as it goes; other
/// formats a block of rows at a time into a buffer that the f32 product then reads.
pub fn g_w_q(g: &[f32], q: &QMatrix, m: usize) -> Vec<f32> {
    let (n, k) = (q.rows(), q.cols());
    assert!(cpu_has_kernels() && g.len() == m * n);
    by_rows(m, n, k, &|j0, j1, acc| {
        #[cfg(target_arch = "x86_64")]
        // Safety: acc is this part's own m×k buffer; g and q are read-only.
        unsafe {
            if q.format() == GgmlDType::Q4_1 {
                avx::g_w_rows(avx::Bwd { g: g.as_ptr(), acc, m, n, k }, avx::Rows::Q41(q.bytes().as_ptr(), q.row_bytes()), (j0, j1))
            } else {
                avx::g_w_rows_q(avx::Bwd { g: g.as_ptr(), acc, m, n, k }, q, (j0, j1))
            }
        }
    })
}

struct SendPtr(*mut f32);
impl SendPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::QMatrix;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// A forward product's operands, `y[m, n] = x[m, k] · w[n, k]ᵀ`, row-major, as raw
    /// pointers (the sizes checked by the caller; `w` may be a base only some rows are inside).
    #[derive(Clone, Copy)]
    pub struct Fwd {
        pub x: *const f32,
        pub w: *const f32,
        pub y: *mut f32,
        pub m: usize,
        pub k: usize,
        pub n: usize,
    }

    /// Columns `j0..j1` of `y = x · wᵀ`: blocks of 3 token rows × 4 weight rows. With many
    /// token rows (more than `MB`), panels of `JP` weight rows pass over `MB` token rows at a
    /// time, which then stay in cache (the same sums either way).
    ///
    /// # Safety
    /// AVX2 and FMA are there; `p` holds valid pointers for its sizes; no other part writes
    /// columns `j0..j1` of `y`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn x_wt_cols(p: Fwd, (j0, j1): (usize, usize)) {
        if p.m > MB {
            let mut jp = j0;
            while jp < j1 {
                let je = (jp + JP).min(j1);
                let mut i0 = 0;
                while i0 < p.m {
                    let i1 = (i0 + MB).min(p.m);
                    cols(p, (i0, i1), (jp, je), std::ptr::null());
                    i0 = i1;
                }
                jp = je;
            }
            return;
        }
        cols(p, (0, p.m), (j0, j1), p.w.wrapping_add(8 * p.k));
    }

    /// Columns `j0..j1` of `y` over token rows `i0..i1`: four columns at a time, then the rest.
    /// `pf` (or null) is the weight row block to prefetch while the first four pass.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn cols(p: Fwd, rows: (usize, usize), (j0, j1): (usize, usize), pf: *const f32) {
        let mut j = j0;
        while j + 4 <= j1 {
            // While the first token rows pass over these weight rows, the block of four after
            // the next is fetched into L2 (the rows are contiguous).
            let ahead = if !pf.is_null() && j + 12 <= j1 { p.w.add((j + 8) * p.k) } else { std::ptr::null() };
            four_rows(p, rows, j, ahead);
            j += 4;
        }
        tail_rows(p, rows, (j, j1));
    }

    /// Columns `j..j + 4` of `y = x · wᵀ` (weight row c at `w + c k`) over token rows
    /// `i0..i1`, 3 token rows × 4 weight rows at a time: 12 accumulators, three token vectors
    /// and one weight vector fill the 16 AVX registers; 7 loads per 12 FMAs. `pf` (or null) is
    /// prefetched during the first pass.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn four_rows(p: Fwd, (i0, i1): (usize, usize), j: usize, pf: *const f32) {
        let mut i = i0;
        while i < i1 {
            let pf = if i == i0 { pf } else { std::ptr::null() };
            match i1 - i {
                1 => block::<1>(p, i, j, pf),
                2 => block::<2>(p, i, j, pf),
                _ => block::<3>(p, i, j, pf),
            }
            i += (i1 - i).min(3);
        }
    }

    /// Columns `j0..j1` (fewer than four) of `y = x · wᵀ` over token rows `i0..i1`, plain loops.
    unsafe fn tail_rows(p: Fwd, (i0, i1): (usize, usize), (j0, j1): (usize, usize)) {
        let k = p.k;
        for jj in j0..j1 {
            for i in i0..i1 {
                let mut s = 0f32;
                for t in 0..k {
                    s += *p.x.add(i * k + t) * *p.w.wrapping_add(jj * k + t);
                }
                *p.y.add(i * p.n + jj) = s;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const MR: usize>(p: Fwd, i: usize, j: usize, pf: *const f32) {
        let Fwd { x, w, y, k, n, .. } = p;
        let k8 = k / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; MR];
        // `wrapping_add`: the quantized path passes a base that only these rows are inside.
        let wr = [w.wrapping_add(j * k), w.wrapping_add((j + 1) * k), w.wrapping_add((j + 2) * k), w.wrapping_add((j + 3) * k)];
        let mut kk = 0;
        while kk < k8 {
            if !pf.is_null() {
                // 4 k floats over k / 8 steps: two lines per step.
                _mm_prefetch::<_MM_HINT_T1>(pf.add(4 * kk) as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(pf.add(4 * kk + 16) as *const i8);
            }
            let mut xv = [_mm256_setzero_ps(); MR];
            for (r, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add((i + r) * k + kk));
            }
            for (c, row) in wr.iter().enumerate() {
                let wv = _mm256_loadu_ps(row.add(kk));
                for (r, a) in acc.iter_mut().enumerate() {
                    a[c] = _mm256_fmadd_ps(xv[r], wv, a[c]);
                }
            }
            kk += 8;
        }
        for (r, a) in acc.iter().enumerate() {
            for c in 0..4 {
                let mut s = hsum(a[c]);
                for t in k8..k {
                    s += *x.add((i + r) * k + t) * *wr[c].add(t);
                }
                *y.add((i + r) * n + j + c) = s;
            }
        }
    }

    /// Weight rows per block of the backward product.
    const JB: usize = 96;

    /// A backward product's operands, `acc[m, k] += g[m, n] · w[n, k]` (the weight given
    /// apart, as `Rows`), as raw pointers (the sizes checked by the caller).
    #[derive(Clone, Copy)]
    pub struct Bwd {
        pub g: *const f32,
        pub acc: *mut f32,
        pub m: usize,
        pub n: usize,
        pub k: usize,
    }

    /// Where the backward product reads its weight rows.
    #[derive(Clone, Copy)]
    pub enum Rows {
        F32(*const f32),
        /// Q4_1 blocks, `row_bytes` per row.
        Q41(*const u8, usize),
    }

    /// `acc += g[:, j0..j1] · w[j0..j1, :]` (see `rows_block`), weight rows in blocks of `JB`.
    /// For f32 rows, columns past the last multiple of 32 are summed in place (Q4_1 rows have
    /// none).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn g_w_rows(b: Bwd, rows: Rows, (j0, j1): (usize, usize)) {
        let Bwd { g, acc, m, n, k } = b;
        let (base, row_bytes) = match rows {
            Rows::F32(w) => (w as *const u8, k * 4),
            Rows::Q41(q, row_bytes) => (q, row_bytes),
        };
        let k32 = k / 32 * 32;
        let mut jb = j0;
        while jb < j1 {
            let je = (jb + JB).min(j1);
            // The next block's rows (contiguous) are prefetched on the way.
            let next_bytes = ((je + JB).min(j1) - je) * row_bytes;
            rows_block(b, &rows, (jb, je), (base.wrapping_add(je * row_bytes), next_bytes));
            if let Rows::F32(w) = rows {
                for r in 0..m {
                    for j in jb..je {
                        let gv = *g.add(r * n + j);
                        for t in k32..k {
                            *acc.add(r * k + t) += gv * *w.wrapping_add(j * k + t);
                        }
                    }
                }
            }
            jb = je;
        }
    }

    /// Weight rows `jb..je` of `acc += g · w`, over the columns up to the last multiple of 32,
    /// 32 columns at a time: those columns of the block's rows are copied (or dequantized)
    /// into two panels of 16 (`[2][JB][16]`, 12 KB, in L1), and every token row passes over
    /// each panel, in even groups of up to 6 rows. Prefetches `next_bytes` bytes from `next`
    /// on the way.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_block(b: Bwd, rows: &Rows, (jb, je): (usize, usize), (next, next_bytes): (*const u8, usize)) {
        let Bwd { m, k, .. } = b;
        let mut panels = [0f32; 2 * JB * 16];
        let pp = panels.as_mut_ptr();
        let blocks = k / 32;
        let per_block = next_bytes.div_ceil(64).div_ceil(blocks.max(1));
        let mut cursor = 0;
        for kb in 0..blocks {
            for _ in 0..per_block {
                if cursor < next_bytes {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(cursor) as *const i8);
                    cursor += 64;
                }
            }
            for j in jb..je {
                let dst = pp.add((j - jb) * 16);
                // Each row's columns a few blocks ahead are fetched on the way (the first
                // block of rows had no earlier block to fetch them).
                match *rows {
                    Rows::F32(w) => {
                        let src = w.wrapping_add(j * k + 32 * kb);
                        if kb + 2 < blocks {
                            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(64) as *const i8);
                            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(80) as *const i8);
                        }
                        for h in 0..2 {
                            _mm256_storeu_ps(dst.add(h * JB * 16), _mm256_loadu_ps(src.add(16 * h)));
                            _mm256_storeu_ps(dst.add(h * JB * 16 + 8), _mm256_loadu_ps(src.add(16 * h + 8)));
                        }
                    }
                    Rows::Q41(q, row_bytes) => {
                        let src = q.add(j * row_bytes + kb * 20);
                        if kb + 3 < blocks {
                            _mm_prefetch::<_MM_HINT_T0>(src.add(60) as *const i8);
                        }
                        dequant_q41(src, dst, 32, JB * 16)
                    }
                }
            }
            for h in 0..2 {
                let panel = pp.add(h * JB * 16);
                let kc = 32 * kb + 16 * h;
                // Token rows in groups of at most 6, as even as possible (15 = 5 + 5 + 5): a
                // group of r rows keeps 2r accumulators, enough to hide the FMA latency.
                let groups = m.div_ceil(6);
                let mut i = 0;
                for gi in 0..groups {
                    let mr = (m - i) / (groups - gi) + usize::from(!(m - i).is_multiple_of(groups - gi));
                    match mr {
                        1 => chunk::<1>(b, panel, i, kc, (jb, je)),
                        2 => chunk::<2>(b, panel, i, kc, (jb, je)),
                        3 => chunk::<3>(b, panel, i, kc, (jb, je)),
                        4 => chunk::<4>(b, panel, i, kc, (jb, je)),
                        5 => chunk::<5>(b, panel, i, kc, (jb, je)),
                        _ => chunk::<6>(b, panel, i, kc, (jb, je)),
                    }
                    i += mr;
                }
            }
        }
    }

    /// Weight rows dequantized at a time by `x_wt_cols_q` (a panel of f32 rows in L2).
    const JP: usize = 32;
    /// Token rows multiplied against a panel at a time (kept in L2 while the panel passes).
    const MB: usize = 96;

    /// Columns `j0..j1` of `y = x · wᵀ` for quantized weight rows: each panel of `JP` rows is
    /// dequantized into a buffer (exactly as candle dequantizes), then multiplied as in
    /// `x_wt_cols`, `MB` token rows at a time so that those rows stay in cache while every
    /// group of four panel rows passes over them. The weight stream from memory is the blocks'
    /// bits per weight, not 32. Each output is the same sum as `x_wt_cols` computes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn x_wt_cols_q(p: Fwd, q: &QMatrix, (j0, j1): (usize, usize)) {
        let (m, k) = (p.m, p.k);
        with_scratch(JP * k, |scratch| {
            let (bytes, row_bytes) = (q.bytes().as_ptr(), q.row_bytes());
            let mut jp = j0;
            while jp < j1 {
                let rows = (j1 - jp).min(JP);
                q.dequantize_rows(jp, jp + rows, &mut scratch[..rows * k]);
                // The next panel's bytes (contiguous) arrive while this one is multiplied.
                let next = bytes.wrapping_add((jp + rows) * row_bytes);
                let next_bytes = (j1 - jp - rows).min(JP) * row_bytes;
                let mut b = 0;
                while b < next_bytes {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(b) as *const i8);
                    b += 64;
                }
                // A base such that row j is at `base + j k` (only rows jp..jp + rows are read).
                let panel = Fwd { w: scratch.as_ptr().wrapping_sub(jp * k), ..p };
                let mut i0 = 0;
                while i0 < m {
                    let i1 = (i0 + MB).min(m);
                    cols(panel, (i0, i1), (jp, jp + rows), std::ptr::null());
                    i0 = i1;
                }
                jp += rows;
            }
        })
    }

    /// `acc += g[:, j0..j1] · w[j0..j1, :]` for quantized weight rows other than Q4_1: each
    /// block of `JB` rows is dequantized into a buffer (in L2) that `g_w_rows` then reads as
    /// f32 rows, in the same blocks as on the f32 weight (so the same sums, bit for bit).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn g_w_rows_q(b: Bwd, q: &QMatrix, (j0, j1): (usize, usize)) {
        let k = b.k;
        with_scratch(JB * k, |scratch| {
            let mut jb = j0;
            while jb < j1 {
                let je = (jb + JB).min(j1);
                q.dequantize_rows(jb, je, &mut scratch[..(je - jb) * k]);
                let base = scratch.as_ptr().wrapping_sub(jb * k);
                g_w_rows(b, Rows::F32(base), (jb, je));
                jb = je;
            }
        })
    }

    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Runs `f` on this thread's dequantization buffer of at least `len` floats (kept between
    /// calls: a fresh one of this size costs page faults and zeroing every product).
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        })
    }

    /// `out[i] = exp(−x[i])` for `i < n`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_neg(x: *const f32, out: *mut f32, n: usize) {
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(out.add(i), exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_loadu_ps(x.add(i)))));
            i += 8;
        }
        if i < n {
            let mut buf = [0f32; 8];
            for (b, j) in buf.iter_mut().zip(i..n) {
                *b = -*x.add(j);
            }
            let mut res = [0f32; 8];
            _mm256_storeu_ps(res.as_mut_ptr(), exp8(_mm256_loadu_ps(buf.as_ptr())));
            for (r, j) in res.iter().zip(i..n) {
                *out.add(j) = *r;
            }
        }
    }

    /// `exp` of eight floats: `x = n ln 2 + r`, a degree-6 polynomial in `r`, times `2ⁿ`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
        // ln 2 in two parts, so that `x − n ln 2` is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
    }

    /// One row of `k` weights from Q4_1 blocks, contiguous at `dst`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q41_row(src: *const u8, dst: *mut f32, k: usize) {
        dequant_q41(src, dst, k, 16)
    }

    /// One row of `k` weights from Q4_1 blocks (20 bytes: f16 scale `d`, f16 minimum `m`,
    /// 16 bytes of nibbles; element `j` is the low nibble of byte `j`, element `j + 16` the
    /// high one): `w = q·d + m`, bit for bit what candle's dequantization gives (`q·d` is
    /// exact in f32, so the fused and the separate forms round alike). Each run of 16
    /// weights goes `stride` floats after the previous one (16: a contiguous row).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dequant_q41(src: *const u8, dst: *mut f32, k: usize, stride: usize) {
        let mask = _mm_set1_epi8(0x0F);
        for b in 0..k / 32 {
            let blk = src.add(b * 20);
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let d = _mm256_set1_ps(_mm_cvtss_f32(dm));
            let mn = _mm256_set1_ps(_mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)));
            let qs = _mm_loadu_si128(blk.add(4) as *const __m128i);
            let lo = _mm_and_si128(qs, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
            for (h, v) in [(0, lo), (1, hi)] {
                let out = dst.add((2 * b + h) * stride);
                let a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                let c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
                _mm256_storeu_ps(out, _mm256_fmadd_ps(a, d, mn));
                _mm256_storeu_ps(out.add(8), _mm256_fmadd_ps(c, d, mn));
            }
        }
    }

    /// An f16 at `p` (unaligned) as f32, exactly.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// Stores `scale · v` for the 8 signed bytes in the low half of `bytes`, rounded once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_i8x8(dst: *mut f32, bytes: __m128i, scale: f32) {
        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        _mm256_storeu_ps(dst, _mm256_mul_ps(v, _mm256_set1_ps(scale)));
    }

    /// The 32 signed bytes of `v` times `scales[c / 2]` (scales per 16 values), rounded once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_i8x32(dst: *mut f32, v: __m256i, scales: [f32; 2]) {
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        store_i8x8(dst, lo, scales[0]);
        store_i8x8(dst.add(8), _mm_srli_si128::<8>(lo), scales[0]);
        store_i8x8(dst.add(16), hi, scales[1]);
        store_i8x8(dst.add(24), _mm_srli_si128::<8>(hi), scales[1]);
    }

    /// Q8_0 (34 bytes: f16 `d`, 32 signed bytes): `q · d`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q80_row(src: *const u8, dst: *mut f32, k: usize) {
        for b in 0..k / 32 {
            let blk = src.add(b * 34);
            let d = f16_at(blk);
            let q = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            store_i8x32(dst.add(32 * b), q, [d, d]);
        }
    }

    /// Q5_0 (22 bytes: f16 `d`, 32 high bits, 16 bytes of nibbles; value `j` is the low nibble
    /// of byte `j` with high bit `j`, value `j + 16` the high nibble with high bit `j + 16`):
    /// `(q − 16) · d`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q50_row(src: *const u8, dst: *mut f32, k: usize) {
        let nib = _mm_set1_epi8(0x0F);
        // Byte e of the broadcast high bits picks byte e / 8 of the word, then its bit e % 8.
        let spread = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
        let bit = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
        for b in 0..k / 32 {
            let blk = src.add(b * 22);
            let d = f16_at(blk);
            let qh = i32::from_le_bytes([*blk.add(2), *blk.add(3), *blk.add(4), *blk.add(5)]);
            let bytes = _mm256_or_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(qh), spread), bit);
            let high = _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi8(-1)), _mm256_set1_epi8(0x10));
            let qs = _mm_loadu_si128(blk.add(6) as *const __m128i);
            let low = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(qs), nib), _mm_and_si128(qs, nib));
            let q = _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(16));
            store_i8x32(dst.add(32 * b), q, [d, d]);
        }
    }

    /// Q4_K (144 bytes: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales and minima, 128 bytes of
    /// nibbles): in each run of 64 values, the low nibbles of 32 bytes with scale `d·sc₁` and
    /// minimum `dmin·m₁`, then their high nibbles with `d·sc₂`, `dmin·m₂`; `(d·sc)·q − dmin·m`
    /// rounded after the product and after the difference, as candle does.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q4k_row(src: *const u8, dst: *mut f32, k: usize) {
        let nib = _mm256_set1_epi8(0x0F);
        for b in 0..k / 256 {
            let blk = src.add(b * 144);
            let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
            let sc = std::slice::from_raw_parts(blk.add(4), 12);
            for j in 0..4 {
                let qs = _mm256_loadu_si256(blk.add(16 + 32 * j) as *const __m256i);
                let halves = [_mm256_and_si256(qs, nib), _mm256_and_si256(_mm256_srli_epi16::<4>(qs), nib)];
                for (h, q) in halves.into_iter().enumerate() {
                    let (s, m) = scale_min_k4(2 * j + h, sc);
                    let (scale, min) = (_mm256_set1_ps(d * s as f32), _mm256_set1_ps(dmin * m as f32));
                    let out = dst.add(256 * b + 64 * j + 32 * h);
                    let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
                    for (c, part) in [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)].into_iter().enumerate() {
                        let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                        _mm256_storeu_ps(out.add(8 * c), _mm256_sub_ps(_mm256_mul_ps(scale, v), min));
                    }
                }
            }
        }
    }

    /// candle's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` of a Q4_K
    /// (or Q5_K) block's 12 scale bytes.
    #[inline]
    fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
        }
    }

    /// Q6_K (210 bytes: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 signed
    /// scales, f16 `d`): in each half of 128 values, four runs of 32 (low or high nibbles of
    /// `ql[0..32]` or `ql[32..64]`, with bits 0–1, 2–3, 4–5 or 6–7 of `qh`), `(d·sc)·(q − 32)`
    /// with a scale per 16 values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q6k_row(src: *const u8, dst: *mut f32, k: usize) {
        let (nib, two) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
        for b in 0..k / 256 {
            let blk = src.add(b * 210);
            let d = f16_at(blk.add(208));
            for n in 0..2 {
                let ql0 = _mm256_loadu_si256(blk.add(64 * n) as *const __m256i);
                let ql1 = _mm256_loadu_si256(blk.add(64 * n + 32) as *const __m256i);
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * n) as *const __m256i);
                let high = |shift: i32| -> __m256i {
                    let bits = match shift {
                        0 => qh,
                        2 => _mm256_srli_epi16::<2>(qh),
                        4 => _mm256_srli_epi16::<4>(qh),
                        _ => _mm256_srli_epi16::<6>(qh),
                    };
                    _mm256_slli_epi16::<4>(_mm256_and_si256(bits, two))
                };
                let runs = [
                    _mm256_or_si256(_mm256_and_si256(ql0, nib), high(0)),
                    _mm256_or_si256(_mm256_and_si256(ql1, nib), high(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), nib), high(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), nib), high(6)),
                ];
                for (r, q) in runs.into_iter().enumerate() {
                    let sc = |i: usize| d * (*blk.add(192 + 8 * n + i) as i8) as f32;
                    let q = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
                    store_i8x32(dst.add(256 * b + 128 * n + 32 * r), q, [sc(2 * r), sc(2 * r + 1)]);
                }
            }
        }
    }

    /// Columns `kc..kc + 16` of `MR` token rows from one panel (row j's 16 weights at
    /// `panel + (j − jb) 16`): 2·MR accumulators, 2 weight vectors, 1 broadcast.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chunk<const MR: usize>(b: Bwd, panel: *const f32, i: usize, kc: usize, (jb, je): (usize, usize)) {
        let Bwd { g, acc, n, k, .. } = b;
        let mut a = [[_mm256_setzero_ps(); 2]; MR];
        for (r, ar) in a.iter_mut().enumerate() {
            for (c, v) in ar.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(acc.add((i + r) * k + kc + 8 * c));
            }
        }
        for j in jb..je {
            let wp = panel.add((j - jb) * 16);
            let wv = [_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8))];
            for (r, ar) in a.iter_mut().enumerate() {
                let gv = _mm256_set1_ps(*g.add((i + r) * n + j));
                for (v, w) in ar.iter_mut().zip(&wv) {
                    *v = _mm256_fmadd_ps(gv, *w, *v);
                }
            }
        }
        for (r, ar) in a.iter().enumerate() {
            for (c, v) in ar.iter().enumerate() {
                _mm256_storeu_ps(acc.add((i + r) * k + kc + 8 * c), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 200) as f32 / 100.0 - 1.0).collect()
    }

    /// Quantized weights of every format: the products on the blocks bit for bit equal to the
    /// products on the dequantized weight (odd row counts, both thread splits, a row count
    /// past one block of the backward product).
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn quantized_products_match_the_dequantized_weight() {
        use candle_core::quantized::QTensor;
        use candle_core::{DType, Device, Tensor};
        assert!(cpu_has_kernels(), "this CPU lacks AVX2, FMA or F16C: the kernels cannot be tested here");
        for format in crate::model::quant::FORMATS {
            let b = format.block_size();
            for &(n, k, m) in &[(7, 2 * b, 3), (130, 3 * b, 15), (259, 576 / b * b + b, 16), (12, b, 1), (70, 2 * b, 200)] {
                let w = Tensor::from_vec(data(n * k, 5), (n, k), &Device::Cpu).unwrap();
                let qt = QTensor::quantize(&w, format).unwrap();
                let q = QMatrix::from_bytes(format, n, k, &qt.data().unwrap()).unwrap();
                let deq = q.to_tensor(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let x = data(m * k, 6);
                let g = data(m * n, 7);
                assert_eq!(x_wt_q(&x, &q, m), x_wt(&x, &deq, m, k, n), "x_wt {format:?} {m}x{k}x{n}");
                assert_eq!(g_w_q(&g, &q, m), g_w(&g, &deq, m, n, k), "g_w {format:?} {m}x{n}x{k}");
            }
        }
    }

    /// The vectorised `exp(−x)` within a relative 2ε of the exact value wherever the result is a
    /// normal float, and clamped (never NaN, never an overflow to infinity) outside.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn exp_neg_is_within_two_epsilon() {
        assert!(cpu_has_kernels(), "this CPU lacks AVX2, FMA or F16C: the kernels cannot be tested here");
        let x: Vec<f32> = (0..200_001).map(|i| (i as f32 - 100_000.0) / 1000.0).chain([f32::MAX, f32::MIN, 0.0, -0.0]).collect();
        let mut out = vec![0f32; x.len()];
        exp_neg(&x[..x.len() - 3], &mut out[..x.len() - 3]); // an odd length: the tail path
        exp_neg(&x[x.len() - 3..], &mut out[x.len() - 3..]);
        for (&x, &e) in x.iter().zip(&out) {
            let want = (-(x as f64)).exp();
            if (-87.0..=88.0).contains(&-(x as f64)) {
                let ulp = (want as f32).abs() * f32::EPSILON;
                assert!((e as f64 - want).abs() <= 2.0 * ulp as f64, "exp(-{x}) = {e}, want {want}");
            } else {
                assert!(e.is_finite() && e > 0.0, "exp(-{x}) = {e}");
            }
        }
    }

    /// Two streams at once give the products bit for bit what one stream gives (the parts are
    /// the same, run one after another), and both streams' results come back.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn concurrent_streams_give_the_same_figures() {
        assert!(cpu_has_kernels(), "this CPU lacks AVX2, FMA or F16C: the kernels cannot be tested here");
        let (m, n, k) = (15, 1024, 96);
        let (g, w) = (data(m * n, 3), data(n * k, 4));
        let alone = g_w(&g, &w, m, n, k);
        let x = data(m * k, 5);
        let y = x_wt(&x, &w, m, k, n);
        let (a, b) = concurrently(|| g_w(&g, &w, m, n, k), || (g_w(&g, &w, m, n, k), x_wt(&x, &w, m, k, n)));
        assert_eq!(a, alone);
        assert_eq!(b.0, alone);
        assert_eq!(b.1, y);
    }

    /// Both kernels against a plain triple loop (in f64), on shapes that exercise every tail:
    /// odd token rows, weight rows not a multiple of 4, widths not a multiple of 8 or 32.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn kernels_match_naive_products() {
        assert!(cpu_has_kernels(), "this CPU lacks AVX2, FMA or F16C: the kernels cannot be tested here");
        for &(m, k, n) in &[(1, 8, 4), (2, 37, 5), (3, 64, 130), (5, 100, 67), (15, 576, 259), (64, 33, 9), (37, 800, 13), (300, 70, 23), (9, 13, 7)] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let y = x_wt(&x, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let r: f64 = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum();
                    assert!((y[i * n + j] as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()), "x_wt {m}x{k}x{n} at ({i},{j})");
                }
            }
            let g = data(m * n, 3);
            let dx = g_w(&g, &w, m, n, k);
            for i in 0..m {
                for t in 0..k {
                    let r: f64 = (0..n).map(|j| g[i * n + j] as f64 * w[j * k + t] as f64).sum();
                    assert!((dx[i * k + t] as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()), "g_w {m}x{n}x{k} at ({i},{t})");
                }
            }
        }
    }
}
