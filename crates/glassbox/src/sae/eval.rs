//! Evaluating an SAE or transcoder on held-out text: how well it reconstructs, how sparse it
//! is, and how much of the model's next-token loss survives when its reconstruction replaces
//! the activation in the forward.
//!
//! `ce_loss_recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)`: 1 when splicing the
//! reconstruction in costs nothing, 0 when it is as bad as zeroing the activation. The
//! replacement (and the zero ablation) cover every position but BOS, whose activation the SAE
//! was not trained on (its loss is the loss of predicting every token after BOS).

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use super::Sae;
use crate::error::{Error, Result};
use crate::model::{Action, Batch, Hooks, Intervention, Model};

/// Result of `evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaeEval {
    /// Tokens evaluated (BOS left out).
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
    let skip = usize::from(model.tokenizer.bos().is_some());
    let mut fires = vec![0usize; cfg.d_sae];
    let (mut sq_err, mut sum_y, mut sum_y2, mut tokens, mut active) = (0f64, vec![0f64; cfg.d_out], 0f64, 0usize, 0usize);
    let mut ce = [(0f64, 0usize); 3];
    for rows in seqs.chunks(per_forward.max(1)) {
        let batch = Batch::new(rows)?;
        let clean = model.forward(&batch, &Hooks::new().cache([read, write]))?;
        let (b, n) = (rows.len(), rows[0].len());
        let x = clean.cache.get(read)?.to_dtype(DType::F32)?;
        let y_full = clean.cache.get(write)?.to_dtype(DType::F32)?;
        let shape = y_full.dims().to_vec();
        let x = x.reshape((b, n, ()))?.narrow(1, skip, n - skip)?;
        let y = y_full.reshape((b, n, ()))?.narrow(1, skip, n - skip)?.reshape(((), cfg.d_out))?;
        let xr = sae.rows(&x.reshape(((), x.dim(2)?))?)?;
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
        // Loss with the reconstruction, and with zeros, at every position but BOS.
        let splice = |rows_value: &Tensor| -> Result<Tensor> {
            let body = rows_value.reshape((b, n - skip, ()))?;
            let full = if skip == 1 { Tensor::cat(&[y_full.reshape((b, n, ()))?.narrow(1, 0, 1)?, body], 1)? } else { body };
            Ok(full.reshape(shape.as_slice())?.to_dtype(model.weights.dtype())?)
        };
        let with_sae = model.forward(&batch, &Hooks::new().intervene(Intervention::new(write, Action::Replace(splice(&recon)?))))?;
        let zero = model.forward(&batch, &Hooks::new().intervene(Intervention::new(write, Action::Replace(splice(&recon.zeros_like()?)?))))?;
        for (i, out) in [&clean, &with_sae, &zero].into_iter().enumerate() {
            let (t, c) = cross_entropy(&out.logits, rows)?;
            ce[i].0 += t;
            ce[i].1 += c;
        }
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
