//! Single ops, each with its own backward, for the compositions every layer runs: a norm with
//! its weights, the MLP's activation (gated or not), and the attention core (scores, soft cap,
//! mask, softmax, values, grouped key/value heads). As chains of candle ops these cost a dozen
//! tensors each way, and candle's backward adds a zero tensor and a sum for every argument of
//! every op (the weights' and the mask's included); at a few dozen token rows that bookkeeping
//! costs more than the arithmetic. The forward uses an op only where no hook point inside it
//! is touched (the norm hides its scale and normalised value, the attention core
//! `hook_attn_scores` and `hook_pattern`); elsewhere it runs the chains, which give the same
//! figures up to float rounding. Each op splits its rows, elements or heads over the kernels'
//! threads when there are enough (`MIN_PART`). f32 and f64.

pub mod attention;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, WithDType};

pub use attention::{attention, AttnSpec};
use num_traits::Float;

use crate::error::Result;
use crate::model::kernels;
use crate::model::config::Activation;

pub(crate) trait Elem: WithDType + Float + std::ops::AddAssign + std::ops::MulAssign + std::ops::DivAssign {
    /// `out[i] = exp(−x[i])`.
    fn exp_neg(x: &[Self], out: &mut [Self]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = (-x).exp();
        }
    }

    /// `c[i · ldc + j] += Σ_t a[i · rs + t · cs] · b[t · ldb + j]` for `i < m`, `j < n`,
    /// `t < kd`: the products inside an attention tile. Panics if an operand is too short.
    fn gemm_acc(dims: (usize, usize, usize), a: (&[Self], usize, usize), b: (&[Self], usize), c: (&mut [Self], usize)) {
        gemm_plain(dims, a, b, c);
    }
}

/// `Elem::gemm_acc` as plain loops (f64, and f32 without the kernels).
fn gemm_plain<T: Elem>((m, n, kd): (usize, usize, usize), (a, rs, cs): (&[T], usize, usize), (b, ldb): (&[T], usize), (c, ldc): (&mut [T], usize)) {
    for i in 0..m {
        let crow = &mut c[i * ldc..i * ldc + n];
        for t in 0..kd {
            let x = a[i * rs + t * cs];
            for (o, &w) in crow.iter_mut().zip(&b[t * ldb..t * ldb + n]) {
                *o += x * w;
            }
        }
    }
}
impl Elem for f32 {
    fn exp_neg(x: &[f32], out: &mut [f32]) {
        if kernels::available() {
            kernels::exp_neg(x, out);
        } else {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = (-x).exp();
            }
        }
    }

    fn gemm_acc(dims: (usize, usize, usize), (a, rs, cs): (&[f32], usize, usize), b: (&[f32], usize), c: (&mut [f32], usize)) {
        if kernels::available() {
            kernels::gemm_acc(dims, kernels::Strided { a, rs, cs }, b, c);
        } else {
            gemm_plain(dims, (a, rs, cs), b, c);
        }
    }
}
impl Elem for f64 {}

pub(crate) fn slice<'a, T: Elem>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [T]> {
    let (o0, o1) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    Ok(&T::cpu_storage_as_slice(s)?[o0..o1])
}

pub(crate) fn values<T: Elem>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// Evaluates `$e` with the type `$t` standing for the storage's float type.
macro_rules! by_dtype {
    ($s:expr, $what:expr, $t:ident => $e:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                $e
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                $e
            }
            _ => candle_core::bail!("{}: f32 or f64 only", $what),
        }
    };
}

pub(crate) fn t<T: Elem>(v: f64) -> T {
    T::from(v).unwrap_or_else(T::nan)
}

pub(crate) fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += *x * *y;
    }
    s
}

/// Items (elements, or multiply-adds for attention) a part of a split op gets at least: below
/// this, handing a part to another thread costs more than it saves.
pub(crate) const MIN_PART: usize = 8192;

/// An output the parts of `for_ranges` fill, each in places no other part writes.
pub(crate) struct Shared<T: Send>(*mut T);
// SAFETY: `Shared` only hands out slices through `slice`, whose contract is that the parts
// write disjoint ranges of one live output; the values are `Send`, so writing them from
// another thread is sound.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as for `Sync`: the pointer is used only for disjoint writes while the output lives.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T: Send> Shared<T> {
    pub(crate) fn of(v: &mut [T]) -> Self {
        Shared(v.as_mut_ptr())
    }
    /// # Safety
    /// `a..b` is inside the output and no other part touches it while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, a: usize, b: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(a), b - a)
    }
}

/// `out[i] = f(i)` over `0..out.len()`, split over the kernels' threads.
fn fill<T: Elem>(out: &mut [T], f: impl Fn(usize) -> T + Sync) {
    let shared = Shared::of(out);
    let n = out.len();
    kernels::for_ranges(n, MIN_PART, &|a, b| {
        // SAFETY: each part writes its own range.
        for (o, i) in unsafe { shared.slice(a, b) }.iter_mut().zip(a..b) {
            *o = f(i);
        }
    });
}

/// `out[i] = f(i, x[i], exp(−x[i]))` over `0..out.len()`, split over the kernels' threads,
/// the exponentials taken 64 at a time (for SiLU).
fn fill_exp<T: Elem>(out: &mut [T], x: &[T], f: impl Fn(usize, T, T) -> T + Sync) {
    let shared = Shared::of(out);
    kernels::for_ranges(out.len(), MIN_PART, &|a, b| {
        let mut e = [T::zero(); 64];
        let mut start = a;
        while start < b {
            let end = (start + 64).min(b);
            T::exp_neg(&x[start..end], &mut e[..end - start]);
            // SAFETY: each part writes its own range.
            for ((o, i), &e) in unsafe { shared.slice(start, end) }.iter_mut().zip(start..end).zip(&e) {
                *o = f(i, x[i], e);
            }
            start = end;
        }
    });
}

/// SiLU from `e = exp(−x)`, as candle computes it.
#[inline]
fn silu<T: Elem>(x: T, e: T) -> T {
    x / (T::one() + e)
}

/// SiLU's derivative from `e = exp(−x)`: `s (1 + x (1 − s))` with `s = 1 / (1 + e)`.
#[inline]
fn silu_slope<T: Elem>(x: T, e: T) -> T {
    let s = T::one() / (T::one() + e);
    s * (T::one() + x * (T::one() - s))
}


// ---------------------------------------------------------------------------------------------
// Norm

/// LayerNorm (`centre`) or RMSNorm over the last axis, then the weight and bias:
/// `(x − μ) / √(mean((x − μ)²) + eps) · w + b` (μ = 0 for RMSNorm). Weight and bias get no
/// gradient.
pub fn norm(x: &Tensor, centre: bool, eps: f64, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let op = NormOp { centre, eps, w: w.clone(), b: b.cloned() };
    Ok(x.contiguous()?.apply_op1(op)?)
}

struct NormOp {
    centre: bool,
    eps: f64,
    w: Tensor,
    b: Option<Tensor>,
}

impl NormOp {
    /// The row's mean (0 for RMSNorm) and scale.
    fn stats<T: Elem>(&self, row: &[T]) -> (T, T) {
        let d = t::<T>(row.len() as f64);
        let mean = if self.centre { row.iter().fold(T::zero(), |s, &v| s + v) / d } else { T::zero() };
        let var = row.iter().fold(T::zero(), |s, &v| s + (v - mean) * (v - mean)) / d;
        (mean, (var + t(self.eps)).sqrt())
    }

    fn weights<T: Elem>(&self, d: usize) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let w = values::<T>(&self.w)?;
        let b = match &self.b {
            Some(b) => values::<T>(b)?,
            None => vec![T::zero(); d],
        };
        if w.len() != d || b.len() != d {
            candle_core::bail!("norm: weights of {} and bias of {} for rows of {d}", w.len(), b.len());
        }
        Ok((w, b))
    }

    fn fwd<T: Elem>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
        let xs = slice::<T>(s, l, "norm")?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let (w, b) = self.weights::<T>(d)?;
        let mut out = vec![T::zero(); xs.len()];
        let shared = Shared::of(&mut out);
        kernels::for_ranges(xs.len() / d, MIN_PART / d + 1, &|r0, r1| {
            // SAFETY: each part writes its own rows.
            let out = unsafe { shared.slice(r0 * d, r1 * d) };
            for (row, o) in xs[r0 * d..r1 * d].chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                let (mean, scale) = self.stats(row);
                for (o, (&v, (&w, &b))) in o.iter_mut().zip(row.iter().zip(w.iter().zip(&b))) {
                    *o = (v - mean) / scale * w + b;
                }
            }
        });
        Ok(T::to_cpu_storage_owned(out))
    }

    /// `dx = (g − mean(g) − x̂ · mean(g ⊙ x̂)) / scale` with `g = dy ⊙ w` (no `mean(g)` for
    /// RMSNorm).
    fn grad<T: Elem>(&self, s: &CpuStorage, l: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<CpuStorage> {
        let xs = slice::<T>(s, l, "norm backward")?;
        let dys = slice::<T>(gs, gl, "norm backward")?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let (w, _) = self.weights::<T>(d)?;
        let dn = t::<T>(d as f64);
        let mut out = vec![T::zero(); xs.len()];
        let shared = Shared::of(&mut out);
        kernels::for_ranges(xs.len() / d, MIN_PART / d + 1, &|r0, r1| {
            // SAFETY: each part writes its own rows.
            let out = unsafe { shared.slice(r0 * d, r1 * d) };
            let mut g = vec![T::zero(); d];
            let rows = xs[r0 * d..r1 * d].chunks_exact(d).zip(dys[r0 * d..r1 * d].chunks_exact(d));
            for ((row, dy), o) in rows.zip(out.chunks_exact_mut(d)) {
                let (mean, scale) = self.stats(row);
                for ((g, &dy), &w) in g.iter_mut().zip(dy).zip(&w) {
                    *g = dy * w;
                }
                let mean_g = if self.centre { g.iter().fold(T::zero(), |s, &v| s + v) / dn } else { T::zero() };
                let mean_gx = row.iter().zip(&g).fold(T::zero(), |s, (&v, &g)| s + g * (v - mean) / scale) / dn;
                for (o, (&v, &g)) in o.iter_mut().zip(row.iter().zip(&g)) {
                    *o = (g - mean_g - (v - mean) / scale * mean_gx) / scale;
                }
            }
        });
        Ok(T::to_cpu_storage_owned(out))
    }
}

impl CustomOp1 for NormOp {
    fn name(&self) -> &'static str {
        "norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s, "norm", T => self.fwd::<T>(s, l))?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = NormGrad(NormOp { centre: self.centre, eps: self.eps, w: self.w.clone(), b: None });
        Ok(Some(arg.apply_op2(&grad.contiguous()?, op)?))
    }
}

/// The norm's input gradient, `(x, dy) → dx`.
struct NormGrad(NormOp);

impl CustomOp2 for NormGrad {
    fn name(&self) -> &'static str {
        "norm-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, gs: &CpuStorage, gl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l.shape() != gl.shape() {
            candle_core::bail!("norm backward: input {:?} but gradient {:?}", l.dims(), gl.dims());
        }
        Ok((by_dtype!(s, "norm backward", T => self.0.grad::<T>(s, l, gs, gl))?, l.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Activations

/// `act(x)`, with the exact derivative as its backward (candle's GELU backward rounds its
/// constants to six digits).
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Act { act, slope: false })?)
}

/// `act(x)`, or with `slope` its derivative `act'(x)`.
struct Act {
    act: Activation,
    slope: bool,
}

fn fwd_act<T: Elem>(op: &Act, s: &CpuStorage, l: &Layout) -> candle_core::Result<CpuStorage> {
    let xs = slice::<T>(s, l, "activation")?;
    let mut out = vec![T::zero(); xs.len()];
    match (op.act, op.slope) {
        (Activation::Silu, false) => fill_exp(&mut out, xs, |_, x, e| silu(x, e)),
        (Activation::Silu, true) => fill_exp(&mut out, xs, |_, x, e| silu_slope(x, e)),
        (act, true) => fill(&mut out, |i| act_and_slope(act, xs[i]).1),
        (act, false) => fill(&mut out, |i| act_and_slope(act, xs[i]).0),
    }
    Ok(T::to_cpu_storage_owned(out))
}

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        if self.slope {
            "activation-slope"
        } else {
            "activation"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((by_dtype!(s, "activation", T => fwd_act::<T>(self, s, l))?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let slope = arg.apply_op1(Act { act: self.act, slope: true })?;
        Ok(Some((grad * slope)?))
    }
}

/// `act(gate) ⊙ up`, a gated MLP's hidden value.
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, Gated(act))?)
}

struct Gated(Activation);

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// The activation and its derivative at `x`, the activation as candle computes it. (SiLU
/// takes its exponentials in batches through `fill_exp` on the ops' paths.)
#[inline]
fn act_and_slope<T: Elem>(act: Activation, x: T) -> (T, T) {
    let half = t::<T>(0.5);
    let one = T::one();
    match act {
        Activation::Silu => {
            let e = (-x).exp();
            (silu(x, e), silu_slope(x, e))
        }
        Activation::GeluTanh => {
            let c = t::<T>(0.044715);
            let th = (t::<T>(SQRT_2_OVER_PI) * x * (one + c * x * x)).tanh();
            let slope = half * (one + th) + half * x * (one - th * th) * t::<T>(SQRT_2_OVER_PI) * (one + t::<T>(3.0) * c * x * x);
            (half * x * (one + th), slope)
        }
        Activation::Gelu => {
            let xf = WithDType::to_f64(x);
            let cdf = t::<T>(candle_core::cpu::erf::erf_f64(xf * std::f64::consts::FRAC_1_SQRT_2));
            let density = t::<T>((-0.5 * xf * xf).exp() / (2.0 * std::f64::consts::PI).sqrt());
            ((cdf + one) * half * x, half * (one + cdf) + x * density)
        }
        Activation::Relu => {
            if x > T::zero() {
                (x, one)
            } else {
                (T::zero(), T::zero())
            }
        }
    }
}

impl Gated {
    fn fwd<T: Elem>(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> candle_core::Result<CpuStorage> {
        let g = slice::<T>(gs, gl, "gated activation")?;
        let u = slice::<T>(us, ul, "gated activation")?;
        let mut out = vec![T::zero(); g.len()];
        match self.0 {
            Activation::Silu => fill_exp(&mut out, g, |i, x, e| silu(x, e) * u[i]),
            act => fill(&mut out, |i| act_and_slope(act, g[i]).0 * u[i]),
        }
        Ok(T::to_cpu_storage_owned(out))
    }

    /// `[d gate, d up]` flattened: `dy ⊙ up ⊙ act'(gate)` and `dy ⊙ act(gate)`.
    fn grad<T: Elem>(&self, (gs, gl): (&CpuStorage, &Layout), (us, ul): (&CpuStorage, &Layout), (ds, dl): (&CpuStorage, &Layout)) -> candle_core::Result<CpuStorage> {
        let g = slice::<T>(gs, gl, "gated activation backward")?;
        let u = slice::<T>(us, ul, "gated activation backward")?;
        let dy = slice::<T>(ds, dl, "gated activation backward")?;
        let n = g.len();
        let mut out = vec![T::zero(); 2 * n];
        let shared = Shared::of(&mut out);
        kernels::for_ranges(n, MIN_PART, &|a, b| {
            // SAFETY: each part writes its own range of each half.
            let (dg, du) = unsafe { (shared.slice(a, b), shared.slice(n + a, n + b)) };
            if self.0 == Activation::Silu {
                let mut e = [T::zero(); 64];
                for start in (a..b).step_by(64) {
                    let end = (start + 64).min(b);
                    T::exp_neg(&g[start..end], &mut e[..end - start]);
                    for (i, &e) in (start..end).zip(&e) {
                        dg[i - a] = dy[i] * u[i] * silu_slope(g[i], e);
                        du[i - a] = dy[i] * silu(g[i], e);
                    }
                }
                return;
            }
            for (i, (dg, du)) in (a..b).zip(dg.iter_mut().zip(du)) {
                let (act, slope) = act_and_slope(self.0, g[i]);
                *dg = dy[i] * u[i] * slope;
                *du = dy[i] * act;
            }
        });
        Ok(T::to_cpu_storage_owned(out))
    }
}

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() {
            candle_core::bail!("gated activation: gate {:?} but up {:?}", gl.dims(), ul.dims());
        }
        Ok((by_dtype!(gs, "gated activation", T => self.fwd::<T>(gs, gl, us, ul))?, gl.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let both = gate.contiguous()?.apply_op3(&up.contiguous()?, &grad.contiguous()?, GatedGrad(self.0))?;
        Ok((Some(both.narrow(0, 0, n)?.reshape(gate.shape())?), Some(both.narrow(0, n, n)?.reshape(up.shape())?)))
    }
}

/// `(gate, up, dy) → [d gate, d up]` (flat).
struct GatedGrad(Activation);

impl CustomOp3 for GatedGrad {
    fn name(&self) -> &'static str {
        "gated-activation-backward"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout, ds: &CpuStorage, dl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if gl.shape() != ul.shape() || gl.shape() != dl.shape() {
            candle_core::bail!("gated activation backward: shapes {:?}, {:?}, {:?}", gl.dims(), ul.dims(), dl.dims());
        }
        let op = Gated(self.0);
        let out = by_dtype!(gs, "gated activation backward", T => op.grad::<T>((gs, gl), (us, ul), (ds, dl)))?;
        Ok((out, Shape::from(2 * gl.shape().elem_count())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The activations and the gated activation: values equal to candle's `act(gate) * up`,
    /// both gradients equal to central finite differences of those values, every activation,
    /// in f64. (candle's own GELU backward rounds its constants and is off by 1e-6.)
    #[test]
    fn activations_match_candle_and_finite_differences() {
        let xs: Vec<f64> = (0..40).map(|i| (i as f64 - 20.0) * 0.23 + 0.01).collect();
        let gate = Var::from_vec(xs.clone(), (4, 10), &Device::Cpu).unwrap();
        let up = Var::from_vec(xs.iter().map(|x| 0.7 - 0.3 * x).collect::<Vec<_>>(), (4, 10), &Device::Cpu).unwrap();
        let weights = Tensor::from_vec((0..40).map(|i| 1.0 + 0.1 * i as f64).collect::<Vec<_>>(), (4, 10), &Device::Cpu).unwrap();
        for act in [Activation::Silu, Activation::GeluTanh, Activation::Gelu, Activation::Relu] {
            let fused = gated(gate.as_tensor(), up.as_tensor(), act).unwrap();
            let chain = (candle_act(gate.as_tensor(), act).unwrap() * up.as_tensor()).unwrap();
            let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(diff(&fused, &chain) < 1e-12, "{act:?} values");
            let plain = activation(gate.as_tensor(), act).unwrap();
            assert!(diff(&plain, &candle_act(gate.as_tensor(), act).unwrap()) < 1e-12, "{act:?} plain values");
            let grads = (fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let plain_grad = (plain * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            // d/dgate and d/dup of Σ w ⊙ act(gate) ⊙ up, elementwise, by central differences.
            let h = 1e-6;
            let f = |g: &Tensor, u: &Tensor| (candle_act(g, act).unwrap() * u).unwrap();
            let (g0, u0) = (gate.as_tensor(), up.as_tensor());
            let fd_gate = ((f(&(g0 + h).unwrap(), u0) - f(&(g0 - h).unwrap(), u0)).unwrap() / (2.0 * h)).unwrap().mul(&weights).unwrap();
            let fd_up = ((f(g0, &(u0 + h).unwrap()) - f(g0, &(u0 - h).unwrap())).unwrap() / (2.0 * h)).unwrap().mul(&weights).unwrap();
            let fd_plain = ((candle_act(&(g0 + h).unwrap(), act).unwrap() - candle_act(&(g0 - h).unwrap(), act).unwrap()).unwrap() / (2.0 * h)).unwrap().mul(&weights).unwrap();
            for (got, want, what) in [(grads.get(g0).unwrap(), &fd_gate, "gate"), (grads.get(u0).unwrap(), &fd_up, "up"), (plain_grad.get(g0).unwrap(), &fd_plain, "plain")] {
                assert!(diff(got, want) < 1e-7, "{act:?} d{what}: {}", diff(got, want));
            }
            assert_eq!(gate.dtype(), DType::F64);
        }
    }

    /// The activation as candle's own ops compute it (the reference).
    fn candle_act(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
        match act {
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }

    fn data(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 1000) as f64 / 500.0 - 1.0).collect()
    }

    /// The norm (LayerNorm and RMSNorm) at a size that splits over threads: values and
    /// gradient against the chain of candle ops.
    #[test]
    fn norm_matches_the_chain() {
        let dev = Device::Cpu;
        let (rows, d) = (128usize, 256usize);
        let x = Var::from_vec(data(rows * d, 8), (rows, d), &dev).unwrap();
        let w = Tensor::from_vec(data(d, 9), d, &dev).unwrap();
        let b = Tensor::from_vec(data(d, 10), d, &dev).unwrap();
        let up = Tensor::from_vec(data(rows * d, 11), (rows, d), &dev).unwrap();
        for (centre, kind) in [(true, crate::model::config::NormKind::LayerNorm), (false, crate::model::config::NormKind::RmsNorm)] {
            let fused = norm(x.as_tensor(), centre, 1e-5, &w, Some(&b)).unwrap();
            let (centred, scale) = crate::model::ops::norm_parts(x.as_tensor(), kind, 1e-5).unwrap();
            let chain = centred.broadcast_div(&scale).unwrap().broadcast_mul(&w).unwrap().broadcast_add(&b).unwrap();
            let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(diff(&fused, &chain) < 1e-12, "{kind:?} values");
            let gf = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gc = (chain * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, c) = (gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
            assert!(diff(a, c) < 1e-10, "{kind:?} gradient: {}", diff(a, c));
        }
    }
}
