//! The products: `y = x · wᵀ` (forward) and `dx = g · w` (backward), on f32 weights and on
//! quantized blocks (dequantized on the way, the figures bit for bit those on the
//! dequantized weight).

use candle_core::quantized::GgmlDType;

use super::cpu_has_kernels;
use super::schedule::{by_columns, by_rows};
use crate::model::quant::QMatrix;

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` (both row-major). Requires `available()`.
pub fn x_wt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(cpu_has_kernels() && x.len() == m * k && w.len() == n * k);
    by_columns(m, n, &|j0, j1, y| {
        // SAFETY: every part writes only columns j0..j1 of y.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx::x_wt_cols(avx::Fwd { x: x.as_ptr(), w: w.as_ptr(), y, m, k, n }, (j0, j1))
        }
    })
}

/// `dx[m, k] = g[m, n] · w[n, k]` (both row-major). Requires `available()`.
pub fn g_w(g: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert!(cpu_has_kernels() && g.len() == m * n && w.len() == n * k);
    by_rows(m, n, k, &|j0, j1, acc| {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: acc is this part's own m×k buffer; g and w are read-only.
        unsafe {
            let b = avx::Bwd { g: g.as_ptr(), acc, m, n, k };
            if m > avx::MT {
                avx::tiled_rows(b, w.as_ptr(), (j0, j1))
            } else {
                avx::g_w_rows(b, avx::Rows::F32(w.as_ptr()), (j0, j1))
            }
        }
    })
}

/// `x_wt` for a quantized weight (`n = q.rows`, `k = q.cols`): each part dequantizes four
/// weight rows at a time into a buffer and multiplies them as `x_wt` does, so the figures
/// are bit for bit those of `x_wt` on the dequantized weight. Any `m`.
pub fn x_wt_q(x: &[f32], q: &QMatrix, m: usize) -> Vec<f32> {
    let (k, n) = (q.cols(), q.rows());
    assert!(cpu_has_kernels() && x.len() == m * k);
    by_columns(m, n, &|j0, j1, y| {
        // SAFETY: every part writes only columns j0..j1 of y.
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
        // SAFETY: acc is this part's own m×k buffer; g and q are read-only.
        unsafe {
            if m > avx::MT {
                avx::tiled_rows_q(avx::Bwd { g: g.as_ptr(), acc, m, n, k }, q, (j0, j1))
            } else if q.format() == GgmlDType::Q4_1 {
                avx::g_w_rows(avx::Bwd { g: g.as_ptr(), acc, m, n, k }, avx::Rows::Q41(q.bytes().as_ptr(), q.row_bytes()), (j0, j1))
            } else {
                avx::g_w_rows_q(avx::Bwd { g: g.as_ptr(), acc, m, n, k }, q, (j0, j1))
            }
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::QMatrix;
    use crate::model::kernels::dequant::avx::dequant_q41;

    /// The sum of the eight lanes of `v`.
    ///
    /// # Safety
    /// AVX2 is there.
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
    ///
    /// # Safety
    /// As `x_wt_cols`, for token rows `rows` (inside `0..p.m`); `pf` is null or any address
    /// (a prefetch never faults).
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
    ///
    /// # Safety
    /// As `cols`: weight rows `j..j + 4` and token rows `i0..i1` are inside `p`'s operands.
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
    ///
    /// # Safety
    /// Weight rows `j0..j1` and token rows `i0..i1` are inside `p`'s operands; no other part
    /// writes those columns of `y`.
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

    /// Columns `j..j + 4` of `MR` token rows from `i`: `MR × 4` accumulators over `k`.
    ///
    /// # Safety
    /// AVX2 and FMA are there; token rows `i..i + MR` and weight rows `j..j + 4` are inside
    /// `p`'s operands; `pf` is null or any address.
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
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `b` holds valid pointers for its sizes; `rows` holds
    /// weight rows `j0..j1` (`k` floats or `k / 32` Q4_1 blocks each); no other part writes `acc`.
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
    ///
    /// # Safety
    /// As `g_w_rows`, for rows `jb..je` (at most `JB`); `next` is any address (prefetches only).
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
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `p.x` and `p.y` are valid for `m × k` and `m × n` floats
    /// with `n = q.rows()`, `k = q.cols()`; no other part writes columns `j0..j1` of `y`.
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

    /// Token rows from which the backward product runs as blocked tile products (`tiled_rows`);
    /// below it the panels of `g_w_rows`, which need no dequantized copy of the weight.
    pub(super) const MT: usize = 96;

    /// `acc += g[:, j0..j1] · w[j0..j1, :]` for many token rows, from f32 weight rows at `w`
    /// (row j at `w + j k`), as a blocked product: for each block of 256 columns and 96 token
    /// rows (an accumulator block that stays in L2), every panel of 96 weight rows is multiplied
    /// in by the tile kernel (6 token rows × 16 columns in registers).
    ///
    /// # Safety
    /// AVX2 and FMA are there; `b` holds valid pointers for its sizes; `w` holds weight rows
    /// `j0..j1` (`k` floats each); no other part writes `acc`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tiled_rows(b: Bwd, w: *const f32, (j0, j1): (usize, usize)) {
        const KC: usize = 256;
        const MC: usize = 96;
        let Bwd { g, acc, m, n, k } = b;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                for jb in (j0..j1).step_by(JB) {
                    let rows = JB.min(j1 - jb);
                    // SAFETY: token rows i0..i0 + mc, weight rows jb..jb + rows and columns
                    // k0..k0 + kc are inside the operands (row strides n, k and k).
                    unsafe { crate::model::kernels::tile::avx::gemm_acc((mc, kc, rows), (g.add(i0 * n + jb), n, 1), (w.wrapping_add(jb * k + k0), k), (acc.add(i0 * k + k0), k)) };
                }
            }
        }
    }

    /// `tiled_rows` for a quantized weight: rows `j0..j1` dequantized first into the thread's
    /// scratch buffer (so the same sums as on the dequantized weight, bit for bit).
    ///
    /// # Safety
    /// As `tiled_rows`, with `n = q.rows()`, `k = q.cols()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn tiled_rows_q(b: Bwd, q: &QMatrix, (j0, j1): (usize, usize)) {
        let k = b.k;
        with_scratch((j1 - j0) * k, |rows| {
            q.dequantize_rows(j0, j1, rows);
            // SAFETY: `rows` holds weight rows j0..j1 from `base + j0 k`.
            unsafe { tiled_rows(b, rows.as_ptr().wrapping_sub(j0 * k), (j0, j1)) }
        })
    }

    /// `acc += g[:, j0..j1] · w[j0..j1, :]` for quantized weight rows other than Q4_1: each
    /// block of `JB` rows is dequantized into a buffer (in L2) that `g_w_rows` then reads as
    /// f32 rows, in the same blocks as on the f32 weight (so the same sums, bit for bit).
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `b` holds valid pointers for `n = q.rows()`,
    /// `k = q.cols()`; no other part writes `acc`.
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

    /// Columns `kc..kc + 16` of `MR` token rows from one panel (row j's 16 weights at
    /// `panel + (j − jb) 16`): 2·MR accumulators, 2 weight vectors, 1 broadcast.
    ///
    /// # Safety
    /// AVX2 and FMA are there; token rows `i..i + MR`, columns `kc..kc + 16` and weight rows
    /// `jb..je` are inside `b`'s operands; the panel holds `je − jb` rows of 16 floats.
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
    use crate::model::kernels::test_support::{data, require_kernels};

    /// Quantized weights of every format: the products on the blocks bit for bit equal to the
    /// products on the dequantized weight (odd row counts, both thread splits, a row count
    /// past one block of the backward product).
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn quantized_products_match_the_dequantized_weight() {
        use candle_core::quantized::QTensor;
        use candle_core::{DType, Device, Tensor};
        require_kernels();
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

    /// Both kernels against a plain triple loop (in f64), on shapes that exercise every tail:
    /// odd token rows, weight rows not a multiple of 4, widths not a multiple of 8 or 32.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn kernels_match_naive_products() {
        require_kernels();
        for &(m, k, n) in &[(1, 8, 4), (2, 37, 5), (3, 64, 130), (5, 100, 67), (15, 576, 259), (64, 33, 9), (37, 800, 13), (300, 70, 23), (9, 13, 7)] {
            let x = data(m * k, 1);
            let w = data(n * k, 2);
            let y = x_wt(&x, &w, m, k, n);
            assert_cells_near(&y, m, n, &format!("x_wt {m}x{k}x{n}"), |i, j| (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum());
            let g = data(m * n, 3);
            let dx = g_w(&g, &w, m, n, k);
            assert_cells_near(&dx, m, k, &format!("g_w {m}x{n}x{k}"), |i, t| (0..n).map(|j| g[i * n + j] as f64 * w[j * k + t] as f64).sum());
        }
    }

    /// Every cell `(i, j)` of the `rows × cols` matrix `got` within 1e-4 (relative) of `want(i, j)`.
    fn assert_cells_near(got: &[f32], rows: usize, cols: usize, what: &str, want: impl Fn(usize, usize) -> f64) {
        for i in 0..rows {
            for j in 0..cols {
                let r = want(i, j);
                assert!((got[i * cols + j] as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()), "{what} at ({i},{j})");
            }
        }
    }
}
