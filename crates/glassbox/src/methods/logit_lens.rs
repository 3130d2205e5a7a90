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

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::Prompt;
use crate::model::{Batch, Decompose, HookPoint, Hooks, Model};

/// A token and its logit under the lens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenScore {
    /// The token's id.
    pub token_id: u32,
    /// The token as a string.
    pub token: String,
    /// Its logit.
    pub logit: f32,
}

crate::options! {
    /// Options of `logit_lens`.
    pub struct LogitLensOptions {
        /// Top tokens listed after every layer.
        pub top_k: usize = 5,
    }
}


/// Result of `logit_lens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogitLens {
    /// `logit[correct] − logit[incorrect]` at the last position read after the embedding (`[0]`)
    /// and after each block (`[i + 1]`): `n_layers + 1` values.
    pub logit_diffs: Vec<f32>,
    /// The change across each block: `logit_shifts[i] = logit_diffs[i + 1] − logit_diffs[i]`.
    pub logit_shifts: Vec<f32>,
    /// Top tokens at the last position after the embedding and after every block.
    pub top_tokens: Vec<Vec<TokenScore>>,
    /// `head_direct_effects[layer][head]`
    pub head_direct_effects: Vec<Vec<f32>>,
    /// Direct effect of each layer's MLP on the logit difference: `mlp_direct_effects[layer]`.
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
/// The decomposition is the activation cache's (`ActivationCache::stack_head_results`,
/// `decompose_resid`, `apply_ln_to_stack`, `logit_attrs`) through the model's own readout.
pub fn logit_lens(model: &Model, prompt: &Prompt, opts: &LogitLensOptions) -> Result<LogitLens> {
    prompt.check(model)?;
    let (tokens, correct, incorrect, top_k) = (&prompt.tokens[..], prompt.correct, prompt.incorrect, opts.top_k);
    let cfg = &model.config();
    let layers = cfg.n_layers;
    let mut points = vec![HookPoint::Embed, HookPoint::LnFinalScale];
    if HookPoint::PosEmbed.present_in(cfg) {
        points.push(HookPoint::PosEmbed);
    }
    for l in 0..layers {
        points.extend([HookPoint::ResidPre(l), HookPoint::ResidPost(l), HookPoint::Z(l), HookPoint::MlpOut(l), HookPoint::AttnOut(l)]);
    }
    let batch = Batch::new(&[tokens.to_vec()])?;
    let out = model.forward(&batch, &Hooks::new().cache(points).last_logits_only())?;
    let last = tokens.len() - 1;
    // Everything at the last position only: [1, 1, ...].
    let cache = out.cache.at_positions(&[last])?;
    let final_logits = out.last_logits()?.squeeze(0)?;
    let final_ld = scalar(&(final_logits.get(correct as usize)? - final_logits.get(incorrect as usize)?)?)?;

    // The lens: every layer's residual through the final norm (its own scale) and unembedding.
    let resid = cache.accumulated_resid(model, None, false, false)?.tensor.flatten_from(1)?; // [L+1, d]
    let normalized = model.final_norm(&resid)?;
    let dir = (model.unembed_rows(&[correct])? - model.unembed_rows(&[incorrect])?)?.squeeze(0)?;
    let bias_diff = model.unembed_bias_diff(correct, incorrect)?;
    let precap_ld = scalar(&(normalized.get(layers)? * &dir)?.sum_all()?)? + bias_diff;
    let lens_logits = model.unembed(&normalized)?.to_dtype(DType::F32)?;
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
                    token: model.tokenizer().token_str(i as u32),
                    logit: row[i],
                })
                .collect()
        })
        .collect();

    // Direct effects with the frozen final-norm scale.
    let frozen_scale = cache.get(HookPoint::LnFinalScale)?.flatten_all()?;
    let effects = |stack: &crate::model::Stack| -> Result<Vec<f32>> {
        let normed = cache.apply_ln_to_stack(model, stack)?;
        Ok(cache.logit_attrs(model, &normed, correct, Some(incorrect))?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    };
    let heads = effects(&cache.stack_head_results(model, None, false, false)?)?;
    let head_direct_effects: Vec<Vec<f32>> = heads.chunks(cfg.n_heads).map(|c| c.to_vec()).collect();
    let mlp_direct_effects = effects(&cache.decompose_resid(model, None, Decompose::Mlp, false, false)?)?;
    let embed_direct_effect = effects(&cache.decompose_resid(model, Some(0), Decompose::All, false, true)?)?.iter().sum();
    // Constants: the attention output biases, the final norm's bias, the unembedding's bias.
    let mut bias = bias_diff;
    if let Some(b) = model.final_norm_bias() {
        bias += scalar(&(b * &dir)?.sum_all()?)?;
    }
    let mut biases = Vec::with_capacity(layers);
    for l in 0..layers {
        let z = cache.get(HookPoint::Z(l))?;
        biases.push((format!("{l}_attn_bias"), model.attn_bias_result(l, (1, 1), model.attn_post_scale(l, z)?.as_ref())?));
    }
    let (labels, tensors): (Vec<String>, Vec<Tensor>) = biases.into_iter().unzip();
    bias += effects(&crate::model::Stack { tensor: Tensor::stack(&tensors, 0)?, labels })?.iter().sum::<f32>();
    let total = embed_direct_effect + bias + heads.iter().sum::<f32>() + mlp_direct_effects.iter().sum::<f32>();
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
        frozen_scale: scalar(&frozen_scale.get(0)?)?,
    })
}
