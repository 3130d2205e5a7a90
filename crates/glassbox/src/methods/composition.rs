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

use serde::{Deserialize, Serialize};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::methods::Head;
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
    let cfg = &model.config;
    h.check(cfg)?;
    let dh = cfg.d_head;
    let kv = h.head / cfg.group_size();
    let l = &model.weights.layers[h.layer];
    // The receiver's input-norm weight, where its attention reads through one (the model says).
    let w_ln = model.attn_input_norm(h.layer).map(|w| w.to_dtype(DType::F64)).transpose()?;
    let rows = |w: &Tensor, i: usize| -> Result<Tensor> {
        let r = w.narrow(0, i * dh, dh)?.to_dtype(DType::F64)?;
        Ok(match &w_ln {
            Some(n) => r.broadcast_mul(n)?,
            None => r,
        })
    };
    Ok(HeadMaps {
        w_q: rows(&l.attn.w_q, h.head)?,
        w_k: rows(&l.attn.w_k, kv)?,
        w_v: rows(&l.attn.w_v, kv)?,
        w_o: l.attn.w_o.narrow(1, h.head * dh, dh)?.to_dtype(DType::F64)?,
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
    if sender.layer >= receiver.layer {
        return Err(Error::Invalid(format!("{sender} cannot compose with {receiver}: the sender must be in an earlier layer")));
    }
    let s = maps(model, sender)?;
    let r = maps(model, receiver)?;
    let g_vs = gram_rows(&s.w_v)?; // W_V,s W_V,sᵀ
    let g_os = s.w_o.t()?.matmul(&s.w_o)?; // W_O,sᵀ W_O,s
    let ov_s = frob_pair(&g_os, &g_vs)?;
    let (num, recv_norm) = match kind {
        Kind::Q => (frob(&gram_rows(&r.w_k)?, &r.w_q.matmul(&s.w_o)?, &g_vs)?, frob_pair(&gram_rows(&r.w_q)?, &gram_rows(&r.w_k)?)?),
        Kind::K => (frob(&gram_rows(&r.w_q)?, &r.w_k.matmul(&s.w_o)?, &g_vs)?, frob_pair(&gram_rows(&r.w_q)?, &gram_rows(&r.w_k)?)?),
        Kind::V => {
            let g_or = r.w_o.t()?.matmul(&r.w_o)?;
            (frob(&g_or, &r.w_v.matmul(&s.w_o)?, &g_vs)?, frob_pair(&g_or, &gram_rows(&r.w_v)?)?)
        }
    };
    let den = recv_norm * ov_s;
    Ok(if den > 0.0 { (num / den) as f32 } else { 0.0 })
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
}

/// Options of `all_composition_scores`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CompositionOptions {
    /// List the pairs with any score at least this.
    pub min_score: f32,
}

/// Result of `all_composition_scores`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Composition {
    /// Pairs with any score ≥ `min_score`, by decreasing max(q, k, v).
    pub combined_edges: Vec<CompositionEdge>,
    /// The `min_score` the pairs were filtered by.
    pub min_score: f32,
}

/// Q, K and V scores between every ordered pair of a circuit's heads (earlier → later).
pub fn all_composition_scores(model: &Model, circuit: &[Head], opts: &CompositionOptions) -> Result<Composition> {
    let min_score = opts.min_score;
    let mut edges = Vec::new();
    for &s in circuit {
        for &r in circuit.iter().filter(|r| r.layer > s.layer) {
            let e = CompositionEdge {
                sender: s.to_string(),
                receiver: r.to_string(),
                q: composition_score(model, s, r, Kind::Q)?,
                k: composition_score(model, s, r, Kind::K)?,
                v: composition_score(model, s, r, Kind::V)?,
            };
            if e.q.max(e.k).max(e.v) >= min_score {
                edges.push(e);
            }
        }
    }
    edges.sort_by(|a, b| b.q.max(b.k).max(b.v).total_cmp(&a.q.max(a.k).max(a.v)));
    Ok(Composition { combined_edges: edges, min_score })
}
