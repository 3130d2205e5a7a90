//! Weights kept in their GGUF block formats: a quantized matrix, its rows dequantized on the
//! way into the products (`kernels::x_wt_q`, `kernels::g_w_q`) to exactly the f32 values
//! candle's dequantization gives, so every figure is the same bit for bit as on the f32 copy
//! the loader used to make (which is no longer made: a Q4_K weight takes 4.5 bits a value in
//! memory instead of 32).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType,
};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The block formats kept quantized: every common llama.cpp weight type.
pub const FORMATS: [GgmlDType; 10] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A `rows × cols` matrix in one of `FORMATS`, row-major: each row is `cols / block` blocks.
/// The bytes sit in 8-byte words, so every block is aligned for its struct (candle's block
/// structs need 2; a row's byte length is a multiple of its block's size).
pub struct QMatrix {
    format: GgmlDType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    words: Vec<u64>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {} x {})", self.format, self.rows, self.cols)
    }
}

impl QMatrix {
    /// Whether `format` can be kept quantized.
    pub fn supports(format: GgmlDType) -> bool {
        FORMATS.contains(&format)
    }

    /// Bytes of one row of `cols` values, or `None` unless the format is supported and `cols`
    /// a whole number of its blocks.
    pub fn row_bytes_of(format: GgmlDType, cols: usize) -> Option<usize> {
        let block = format.block_size();
        (Self::supports(format) && cols > 0 && cols.is_multiple_of(block)).then(|| cols / block * format.type_size())
    }

    /// A zeroed matrix, its bytes to be filled by `fill` (with exactly `rows × row_bytes`
    /// bytes). `None` when the format or shape is not supported or the size overflows.
    pub(crate) fn filled(format: GgmlDType, rows: usize, cols: usize, fill: impl FnOnce(&mut [u8]) -> Result<()>) -> Result<Option<QMatrix>> {
        let Some(row_bytes) = Self::row_bytes_of(format, cols) else {
            return Ok(None);
        };
        let Some(total) = rows.checked_mul(row_bytes) else {
            return Ok(None);
        };
        let mut q = QMatrix { format, rows, cols, row_bytes, words: vec![0u64; total.div_ceil(8)] };
        fill(q.bytes_mut())?;
        Ok(Some(q))
    }

    /// A matrix from its blocks (`rows × row_bytes` bytes), or `None` when they do not make one.
    pub fn from_bytes(format: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Option<QMatrix> {
        let want = Self::row_bytes_of(format, cols)?.checked_mul(rows)?;
        if bytes.len() != want {
            return None;
        }
        Self::filled(format, rows, cols, |dst| {
            dst.copy_from_slice(bytes);
            Ok(())
        })
        .ok()
        .flatten()
    }

    /// The block format.
    pub fn format(&self) -> GgmlDType {
        self.format
    }
    /// Rows (a linear map's outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns (a linear map's inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of one row of blocks.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// The blocks, row after row.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold at least rows × row_bytes bytes (`filled`); u8 has no
        // alignment or validity requirement, and the borrow of `self` keeps them alive.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.rows * self.row_bytes) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the unique borrow of `self`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr() as *mut u8, self.rows * self.row_bytes) }
    }

    /// Row `r`'s blocks.
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        &self.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// The matrix of rows `order` (each an index below `rows`), in that order.
    pub fn select_rows(&self, order: &[usize]) -> Result<QMatrix> {
        if let Some(&bad) = order.iter().find(|&&r| r >= self.rows) {
            return Err(Error::Invalid(format!("row {bad} of a {}-row quantized matrix", self.rows)));
        }
        let rb = self.row_bytes;
        let q = Self::filled(self.format, order.len(), self.cols, |dst| {
            for (d, &r) in dst.chunks_exact_mut(rb).zip(order) {
                d.copy_from_slice(self.row(r));
            }
            Ok(())
        })?;
        q.ok_or_else(|| Error::Invalid("a quantized matrix of no rows".into()))
    }

    /// Rows `start..start + len`.
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<QMatrix> {
        let end = start.checked_add(len).filter(|&e| e <= self.rows).ok_or_else(|| Error::Invalid(format!("rows {start}..+{len} of {}", self.rows)))?;
        self.select_rows(&(start..end).collect::<Vec<_>>())
    }

    /// Row `r` as f32 into `out` (`cols` values), exactly as candle dequantizes it.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "dequantize_row: row {r} of {}, {} values for {}", self.rows, out.len(), self.cols);
        let src = self.row(r);
        if super::kernels::cpu_has_kernels() && super::kernels::dequant_row(self.format, src, out) {
            return;
        }
        self.dequantize_row_portable(src, out)
    }

    /// A row by candle's own `to_float` (the reference of the vector kernels).
    fn dequantize_row_portable(&self, src: &[u8], out: &mut [f32]) {
        match self.format {
            GgmlDType::Q4_0 => to_float::<BlockQ4_0>(src, out),
            GgmlDType::Q4_1 => to_float::<BlockQ4_1>(src, out),
            GgmlDType::Q5_0 => to_float::<BlockQ5_0>(src, out),
            GgmlDType::Q5_1 => to_float::<BlockQ5_1>(src, out),
            GgmlDType::Q8_0 => to_float::<BlockQ8_0>(src, out),
            GgmlDType::Q2K => to_float::<BlockQ2K>(src, out),
            GgmlDType::Q3K => to_float::<BlockQ3K>(src, out),
            GgmlDType::Q4K => to_float::<BlockQ4K>(src, out),
            GgmlDType::Q5K => to_float::<BlockQ5K>(src, out),
            GgmlDType::Q6K => to_float::<BlockQ6K>(src, out),
            // `filled` admits only `FORMATS`.
            other => unreachable!("QMatrix in format {other:?}"),
        }
    }

    /// Rows `r0..r1` into `out` (`(r1 − r0) × cols` values).
    pub(crate) fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        for (r, o) in (r0..r1).zip(out.chunks_exact_mut(self.cols)) {
            self.dequantize_row(r, o);
        }
    }

    /// The rows of `ids` as an f32 tensor `[ids.len(), cols]` (an embedding lookup).
    pub fn gather(&self, ids: &[u32]) -> Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            let r = id as usize;
            if r >= self.rows {
                return Err(Error::Invalid(format!("token id {id} is outside the embedding's {} rows", self.rows)));
            }
            self.dequantize_row(r, o);
        }
        Ok(Tensor::from_vec(out, (ids.len(), self.cols), &Device::Cpu)?)
    }

    /// The whole matrix in `dtype` (f32 or f64): a copy, for the methods that read a weight
    /// as a matrix (composition scores, finite-difference checks).
    pub fn to_tensor(&self, dtype: DType) -> Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, self.rows, &mut out);
        Ok(Tensor::from_vec(out, (self.rows, self.cols), &Device::Cpu)?.to_dtype(dtype)?)
    }

    /// Whether every value is finite. A value is a block's f16 scale (and minimum) times small
    /// integers, so it is finite exactly when those f16 fields are (the largest product,
    /// 65504 · 63 · 63, is far inside f32's range): only they are read, not the values.
    pub fn all_finite(&self) -> bool {
        let size = self.format.type_size();
        let fields: &[usize] = match self.format {
            GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K => &[0, 2],
            GgmlDType::Q2K => &[80, 82],
            GgmlDType::Q3K => &[108],
            GgmlDType::Q6K => &[208],
            _ => &[0],
        };
        self.bytes().chunks_exact(size).all(|block| {
            fields.iter().all(|&o| u16::from_le_bytes([block[o], block[o + 1]]) & 0x7c00 != 0x7c00)
        })
    }

    /// The rows reordered as `load::unpermute_rows` reorders a Q or K projection of `n_heads`
    /// heads (llama.cpp's interleaved-rotary permutation undone): new row `(h, a, b)` is old
    /// row `(h, b, a)` over `[n_heads, 2, d_head / 2]`. `None` unless the rows split into
    /// `n_heads` heads of an even size.
    pub fn unpermute_rows(&self, n_heads: usize) -> Option<QMatrix> {
        if n_heads == 0 || !self.rows.is_multiple_of(n_heads) || !(self.rows / n_heads).is_multiple_of(2) {
            return None;
        }
        let d_head = self.rows / n_heads;
        let half = d_head / 2;
        let order: Vec<usize> = (0..n_heads).flat_map(|h| (0..2).flat_map(move |a| (0..half).map(move |b| h * d_head + b * 2 + a))).collect();
        self.select_rows(&order).ok()
    }
}

/// One row's blocks of type `B` to f32, by candle's own `to_float`.
fn to_float<B: GgmlType>(src: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    assert!(
        (src.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>()) && src.len().is_multiple_of(size) && src.len() / size * B::BLCK_SIZE == out.len(),
        "quantized row misaligned or of the wrong length"
    );
    // SAFETY: the pointer is aligned for `B` and the slice holds exactly `len / size` blocks
    // (checked above); candle's block structs are `repr(C)` arrays of integers and f16s, for
    // which every bit pattern is a value; the borrow of `src` outlives the view.
    let blocks = unsafe { std::slice::from_raw_parts(src.as_ptr() as *const B, src.len() / size) };
    B::to_float(blocks, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::test_support::data;
    use candle_core::quantized::QTensor;

    /// Every format: rows dequantize bit for bit as candle's `QTensor::dequantize`; row
    /// selection and the rotary unpermutation equal the same operations on the f32 matrix.
    #[test]
    fn every_format_dequantizes_as_candle_does() {
        for format in FORMATS {
            let (n, k) = (12, 2 * format.block_size());
            let w = Tensor::from_vec(data(n * k, 9), (n, k), &Device::Cpu).unwrap();
            let qt = QTensor::quantize(&w, format).unwrap();
            let q = QMatrix::from_bytes(format, n, k, &qt.data().unwrap()).unwrap();
            let candle = qt.dequantize(&Device::Cpu).unwrap();
            let ours = q.to_tensor(DType::F32).unwrap();
            let (a, b) = (candle.flatten_all().unwrap().to_vec1::<f32>().unwrap(), ours.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{format:?}");
            let picked = q.select_rows(&[3, 0, 11]).unwrap().to_tensor(DType::F32).unwrap();
            let want = candle.index_select(&Tensor::new(&[3u32, 0, 11], &Device::Cpu).unwrap(), 0).unwrap();
            assert_eq!(picked.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap(), "{format:?} rows");
            let un = q.unpermute_rows(3).unwrap().to_tensor(DType::F32).unwrap();
            let loader = crate::model::load::unpermute_rows(&candle, 3).unwrap();
            assert_eq!(un.to_vec2::<f32>().unwrap(), loader.to_vec2::<f32>().unwrap(), "{format:?} unpermute");
            assert!(q.all_finite());
            let g = q.gather(&[5, 5, 1]).unwrap();
            assert_eq!(g.get(0).unwrap().to_vec1::<f32>().unwrap(), candle.get(5).unwrap().to_vec1::<f32>().unwrap());
            assert!(q.gather(&[n as u32]).is_err());
        }
    }

    /// The vector kernels on arbitrary bytes (any scales, any bits; NaN only where candle gives
    /// NaN): bit for bit candle's `to_float`.
    #[test]
    fn vector_dequantization_equals_candle_on_any_bytes() {
        if !crate::model::kernels::cpu_has_kernels() {
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for format in FORMATS {
            let k = 4 * format.block_size();
            let rows = 64;
            let bytes: Vec<u8> = (0..rows * QMatrix::row_bytes_of(format, k).unwrap())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            let q = QMatrix::from_bytes(format, rows, k, &bytes).unwrap();
            let (mut fast, mut slow) = (vec![0f32; k], vec![0f32; k]);
            for r in 0..rows {
                q.dequantize_row(r, &mut fast);
                q.dequantize_row_portable(q.row(r), &mut slow);
                for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                    assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{format:?} row {r} value {i}: {a} vs {b}");
                }
            }
        }
    }

    /// The scan of the f16 fields says "finite" exactly when every dequantized value is finite,
    /// on arbitrary bytes of every format (with NaN and infinite scales among them).
    #[test]
    fn the_scale_scan_agrees_with_the_values() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for format in FORMATS {
            let k = format.block_size();
            let mut seen = [false; 2];
            for trial in 0..3000 {
                // Two blocks in three of small bytes (finite scales), the rest raw.
                let mask = if trial % 3 == 0 { 0xff } else { 0x3b };
                let bytes: Vec<u8> = (0..QMatrix::row_bytes_of(format, k).unwrap())
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 24) as u8 & mask
                    })
                    .collect();
                let q = QMatrix::from_bytes(format, 1, k, &bytes).unwrap();
                let mut row = vec![0f32; k];
                q.dequantize_row_portable(q.row(0), &mut row);
                let finite = row.iter().all(|x| x.is_finite());
                assert_eq!(q.all_finite(), finite, "{format:?}");
                seen[usize::from(finite)] = true;
            }
            assert!(seen[0] && seen[1], "{format:?}: both outcomes should occur");
        }
    }

    /// A block scale of infinity (a damaged file) is found; bytes of the wrong length, a width
    /// that is not whole blocks and unsupported formats are refused.
    #[test]
    fn damage_and_bad_shapes_are_refused() {
        let (n, k) = (4, 32);
        let w = Tensor::from_vec(data(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let qt = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let mut bytes = qt.data().unwrap().into_owned();
        bytes[2 * 34..2 * 34 + 2].copy_from_slice(&[0x00, 0x7c]);
        assert!(!QMatrix::from_bytes(GgmlDType::Q8_0, n, k, &bytes).unwrap().all_finite());
        assert!(QMatrix::from_bytes(GgmlDType::Q8_0, n, k, &bytes[1..]).is_none());
        assert!(QMatrix::from_bytes(GgmlDType::Q8_0, n, 48, &bytes).is_none());
        assert!(QMatrix::from_bytes(GgmlDType::F16, n, k, &bytes).is_none());
        assert!(QMatrix::from_bytes(GgmlDType::Q8_0, usize::MAX, k, &bytes).is_none());
    }
}
