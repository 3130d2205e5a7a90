//! Training TopK and BatchTopK sparse autoencoders and transcoders on a model's activations
//! (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; Bussmann et al. 2024 for
//! BatchTopK).
//!
//! - Activations stream from a text corpus (`corpus::ActivationStream`) into a bounded buffer
//!   of `buffer` rows; each step draws `batch_size` random rows from it and refills those
//!   slots from the stream, so batches mix many sequences.
//! - Inputs are scaled by one factor `s = √d_in / mean ‖x‖` (measured on the first buffer) so
//!   the learning rate means the same for every model; the factor is folded into the saved
//!   weights, which then read raw activations.
//! - Encoder `h = (x − b_dec) W_enc + b_enc` (transcoders: no `b_dec` on the input); TopK
//!   keeps the `k` largest `h` per row (then ReLU); BatchTopK keeps the `k · batch` largest over
//!   the batch and tracks a threshold (an average of the smallest kept activation), used at
//!   inference as a JumpReLU.
//! - Loss: mean squared error of the reconstruction, plus `aux_coef` × the auxiliary-k loss:
//!   the `k_aux = d_in / 2` largest pre-activations of the dead latents (not active for
//!   `dead_after` tokens) reconstructing the residual error, which revives dead latents.
//! - Adam (β = 0.9, 0.999); decoder rows kept at unit norm, with the gradient's component
//!   along each row removed before the step; `W_enc` initialised to `W_decᵀ`, `b_dec` to the
//!   mean of the first buffer.
//! - Checkpoints every `checkpoint_every` steps (the SAE in SAELens' format plus the trainer's
//!   state), from which `resume` continues: same weights, optimiser moments, step, dead-latent
//!   counters and place in the corpus (the buffer is refilled from there).
//!
//! The result is written in SAELens' 6.x format: a TopK SAE as `topk`, a BatchTopK SAE as
//! `jumprelu` with its threshold (as SAELens saves it), a transcoder as `jumprelu_transcoder`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::corpus::ActivationStream;
use crate::error::{Error, Result};
use crate::model::{HookPoint, Model};
use crate::rng::Rng;

/// How features are chosen in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sparsity {
    /// The `k` largest per row.
    TopK,
    /// The `k · batch` largest over the batch.
    BatchTopK,
}

/// Options of `train`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainOptions {
    /// Features.
    pub d_sae: usize,
    /// Active features per token.
    pub k: usize,
    /// TopK or BatchTopK (transcoders train as BatchTopK).
    pub sparsity: Sparsity,
    /// Activations per step.
    pub batch_size: usize,
    /// Adam's learning rate; by default `2e-4 / √(d_sae / 2¹⁴)` (Gao et al.).
    pub lr: Option<f64>,
    /// Tokens to train on (the corpus is read once, then again from its start if needed).
    pub tokens: usize,
    /// Tokens per sequence.
    pub context: usize,
    /// Sequences per forward pass of the model.
    pub seqs_per_forward: usize,
    /// Rows in the shuffling buffer.
    pub buffer: usize,
    /// Weight of the auxiliary-k loss.
    pub aux_coef: f64,
    /// A latent is dead after this many tokens without firing.
    pub dead_after: usize,
    /// Steps between checkpoints (0: none).
    pub checkpoint_every: usize,
    /// Seed of the initialisation and the buffer's draws.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            d_sae: 4096,
            k: 32,
            sparsity: Sparsity::TopK,
            batch_size: 1024,
            lr: None,
            tokens: 200_000,
            context: 128,
            seqs_per_forward: 8,
            buffer: 32_768,
            aux_coef: 1.0 / 32.0,
            dead_after: 100_000,
            checkpoint_every: 100,
            seed: 0,
        }
    }
}

/// What the trainer reports after each step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// Steps done.
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Tokens trained on.
    pub tokens: usize,
    /// Reconstruction MSE as a fraction of the batch's variance (1 − explained variance).
    pub fvu: f32,
    /// Auxiliary loss (0 without dead latents).
    pub aux_loss: f32,
    /// Mean active features per token.
    pub l0: f32,
    /// Fraction of latents dead.
    pub dead_fraction: f32,
}

/// The trainer's state, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: usize,
    tokens: usize,
    position: usize,
    scale_in: f64,
    scale_out: f64,
    threshold: f64,
    rng: u64,
    options: TrainOptions,
    hook_in: String,
    hook_out: Option<String>,
    model: String,
}

struct Params {
    w_enc: Var,
    b_enc: Var,
    w_dec: Var,
    b_dec: Var,
}

impl Params {
    fn all(&self) -> [&Var; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }
}

const NAMES: [&str; 4] = ["W_enc", "b_enc", "W_dec", "b_dec"];

/// Where an SAE trains and where it goes: its hook points (a transcoder's target in
/// `hook_out`), the output folder, and whether to continue the checkpoint there.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    /// Where it reads.
    pub hook_in: HookPoint,
    /// A transcoder's target (`None` for an SAE).
    pub hook_out: Option<HookPoint>,
    /// The output folder.
    pub out: &'a Path,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
}

/// What a checkpoint or a saved SAE is made of.
struct Snapshot<'a> {
    params: &'a Params,
    moments: &'a [(Tensor, Tensor)],
    state: &'a State,
    last_fired: &'a [usize],
    sparsity: Sparsity,
}

/// Trains an SAE (or a transcoder when `site.hook_out` is given) and writes it to `site.out` in
/// SAELens' format; `site.resume` continues from the checkpoint there. `report` sees every step
/// and returns false to stop the run: a checkpoint is written and the error says how to resume.
pub fn train(model: &Model, site: &Site, seqs: Vec<Vec<u32>>, opts: &TrainOptions, report: &mut dyn FnMut(&StepReport) -> bool) -> Result<PathBuf> {
    let Site { hook_in, hook_out, out, resume } = *site;
    let d_in = super::hook_width(model, hook_in)?;
    let d_out = hook_out.map(|h| super::hook_width(model, h)).transpose()?.unwrap_or(d_in);
    check_options(opts, d_in)?;
    let transcoder = hook_out.is_some();
    let sparsity = if transcoder { Sparsity::BatchTopK } else { opts.sparsity };
    let dev = Device::Cpu;
    let (n, k) = (opts.d_sae, opts.k);
    let lr = opts.lr.unwrap_or(2e-4 / ((n as f64) / 16384.0).sqrt());
    let total_steps = opts.tokens.div_ceil(opts.batch_size);

    // The sequences in a seeded order (the same on --resume), so that a run shorter than the
    // corpus sees all of its parts.
    let mut rng = Rng::new(opts.seed);
    let mut seqs = seqs;
    rng.shuffle(&mut seqs);
    let mut stream = ActivationStream::new(model, seqs, 0, opts.seqs_per_forward, hook_in, hook_out)?;
    let ckpt = out.join("checkpoint");
    let (params, mut moments, mut state, mut last_fired) = if resume {
        load_checkpoint(&ckpt, model, hook_in, hook_out, opts)?
    } else {
        let w_dec = unit_rows(&Tensor::from_vec((0..n * d_out).map(|_| rng.gaussian() as f32).collect::<Vec<_>>(), (n, d_out), &dev)?)?;
        let w_enc = if transcoder {
            unit_rows(&Tensor::from_vec((0..n * d_in).map(|_| rng.gaussian() as f32).collect::<Vec<_>>(), (n, d_in), &dev)?)?.t()?.contiguous()?
        } else {
            w_dec.t()?.contiguous()?
        };
        let params = Params { w_enc: Var::from_tensor(&w_enc)?, b_enc: Var::zeros(n, DType::F32, &dev)?, w_dec: Var::from_tensor(&w_dec)?, b_dec: Var::zeros(d_out, DType::F32, &dev)? };
        let moments = params.all().iter().map(|p| Ok((p.zeros_like()?, p.zeros_like()?))).collect::<Result<Vec<_>>>()?;
        let state = State {
            step: 0,
            tokens: 0,
            position: 0,
            scale_in: 0.0,
            scale_out: 0.0,
            threshold: 0.0,
            rng: 0,
            options: opts.clone(),
            hook_in: hook_in.to_string(),
            hook_out: hook_out.map(|h| h.to_string()),
            model: model.name().to_string(),
        };
        (params, moments, state, vec![0usize; n])
    };
    if resume {
        rng = Rng::new(state.rng);
    }
    stream.position = state.position;

    // Fill the buffer.
    let mut buf_x: Vec<f32> = Vec::with_capacity(opts.buffer * d_in);
    let mut buf_y: Vec<f32> = Vec::with_capacity(if transcoder { opts.buffer * d_out } else { 0 });
    let mut pending: Vec<(Tensor, Option<Tensor>)> = Vec::new();
    let mut next_rows = |stream: &mut ActivationStream, need: usize| -> Result<(Vec<f32>, Vec<f32>)> {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let mut got = 0;
        // Rows read since the corpus last started over: a whole pass with none cannot feed training.
        let (mut read_this_pass, mut empty_ends) = (0usize, 0usize);
        while got < need {
            if pending.is_empty() {
                match stream.next_batch()? {
                    Some(b) => {
                        read_this_pass += b.0.dim(0)?;
                        pending.push(b);
                    }
                    None => {
                        if read_this_pass == 0 {
                            empty_ends += 1;
                            if empty_ends > 1 {
                                return Err(Error::Invalid("the corpus gives no activations: every position is a sequence start or a special token".into()));
                            }
                        }
                        stream.position = 0; // the corpus again from its start
                        read_this_pass = 0;
                        continue;
                    }
                }
            }
            let (x, y) = pending.remove(0);
            let rows = x.dim(0)?;
            let take = rows.min(need - got);
            xs.extend(x.narrow(0, 0, take)?.flatten_all()?.to_vec1::<f32>()?);
            if let Some(y) = &y {
                ys.extend(y.narrow(0, 0, take)?.flatten_all()?.to_vec1::<f32>()?);
            }
            if take < rows {
                pending.insert(0, (x.narrow(0, take, rows - take)?, y.map(|y| y.narrow(0, take, rows - take)).transpose()?));
            }
            got += take;
        }
        Ok((xs, ys))
    };
    let (x0, y0) = next_rows(&mut stream, opts.buffer)?;
    buf_x.extend(x0);
    buf_y.extend(y0);
    if state.step == 0 {
        let mean_norm = |v: &[f32], d: usize| -> f64 { v.chunks(d).map(|r| r.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>().sqrt()).sum::<f64>() / (v.len() / d) as f64 };
        state.scale_in = (d_in as f64).sqrt() / mean_norm(&buf_x, d_in).max(1e-12);
        state.scale_out = if transcoder { (d_out as f64).sqrt() / mean_norm(&buf_y, d_out).max(1e-12) } else { state.scale_in };
        // b_dec starts at the mean target.
        let (src, d, s) = if transcoder { (&buf_y, d_out, state.scale_out) } else { (&buf_x, d_in, state.scale_in) };
        let mut mean = vec![0f64; d];
        for r in src.chunks(d) {
            for (m, &a) in mean.iter_mut().zip(r) {
                *m += a as f64;
            }
        }
        let rows = (src.len() / d) as f64;
        params.b_dec.set(&Tensor::from_vec(mean.iter().map(|m| (m / rows * s) as f32).collect::<Vec<_>>(), d, &dev)?)?;
    }

    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let k_aux = (d_in / 2).max(1);
    while state.step < total_steps {
        // A batch: random rows of the buffer, replaced by new ones.
        let idx: Vec<usize> = (0..opts.batch_size).map(|_| rng.below(opts.buffer)).collect();
        let gather = |buf: &[f32], d: usize| -> Result<Tensor> {
            let mut v = Vec::with_capacity(idx.len() * d);
            for &i in &idx {
                v.extend_from_slice(&buf[i * d..(i + 1) * d]);
            }
            Ok(Tensor::from_vec(v, (idx.len(), d), &dev)?)
        };
        let x = (gather(&buf_x, d_in)? * state.scale_in)?;
        let y = if transcoder { (gather(&buf_y, d_out)? * state.scale_out)? } else { x.clone() };
        let t0 = std::time::Instant::now();
        let (fx, fy) = next_rows(&mut stream, idx.len())?;
        let t_fwd = t0.elapsed();
        for (j, &i) in idx.iter().enumerate() {
            buf_x[i * d_in..(i + 1) * d_in].copy_from_slice(&fx[j * d_in..(j + 1) * d_in]);
            if transcoder {
                buf_y[i * d_out..(i + 1) * d_out].copy_from_slice(&fy[j * d_out..(j + 1) * d_out]);
            }
        }

        let xin = if transcoder { x.clone() } else { x.broadcast_sub(params.b_dec.as_tensor())? };
        let h = xin.matmul(params.w_enc.as_tensor())?.broadcast_add(params.b_enc.as_tensor())?;
        let h_vals = h.detach().to_vec2::<f32>()?;
        let (mask, min_kept) = match sparsity {
            Sparsity::TopK => (topk_mask(&h_vals, k)?, None),
            Sparsity::BatchTopK => {
                let (m, t) = batch_topk_mask(&h_vals, k * h_vals.len())?;
                (m, Some(t))
            }
        };
        let f = (h.relu()? * &mask)?;
        let recon = f.matmul(params.w_dec.as_tensor())?.broadcast_add(params.b_dec.as_tensor())?;
        let err = (&y - &recon)?;
        let mse = err.sqr()?.sum(D::Minus1)?.mean_all()?;
        let var = y.broadcast_sub(&y.mean_keepdim(0)?)?.sqr()?.sum(D::Minus1)?.mean_all()?;
        // Dead latents and the auxiliary loss.
        let tokens_now = state.tokens + idx.len();
        let active_rows = mask.to_dtype(DType::F32)?.sum(0)?.to_vec1::<f32>()?;
        let f_pos = f.detach().gt(0f32)?.to_dtype(DType::F32)?.sum(0)?.to_vec1::<f32>()?;
        for (j, &a) in f_pos.iter().enumerate() {
            if a > 0.0 {
                last_fired[j] = tokens_now;
            }
        }
        let dead: Vec<bool> = last_fired.iter().map(|&t| tokens_now.saturating_sub(t) > opts.dead_after).collect();
        let n_dead = dead.iter().filter(|&&d| d).count();
        let mut loss = mse.clone();
        let mut aux_value = 0f32;
        if n_dead > 0 && opts.aux_coef > 0.0 {
            let ka = k_aux.min(n_dead);
            let masked: Vec<Vec<f32>> = h_vals.iter().map(|r| r.iter().zip(&dead).map(|(&v, &d)| if d { v } else { f32::NEG_INFINITY }).collect()).collect();
            let aux_mask = topk_mask(&masked, ka)?;
            let f_aux = (h.relu()? * &aux_mask)?;
            let e_hat = f_aux.matmul(params.w_dec.as_tensor())?;
            let aux = (err.detach() - e_hat)?.sqr()?.sum(D::Minus1)?.mean_all()?;
            let scale = (n_dead as f64 / k_aux as f64).min(1.0);
            aux_value = aux.to_scalar::<f32>()? / var.to_scalar::<f32>()?.max(f32::MIN_POSITIVE);
            loss = (loss + (aux * (opts.aux_coef * scale))?)?;
        }
        let t_loss = t0.elapsed();
        let grads = loss.backward()?;
        let t_back = t0.elapsed();
        state.step += 1;
        let t = state.step as i32;
        for (i, p) in params.all().into_iter().enumerate() {
            // Plain values from here: no graph may reach across steps.
            let Some(mut g) = grads.get(p).map(Tensor::detach) else { continue };
            if i == 2 {
                // Keep the decoder rows on the unit sphere: drop the gradient along each row.
                let w = p.as_tensor();
                let along = (&g * w)?.sum_keepdim(1)?;
                g = (g - w.broadcast_mul(&along)?)?;
            }
            let (m, v) = &mut moments[i];
            *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?.detach();
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?.detach();
            let mh = (&*m / (1.0 - b1.powi(t)))?;
            let vh = (&*v / (1.0 - b2.powi(t)))?;
            let step = (mh / (vh.sqrt()? + eps)?)?;
            p.set(&(p.as_tensor().detach() - (step * lr)?)?.detach())?;
        }
        params.w_dec.set(&unit_rows(&params.w_dec.as_tensor().detach())?.detach())?;
        if std::env::var("GLASSBOX_TRAIN_TIMING").is_ok() {
            eprintln!("step {}: model {:?}, loss {:?}, backward {:?}, adam {:?}", state.step, t_fwd, t_loss - t_fwd, t_back - t_loss, t0.elapsed() - t_back);
        }
        if let Some(m) = min_kept {
            state.threshold = if state.step == 1 { m } else { 0.99 * state.threshold + 0.01 * m };
        }
        state.tokens = tokens_now;
        let fvu = mse.to_scalar::<f32>()? / var.to_scalar::<f32>()?.max(f32::MIN_POSITIVE);
        if !fvu.is_finite() {
            return Err(Error::NonFinite(format!("the training loss became {fvu} at step {}; lower the learning rate (--lr)", state.step)));
        }
        let go_on = report(&StepReport {
            step: state.step,
            total_steps,
            tokens: state.tokens,
            fvu,
            aux_loss: aux_value,
            l0: active_rows.iter().sum::<f32>() / idx.len() as f32,
            dead_fraction: n_dead as f32 / n as f32,
        });
        let checkpoint_due = opts.checkpoint_every > 0 && state.step % opts.checkpoint_every == 0;
        if (checkpoint_due || !go_on) && state.step < total_steps {
            state.position = stream.position;
            state.rng = rng.next_u64();
            rng = Rng::new(state.rng);
            save_checkpoint(&ckpt, &Snapshot { params: &params, moments: &moments, state: &state, last_fired: &last_fired, sparsity }, model, site)?;
        }
        if !go_on && state.step < total_steps {
            return Err(Error::Invalid(format!(
                "training stopped at step {} of {total_steps}; the checkpoint in {} continues it (run the same command with --resume)",
                state.step,
                crate::error::printable(&ckpt.display())
            )));
        }
    }
    save_sae(out, &Snapshot { params: &params, moments: &moments, state: &state, last_fired: &last_fired, sparsity }, model, site)?;
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok(out.to_path_buf())
}

fn check_options(o: &TrainOptions, d_in: usize) -> Result<()> {
    let count = crate::limits::check_count;
    count("d_sae", o.d_sae, 1..=1 << 20)?;
    count("k", o.k, 1..=o.d_sae)?;
    count("batch_size", o.batch_size, 1..=1 << 20)?;
    count("buffer", o.buffer, o.batch_size..=1 << 24)?;
    count("tokens", o.tokens, 1..=1 << 40)?;
    count("seqs_per_forward", o.seqs_per_forward, 1..=1024)?;
    if let Some(lr) = o.lr {
        if !(lr > 0.0 && lr < 1.0) {
            return Err(Error::Invalid(format!("learning rate {lr}: give a number between 0 and 1")));
        }
    }
    if !(o.aux_coef >= 0.0 && o.aux_coef <= 100.0) {
        return Err(Error::Invalid(format!("aux_coef {}: give 0 to 100", o.aux_coef)));
    }
    let bytes = (o.buffer as u128) * (d_in as u128) * 8 + (o.d_sae as u128) * (d_in as u128) * 4 * 8;
    if bytes > 64u128 << 30 {
        return Err(Error::Invalid(format!("the buffer and the SAE would take {} GiB; give a smaller --buffer or --d-sae", bytes >> 30)));
    }
    Ok(())
}

/// Rows scaled to unit norm.
fn unit_rows(w: &Tensor) -> Result<Tensor> {
    let n = w.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    Ok(w.broadcast_div(&n)?)
}

/// 1 at the `k` largest values of each row (never at −∞), 0 elsewhere.
fn topk_mask(h: &[Vec<f32>], k: usize) -> Result<Tensor> {
    super::top_k_map(h, k, |v, on| if on && v > f32::NEG_INFINITY { 1.0 } else { 0.0 })
}

/// 1 at the `n` largest positive values of the whole batch; and the smallest kept value.
fn batch_topk_mask(h: &[Vec<f32>], n: usize) -> Result<(Tensor, f64)> {
    let d = h.first().map_or(0, Vec::len);
    let mut flat: Vec<f32> = h.iter().flatten().copied().collect();
    let n = n.min(flat.len()).max(1);
    let pos = flat.len() - n;
    let (_, &mut cut, _) = flat.select_nth_unstable_by(pos, |a, b| a.total_cmp(b));
    let cut = cut.max(0.0);
    let out: Vec<f32> = h.iter().flatten().map(|&v| if v >= cut && v > 0.0 { 1.0 } else { 0.0 }).collect();
    let min_kept = h.iter().flatten().filter(|&&v| v >= cut && v > 0.0).fold(f32::INFINITY, |m, &v| m.min(v));
    Ok((Tensor::from_vec(out, (h.len(), d), &Device::Cpu)?, if min_kept.is_finite() { min_kept as f64 } else { 0.0 }))
}

/// Writes a checkpoint folder whole or not at all: `fill` writes the tensors (and whatever else
/// the trainer keeps) into a fresh sibling `DIR.tmp`, the trainer's `state` goes to its
/// `trainer_state.json`, and the folder then replaces `dir`. Shared by the SAE and the
/// transcoder-set trainers.
pub(super) fn write_checkpoint_dir<S: Serialize>(dir: &Path, state: &S, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(tmp.join("trainer_state.json"), json).map_err(|e| Error::io(&tmp, e))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

/// The trainer's state from a checkpoint folder's `trainer_state.json`; a missing one asks to
/// start without `--resume`.
pub(super) fn read_checkpoint_state<S: serde::de::DeserializeOwned>(dir: &Path) -> Result<S> {
    let path = dir.join("trainer_state.json");
    let text = crate::model::load::read_json_text(&path, 1 << 20)
        .map_err(|e| Error::Invalid(format!("no checkpoint to resume in {} ({e}); start without --resume", crate::error::printable(&dir.display()))))?;
    serde_json::from_str(&text).map_err(|e| Error::Corrupt { path, detail: e.to_string() })
}

fn save_checkpoint(dir: &Path, snap: &Snapshot, model: &Model, site: &Site) -> Result<()> {
    let Snapshot { params: p, moments, state, last_fired, .. } = *snap;
    write_checkpoint_dir(dir, state, |tmp| {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (i, name) in NAMES.iter().enumerate() {
            t.insert(name.to_string(), p.all()[i].as_tensor().clone());
            t.insert(format!("adam_m.{name}"), moments[i].0.clone());
            t.insert(format!("adam_v.{name}"), moments[i].1.clone());
        }
        t.insert("last_fired".into(), Tensor::from_vec(last_fired.iter().map(|&x| x as f64).collect::<Vec<_>>(), last_fired.len(), &Device::Cpu)?);
        candle_core::safetensors::save(&t, tmp.join("trainer_state.safetensors"))?;
        // The SAE as it stands, loadable on its own.
        save_sae(&tmp.join("sae"), snap, model, site)
    })
}

type Loaded = (Params, Vec<(Tensor, Tensor)>, State, Vec<usize>);

fn load_checkpoint(dir: &Path, model: &Model, hook_in: HookPoint, hook_out: Option<HookPoint>, opts: &TrainOptions) -> Result<Loaded> {
    let state: State = read_checkpoint_state(dir)?;
    let same = state.hook_in == hook_in.to_string() && state.hook_out == hook_out.map(|h| h.to_string()) && state.model == model.name();
    let o = &state.options;
    if !same || o.d_sae != opts.d_sae || o.k != opts.k || o.sparsity != opts.sparsity || o.batch_size != opts.batch_size || o.context != opts.context {
        return Err(Error::Invalid(format!(
            "the checkpoint in {} was made for {} at {} with d_sae {}, k {}, batch {}, context {}; resume with the same model, hook points and sizes",
            crate::error::printable(&dir.display()), state.model, state.hook_in, o.d_sae, o.k, o.batch_size, o.context
        )));
    }
    let t = crate::model::load::read_small_safetensors(&dir.join("trainer_state.safetensors"))?;
    let get = |n: &str| -> Result<Tensor> { t.get(n).cloned().ok_or_else(|| Error::Corrupt { path: dir.to_path_buf(), detail: format!("no `{n}` in the checkpoint") }) };
    let params = Params { w_enc: Var::from_tensor(&get("W_enc")?)?, b_enc: Var::from_tensor(&get("b_enc")?)?, w_dec: Var::from_tensor(&get("W_dec")?)?, b_dec: Var::from_tensor(&get("b_dec")?)? };
    if params.w_enc.dims() != [super::hook_width(model, hook_in)?, opts.d_sae] {
        return Err(Error::Corrupt { path: dir.to_path_buf(), detail: "W_enc's shape does not match the options".into() });
    }
    let moments = NAMES.iter().map(|n| Ok((get(&format!("adam_m.{n}"))?, get(&format!("adam_v.{n}"))?))).collect::<Result<Vec<_>>>()?;
    let last_fired = get("last_fired")?.to_vec1::<f64>()?.into_iter().map(|x| x as usize).collect::<Vec<_>>();
    if last_fired.len() != opts.d_sae {
        return Err(Error::Corrupt { path: dir.to_path_buf(), detail: "last_fired's length does not match d_sae".into() });
    }
    Ok((params, moments, state, last_fired))
}

/// Writes the SAE in SAELens' 6.x format, the input scaling folded into the weights.
fn save_sae(dir: &Path, snap: &Snapshot, model: &Model, site: &Site) -> Result<()> {
    let Snapshot { params: p, state, sparsity, .. } = *snap;
    let (hook_in, hook_out, k) = (site.hook_in, site.hook_out, state.options.k);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (si, so) = (state.scale_in, state.scale_out);
    let transcoder = hook_out.is_some();
    // Trained on x·s_in (targets y·s_out): encode(x) = ((x·s_in − b) W + c) = ((x − b/s_in)(s_in W) + c);
    // decode = (f W_dec + b) / s_out.
    let w_enc = (p.w_enc.as_tensor() * si)?;
    let w_dec = (p.w_dec.as_tensor() / so)?;
    let b_dec = (p.b_dec.as_tensor() / so)?;
    let b_enc = p.b_enc.as_tensor().clone();
    let d_sae = w_enc.dim(1)?;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("W_enc".into(), w_enc.contiguous()?);
    t.insert("W_dec".into(), w_dec.contiguous()?);
    t.insert("b_enc".into(), b_enc);
    t.insert("b_dec".into(), b_dec);
    let architecture = match (transcoder, sparsity) {
        (true, _) => "jumprelu_transcoder",
        (false, Sparsity::TopK) => "topk",
        (false, Sparsity::BatchTopK) => "jumprelu",
    };
    if architecture != "topk" {
        // The BatchTopK threshold, on the pre-activations the saved weights compute.
        t.insert("threshold".into(), Tensor::full(state.threshold as f32, d_sae, &Device::Cpu)?);
    }
    candle_core::safetensors::save(&t, dir.join("sae_weights.safetensors"))?;
    let mut metadata = json!({
        "sae_lens_version": "6.0.0",
        "sae_lens_training_version": "6.0.0",
        "trained_with": format!("glassbox {}", env!("CARGO_PKG_VERSION")),
        "model_name": model.name(),
        "hook_name": hook_in.to_string(),
        "prepend_bos": model.tokenizer().bos().is_some(),
        "context_size": state.options.context,
        "training_tokens": state.tokens,
        "training_architecture": match sparsity { Sparsity::TopK => "topk", Sparsity::BatchTopK => "batchtopk" },
    });
    if let Some(h) = hook_out {
        metadata["hook_name_out"] = json!(h.to_string());
    }
    let mut cfg = json!({
        "architecture": architecture,
        "d_in": w_enc.dim(0)?,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": !transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    });
    if architecture == "topk" {
        cfg["k"] = json!(k);
        cfg["rescale_acts_by_decoder_norm"] = json!(false);
    }
    if transcoder {
        cfg["d_out"] = json!(p.w_dec.dim(1)?);
    }
    std::fs::write(dir.join("cfg.json"), serde_json::to_string_pretty(&cfg).map_err(|e| Error::Invalid(e.to_string()))?).map_err(|e| Error::io(dir, e))?;
    Ok(())
}
