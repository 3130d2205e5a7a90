//! Differentiable building blocks of the forward pass: `linear` (a custom op whose backward
//! skips the weight gradient), the norm's two halves as candle ops, and rotary embedding and
//! softmax as custom ops with their own backward (candle's fused softmax/norm/rope kernels have
//! none and would silently drop gradients). The fused norm, activations and attention core are
//! in `fused`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};

use std::sync::Arc;

use crate::model::kernels;
use crate::model::weights::Matrix;

use crate::error::Result;
use crate::model::config::{NormKind, RotaryPairing};

/// `x @ w^T` over the last axis of `x` (any leading shape) for a weight `w: [n, k]` that never
/// needs a gradient. candle's matmul backward would compute (and allocate) the weight's
/// gradient too: for a 135M model that is 0.5 GB of writes per backward pass. This op returns
/// the input's gradient only.
///
/// A quantized weight is streamed as its blocks by the kernels, forward and backward (the
/// same figures bit for bit as on its dequantized f32 values).
struct LinearNoWeightGrad {
    w: Matrix,
}

impl CustomOp1 for LinearNoWeightGrad {
    fn name(&self) -> &'static str {
        "linear-no-weight-grad"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = lx.dims();
        let (n, k) = self.w.shape();
        let lead = match dims.split_last() {
            Some((&features, lead)) if features == k => lead,
            _ => candle_core::bail!("linear: input of shape {dims:?}, weight expects {k} features"),
        };
        let m: usize = lead.iter().product();
        let out_shape = Shape::from([lead, &[n]].concat());
        let Some((x0, x1)) = lx.contiguous_offsets() else {
            candle_core::bail!("linear: input must be contiguous")
        };
        let w = match &self.w {
            Matrix::Quantized(q) => {
                let CpuStorage::F32(xs) = x else {
                    candle_core::bail!("linear: a quantized weight takes f32 inputs")
                };
                return Ok((CpuStorage::F32(kernels::x_wt_q(&xs[x0..x1], q, m)), out_shape));
            }
            Matrix::Dense(w) => w,
        };
        let (storage, lw) = w.storage_and_layout();
        let Storage::Cpu(ws) = &*storage else {
            candle_core::bail!("linear: weights must be on the CPU")
        };
        if let (CpuStorage::F32(xs), CpuStorage::F32(ws)) = (x, ws) {
            if let Some((w0, w1)) = lw.contiguous_offsets() {
                if kernels::preferred(m, n) {
                    let y = kernels::x_wt(&xs[x0..x1], &ws[w0..w1], m, k, n);
                    return Ok((CpuStorage::F32(y), out_shape));
                }
            }
        }
        let x2 = Layout::contiguous_with_offset((m, k), x0);
        let wt = lw.transpose(0, 1)?;
        let out = x.matmul(ws, (1, m, n, k), &x2, &wt)?;
        Ok((out, out_shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (n, k) = self.w.shape();
        let m = grad.elem_count() / n.max(1);
        let w = match &self.w {
            Matrix::Quantized(q) => {
                let g = grad.to_dtype(DType::F32)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                let dx = kernels::g_w_q(&g, q, m);
                return Ok(Some(Tensor::from_vec(dx, x.shape(), grad.device())?.to_dtype(grad.dtype())?));
            }
            Matrix::Dense(w) => w,
        };
        if grad.dtype() == DType::F32 && kernels::preferred(m, k) {
            let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let (storage, layout) = w.storage_and_layout();
            if let (Storage::Cpu(CpuStorage::F32(ws)), Some((w0, w1))) = (&*storage, layout.contiguous_offsets()) {
                let dx = kernels::g_w(&g, &ws[w0..w1], m, n, k);
                return Ok(Some(Tensor::from_vec(dx, x.shape(), grad.device())?));
            }
        }
        Ok(Some(grad.reshape((m, n))?.matmul(w)?.reshape(x.shape())?))
    }
}

/// `x @ w^T + b` over the last axis of `x` (any leading shape), for a weight as a tensor.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_m(x, &Matrix::Dense(w.clone()), b)
}

/// `x @ w^T + b` for a weight matrix, dense or quantized.
pub fn linear_m(x: &Tensor, w: &Matrix, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.contiguous()?.apply_op1(LinearNoWeightGrad { w: w.clone() })?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// The two halves of a norm over the last axis: `(centred, scale)` with the normalised value
/// `centred / scale`; `centred` is `x − mean(x)` for LayerNorm and `x` for RMSNorm. The forward
/// hooks the scale (`hook_scale`) before dividing, so a patched scale takes effect.
pub fn norm_parts(x: &Tensor, kind: NormKind, eps: f64) -> Result<(Tensor, Tensor)> {
    let centred = match kind {
        NormKind::LayerNorm => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
        NormKind::RmsNorm => x.clone(),
    };
    let scale = (centred.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    Ok((centred, scale))
}


/// Softmax over the last axis (max subtracted first), one op with its own backward
/// `dx = y ⊙ (dy − Σ dy ⊙ y)`: a composition of candle ops costs ten tensors per layer in
/// each direction.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.apply_op1(SoftmaxLast)?)
}

struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "softmax-last"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        fn rows<T: num_traits::Float>(xs: &[T], n: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(xs.len());
            for row in xs.chunks_exact(n) {
                let max = row.iter().copied().fold(T::neg_infinity(), T::max);
                let start = out.len();
                let mut sum = T::zero();
                for &v in row {
                    let e = (v - max).exp();
                    sum = sum + e;
                    out.push(e);
                }
                for e in &mut out[start..] {
                    *e = *e / sum;
                }
            }
            out
        }
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        let (o0, o1) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("softmax: input must be contiguous".into()))?;
        let out = match storage {
            CpuStorage::F32(xs) => CpuStorage::F32(rows(&xs[o0..o1], n)),
            CpuStorage::F64(xs) => CpuStorage::F64(rows(&xs[o0..o1], n)),
            _ => candle_core::bail!("softmax: f32 or f64 only"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((grad.broadcast_sub(&dot)? * res)?))
    }
}

/// Cos and sin tables of a rotary embedding, `[positions, half]` each, in f64 (rounded to the
/// activations' dtype where they are used). Built once per forward and rotary base.
#[derive(Debug)]
pub struct RopeTables {
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
    pub positions: usize,
    pub half: usize,
}

impl RopeTables {
    /// The tables of positions `first..` (for the new positions of a continued run).
    pub fn starting_at(&self, first: usize) -> RopeTables {
        let first = first.min(self.positions);
        RopeTables {
            cos: self.cos[first * self.half..].to_vec(),
            sin: self.sin[first * self.half..].to_vec(),
            positions: self.positions - first,
            half: self.half,
        }
    }
}

/// Rotary embedding on `x: [b, p, heads, d_head]`, rotating the first `2 * tables.half`
/// dimensions. One op whose backward is the inverse rotation (the same tables, `−sin`).
pub fn rotary(x: &Tensor, tables: &Arc<RopeTables>, pairing: RotaryPairing) -> Result<Tensor> {
    let (_, p, _, d) = x.dims4()?;
    if tables.positions != p || 2 * tables.half > d {
        return Err(crate::error::Error::Invalid(format!(
            "rotary tables of {} positions × {} do not fit {:?}",
            tables.positions,
            tables.half,
            x.dims()
        )));
    }
    let op = Rotary { tables: tables.clone(), inverse: false, pairing };
    Ok(x.contiguous()?.apply_op1(op)?)
}

struct Rotary {
    tables: Arc<RopeTables>,
    /// Rotate by −θ (the backward).
    inverse: bool,
    pairing: RotaryPairing,
}

impl Rotary {
    fn rotate<T: num_traits::Float>(&self, xs: &[T], dims: &[usize]) -> Vec<T> {
        let (p, h, d) = (dims[1], dims[2], dims[3]);
        let half = self.tables.half;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut out = xs.to_vec();
        for (v, head) in out.chunks_exact_mut(d).enumerate() {
            let pos = (v / h) % p;
            for i in 0..half {
                let c = T::from(self.tables.cos[pos * half + i]).unwrap_or_else(T::zero);
                let s = T::from(sign * self.tables.sin[pos * half + i]).unwrap_or_else(T::zero);
                let (a, b) = match self.pairing {
                    RotaryPairing::HalfSplit => (i, i + half),
                    RotaryPairing::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x1, x2) = (head[a], head[b]);
                head[a] = x1 * c - x2 * s;
                head[b] = x2 * c + x1 * s;
            }
        }
        out
    }
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.dims();
        let (o0, o1) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("rotary: input must be contiguous".into()))?;
        let out = match storage {
            CpuStorage::F32(xs) => CpuStorage::F32(self.rotate(&xs[o0..o1], dims)),
            CpuStorage::F64(xs) => CpuStorage::F64(self.rotate(&xs[o0..o1], dims)),
            _ => candle_core::bail!("rotary: f32 or f64 only"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inverse = Rotary { tables: self.tables.clone(), inverse: !self.inverse, pairing: self.pairing };
        Ok(Some(grad.contiguous()?.apply_op1(inverse)?))
    }
}

