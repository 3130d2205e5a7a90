//! Evaluating an SAE or transcoder on held-out text: how well it reconstructs, how sparse it
//! is, and how much of the model's next-token loss survives when its reconstruction replaces
//! the activation in the forward.
//!
//! `ce_loss_recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)`: 1 when splicing the
//! reconstruction in costs nothing, 0 when it is as bad as zeroing the activation. The
//! replacement (and the zero ablation) cover the positions the SAE was trained on: all but
//! each sequence's first position and the BOS and end-of-text tokens (`corpus::kept_rows`);
//! the loss is the mean over every predicted token. The reconstruction figures are over the
//! same positions.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::Sae;
use crate::error::{Error, Result};
use crate::model::{Action, Batch, Hooks, Intervention, Model};

/// Result of `evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaeEval {
    /// Positions evaluated (sequence starts and special tokens left out).
    pub tokens: usize,
    /// `1 − Σ ‖y − ŷ‖² / Σ ‖y − ȳ‖²`.
    pub explained_variance: f32,
    /// Mean squared error per element.
    pub mse: f32,
    /// Mean active features per token.
    pub l0: f32,
    /// Features never active on the text.
    pub dead_fraction: f32,
    /// Features active on more than 10 % of the tokens.
    pub dense_fraction: f32,
    /// Mean next-token cross-entropy of the model.
    pub ce_clean: f32,
    /// With the reconstruction spliced in.
    pub ce_sae: f32,
    /// With the activation zeroed.
    pub ce_zero: f32,
    /// `(ce_zero − ce_sae) / (ce_zero − ce_clean)`.
    pub ce_loss_recovered: f32,
}

/// Mean next-token cross-entropy of each run's sequences (targets: the tokens themselves).
fn cross_entropy(logits: &Tensor, rows: &[Vec<u32>]) -> Result<(f64, usize)> {
    let logits = logits.to_dtype(DType::F32)?;
    let n = logits.dim(1)?;
    let lp = {
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?
    };
    let mut total = 0f64;
    let mut count = 0usize;
    for (b, row) in rows.iter().enumerate() {
        let targets = Tensor::new(&row[1..n], &candle_core::Device::Cpu)?.unsqueeze(1)?;
        let picked = lp.get(b)?.narrow(0, 0, n - 1)?.gather(&targets, 1)?;
        total -= picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        count += n - 1;
    }
    Ok((total, count))
}

/// Evaluates `sae` on the sequences (made by `corpus::sequences`), `per_forward` at a time.
pub fn evaluate(model: &Model, sae: &Sae, seqs: &[Vec<u32>], per_forward: usize) -> Result<SaeEval> {
    sae.check(model)?;
    if seqs.is_empty() {
        return Err(Error::Invalid("no text to evaluate on: the corpus is shorter than one sequence".into()));
    }
    let cfg = &sae.cfg;
    let (read, write) = (cfg.hook, cfg.hook_out.unwrap_or(cfg.hook));
    let excluded = super::corpus::excluded_tokens(model);
    let mut fires = vec![0usize; cfg.d_sae];
    let (mut sq_err, mut sum_y, mut sum_y2, mut tokens, mut active) = (0f64, vec![0f64; cfg.d_out], 0f64, 0usize, 0usize);
    let mut ce = [(0f64, 0usize); 3];
    for rows in seqs.chunks(per_forward.max(1)) {
        let batch = Batch::new(rows)?;
        let clean = model.forward(&batch, &Hooks::new().cache([read, write]))?;
        let kept = super::corpus::kept_rows(rows, &excluded)?;
        let x = clean.cache.get(read)?.to_dtype(DType::F32)?;
        let y_full = clean.cache.get(write)?.to_dtype(DType::F32)?;
        let shape = y_full.dims().to_vec();
        let flat = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((shape[0] * shape[1], ()))?) };
        let y_rows = flat(&y_full)?;
        let y = y_rows.index_select(&kept, 0)?;
        let xr = sae.rows(&flat(&x)?.index_select(&kept, 0)?)?;
        let enc = sae.encode(&xr)?;
        let recon = sae.output(&xr, &enc)?;
        // Reconstruction figures.
        sq_err += (&y - &recon)?.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let yv = y.to_dtype(DType::F64)?;
        for (s, v) in sum_y.iter_mut().zip(yv.sum(0)?.to_vec1::<f64>()?) {
            *s += v;
        }
        sum_y2 += yv.sqr()?.sum_all()?.to_scalar::<f64>()?;
        tokens += y.dim(0)?;
        let on = enc.acts.gt(0f32)?.to_dtype(DType::F32)?;
        active += on.sum_all()?.to_scalar::<f32>()? as usize;
        for (f, c) in fires.iter_mut().zip(on.sum(0)?.to_vec1::<f32>()?) {
            *f += c as usize;
        }
        // Loss with the reconstruction, and with zeros, at the kept positions.
        let splice = |rows_value: &Tensor| -> Result<Tensor> {
            let delta = (rows_value - &y)?;
            Ok(y_rows.index_add(&kept, &delta, 0)?.reshape(shape.as_slice())?.to_dtype(model.weights().dtype())?)
        };
        let with_sae = model.forward(&batch, &Hooks::new().intervene(Intervention::new(write, Action::Replace(splice(&recon)?))))?;
        let zero = model.forward(&batch, &Hooks::new().intervene(Intervention::new(write, Action::Replace(splice(&recon.zeros_like()?)?))))?;
        for (i, out) in [&clean, &with_sae, &zero].into_iter().enumerate() {
            let (t, c) = cross_entropy(&out.logits, rows)?;
            ce[i].0 += t;
            ce[i].1 += c;
        }
    }
    if tokens == 0 {
        return Err(Error::Invalid("the text gives no positions to evaluate: every position is a sequence start or a special token".into()));
    }
    let mean_y2: f64 = sum_y.iter().map(|s| s * s).sum::<f64>() / tokens as f64;
    let var = sum_y2 - mean_y2;
    let [c, s, z] = ce.map(|(t, n)| (t / n.max(1) as f64) as f32);
    Ok(SaeEval {
        tokens,
        explained_variance: (1.0 - sq_err / var.max(f64::MIN_POSITIVE)) as f32,
        mse: (sq_err / (tokens * cfg.d_out) as f64) as f32,
        l0: active as f32 / tokens as f32,
        dead_fraction: fires.iter().filter(|&&f| f == 0).count() as f32 / cfg.d_sae as f32,
        dense_fraction: fires.iter().filter(|&&f| f as f64 > 0.1 * tokens as f64).count() as f32 / cfg.d_sae as f32,
        ce_clean: c,
        ce_sae: s,
        ce_zero: z,
        ce_loss_recovered: if (z - c).abs() > 1e-9 { (z - s) / (z - c) } else { f32::NAN },
    })
}
