//! Quantized GGUF blocks to f32 with the vector kernels, bit for bit as candle's
//! `to_float` (Q4_1, Q8_0, Q5_0, Q4_K, Q6_K; the other formats go through candle).

use candle_core::quantized::GgmlDType;

use super::cpu_has_kernels;

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
    // SAFETY: each arm runs only when `src` holds the blocks of exactly `out.len()` values of
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

#[cfg(target_arch = "x86_64")]
pub(super) mod avx {
    use std::arch::x86_64::*;

    /// One row of `k` weights from Q4_1 blocks, contiguous at `dst`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `src` holds `k / 32` blocks of 20 bytes; `dst` is valid
    /// for `k` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequant_q41_row(src: *const u8, dst: *mut f32, k: usize) {
        dequant_q41(src, dst, k, 16)
    }

    /// One row of `k` weights from Q4_1 blocks (20 bytes: f16 scale `d`, f16 minimum `m`,
    /// 16 bytes of nibbles; element `j` is the low nibble of byte `j`, element `j + 16` the
    /// high one): `w = q·d + m`, bit for bit what candle's dequantization gives (`q·d` is
    /// exact in f32, so the fused and the separate forms round alike). Each run of 16
    /// weights goes `stride` floats after the previous one (16: a contiguous row).
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `src` holds `k / 32` blocks; `dst` is valid for the
    /// `k / 16` runs of 16 floats, each `stride` after the last.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::model::kernels) unsafe fn dequant_q41(src: *const u8, dst: *mut f32, k: usize, stride: usize) {
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
    ///
    /// # Safety
    /// F16C is there; `p` is valid for two bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// Stores `scale · v` for the 8 signed bytes in the low half of `bytes`, rounded once.
    ///
    /// # Safety
    /// AVX2 is there; `dst` is valid for 8 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_i8x8(dst: *mut f32, bytes: __m128i, scale: f32) {
        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        _mm256_storeu_ps(dst, _mm256_mul_ps(v, _mm256_set1_ps(scale)));
    }

    /// The 32 signed bytes of `v` times `scales[c / 2]` (scales per 16 values), rounded once.
    ///
    /// # Safety
    /// AVX2 is there; `dst` is valid for 32 floats.
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
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `src` holds `k / 32` blocks of 34 bytes; `dst` is
    /// valid for `k` floats.
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
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `src` holds `k / 32` blocks of 22 bytes; `dst` is
    /// valid for `k` floats.
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
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `src` holds `k / 256` blocks of 144 bytes; `dst` is
    /// valid for `k` floats.
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
    ///
    /// # Safety
    /// AVX2, FMA and F16C are there; `src` holds `k / 256` blocks of 210 bytes; `dst` is
    /// valid for `k` floats.
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
}
