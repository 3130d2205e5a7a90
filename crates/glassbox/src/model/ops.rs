//! Differentiable building blocks of the forward pass. Each is a composition of candle ops
//! that have a backward (candle's fused softmax/norm/rope kernels have none and would silently
//! drop gradients), except `linear`, a custom op whose backward skips the weight gradient.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor, D};

use std::sync::Arc;

use crate::model::kernels::{self, Q41};

use crate::error::Result;
use crate::model::config::{Activation, NormKind, RotaryPairing};

/// `x @ w^T` for a weight `w: [n, k]` that never needs a gradient. candle's matmul backward
/// would compute (and allocate) the weight's gradient too: for a 135M model that is 0.5 GB of
/// writes per backward pass. This op returns the input's gradient only.
///
/// When the weight also has an exact Q4_1 copy (`q`), the products read that instead (5 bits
/// per weight from memory instead of 32; the same figures bit for bit).
struct LinearNoWeightGrad {
    q: Option<Arc<Q41>>,
}

impl CustomOp2 for LinearNoWeightGrad {
    fn name(&self) -> &'static str {
        "linear-no-weight-grad"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = lx.shape().dims2()?;
        let (n, k2) = lw.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: input has {k} features, weight expects {k2}");
        }
        if let (CpuStorage::F32(xs), CpuStorage::F32(ws)) = (x, w) {
            if let (Some((x0, x1)), Some((w0, w1))) = (lx.contiguous_offsets(), lw.contiguous_offsets()) {
                if let Some(q) = self.q.as_ref().filter(|q| q.rows == n && q.cols == k && kernels::preferred(m, n)) {
                    let y = kernels::x_wt_q41(&xs[x0..x1], q, m);
                    return Ok((CpuStorage::F32(y), Shape::from((m, n))));
                }
                if kernels::preferred(m, n) {
                    let y = kernels::x_wt(&xs[x0..x1], &ws[w0..w1], m, k, n);
                    return Ok((CpuStorage::F32(y), Shape::from((m, n))));
                }
            }
        }
        let wt = lw.transpose(0, 1)?;
        let out = x.matmul(w, (1, m, n, k), lx, &wt)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, n) = grad.dims2()?;
        let k = w.dim(1)?;
        if grad.dtype() == DType::F32 && kernels::preferred(m, k) {
            let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            if let Some(q) = self.q.as_ref().filter(|q| q.rows == n && q.cols == k) {
                let dx = kernels::g_w_q41(&g, q, m);
                return Ok((Some(Tensor::from_vec(dx, (m, k), grad.device())?), None));
            }
            let (storage, layout) = w.storage_and_layout();
            if let (Storage::Cpu(CpuStorage::F32(ws)), Some((w0, w1))) = (&*storage, layout.contiguous_offsets()) {
                let dx = kernels::g_w(&g, &ws[w0..w1], m, n, k);
                return Ok((Some(Tensor::from_vec(dx, (m, k), grad.device())?), None));
            }
        }
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// `x @ w^T + b` over the last axis of `x` (any leading shape).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_q(x, w, None, b)
}

/// `linear`, with the weight's exact Q4_1 copy when it has one (see `Model::quantized`).
pub fn linear_q(x: &Tensor, w: &Tensor, q: Option<&Arc<Q41>>, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let lead: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.contiguous()?.reshape((lead, k))?;
    let y = x2.apply_op2(w, LinearNoWeightGrad { q: q.cloned() })?;
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(w.dim(0)?);
    let y = y.reshape(out_dims)?;
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

/// `norm_parts` followed by the division: `(scale, normalized)`.
pub fn norm_scale(x: &Tensor, kind: NormKind, eps: f64) -> Result<(Tensor, Tensor)> {
    let (centred, scale) = norm_parts(x, kind, eps)?;
    let normalized = centred.broadcast_div(&scale)?;
    Ok((scale, normalized))
}

/// Softmax over the last axis, with the max subtracted as a constant (exact: softmax is
/// shift-invariant), so the backward needs no gradient of `max`.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
        Activation::Silu => x.silu()?,
    })
}

/// Rotary embedding on `x: [b, p, heads, d_head]`, rotating the first `cos.dim(1) * 2`
/// dimensions; `cos`/`sin`: `[p, rot_dim/2]`.
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor, pairing: RotaryPairing) -> Result<Tensor> {
    let (b, p, h, d) = x.dims4()?;
    let half = cos.dim(1)?;
    let rot = 2 * half;
    let cos = cos.reshape((1, p, 1, half))?;
    let sin = sin.reshape((1, p, 1, half))?;
    let x_rot = x.narrow(3, 0, rot)?;
    let rotated = match pairing {
        RotaryPairing::HalfSplit => {
            let x1 = x_rot.narrow(3, 0, half)?;
            let x2 = x_rot.narrow(3, half, half)?;
            let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Tensor::cat(&[r1, r2], 3)?
        }
        RotaryPairing::Interleaved => {
            let pairs = x_rot.reshape((b, p, h, half, 2))?;
            let x1 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
            let x2 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
            let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
            Tensor::stack(&[r1, r2], 4)?.reshape((b, p, h, rot))?
        }
    };
    if rot == d {
        Ok(rotated)
    } else {
        Ok(Tensor::cat(&[rotated, x.narrow(3, rot, d - rot)?], 3)?)
    }
}
