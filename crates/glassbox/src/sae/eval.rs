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

/// Adds the runs' summed next-token losses and counts (clean, replaced, zeroed) to `ce`.
fn add_losses(ce: &mut [(f64, usize); 3], runs: [&crate::model::ForwardOutput; 3], rows: &[Vec<u32>]) -> Result<()> {
    for (acc, out) in ce.iter_mut().zip(runs) {
        let (t, c) = cross_entropy(&out.logits, rows)?;
        acc.0 += t;
        acc.1 += c;
    }
    Ok(())
}

/// Error when the text left no position to evaluate.
fn no_positions(tokens: usize) -> Result<()> {
    if tokens == 0 {
        return Err(Error::Invalid("the text gives no positions to evaluate: every position is a sequence start or a special token".into()));
    }
    Ok(())
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
        add_losses(&mut ce, [&clean, &with_sae, &zero], rows)?;
    }
    no_positions(tokens)?;
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

/// One layer's figures in `evaluate_set`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerEval {
    /// The layer.
    pub layer: usize,
    /// `1 − Σ ‖y − ŷ‖² / Σ ‖y − ȳ‖²` of its transcoder on the clean run's MLP input and output.
    pub explained_variance: f32,
    /// Mean active features per token.
    pub l0: f32,
    /// Features never active on the text.
    pub dead_fraction: f32,
}

/// Result of `evaluate_set`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetEval {
    /// Positions evaluated (sequence starts and special tokens left out).
    pub tokens: usize,
    /// Each layer's transcoder on the clean run.
    pub layers: Vec<LayerEval>,
    /// Mean explained variance over the layers.
    pub mean_explained_variance: f32,
    /// Mean next-token cross-entropy of the model.
    pub ce_clean: f32,
    /// With every MLP replaced by its transcoder at once (each reading the replaced model's
    /// own MLP input): the replacement model's loss.
    pub ce_replaced: f32,
    /// With every MLP output zeroed.
    pub ce_zero: f32,
    /// `(ce_zero − ce_replaced) / (ce_zero − ce_clean)`.
    pub ce_loss_recovered: f32,
}

/// Evaluates a transcoder set on the sequences, `per_forward` at a time: each layer's
/// reconstruction on the clean run, and the replacement model's loss with every MLP replaced
/// at once (at the kept positions, as `evaluate` does for one).
pub fn evaluate_set(model: &Model, set: &super::set::TranscoderSet, seqs: &[Vec<u32>], per_forward: usize) -> Result<SetEval> {
    use std::sync::{Arc, Mutex};
    set.check(model)?;
    if seqs.is_empty() {
        return Err(Error::Invalid("no text to evaluate on: the corpus is shorter than one sequence".into()));
    }
    let n_layers = set.transcoders.len();
    let shared: Vec<Arc<Sae>> = set.transcoders.iter().map(|t| Arc::new(t.clone())).collect();
    let excluded = super::corpus::excluded_tokens(model);
    let d_sae = |l: usize| set.transcoders[l].cfg.d_sae;
    let mut fires: Vec<Vec<usize>> = (0..n_layers).map(|l| vec![0usize; d_sae(l)]).collect();
    let mut sq_err = vec![0f64; n_layers];
    let mut sum_y: Vec<Vec<f64>> = (0..n_layers).map(|l| vec![0f64; set.transcoders[l].cfg.d_out]).collect();
    let mut sum_y2 = vec![0f64; n_layers];
    let mut active = vec![0usize; n_layers];
    let mut tokens = 0usize;
    let mut ce = [(0f64, 0usize); 3];
    for rows in seqs.chunks(per_forward.max(1)) {
        crate::controls::check()?;
        let batch = Batch::new(rows)?;
        let points: Vec<_> = set.transcoders.iter().flat_map(|t| [t.cfg.hook, t.cfg.hook_out.unwrap_or(t.cfg.hook)]).collect();
        let clean = model.forward(&batch, &Hooks::new().cache(points))?;
        let kept = super::corpus::kept_rows(rows, &excluded)?;
        let mut n_kept = 0;
        for (l, t) in set.transcoders.iter().enumerate() {
            let x = clean.cache.get(t.cfg.hook)?.to_dtype(DType::F32)?;
            let y = clean.cache.get(t.cfg.hook_out.unwrap_or(t.cfg.hook))?.to_dtype(DType::F32)?;
            let flat = |v: &Tensor| -> Result<Tensor> { Ok(v.reshape(((), v.dim(D::Minus1)?))?.index_select(&kept, 0)?) };
            let (xr, y) = (t.rows(&flat(&x)?)?, flat(&y)?);
            let enc = t.encode(&xr)?;
            let recon = t.output(&xr, &enc)?;
            sq_err[l] += (&y - &recon)?.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let yv = y.to_dtype(DType::F64)?;
            for (s, v) in sum_y[l].iter_mut().zip(yv.sum(0)?.to_vec1::<f64>()?) {
                *s += v;
            }
            sum_y2[l] += yv.sqr()?.sum_all()?.to_scalar::<f64>()?;
            let on = enc.acts.gt(0f32)?.to_dtype(DType::F32)?;
            active[l] += on.sum_all()?.to_scalar::<f32>()? as usize;
            for (f, c) in fires[l].iter_mut().zip(on.sum(0)?.to_vec1::<f32>()?) {
                *f += c as usize;
            }
            n_kept = y.dim(0)?;
        }
        tokens += n_kept;
        // Every MLP replaced at once: each transcoder reads the input of this very run.
        let mut replaced = Hooks::new();
        let mut zeroed = Hooks::new();
        for (l, t) in shared.iter().enumerate() {
            let slot: Arc<Mutex<Option<Tensor>>> = Arc::default();
            let keep = slot.clone();
            replaced = replaced.hook(t.cfg.hook, move |x, _| {
                *keep.lock().map_err(|_| Error::Invalid("a poisoned lock".into()))? = Some(x.clone());
                Ok(x.clone())
            });
            let (t2, kept2) = (t.clone(), kept.clone());
            let out_hook = t.cfg.hook_out.unwrap_or(t.cfg.hook);
            replaced = replaced.hook(out_hook, move |y, _| {
                let x = slot.lock().map_err(|_| Error::Invalid("a poisoned lock".into()))?.take().ok_or_else(|| Error::Invalid(format!("layer {l}: the transcoder's input was not seen before its output")))?;
                let shape = y.dims().to_vec();
                let y_rows = y.reshape(((), shape[shape.len() - 1]))?.to_dtype(DType::F32)?;
                let xr = t2.rows(&x.reshape(((), x.dim(D::Minus1)?))?.index_select(&kept2, 0)?)?;
                let recon = t2.output(&xr, &t2.encode(&xr)?)?;
                let delta = (recon - y_rows.index_select(&kept2, 0)?)?;
                Ok(y_rows.index_add(&kept2, &delta, 0)?.reshape(shape.as_slice())?.to_dtype(y.dtype())?)
            });
            let kept3 = kept.clone();
            zeroed = zeroed.hook(out_hook, move |y, _| {
                let shape = y.dims().to_vec();
                let y_rows = y.reshape(((), shape[shape.len() - 1]))?;
                let delta = y_rows.index_select(&kept3, 0)?.neg()?;
                Ok(y_rows.index_add(&kept3, &delta, 0)?.reshape(shape.as_slice())?)
            });
        }
        let with_set = model.forward(&batch, &replaced)?;
        let zero = model.forward(&batch, &zeroed)?;
        add_losses(&mut ce, [&clean, &with_set, &zero], rows)?;
    }
    no_positions(tokens)?;
    let layers: Vec<LayerEval> = (0..n_layers)
        .map(|l| {
            let mean_y2: f64 = sum_y[l].iter().map(|s| s * s).sum::<f64>() / tokens as f64;
            let var = sum_y2[l] - mean_y2;
            LayerEval {
                layer: l,
                explained_variance: (1.0 - sq_err[l] / var.max(f64::MIN_POSITIVE)) as f32,
                l0: active[l] as f32 / tokens as f32,
                dead_fraction: fires[l].iter().filter(|&&f| f == 0).count() as f32 / d_sae(l) as f32,
            }
        })
        .collect();
    let [c, s, z] = ce.map(|(t, n)| (t / n.max(1) as f64) as f32);
    Ok(SetEval {
        tokens,
        mean_explained_variance: layers.iter().map(|l| l.explained_variance).sum::<f32>() / n_layers.max(1) as f32,
        layers,
        ce_clean: c,
        ce_replaced: s,
        ce_zero: z,
        ce_loss_recovered: if (z - c).abs() > 1e-9 { (z - s) / (z - c) } else { f32::NAN },
    })
}
