//! Elementwise math in vector registers: `exp(−x)` for sigmoids and SiLU.

use super::cpu_has_kernels;

/// `out[i] = exp(−x[i])`, eight at a time (Cephes' polynomial: relative error below 2ε; inputs
/// are clamped to [−88, 87], which changes no sigmoid or SiLU in f32). Requires `available()`.
pub fn exp_neg(x: &[f32], out: &mut [f32]) {
    assert!(cpu_has_kernels() && out.len() == x.len());
    // SAFETY: `out` holds as many floats as `x`.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        avx::exp_neg(x.as_ptr(), out.as_mut_ptr(), x.len())
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// `out[i] = exp(−x[i])` for `i < n`.
    ///
    /// # Safety
    /// AVX2 and FMA are there; `x` and `out` are valid for `n` floats.
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
    ///
    /// # Safety
    /// AVX2 and FMA are there.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::test_support::require_kernels;

    /// The vectorised `exp(−x)` within a relative 2ε of the exact value wherever the result is a
    /// normal float, and clamped (never NaN, never an overflow to infinity) outside.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn exp_neg_is_within_two_epsilon() {
        require_kernels();
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
}
