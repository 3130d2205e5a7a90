//! The matrix-product kernels behind the forward and backward passes, for their
//! micro-benchmarks (`examples/mm.rs`, `mmstream.rs`, `mmq41.rs`). Safe for any input: sizes
//! are checked, and a CPU without the kernels' instructions gets an error.

use crate::error::{Error, Result};
use crate::model::kernels;
use crate::model::quant::QMatrix;

/// Whether this CPU runs the kernels (x86-64 with AVX2, FMA and F16C, and not switched off).
pub fn kernels_available() -> bool {
    kernels::available()
}

fn ready() -> Result<()> {
    if !kernels::available() {
        return Err(Error::Invalid("the product kernels do not run on this CPU (or GLASSBOX_KERNELS=portable)".into()));
    }
    Ok(())
}

fn sizes(what: &str, ok: bool) -> Result<()> {
    if !ok {
        return Err(Error::Invalid(format!("{what}: the slices' lengths do not match the sizes given")));
    }
    Ok(())
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`.
pub fn x_wt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    ready()?;
    sizes("x_wt", m.checked_mul(k) == Some(x.len()) && n.checked_mul(k) == Some(w.len()))?;
    Ok(kernels::x_wt(x, w, m, k, n))
}

/// `dx[m, k] = g[m, n] · w[n, k]` (the backward product).
pub fn g_w(g: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    ready()?;
    sizes("g_w", m.checked_mul(n) == Some(g.len()) && n.checked_mul(k) == Some(w.len()))?;
    Ok(kernels::g_w(g, w, m, n, k))
}

/// A weight as llama.cpp Q4_1 blocks (`rows × cols`, `cols` a multiple of 32, 20 bytes per
/// block of 32).
pub struct Q41Weight(QMatrix);

impl Q41Weight {
    /// A `rows × cols` weight from its Q4_1 blocks; errors unless `cols` is a multiple of 32 and
    /// `blocks` holds 20 bytes per 32 weights.
    pub fn new(rows: usize, cols: usize, blocks: Vec<u8>) -> Result<Self> {
        QMatrix::from_bytes(candle_core::quantized::GgmlDType::Q4_1, rows, cols, &blocks)
            .map(Q41Weight)
            .ok_or_else(|| Error::Invalid(format!("Q4_1 blocks do not make a {rows} × {cols} weight (cols a multiple of 32, 20 bytes per 32 weights)")))
    }

    /// `x_wt` against this weight (`n = rows`, `k = cols`).
    pub fn x_wt(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        ready()?;
        sizes("x_wt_q41", m.checked_mul(self.0.cols()) == Some(x.len()))?;
        Ok(kernels::x_wt_q(x, &self.0, m))
    }

    /// `g_w` against this weight.
    pub fn g_w(&self, g: &[f32], m: usize) -> Result<Vec<f32>> {
        ready()?;
        sizes("g_w_q41", m.checked_mul(self.0.rows()) == Some(g.len()))?;
        Ok(kernels::g_w_q(g, &self.0, m))
    }
}
