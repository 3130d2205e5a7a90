//! Training a whole set of per-layer transcoders (PLT: one transcoder per MLP, as the
//! attribution graphs of Ameisen et al. 2025 replace every MLP) from one pass over a corpus:
//! every layer's MLP input (`blocks.{l}.ln2.hook_normalized`) and output
//! (`blocks.{l}.hook_mlp_out`) come from the same forward pass, so the model runs once per
//! batch for all layers.
//!
//! The objective is `train.rs`'s for a BatchTopK transcoder (reconstruction MSE plus the
//! auxiliary-k loss on dead latents, unit-norm decoder rows with the parallel gradient
//! removed, Adam, inputs and targets scaled to norm √d and the factors folded into the saved
//! weights, the BatchTopK threshold tracked for inference as a JumpReLU), written by hand
//! instead of through autograd because only `k` of `d_sae` latents are active per token: the
//! encoder product is the one dense step; decoding and every gradient touch the active latents
//! only (a step costs about `2·B·d_in·d_sae` for the encoder plus `O(B·k·d)`, where autograd
//! paid the dense decoder and its backward three more times). Thirty layers at once then cost
//! about what the model's own forward does.
//!
//! Checkpoints (weights, Adam moments, dead-latent counters, step, place in the corpus, the
//! generator's state) every `checkpoint_every` steps and when `report` asks to stop; `resume`
//! continues from them with the same result as an uninterrupted run up to float rounding of the
//! refilled buffer (the buffer is refilled from the saved place in the corpus).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod files;

use files::{load_checkpoint, save_checkpoint, write_set};

use super::corpus::ActivationStream;
use crate::error::{Error, Result};
use crate::model::{HookPoint, Model};
use crate::rng::Rng;

/// Options of `train_set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SetTrainOptions {
    /// Features per layer.
    pub d_sae: usize,
    /// Active features per token (on average over a batch: BatchTopK).
    pub k: usize,
    /// Tokens per step.
    pub batch_size: usize,
    /// Adam's learning rate; by default `2e-4 / √(d_sae / 2¹⁴)` (Gao et al.).
    pub lr: Option<f64>,
    /// Tokens to train on.
    pub tokens: usize,
    /// Tokens per sequence.
    pub context: usize,
    /// Sequences per forward pass of the model.
    pub seqs_per_forward: usize,
    /// Rows in the shuffling buffer (each row holds every layer's input and target).
    pub buffer: usize,
    /// Weight of the auxiliary-k loss.
    pub aux_coef: f64,
    /// A latent is dead after this many tokens without firing.
    pub dead_after: usize,
    /// Steps between checkpoints (0: only when stopped).
    pub checkpoint_every: usize,
    /// Seed of the initialisation and the buffer's draws.
    pub seed: u64,
}

impl Default for SetTrainOptions {
    fn default() -> Self {
        SetTrainOptions {
            d_sae: 4096,
            k: 32,
            batch_size: 1024,
            lr: None,
            tokens: 1_000_000,
            context: 128,
            seqs_per_forward: 8,
            buffer: 16_384,
            aux_coef: 1.0 / 32.0,
            dead_after: 200_000,
            checkpoint_every: 50,
            seed: 0,
        }
    }
}

/// What the set trainer reports after each step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetStepReport {
    /// Steps done.
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Tokens trained on.
    pub tokens: usize,
    /// Per layer: the fraction of the batch's variance unexplained.
    pub fvu: Vec<f32>,
    /// Per layer: mean active features per token.
    pub l0: Vec<f32>,
    /// Per layer: the fraction of latents dead.
    pub dead_fraction: Vec<f32>,
}

/// The trainer's state, saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    step: usize,
    tokens: usize,
    position: usize,
    rng: u64,
    options: SetTrainOptions,
    model: String,
    n_layers: usize,
    /// Per layer: input and target scale, BatchTopK threshold.
    scale_in: Vec<f64>,
    scale_out: Vec<f64>,
    threshold: Vec<f64>,
}

/// One layer's transcoder while it trains (scaled units; `w_enc` is `[d_sae, d_in]`, one row
/// per latent, so that encoding is `x · w_encᵀ` and each latent's gradient is one row).
struct Layer {
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
    /// Adam's first and second moments of the four parameters, in that order.
    m: [Vec<f32>; 4],
    v: [Vec<f32>; 4],
    last_fired: Vec<u64>,
}

const NAMES: [&str; 4] = ["W_enc", "b_enc", "W_dec", "b_dec"];

impl Layer {
    fn new(n: usize, di: usize, d_out: usize, rng: &mut Rng) -> Layer {
        let mut gauss = |len: usize| (0..len).map(|_| rng.gaussian() as f32).collect::<Vec<f32>>();
        let mut w_dec = gauss(n * d_out);
        let mut w_enc = gauss(n * di);
        unit_rows(&mut w_dec, d_out);
        unit_rows(&mut w_enc, di);
        let sizes = [n * di, n, n * d_out, d_out];
        Layer {
            w_enc,
            b_enc: vec![0.0; n],
            w_dec,
            b_dec: vec![0.0; d_out],
            m: sizes.map(|s| vec![0.0; s]),
            v: sizes.map(|s| vec![0.0; s]),
            last_fired: vec![0; n],
        }
    }

    fn params(&self) -> [&Vec<f32>; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }
}

/// One step's figures for one layer.
struct LayerStep {
    fvu: f32,
    l0: f32,
    dead: usize,
    min_kept: Option<f32>,
}

/// Sizes and constants every layer's step shares.
struct StepSpec {
    batch: usize,
    di: usize,
    d_out: usize,
    n: usize,
    k: usize,
    k_aux: usize,
    aux_coef: f64,
    dead_after: u64,
    lr: f64,
    /// Adam's step number (from 1).
    t: i32,
    /// Tokens seen after this step.
    tokens_now: u64,
}

/// Rows of the corpus's activations at every point, pulled from the stream as needed (the
/// corpus starts over at its end).
struct Feed<'a> {
    stream: ActivationStream<'a>,
    pending: Vec<Vec<f32>>,
    widths: Vec<usize>,
}

impl Feed<'_> {
    /// The next `need` rows at every point, row-major.
    fn take(&mut self, need: usize) -> Result<Vec<Vec<f32>>> {
        let mut out: Vec<Vec<f32>> = self.widths.iter().map(|w| Vec::with_capacity(need * w)).collect();
        let (mut got, mut read_this_pass, mut empty_ends) = (0usize, 0usize, 0usize);
        while got < need {
            let have = self.pending[0].len() / self.widths[0];
            if have == 0 {
                match self.stream.next_points()? {
                    Some(ts) => {
                        for (p, t) in self.pending.iter_mut().zip(ts) {
                            *p = t.flatten_all()?.to_vec1::<f32>()?;
                        }
                        read_this_pass += self.pending[0].len() / self.widths[0];
                    }
                    None => {
                        if read_this_pass == 0 {
                            empty_ends += 1;
                            if empty_ends > 1 {
                                return Err(Error::Invalid("the corpus gives no activations: every position is a sequence start or a special token".into()));
                            }
                        }
                        self.stream.position = 0;
                        read_this_pass = 0;
                    }
                }
                continue;
            }
            let rows = have.min(need - got);
            for ((o, p), &w) in out.iter_mut().zip(self.pending.iter_mut()).zip(&self.widths) {
                o.extend_from_slice(&p[..rows * w]);
                p.drain(..rows * w);
            }
            got += rows;
        }
        Ok(out)
    }
}

/// The hook points a transcoder of layer `l` reads and writes.
pub fn plt_hooks(layer: usize) -> (HookPoint, HookPoint) {
    (HookPoint::Ln2Normalized(layer), HookPoint::MlpOut(layer))
}

/// Trains one transcoder per layer (`layers`, every layer by default) and writes the set to
/// `out` (see `set::TranscoderSet`); `resume` continues from the checkpoint in `out`. `report`
/// sees every step and returns false to stop: a checkpoint is written and the error says how
/// to resume.
pub fn train_set(model: &Model, seqs: Vec<Vec<u32>>, opts: &SetTrainOptions, out: &Path, resume: bool, report: &mut dyn FnMut(&SetStepReport) -> bool) -> Result<PathBuf> {
    let cfg = &model.config();
    let n_layers = cfg.n_layers;
    let (di, d_out) = (super::hook_width(model, plt_hooks(0).0)?, super::hook_width(model, plt_hooks(0).1)?);
    check_options(opts, di, d_out, n_layers)?;
    if cfg.variants.moe.is_some() {
        return Err(Error::Invalid("transcoder sets replace dense MLPs; this model's MLPs are mixtures of experts".into()));
    }
    let n = opts.d_sae;
    let lr = opts.lr.unwrap_or(2e-4 / ((n as f64) / 16384.0).sqrt());
    let total_steps = opts.tokens.div_ceil(opts.batch_size);
    let mut rng = Rng::new(opts.seed);
    let mut seqs = seqs;
    rng.shuffle(&mut seqs);
    let points: Vec<HookPoint> = (0..n_layers).flat_map(|l| {
        let (a, b) = plt_hooks(l);
        [a, b]
    }).collect();
    let widths: Vec<usize> = (0..n_layers).flat_map(|_| [di, d_out]).collect();
    let stream = ActivationStream::at_points(model, seqs, 0, opts.seqs_per_forward, points)?;
    let mut feed = Feed { stream, pending: vec![Vec::new(); widths.len()], widths };
    let ckpt = out.join("checkpoint");

    let (mut layers, mut state) = if resume {
        load_checkpoint(&ckpt, model, opts, di, d_out)?
    } else {
        let layers = (0..n_layers).map(|_| Layer::new(n, di, d_out, &mut rng)).collect();
        let state = State {
            step: 0,
            tokens: 0,
            position: 0,
            rng: 0,
            options: opts.clone(),
            model: model.name().to_string(),
            n_layers,
            scale_in: vec![0.0; n_layers],
            scale_out: vec![0.0; n_layers],
            threshold: vec![0.0; n_layers],
        };
        (layers, state)
    };
    if resume {
        rng = Rng::new(state.rng);
        // The tokens asked for may grow on resume (train further).
        state.options.tokens = opts.tokens;
    }
    feed.stream.position = state.position;

    let mut buffer = feed.take(opts.buffer)?;
    if state.step == 0 {
        for l in 0..n_layers {
            let (x, y) = (&buffer[2 * l], &buffer[2 * l + 1]);
            state.scale_in[l] = (di as f64).sqrt() / mean_norm(x, di).max(1e-12);
            state.scale_out[l] = (d_out as f64).sqrt() / mean_norm(y, d_out).max(1e-12);
            // b_dec starts at the mean target.
            let rows = (y.len() / d_out) as f64;
            let mut mean = vec![0f64; d_out];
            for r in y.chunks(d_out) {
                for (m, &a) in mean.iter_mut().zip(r) {
                    *m += a as f64;
                }
            }
            layers[l].b_dec = mean.iter().map(|m| (m / rows * state.scale_out[l]) as f32).collect();
        }
    }

    let k_aux = (d_out / 2).max(1);
    while state.step < total_steps {
        let b = opts.batch_size;
        let idx: Vec<usize> = (0..b).map(|_| rng.below(opts.buffer)).collect();
        let batch: Vec<Vec<f32>> = buffer
            .iter()
            .enumerate()
            .map(|(p, buf)| {
                let (w, l) = (feed.widths[p], p / 2);
                let s = if p % 2 == 0 { state.scale_in[l] } else { state.scale_out[l] } as f32;
                let mut v = Vec::with_capacity(b * w);
                for &i in &idx {
                    v.extend(buf[i * w..(i + 1) * w].iter().map(|a| a * s));
                }
                v
            })
            .collect();
        let fresh = feed.take(b)?;
        for (p, (buf, new)) in buffer.iter_mut().zip(&fresh).enumerate() {
            let w = feed.widths[p];
            for (j, &i) in idx.iter().enumerate() {
                buf[i * w..(i + 1) * w].copy_from_slice(&new[j * w..(j + 1) * w]);
            }
        }
        drop(fresh);
        state.step += 1;
        let spec = StepSpec {
            batch: b,
            di,
            d_out,
            n,
            k: opts.k,
            k_aux,
            aux_coef: opts.aux_coef,
            dead_after: opts.dead_after as u64,
            lr,
            t: state.step.min(i32::MAX as usize) as i32,
            tokens_now: (state.tokens + b) as u64,
        };
        let mut rep = SetStepReport { step: state.step, total_steps, tokens: state.tokens + b, fvu: Vec::new(), l0: Vec::new(), dead_fraction: Vec::new() };
        for (l, layer) in layers.iter_mut().enumerate() {
            let r = step_layer(layer, &batch[2 * l], &batch[2 * l + 1], &spec)?;
            if !r.fvu.is_finite() {
                return Err(Error::NonFinite(format!("layer {l}'s training loss became {} at step {}; lower the learning rate (--lr)", r.fvu, state.step)));
            }
            if let Some(m) = r.min_kept {
                let t = &mut state.threshold[l];
                *t = if state.step == 1 { m as f64 } else { 0.99 * *t + 0.01 * m as f64 };
            }
            rep.fvu.push(r.fvu);
            rep.l0.push(r.l0);
            rep.dead_fraction.push(r.dead as f32 / n as f32);
        }
        state.tokens += b;
        let go_on = report(&rep);
        let due = opts.checkpoint_every > 0 && state.step % opts.checkpoint_every == 0;
        if (due || !go_on) && state.step < total_steps {
            state.position = feed.stream.position;
            state.rng = rng.next_u64();
            rng = Rng::new(state.rng);
            // The buffer is not saved: a resumed run refills it from the place in the corpus
            // where this one stopped reading.
            save_checkpoint(&ckpt, &layers, &state, model)?;
        }
        if !go_on && state.step < total_steps {
            return Err(Error::Invalid(format!(
                "training stopped at step {} of {total_steps}; the checkpoint in {} continues it (run the same command with --resume)",
                state.step,
                crate::error::printable(&ckpt.display())
            )));
        }
    }
    write_set(out, &layers, &state, model)?;
    let _ = std::fs::remove_dir_all(&ckpt);
    Ok(out.to_path_buf())
}

fn mean_norm(v: &[f32], d: usize) -> f64 {
    let rows = v.len() / d;
    v.chunks(d).map(|r| r.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>().sqrt()).sum::<f64>() / rows.max(1) as f64
}

fn unit_rows(w: &mut [f32], d: usize) {
    w.par_chunks_mut(d).for_each(|r| {
        let norm = r.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|a| *a /= norm);
    });
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

/// A latent's part in one row's reconstruction: the row, the activation, and whether it is in
/// the auxiliary (dead-latent) reconstruction.
#[derive(Clone, Copy)]
struct Entry {
    row: u32,
    act: f32,
    aux: bool,
}

/// One training step of one layer's transcoder on the scaled batch `x [B, d_in]`,
/// `y [B, d_out]`: the gradients, then Adam; the parameters are updated in place.
fn step_layer(p: &mut Layer, x: &[f32], y: &[f32], s: &StepSpec) -> Result<LayerStep> {
    let (grads, report) = gradients(p, x, y, s)?;
    adam(p, &grads, s);
    Ok(report)
}

/// The loss's gradients with respect to `W_enc`, `b_enc`, `W_dec` (its component along each
/// unit decoder row removed) and `b_dec`, and the step's figures; marks the latents that fired.
fn gradients(p: &mut Layer, x: &[f32], y: &[f32], s: &StepSpec) -> Result<([Vec<f32>; 4], LayerStep)> {
    let (b, di, d_out, n) = (s.batch, s.di, s.d_out, s.n);
    // Pre-activations, the one dense product.
    let mut h = crate::model::compute::rows_times(x, &p.w_enc, b, di, n)?;
    h.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(&p.b_enc).for_each(|(v, c)| *v += c));

    // BatchTopK: the k·B largest positive pre-activations of the batch.
    let mut positive: Vec<f32> = h.par_iter().copied().filter(|&v| v > 0.0).collect();
    let want = (s.k * b).max(1);
    let cut = if positive.len() > want {
        let at = positive.len() - want;
        *positive.select_nth_unstable_by(at, |a, c| a.total_cmp(c)).1
    } else {
        0.0
    };
    drop(positive);
    let active: Vec<Vec<(u32, f32)>> = h
        .par_chunks(n)
        .map(|row| row.iter().enumerate().filter(|(_, &v)| v > 0.0 && v >= cut).map(|(j, &v)| (j as u32, v)).collect())
        .collect();
    let n_active: usize = active.iter().map(Vec::len).sum();
    let min_kept = active.iter().flatten().map(|e| e.1).fold(f32::INFINITY, f32::min);

    // Reconstruction and its error (recon − y), per row.
    let err: Vec<f32> = active
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, act)| {
            let mut r = p.b_dec.clone();
            for &(j, f) in act {
                axpy(f, &p.w_dec[j as usize * d_out..(j as usize + 1) * d_out], &mut r);
            }
            r.iter_mut().zip(&y[i * d_out..(i + 1) * d_out]).for_each(|(r, t)| *r -= t);
            r
        })
        .collect();
    let sse: f64 = err.par_iter().map(|&e| (e as f64) * (e as f64)).sum();
    let mut mean_y = vec![0f64; d_out];
    for r in y.chunks(d_out) {
        mean_y.iter_mut().zip(r).for_each(|(m, &a)| *m += a as f64);
    }
    mean_y.iter_mut().for_each(|m| *m /= b as f64);
    let var: f64 = y.par_chunks(d_out).map(|r| r.iter().zip(&mean_y).map(|(&a, m)| (a as f64 - m).powi(2)).sum::<f64>()).sum();
    let fvu = (sse / var.max(f64::MIN_POSITIVE)) as f32;

    // Latents that fired now are alive; the dead ones feed the auxiliary loss.
    for &(j, _) in active.iter().flatten() {
        p.last_fired[j as usize] = s.tokens_now;
    }
    let dead: Vec<bool> = p.last_fired.iter().map(|&t| s.tokens_now.saturating_sub(t) > s.dead_after).collect();
    let n_dead = dead.iter().filter(|&&d| d).count();

    // Upstream gradients: of the MSE (mean over rows of the squared error's sum) with respect to
    // each row's reconstruction, and of the weighted auxiliary loss with respect to each row's
    // auxiliary reconstruction.
    let g: Vec<f32> = err.par_iter().map(|&e| 2.0 * e / b as f32).collect();
    let mut aux_rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); b];
    let mut ga: Vec<f32> = Vec::new();
    if n_dead > 0 && s.aux_coef > 0.0 {
        let ka = s.k_aux.min(n_dead);
        let weight = (s.aux_coef * (n_dead as f64 / s.k_aux as f64).min(1.0)) as f32;
        aux_rows = h
            .par_chunks(n)
            .map(|row| {
                let mut cand: Vec<(u32, f32)> = row.iter().enumerate().filter(|(j, &v)| dead[*j] && v > 0.0).map(|(j, &v)| (j as u32, v)).collect();
                if cand.len() > ka {
                    cand.select_nth_unstable_by(ka - 1, |a, c| c.1.total_cmp(&a.1));
                    cand.truncate(ka);
                }
                cand
            })
            .collect();
        // d/d ê of weight · mean_i ‖(y − recon) − ê‖² = −2·weight·((y − recon) − ê)/B = 2·weight·(err + ê)/B.
        ga = aux_rows
            .par_iter()
            .enumerate()
            .flat_map_iter(|(i, act)| {
                let mut e_hat = vec![0f32; d_out];
                for &(j, f) in act {
                    axpy(f, &p.w_dec[j as usize * d_out..(j as usize + 1) * d_out], &mut e_hat);
                }
                e_hat.iter_mut().zip(&err[i * d_out..(i + 1) * d_out]).for_each(|(eh, &e)| *eh = 2.0 * weight * (e + *eh) / b as f32);
                e_hat
            })
            .collect();
    }

    // Entries grouped by latent (a counting sort), so each latent's gradient row is one task.
    let mut counts = vec![0usize; n + 1];
    for (j, _) in active.iter().chain(&aux_rows).flatten() {
        counts[*j as usize + 1] += 1;
    }
    for j in 0..n {
        counts[j + 1] += counts[j];
    }
    let mut entries = vec![Entry { row: 0, act: 0.0, aux: false }; counts[n]];
    let mut fill = counts.clone();
    for (aux, rows) in [(false, &active), (true, &aux_rows)] {
        for (i, act) in rows.iter().enumerate() {
            for &(j, f) in act {
                entries[fill[j as usize]] = Entry { row: i as u32, act: f, aux };
                fill[j as usize] += 1;
            }
        }
    }

    let mut g_enc = vec![0f32; n * di];
    let mut g_dec = vec![0f32; n * d_out];
    let mut g_benc = vec![0f32; n];
    {
        let w_dec = &p.w_dec;
        g_enc
            .par_chunks_mut(di)
            .zip(g_dec.par_chunks_mut(d_out))
            .zip(g_benc.par_iter_mut())
            .enumerate()
            .for_each(|(j, ((ge, gd), gb))| {
                let wd = &w_dec[j * d_out..(j + 1) * d_out];
                for e in &entries[counts[j]..counts[j + 1]] {
                    let i = e.row as usize;
                    let up = if e.aux { &ga[i * d_out..(i + 1) * d_out] } else { &g[i * d_out..(i + 1) * d_out] };
                    axpy(e.act, up, gd);
                    // The active latents are past the ReLU, so ∂f/∂h = 1.
                    let gh = dot(up, wd);
                    axpy(gh, &x[i * di..(i + 1) * di], ge);
                    *gb += gh;
                }
                // Keep the decoder row on the unit sphere: drop the gradient along it.
                let along = dot(gd, wd);
                axpy(-along, wd, gd);
            });
    }
    let mut g_bdec = vec![0f32; d_out];
    for r in g.chunks(d_out) {
        axpy(1.0, r, &mut g_bdec);
    }
    let report = LayerStep { fvu, l0: n_active as f32 / b as f32, dead: n_dead, min_kept: min_kept.is_finite().then_some(min_kept) };
    Ok(([g_enc, g_benc, g_dec, g_bdec], report))
}

/// Adam (β = 0.9, 0.999) on every parameter, then the decoder rows back on the unit sphere.
fn adam(p: &mut Layer, grads: &[Vec<f32>; 4], s: &StepSpec) {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let (c1, c2) = ((1.0 - b1.powi(s.t)) as f32, (1.0 - b2.powi(s.t)) as f32);
    let params: [&mut Vec<f32>; 4] = [&mut p.w_enc, &mut p.b_enc, &mut p.w_dec, &mut p.b_dec];
    for (((w, gr), m), v) in params.into_iter().zip(grads).zip(p.m.iter_mut()).zip(p.v.iter_mut()) {
        let lr = s.lr as f32;
        w.par_chunks_mut(4096).zip(gr.par_chunks(4096)).zip(m.par_chunks_mut(4096)).zip(v.par_chunks_mut(4096)).for_each(|(((w, g), m), v)| {
            for i in 0..w.len() {
                m[i] = b1 as f32 * m[i] + (1.0 - b1 as f32) * g[i];
                v[i] = b2 as f32 * v[i] + (1.0 - b2 as f32) * g[i] * g[i];
                w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps as f32);
            }
        });
    }
    unit_rows(&mut p.w_dec, s.d_out);
}

fn check_options(o: &SetTrainOptions, di: usize, d_out: usize, n_layers: usize) -> Result<()> {
    let count = crate::limits::check_count;
    count("d_sae", o.d_sae, 1..=1 << 18)?;
    count("k", o.k, 1..=o.d_sae)?;
    count("batch_size", o.batch_size, 1..=1 << 16)?;
    count("buffer", o.buffer, o.batch_size..=1 << 22)?;
    count("tokens", o.tokens, 1..=1 << 40)?;
    count("context", o.context, 2..=1 << 20)?;
    count("seqs_per_forward", o.seqs_per_forward, 1..=1024)?;
    if let Some(lr) = o.lr {
        if !(lr > 0.0 && lr < 1.0) {
            return Err(Error::Invalid(format!("learning rate {lr}: give a number between 0 and 1")));
        }
    }
    if !(o.aux_coef >= 0.0 && o.aux_coef <= 100.0) {
        return Err(Error::Invalid(format!("aux_coef {}: give 0 to 100", o.aux_coef)));
    }
    // Buffer (inputs and targets of every layer), and per layer the weights and two Adam moments.
    let width = (di + d_out) as u128;
    let bytes = (o.buffer as u128) * width * 4 * n_layers as u128 + (o.d_sae as u128) * width * 4 * 3 * n_layers as u128;
    if bytes > 64u128 << 30 {
        return Err(Error::Invalid(format!("the buffer and the transcoders would take {} GiB; give a smaller --buffer or --d-sae", bytes >> 30)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss in f64 with the active and auxiliary latents fixed (as the gradient treats the
    /// BatchTopK choice), the auxiliary target `y − recon` held at the base parameters' value
    /// (detached, as in training).
    struct Reference {
        active: Vec<Vec<usize>>,
        aux: Vec<Vec<usize>>,
        aux_target: Vec<Vec<f64>>,
        weight: f64,
    }

    fn pre(p: &[Vec<f64>; 4], x: &[f32], i: usize, j: usize, di: usize) -> f64 {
        (0..di).map(|c| p[0][j * di + c] * x[i * di + c] as f64).sum::<f64>() + p[1][j]
    }

    fn loss(p: &[Vec<f64>; 4], r: &Reference, x: &[f32], y: &[f32], di: usize, d_out: usize) -> f64 {
        let b = r.active.len();
        let mut total = 0.0;
        for i in 0..b {
            let mut recon = p[3].clone();
            for &j in &r.active[i] {
                let h = pre(p, x, i, j, di);
                (0..d_out).for_each(|c| recon[c] += h * p[2][j * d_out + c]);
            }
            total += (0..d_out).map(|c| (recon[c] - y[i * d_out + c] as f64).powi(2)).sum::<f64>() / b as f64;
            let mut e_hat = vec![0.0; d_out];
            for &j in &r.aux[i] {
                let h = pre(p, x, i, j, di);
                (0..d_out).for_each(|c| e_hat[c] += h * p[2][j * d_out + c]);
            }
            total += r.weight * (0..d_out).map(|c| (r.aux_target[i][c] - e_hat[c]).powi(2)).sum::<f64>() / b as f64;
        }
        total
    }

    #[test]
    fn gradients_equal_finite_differences_of_the_loss() {
        let (n, di, d_out, b, k) = (24, 6, 5, 8, 3);
        let mut rng = Rng::new(7);
        let mut layer = Layer::new(n, di, d_out, &mut rng);
        layer.b_enc.iter_mut().for_each(|v| *v = 0.3 * rng.gaussian() as f32);
        layer.b_dec.iter_mut().for_each(|v| *v = 0.1 * rng.gaussian() as f32);
        // Latents 16.. last fired long ago: dead, so the auxiliary loss is in play.
        layer.last_fired.iter_mut().enumerate().for_each(|(j, t)| *t = if j >= 16 { 0 } else { 1000 });
        let x: Vec<f32> = (0..b * di).map(|_| rng.gaussian() as f32).collect();
        let y: Vec<f32> = (0..b * d_out).map(|_| rng.gaussian() as f32).collect();
        let spec = StepSpec { batch: b, di, d_out, n, k, k_aux: 2, aux_coef: 0.5, dead_after: 100, lr: 1e-3, t: 1, tokens_now: 1000 };
        let p64: [Vec<f64>; 4] = layer.params().map(|v| v.iter().map(|&a| a as f64).collect());
        let (grads, report) = gradients(&mut layer, &x, &y, &spec).unwrap();
        assert!(report.dead > 0, "the test needs dead latents");

        // The same choices as training: the k·B largest positive pre-activations, then per row
        // the k_aux largest positive dead ones.
        let h: Vec<Vec<f64>> = (0..b).map(|i| (0..n).map(|j| pre(&p64, &x, i, j, di)).collect()).collect();
        let mut flat: Vec<f64> = h.iter().flatten().copied().filter(|&v| v > 0.0).collect();
        flat.sort_by(|a, c| c.total_cmp(a));
        let cut = flat[k * b - 1];
        let active: Vec<Vec<usize>> = h.iter().map(|r| (0..n).filter(|&j| r[j] > 0.0 && r[j] >= cut).collect()).collect();
        // Dead: not fired for long, and not active now.
        let dead: Vec<usize> = (16..n).filter(|j| !active.iter().any(|a| a.contains(j))).collect();
        let aux: Vec<Vec<usize>> = h
            .iter()
            .map(|r| {
                let mut c: Vec<usize> = dead.iter().copied().filter(|&j| r[j] > 0.0).collect();
                c.sort_by(|&a, &e| r[e].total_cmp(&r[a]));
                c.truncate(2);
                c
            })
            .collect();
        let aux_target: Vec<Vec<f64>> = (0..b)
            .map(|i| {
                let mut recon = p64[3].clone();
                for &j in &active[i] {
                    (0..d_out).for_each(|c| recon[c] += h[i][j] * p64[2][j * d_out + c]);
                }
                (0..d_out).map(|c| y[i * d_out + c] as f64 - recon[c]).collect()
            })
            .collect();
        assert_eq!(report.dead, dead.len());
        let weight = 0.5 * (dead.len() as f64 / 2.0).min(1.0);
        let r = Reference { active, aux, aux_target, weight };
        assert!(r.aux.iter().any(|a| !a.is_empty()), "the test needs auxiliary latents");

        let eps = 1e-5;
        let mut worst = 0f64;
        for (pi, g) in grads.iter().enumerate() {
            let mut fd = vec![0f64; g.len()];
            for (idx, f) in fd.iter_mut().enumerate() {
                let (mut up, mut down) = (p64.clone(), p64.clone());
                up[pi][idx] += eps;
                down[pi][idx] -= eps;
                *f = (loss(&up, &r, &x, &y, di, d_out) - loss(&down, &r, &x, &y, di, d_out)) / (2.0 * eps);
            }
            if pi == 2 {
                // The decoder's gradient has its component along each (unit) row removed.
                for j in 0..n {
                    let row = &p64[2][j * d_out..(j + 1) * d_out];
                    let along: f64 = row.iter().zip(&fd[j * d_out..(j + 1) * d_out]).map(|(a, b)| a * b).sum();
                    (0..d_out).for_each(|c| fd[j * d_out + c] -= along * row[c]);
                }
            }
            let w = g.iter().zip(&fd).map(|(a, e)| (*a as f64 - e).abs() / (1.0 + e.abs())).fold(0.0, f64::max);
            worst = worst.max(w);
        }
        assert!(worst <= 1e-4, "largest gradient difference {worst}");
    }
}
