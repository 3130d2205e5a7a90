//! The small products inside an attention tile (`C += A · B` with at most a few hundred rows,
//! columns and terms): the scores `Q Kᵀ`, the weighted values `P V`, and the backward's
//! `dZ Vᵀ`, `Pᵀ dZ`, `dSᵀ Q`, `dS K`. One register-blocked kernel serves them all: `A` is read
//! through any two strides (a transposed tile is just other strides), `B` and `C` are
//! row-major. Blocks of 6 rows × 16 columns keep 12 accumulators in registers while each term
//! loads two vectors of `B` and broadcasts six values of `A`.

/// `A` read through strides: element `(i, t)` at `a[i · rs + t · cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub a: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// `c[i · ldc + j] += Σ_t A(i, t) · b[t · ldb + j]` for `i < m`, `j < n`, `t < kd`.
/// Requires `available()`; panics if an operand is too short for its sizes and strides.
pub fn gemm_acc((m, n, kd): (usize, usize, usize), a: Strided, (b, ldb): (&[f32], usize), (c, ldc): (&mut [f32], usize)) {
    if m == 0 || n == 0 || kd == 0 {
        return;
    }
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(super::cpu_has_kernels(), "tile products need AVX2 and FMA");
    assert!(last(m, a.rs, kd, a.cs) < a.a.len() && last(kd, ldb, n, 1) < b.len() && last(m, ldc, n, 1) < c.len() && n <= ldb && n <= ldc, "tile product: operands too short");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX2 and FMA; every index the kernel reads or writes was bounded
    // above (the largest of each operand is inside it).
    unsafe {
        avx::gemm_acc((m, n, kd), (a.a.as_ptr(), a.rs, a.cs), (b.as_ptr(), ldb), (c.as_mut_ptr(), ldc))
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx {
    use std::arch::x86_64::*;

    /// As `super::gemm_acc`, on raw pointers.
    ///
    /// # Safety
    /// AVX2 and FMA are there; `A(i, t)`, `b[t · ldb + j]` and `c[i · ldc + j]` are valid for
    /// every `i < m`, `j < n`, `t < kd`, and `c` is not read or written elsewhere meanwhile.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_acc((m, n, kd): (usize, usize, usize), a: (*const f32, usize, usize), b: (*const f32, usize), c: (*mut f32, usize)) {
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(6);
            let mut j = 0;
            while j + 16 <= n {
                // SAFETY: rows i..i + mr and columns j..j + 16 are inside the operands.
                unsafe { rows_block::<2>(mr, kd, a, b, c, (i, j)) }
                j += 16;
            }
            if j + 8 <= n {
                // SAFETY: as above, for columns j..j + 8.
                unsafe { rows_block::<1>(mr, kd, a, b, c, (i, j)) }
                j += 8;
            }
            // The last columns (fewer than eight), plain loops.
            for r in i..i + mr {
                for jj in j..n {
                    // SAFETY: row r and column jj are inside the operands.
                    unsafe {
                        let mut s = *c.0.add(r * c.1 + jj);
                        for t in 0..kd {
                            s = (*a.0.add(r * a.1 + t * a.2)).mul_add(*b.0.add(t * b.1 + jj), s);
                        }
                        *c.0.add(r * c.1 + jj) = s;
                    }
                }
            }
            i += mr;
        }
    }

    /// Rows `i..i + mr` (1 to 6), columns `j..j + 8 NV` of `C += A · B`: `block` for that row count.
    ///
    /// # Safety
    /// As `gemm_acc`, for those rows and columns.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_block<const NV: usize>(mr: usize, kd: usize, a: (*const f32, usize, usize), b: (*const f32, usize), c: (*mut f32, usize), ij: (usize, usize)) {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            match mr {
                1 => block::<1, NV>(kd, a, b, c, ij),
                2 => block::<2, NV>(kd, a, b, c, ij),
                3 => block::<3, NV>(kd, a, b, c, ij),
                4 => block::<4, NV>(kd, a, b, c, ij),
                5 => block::<5, NV>(kd, a, b, c, ij),
                _ => block::<6, NV>(kd, a, b, c, ij),
            }
        }
    }

    /// Rows `i..i + MR`, columns `j..j + 8 NV` of `C += A · B`.
    ///
    /// # Safety
    /// As `gemm_acc`, for those rows and columns.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const MR: usize, const NV: usize>(kd: usize, (a, rs, cs): (*const f32, usize, usize), (b, ldb): (*const f32, usize), (c, ldc): (*mut f32, usize), (i, j): (usize, usize)) {
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        // SAFETY: every address below is inside the operands by this function's contract.
        unsafe {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(c.add((i + r) * ldc + j + 8 * v));
                }
            }
            for t in 0..kd {
                let bp = b.add(t * ldb + j);
                let mut bv = [_mm256_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(bp.add(8 * v));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add((i + r) * rs + t * cs));
                    for (x, bv) in row.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(av, *bv, *x);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, x) in row.iter().enumerate() {
                    _mm256_storeu_ps(c.add((i + r) * ldc + j + 8 * v), *x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::test_support::{data, require_kernels};

    /// Every size class (row blocks of 1–6, column blocks of 16 and 8, the last columns) and a
    /// transposed `A`, against a plain loop in f64.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn tile_products_match_a_plain_loop() {
        require_kernels();
        for &(m, n, kd) in &[(1, 1, 1), (6, 16, 3), (7, 24, 5), (13, 29, 64), (64, 64, 64), (5, 7, 9), (64, 256, 33)] {
            for transposed in [false, true] {
                let (rs, cs) = if transposed { (1, m + 3) } else { (kd + 2, 1) };
                let a = data(m * rs + kd * cs + 1, 1);
                let (ldb, ldc) = (n + 5, n + 1);
                let b = data(kd * ldb, 2);
                let c0 = data(m * ldc, 3);
                let mut c = c0.clone();
                gemm_acc((m, n, kd), Strided { a: &a, rs, cs }, (&b, ldb), (&mut c, ldc));
                for i in 0..m {
                    for j in 0..ldc {
                        let want = if j < n { c0[i * ldc + j] as f64 + (0..kd).map(|t| a[i * rs + t * cs] as f64 * b[t * ldb + j] as f64).sum::<f64>() } else { c0[i * ldc + j] as f64 };
                        let got = c[i * ldc + j] as f64;
                        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{m}x{n}x{kd} (transposed {transposed}) at ({i},{j}): {got} vs {want}");
                    }
                }
            }
        }
    }
}
