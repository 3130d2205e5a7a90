//! Q-, K- and V-composition scores between heads (Elhage et al. 2021): how much a later head's
//! query, key or value reads the subspace an earlier head writes.
//!
//! With `OV_s = W_O,s W_V,s` (what sender `s` writes) and `QK_r = W_Q,rᵀ W_K,r` (receiver `r`'s
//! bilinear attention form), both `d_model × d_model`:
//! `Q = ‖QK_rᵀ OV_s‖_F / (‖QK_r‖_F ‖OV_s‖_F)`, `K = ‖QK_r OV_s‖_F / (…)`,
//! `V = ‖OV_r OV_s‖_F / (‖OV_r‖_F ‖OV_s‖_F)`. The receiver's input-norm weight is folded into its
//! W_Q, W_K and W_V (the norm's scale and centring are not: they depend on the input). Rotary
//! models rotate queries and keys by position; the scores use the unrotated weights, as
//! TransformerLens does. Computed through `d_head × d_head` Gram matrices
//! (`‖A M B‖²_F = tr(AᵀA · M · BBᵀ · Mᵀ)`), never forming the `d_model²` products.
//!
//! Raw scores mean little alone: random maps of the same shapes already score about
//! `1/√d_model` (0.042 for SmolLM2's 576). `all_composition_scores` reports that baseline (a seeded Monte Carlo
//! over random Gaussian heads of the model's shapes) and each score's excess over it, and
//! `min_score` filters on the excess.

use serde::{Deserialize, Serialize};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::methods::Head;
use crate::model::weights::Matrix;
use crate::model::Model;

/// Which input of the receiving head reads the sender's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Q-composition: the receiver's queries.
    Q,
    /// K-composition: the receiver's keys.
    K,
    /// V-composition: the receiver's values.
    V,
}

/// One head's maps, `d_head`-sized pieces in f64: `w_q`, `w_k`, `w_v`: `[d_head, d_model]`
/// (norm weight folded in), `w_o`: `[d_model, d_head]`.
struct HeadMaps {
    w_q: Tensor,
    w_k: Tensor,
    w_v: Tensor,
    w_o: Tensor,
}

fn maps(model: &Model, h: Head) -> Result<HeadMaps> {
    let cfg = &model.config();
    h.check(cfg)?;
    let dh = cfg.d_head;
    let kv = h.head / cfg.group_size();
    let l = &model.weights().layers[h.layer];
    // The receiver's input-norm weight, where its attention reads through one (the model says).
    let w_ln = model.attn_input_norm(h.layer)?.map(|w| w.to_dtype(DType::F64)).transpose()?;
    let rows = |w: &Matrix, i: usize| -> Result<Tensor> {
        let r = w.narrow_rows(i * dh, dh)?.to_dtype(DType::F64)?;
        Ok(match &w_ln {
            Some(n) => r.broadcast_mul(n)?,
            None => r,
        })
    };
    Ok(HeadMaps {
        w_q: rows(&l.attn.w_q, h.head)?,
        w_k: rows(&l.attn.w_k, kv)?,
        w_v: rows(&l.attn.w_v, kv)?,
        w_o: l.attn.w_o.tensor()?.narrow(1, h.head * dh, dh)?.to_dtype(DType::F64)?,
    })
}

/// `‖A M B‖_F` from `G_A = AᵀA`, `M`, `G_B = B Bᵀ`.
fn frob(g_a: &Tensor, m: &Tensor, g_b: &Tensor) -> Result<f64> {
    // tr(G_A M G_B Mᵀ) = Σ (G_A M) ⊙ (M G_B), G_B being symmetric.
    let tr: f64 = (g_a.matmul(m)? * m.matmul(g_b)?)?.sum_all()?.to_scalar()?;
    Ok(tr.max(0.0).sqrt())
}

fn gram_rows(w: &Tensor) -> Result<Tensor> {
    Ok(w.matmul(&w.t()?)?)
}

/// The composition score of `kind` from `sender` into `receiver` (a later layer).
pub fn composition_score(model: &Model, sender: Head, receiver: Head, kind: Kind) -> Result<f32> {
    let [q, k, v] = composition_scores(model, sender, receiver)?;
    Ok(match kind {
        Kind::Q => q,
        Kind::K => k,
        Kind::V => v,
    })
}

/// The Q, K and V composition scores from `sender` into `receiver` (a later layer).
pub fn composition_scores(model: &Model, sender: Head, receiver: Head) -> Result<[f32; 3]> {
    if sender.layer >= receiver.layer {
        return Err(Error::Invalid(format!("{sender} cannot compose with {receiver}: the sender must be in an earlier layer")));
    }
    score_maps(&maps(model, sender)?, &maps(model, receiver)?)
}

/// The Q, K and V scores between a sender's and a receiver's maps (Gram matrices shared).
fn score_maps(s: &HeadMaps, r: &HeadMaps) -> Result<[f32; 3]> {
    let g_vs = gram_rows(&s.w_v)?; // W_V,s W_V,sᵀ
    let g_os = s.w_o.t()?.matmul(&s.w_o)?; // W_O,sᵀ W_O,s
    let ov_s = frob_pair(&g_os, &g_vs)?;
    let (g_qr, g_kr) = (gram_rows(&r.w_q)?, gram_rows(&r.w_k)?);
    let qk_r = frob_pair(&g_qr, &g_kr)?;
    let g_or = r.w_o.t()?.matmul(&r.w_o)?;
    let ratio = |num: f64, den: f64| if den > 0.0 { (num / den) as f32 } else { 0.0 };
    Ok([
        ratio(frob(&g_kr, &r.w_q.matmul(&s.w_o)?, &g_vs)?, qk_r * ov_s),
        ratio(frob(&g_qr, &r.w_k.matmul(&s.w_o)?, &g_vs)?, qk_r * ov_s),
        ratio(frob(&g_or, &r.w_v.matmul(&s.w_o)?, &g_vs)?, frob_pair(&g_or, &gram_rows(&r.w_v)?)? * ov_s),
    ])
}

/// Random head pairs of the model's shapes (`d_head × d_model` Gaussian maps) drawn for the
/// baseline (what the scores are between heads with no learned relation): 32, or as few as 8
/// for very wide heads, where each pair costs `d_head² · d_model` work.
pub fn baseline_samples(d_head: usize, d_model: usize) -> usize {
    let work = (d_head as u128) * (d_head as u128) * (d_model as u128);
    ((1u128 << 32) / work.max(1)).clamp(8, 32) as usize
}

/// The mean and standard deviation of each score between random Gaussian heads of `model`'s
/// shapes (`baseline_samples` sender/receiver pairs, a fixed seed). Raw scores are read
/// against it: random maps already compose by about `1/√d_model`.
pub fn random_baseline(model: &Model) -> Result<CompositionBaseline> {
    let (dh, dm) = (model.config().d_head, model.config().d_model);
    // It depends on the shapes alone: computed once per (d_head, d_model) in a process.
    static CACHE: std::sync::Mutex<Vec<((usize, usize), CompositionBaseline)>> = std::sync::Mutex::new(Vec::new());
    if let Some(b) = CACHE.lock().ok().and_then(|c| c.iter().find(|(k, _)| *k == (dh, dm)).map(|(_, b)| *b)) {
        return Ok(b);
    }
    let b = compute_baseline(dh, dm)?;
    if let Ok(mut c) = CACHE.lock() {
        c.push(((dh, dm), b));
    }
    Ok(b)
}

fn compute_baseline(dh: usize, dm: usize) -> Result<CompositionBaseline> {
    let mut rng = crate::rng::Rng::new(0x00C0_FFEE);
    let mut gauss = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.gaussian()).collect() };
    let dev = candle_core::Device::Cpu;
    let mut random = || -> Result<HeadMaps> {
        Ok(HeadMaps {
            w_q: Tensor::from_vec(gauss(dh * dm), (dh, dm), &dev)?,
            w_k: Tensor::from_vec(gauss(dh * dm), (dh, dm), &dev)?,
            w_v: Tensor::from_vec(gauss(dh * dm), (dh, dm), &dev)?,
            w_o: Tensor::from_vec(gauss(dm * dh), (dm, dh), &dev)?,
        })
    };
    let n_samples = baseline_samples(dh, dm);
    let mut all = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..n_samples {
        let (s, r) = (random()?, random()?);
        for (i, x) in score_maps(&s, &r)?.into_iter().enumerate() {
            all[i].push(x as f64);
        }
    }
    let stats = |v: &[f64]| -> (f32, f32) {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - 1.0);
        (m as f32, var.sqrt() as f32)
    };
    let ((q, q_std), (k, k_std), (v, v_std)) = (stats(&all[0]), stats(&all[1]), stats(&all[2]));
    Ok(CompositionBaseline { q, k, v, q_std, k_std, v_std, n_samples })
}

/// `‖X‖_F` for `X = A B` given `AᵀA` and `B Bᵀ`: `sqrt(tr(AᵀA · B Bᵀ))`.
fn frob_pair(g_a: &Tensor, g_b: &Tensor) -> Result<f64> {
    let tr: f64 = (g_a * g_b.t()?)?.sum_all()?.to_scalar()?;
    Ok(tr.max(0.0).sqrt())
}

/// Composition scores of one ordered pair of heads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompositionEdge {
    /// The earlier head (`L09H09`).
    pub sender: String,
    /// The later head.
    pub receiver: String,
    /// Q-composition score, from 0 to 1.
    pub q: f32,
    /// K-composition score, from 0 to 1.
    pub k: f32,
    /// V-composition score, from 0 to 1.
    pub v: f32,
    /// `q` minus the random baseline's.
    #[serde(default)]
    pub q_excess: f32,
    /// `k` minus the random baseline's.
    #[serde(default)]
    pub k_excess: f32,
    /// `v` minus the random baseline's.
    #[serde(default)]
    pub v_excess: f32,
}

/// The scores between random heads of the model's shapes (`random_baseline`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CompositionBaseline {
    /// Mean Q-composition of random heads.
    pub q: f32,
    /// Mean K-composition.
    pub k: f32,
    /// Mean V-composition.
    pub v: f32,
    /// Standard deviation of the random Q scores.
    pub q_std: f32,
    /// Of the K scores.
    pub k_std: f32,
    /// Of the V scores.
    pub v_std: f32,
    /// Random pairs drawn.
    pub n_samples: usize,
}

crate::options! {
    /// Options of `all_composition_scores`.
    pub struct CompositionOptions {
        /// The circuit's heads (repeatable): scores between every ordered pair.
        pub heads: Vec<Head> = Vec::new(),
        /// List only the pairs whose best score exceeds the random-heads baseline by at least
        /// this (`max(q − q₀, k − k₀, v − v₀) ≥ min_score`); every pair when absent.
        pub min_score: Option<f32> = None,
    }
}

/// Result of `all_composition_scores`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Composition {
    /// Pairs kept by `min_score`, by decreasing excess over the baseline.
    pub combined_edges: Vec<CompositionEdge>,
    /// The scores of random heads of the same shapes, which each score is read against.
    #[serde(default)]
    pub baseline: CompositionBaseline,
    /// The `min_score` (over the baseline) the pairs were filtered by.
    pub min_score: Option<f32>,
}

fn best_excess(e: &CompositionEdge) -> f32 {
    e.q_excess.max(e.k_excess).max(e.v_excess)
}

/// Q, K and V scores between every ordered pair of a circuit's heads (earlier → later), each
/// beside its excess over the random baseline.
pub fn all_composition_scores(model: &Model, circuit: &[Head], opts: &CompositionOptions) -> Result<Composition> {
    if circuit.len() < 2 {
        return Err(crate::error::Error::Invalid(format!("composition needs `heads`: at least two heads of the circuit (--head L9H6, repeatable); {} given", circuit.len())));
    }
    for h in circuit {
        h.check(model.config())?;
    }
    if let Some(m) = opts.min_score {
        super::check_number("min_score", m, -1.0, 1.0)?;
    }
    let baseline = random_baseline(model)?;
    let mut edges = Vec::new();
    for &s in circuit {
        for &r in circuit.iter().filter(|r| r.layer > s.layer) {
            let [q, k, v] = composition_scores(model, s, r)?;
            let e = CompositionEdge { sender: s.to_string(), receiver: r.to_string(), q, k, v, q_excess: q - baseline.q, k_excess: k - baseline.k, v_excess: v - baseline.v };
            if opts.min_score.is_none_or(|m| best_excess(&e) >= m) {
                edges.push(e);
            }
        }
    }
    edges.sort_by(|a, b| best_excess(b).total_cmp(&best_excess(a)));
    Ok(Composition { combined_edges: edges, baseline, min_score: opts.min_score })
}
