//! The logit lens (nostalgebraist 2020) and per-component direct effects.
//!
//! `logit_diffs[i]`: `LD = logit[correct] − logit[incorrect]` at the last position when the final
//! norm and the unembedding are applied to the residual stream after the embedding (`i = 0`)
//! and after block `i − 1`; `logit_shifts` are the per-block changes. `top_tokens` shows what
//! the model "already thinks" at every layer.
//!
//! Direct effects: each component's output at the last position projected on the unembedding
//! direction `W_U[correct] − W_U[incorrect]` through the final norm's weight, divided by the
//! final norm's scale **of the clean run, frozen** (the scale is not linear, so per-component
//! effects are only defined with it held fixed). With that scale the effects of the embeddings,
//! every head, every attention output bias, every MLP and the constant biases sum to the final
//! LD exactly; `decomposition_residual` reports how exactly. Models with a norm on the attention
//! output (Gemma 2/3) have that norm's scale frozen as well, so the identity holds for them too;
//! post-LN models (OPT-350m style) renormalise the stream after every block and do not decompose.

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::error::Result;
use crate::model::config::NormKind;
use crate::model::ops::{linear, norm_scale};
use crate::model::{Batch, HookPoint, Hooks, Model};

#[derive(Debug, Clone, Serialize)]
pub struct TokenScore {
    pub token_id: u32,
    pub token: String,
    pub logit: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogitLens {
    pub logit_diffs: Vec<f32>,
    pub logit_shifts: Vec<f32>,
    /// Top tokens at the last position after the embedding and after every block.
    pub top_tokens: Vec<Vec<TokenScore>>,
    /// `head_direct_effects[layer][head]`
    pub head_direct_effects: Vec<Vec<f32>>,
    pub mlp_direct_effects: Vec<f32>,
    /// The token (and position) embeddings' direct effect.
    pub embed_direct_effect: f32,
    /// Attention output biases, the final norm's bias and the unembedding bias.
    pub bias_direct_effect: f32,
    /// The model's own LD at the last position.
    pub final_ld: f32,
    /// `|Σ direct effects − LD|`, with the LD before any final soft-capping. The identity holds
    /// for pre-norm models; in post-LN models the residual stream is renormalised after every
    /// block, so the components do not add up and this residual says by how much.
    pub decomposition_residual: f32,
    /// The clean run's final-norm scale at the last position, held fixed for direct effects.
    pub frozen_scale: f32,
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// Logit lens and direct effects of one prompt (`tokens`, with BOS where the model wants it).
pub fn logit_lens(model: &Model, tokens: &[u32], correct: u32, incorrect: u32, top_k: usize) -> Result<LogitLens> {
    super::check_answers(model, tokens, correct, incorrect)?;
    let cfg = &model.config;
    let w = &model.weights;
    let layers = cfg.n_layers;
    let mut points = vec![HookPoint::ResidPre(0), HookPoint::LnFinalScale];
    for l in 0..layers {
        points.extend([HookPoint::ResidPost(l), HookPoint::Z(l), HookPoint::MlpOut(l)]);
    }
    let batch = Batch::new(&[tokens.to_vec()])?;
    let out = model.forward(&batch, &Hooks::new().cache(points).last_logits_only())?;
    let last = tokens.len() - 1;
    let at_last = |p: HookPoint| -> Result<Tensor> { Ok(out.cache.get(p)?.get(0)?.get(last)?) };
    let final_logits = out.last_logits()?.squeeze(0)?;
    let final_ld = scalar(&(final_logits.get(correct as usize)? - final_logits.get(incorrect as usize)?)?)?;

    // The lens: every layer's residual through the final norm (its own scale) and unembedding.
    let mut resid = vec![at_last(HookPoint::ResidPre(0))?];
    for l in 0..layers {
        resid.push(at_last(HookPoint::ResidPost(l))?);
    }
    let resid = Tensor::stack(&resid, 0)?; // [L+1, d]
    let normalized = if cfg.variants.no_final_norm {
        resid.clone()
    } else {
        norm_scale(&resid, cfg.norm.kind, cfg.norm.eps)?.1
    };
    let mut x = normalized.broadcast_mul(&w.ln_final.w)?;
    if let Some(b) = &w.ln_final.b {
        x = x.broadcast_add(b)?;
    }
    let mut lens_logits = linear(&x, &w.unembed, w.unembed_bias.as_ref())?;
    let precap_ld = {
        let last = lens_logits.get(layers)?;
        scalar(&(last.get(correct as usize)? - last.get(incorrect as usize)?)?)?
    };
    if let Some(c) = cfg.variants.final_softcap {
        lens_logits = ((lens_logits / c)?.tanh()? * c)?;
    }
    let lens_logits = lens_logits.to_dtype(DType::F32)?;
    let ld_col = (lens_logits.narrow(1, correct as usize, 1)? - lens_logits.narrow(1, incorrect as usize, 1)?)?;
    let logit_diffs = ld_col.squeeze(1)?.to_vec1::<f32>()?;
    let logit_shifts = logit_diffs.windows(2).map(|p| p[1] - p[0]).collect();
    let rows = lens_logits.to_vec2::<f32>()?;
    let top_tokens = rows
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            let k = top_k.min(row.len());
            idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| row[b].total_cmp(&row[a]));
            idx.truncate(k);
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            idx.into_iter()
                .map(|i| TokenScore {
                    token_id: i as u32,
                    token: model.tokenizer.token_str(i as u32),
                    logit: row[i],
                })
                .collect()
        })
        .collect();

    // Direct effects with the frozen final-norm scale.
    let scale = at_last(HookPoint::LnFinalScale)?.squeeze(0)?;
    let dir = (w.unembed.get(correct as usize)? - w.unembed.get(incorrect as usize)?)?;
    let mut v = (&w.ln_final.w * &dir)?;
    if cfg.norm.kind == NormKind::LayerNorm {
        v = v.broadcast_sub(&v.mean_keepdim(D::Minus1)?)?;
    }
    let u = v.broadcast_div(&scale)?; // d_model
    let dot = |a: &Tensor| -> Result<f32> { scalar(&(a * &u)?.sum_all()?) };

    let embed_direct_effect = dot(&at_last(HookPoint::ResidPre(0))?)?;
    let mut bias = 0f32;
    if let Some(b) = &w.ln_final.b {
        bias += scalar(&(b * &dir)?.sum_all()?)?;
    }
    if let Some(b) = &w.unembed_bias {
        bias += scalar(&(b.get(correct as usize)? - b.get(incorrect as usize)?)?)?;
    }
    let mut head_direct_effects = Vec::with_capacity(layers);
    let mut mlp_direct_effects = Vec::with_capacity(layers);
    for l in 0..layers {
        let a = &w.layers[l].attn;
        let z = at_last(HookPoint::Z(l))?; // [h, d_head]
        // With a norm on the attention output (Gemma 2/3), its scale is frozen too: the heads'
        // summed output is divided by it and multiplied by its weight before joining the stream.
        let u_attn = match &w.layers[l].extra.ln1_post {
            Some(post) => {
                let mut pre = linear(&z.flatten_all()?.unsqueeze(0)?, &a.w_o, a.b_o.as_ref())?.squeeze(0)?;
                if cfg.norm.kind == NormKind::LayerNorm {
                    pre = pre.broadcast_sub(&pre.mean_keepdim(D::Minus1)?)?;
                }
                let s = (pre.sqr()?.mean_all()? + cfg.norm.eps)?.sqrt()?;
                (&post.w * &u)?.broadcast_div(&s)?
            }
            None => u.clone(),
        };
        // W_Oᵀ u, split per head: [h, d_head].
        let wu = a.w_o.t()?.matmul(&u_attn.unsqueeze(1)?)?.reshape((cfg.n_heads, cfg.d_head))?;
        head_direct_effects.push((z * wu)?.sum(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        if let Some(b) = &a.b_o {
            bias += scalar(&(b * &u_attn)?.sum_all()?)?;
        }
        mlp_direct_effects.push(dot(&at_last(HookPoint::MlpOut(l))?)?);
    }
    let total = embed_direct_effect
        + bias
        + head_direct_effects.iter().flatten().sum::<f32>()
        + mlp_direct_effects.iter().sum::<f32>();
    Ok(LogitLens {
        logit_diffs,
        logit_shifts,
        top_tokens,
        head_direct_effects,
        mlp_direct_effects,
        embed_direct_effect,
        bias_direct_effect: bias,
        final_ld,
        decomposition_residual: (total - precap_ld).abs(),
        frozen_scale: scalar(&scale)?,
    })
}
