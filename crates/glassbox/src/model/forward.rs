//! THE forward pass: one implementation for every architecture, chosen component by component
//! from `ModelConfig`, with a hook at every named point.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::model::config::{NormKind, Positions};
use crate::model::fused::{self, AttnSpec};
use crate::model::fused::attention::AttnMask as MaskRule;
use crate::model::cache::ActivationCache;
use crate::model::hooks::{HookPoint, HookState, Hooks};
use crate::model::ops::{linear, norm_parts, rotary, softmax_last, RopeTables};
use crate::model::weights::Matrix;
use crate::model::weights::{MoeWeights, Norm};
use crate::model::Model;

/// A batch of token sequences, right-padded to one length.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[b, p]` u32 token ids (padding positions hold id 0).
    pub ids: Tensor,
    /// Real length of each prompt; its last real position is `len - 1`.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Builds a right-padded batch; errors on an empty sequence.
    pub fn new(seqs: &[Vec<u32>]) -> Result<Self> {
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(Error::EmptyPrompt);
        }
        let p = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(seqs.len() * p);
        for s in seqs {
            flat.extend_from_slice(s);
            flat.extend(std::iter::repeat_n(0u32, p - s.len()));
        }
        Ok(Batch {
            ids: Tensor::from_vec(flat, (seqs.len(), p), &Device::Cpu)?,
            lengths: seqs.iter().map(Vec::len).collect(),
        })
    }

    /// Number of prompts (rows).
    pub fn size(&self) -> usize {
        self.lengths.len()
    }
    /// Padded length: the longest prompt's token count.
    pub fn n_pos(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }
    /// Each prompt's last real position (`len - 1`).
    pub fn last_positions(&self) -> Vec<usize> {
        self.lengths.iter().map(|l| l - 1).collect()
    }
}

/// What a forward pass returns: logits, the cached activations, and the gradient taps.
pub struct ForwardOutput {
    /// `[b, p, d_vocab]`, or `[b, 1, d_vocab]` with `Hooks::last_logits_only`, or
    /// `[b, 1, ids]` with `Hooks::logits_for(ids)`
    pub logits: Tensor,
    /// The vocabulary ids of the logits' columns when `Hooks::logits_for` chose them.
    pub logit_ids: Option<Vec<u32>>,
    /// The activations at the points `Hooks::cache` chose.
    pub cache: ActivationCache,
    /// The zero `Var` added at each gradient tap; `backward` reads their gradients.
    pub taps: HashMap<HookPoint, Var>,
    /// Real length of each prompt; its last real position is `len - 1`.
    pub lengths: Vec<usize>,
}

/// Gradients of a scalar with respect to each gradient tap.
#[derive(Debug, Clone, Default)]
pub struct Gradients {
    /// The gradient at each tap, shaped as that hook's tensor.
    pub values: HashMap<HookPoint, Tensor>,
}

impl Gradients {
    /// The gradient at `point`; errors when `point` was not a gradient tap of the run.
    pub fn get(&self, point: HookPoint) -> Result<&Tensor> {
        self.values.get(&point).ok_or_else(|| {
            Error::Invalid(format!("{point} was not a gradient tap in this run"))
        })
    }
}

impl ForwardOutput {
    /// Logits at each prompt's last real position: `[b, d_vocab]`.
    pub fn last_logits(&self) -> Result<Tensor> {
        if self.logits.dim(1)? == 0 {
            return Err(Error::Invalid("this run computed no logits: it stopped early (Hooks::stop_after_layer); run it without stop_after_layer to read logits".into()));
        }
        if self.logits.dim(1)? == 1 {
            return Ok(self.logits.squeeze(1)?);
        }
        let rows = self
            .lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| self.logits.get(i)?.get(len - 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// `logit[correct] - logit[incorrect]` at each prompt's last position: `[b]`.
    pub fn logit_diff(&self, correct: &[u32], incorrect: &[u32]) -> Result<Tensor> {
        let last = self.last_logits()?;
        let b = last.dim(0)?;
        if correct.len() != b || incorrect.len() != b {
            return Err(Error::Invalid(format!(
                "{} prompts but {} correct and {} incorrect answers",
                b,
                correct.len(),
                incorrect.len()
            )));
        }
        let column = |id: u32| -> Result<u32> {
            match &self.logit_ids {
                None => Ok(id),
                Some(cols) => cols.iter().position(|&c| c == id).map(|p| p as u32).ok_or_else(|| {
                    Error::Invalid(format!("token id {id} was not among the logits this run computed ({cols:?})"))
                }),
            }
        };
        let pick = |ids: &[u32]| -> Result<Tensor> {
            let cols = ids.iter().map(|&id| column(id)).collect::<Result<Vec<u32>>>()?;
            let idx = Tensor::from_vec(cols, (b, 1), &Device::Cpu)?;
            Ok(last.gather(&idx, 1)?.squeeze(1)?)
        };
        Ok((pick(correct)? - pick(incorrect)?)?)
    }

    /// Gradient of the scalar `metric` (computed from this output) at every tap, after one
    /// backward pass. A tap with no path to the metric gets zeros.
    pub fn backward(&self, metric: &Tensor) -> Result<Gradients> {
        if metric.elem_count() != 1 {
            return Err(Error::Invalid(format!(
                "the metric to differentiate must be a scalar, not shape {:?} (sum it first)",
                metric.dims()
            )));
        }
        let grads = metric.sum_all()?.backward()?;
        let mut values = HashMap::new();
        for (point, var) in &self.taps {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var.as_tensor().zeros_like()?,
            };
            values.insert(*point, g);
        }
        Ok(Gradients { values })
    }
}

/// Where a forward pass begins.
pub enum Start<'a> {
    /// Token ids: the whole forward pass from the embeddings.
    Tokens(&'a Batch),
    /// The residual stream entering `layer` (`blocks.{layer}.hook_resid_pre`), `[b, p, d_model]`.
    Residual {
        /// The block the residual enters.
        layer: usize,
        /// `[b, p, d_model]` residual stream (cast to the weights' dtype).
        resid: &'a Tensor,
        /// Real length of each prompt.
        lengths: &'a [usize],
    },
    /// New tokens after the sequence whose keys and values `cache` holds (every row the same
    /// length, no padding): the run sees the cached positions through attention, and the cache
    /// grows by the new ones. Hooks see the new positions only (attention scores and patterns
    /// have every key: `[b, h, new, past + new]`).
    Continue {
        /// The new tokens.
        batch: &'a Batch,
        /// Keys and values of the positions before them; grows by the new ones.
        cache: &'a mut KvCache,
    },
}

/// The keys and values (after query/key norms and rotary) of the positions run so far, per
/// layer, for generation: `[b, positions, kv_heads, d_head]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Model {
    /// Runs the model on a batch with hooks.
    pub fn forward(&self, batch: &Batch, hooks: &Hooks) -> Result<ForwardOutput> {
        self.forward_from(Start::Tokens(batch), hooks)
    }

    /// Runs the model from tokens, or from the residual stream at a layer (for patched runs
    /// that share a prefix).
    pub fn forward_from(&self, start: Start, hooks: &Hooks) -> Result<ForwardOutput> {
        let cfg = &self.config;
        let w = &self.weights;
        let past = match &start {
            Start::Continue { cache, batch } => {
                if cfg.variants.bidirectional {
                    return Err(Error::Invalid("this model's attention is bidirectional: every position reads the later ones, so a run cannot continue a cached sequence (nor generate)".into()));
                }
                if batch.lengths.iter().any(|&l| l != batch.n_pos()) {
                    return Err(Error::Invalid("a run that continues a cached sequence takes rows of one length (no padding)".into()));
                }
                if !cache.is_empty() && cache.layers.iter().flatten().next().is_some_and(|(k, _)| k.dims()[0] != batch.size()) {
                    return Err(Error::Invalid("the cache holds another number of rows than the batch".into()));
                }
                cache.len
            }
            _ => 0,
        };
        let (lengths, n_pos, batch_size) = match &start {
            Start::Tokens(b) | Start::Continue { batch: b, .. } => {
                let (rows, p) = b.ids.dims2()?;
                (b.lengths.clone(), p, rows)
            }
            Start::Residual { resid, lengths, layer } => {
                cfg.check_layer(*layer)?;
                let (b, p, d) = resid.dims3()?;
                if d != cfg.d_model || b != lengths.len() {
                    return Err(Error::Invalid(format!(
                        "residual of shape {:?} does not fit {} prompts and d_model {}",
                        resid.dims(),
                        lengths.len(),
                        cfg.d_model
                    )));
                }
                (lengths.to_vec(), p, b)
            }
        };
        if lengths.len() != batch_size || lengths.iter().any(|&l| l == 0 || l > n_pos) {
            return Err(Error::Invalid(format!(
                "prompt lengths {lengths:?} do not fit a batch of {batch_size} prompts of {n_pos} positions (each must be 1..={n_pos})"
            )));
        }
        if past + n_pos > cfg.n_ctx {
            return Err(Error::PromptTooLong {
                n_tokens: past + n_pos,
                max: cfg.n_ctx,
            });
        }
        hooks.validate(cfg, batch_size, n_pos)?;
        let mut st = HookState::new(hooks);
        let dtype = w.dtype();

        let (mut x, first_layer, mut cache) = match start {
            Start::Tokens(batch) => (self.embed(batch, 0, &mut st)?, 0, None),
            Start::Residual { layer, resid, .. } => (resid.to_dtype(dtype)?, layer, None),
            Start::Continue { batch, cache } => {
                cache.layers.resize(cfg.n_layers, None);
                (self.embed(batch, past, &mut st)?, 0, Some(cache))
            }
        };

        let rope = match cfg.positions {
            Positions::Rotary(r) => Some(r),
            _ => None,
        };
        let mut tables: HashMap<u64, Arc<RopeTables>> = HashMap::new();
        let mut masks: HashMap<Option<usize>, AttnMask> = HashMap::new();
        let last_layer = hooks.stop_after_layer.map_or(cfg.n_layers, |s| (s + 1).min(cfg.n_layers));
        for l in first_layer..last_layer {
            let la = cfg.layers[l];
            let mask = masks.entry(la.sliding_window).or_insert_with(|| AttnMask::new(&lengths, n_pos, past, la.sliding_window, cfg.variants.bidirectional, dtype));
            // Tables for every position so far; a continued run rotates the new ones only.
            let layer_rope = rope
                .map(|r| -> Result<Arc<RopeTables>> {
                    let all = tables.entry(la.rope_base.to_bits()).or_insert_with(|| crate::model::rope::tables(past + n_pos, r.dim, la.rope_base, r.scaling, w.rope_freqs.as_deref())).clone();
                    Ok(if past == 0 { all } else { Arc::new(all.starting_at(past)) })
                })
                .transpose()?;
            let layer_kv = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = self.block(l, x, mask, layer_rope.as_ref(), layer_kv, &mut st)?;
        }
        if let Some(c) = cache {
            c.len += n_pos;
        }
        if last_layer < cfg.n_layers {
            return Ok(ForwardOutput {
                logits: Tensor::zeros((batch_size, 0, 0), dtype, &Device::Cpu)?,
                cache: ActivationCache { values: st.cache },
                taps: st.tap_vars,
                lengths,
                logit_ids: hooks.logit_ids.clone(),
            });
        }

        let mut x = if cfg.variants.no_final_norm {
            st.apply(HookPoint::LnFinalScale, Tensor::ones((batch_size, n_pos, 1), dtype, &Device::Cpu)?)?;
            apply_norm_weights(&st.apply(HookPoint::LnFinalNormalized, x)?, &w.ln_final)?
        } else {
            normalize_weighted(&x, HookPoint::LnFinalScale, HookPoint::LnFinalNormalized, &w.ln_final, cfg, &mut st)?
        };
        if hooks.last_logits_only {
            let rows = lengths
                .iter()
                .enumerate()
                .map(|(i, &len)| x.get(i)?.narrow(0, len - 1, 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            x = Tensor::stack(&rows, 0)?;
        }
        let logits = match &hooks.logit_ids {
            None => w.unembed.linear(&x, w.unembed_bias.as_ref())?,
            Some(ids) => {
                let idx = Tensor::from_slice(ids, ids.len(), &Device::Cpu)?;
                let rows = w.unembed.rows(ids)?;
                let bias = w.unembed_bias.as_ref().map(|b| b.index_select(&idx, 0)).transpose()?;
                linear(&x, &rows, bias.as_ref())?
            }
        };
        let logits = self.softcap_logits(logits)?;
        check_finite_logits(&logits)?;

        Ok(ForwardOutput {
            logits,
            cache: ActivationCache { values: st.cache },
            taps: st.tap_vars,
            lengths,
            logit_ids: hooks.logit_ids.clone(),
        })
    }

    /// Token (and position) embeddings of a batch whose first position is `past`.
    fn embed(&self, batch: &Batch, past: usize, st: &mut HookState) -> Result<Tensor> {
        let cfg = &self.config;
        let w = &self.weights;
        let (b, p) = batch.ids.dims2()?;
        let max_id = batch.ids.max_all()?.to_scalar::<u32>()? as usize;
        if max_id >= cfg.d_vocab {
            return Err(Error::Invalid(format!(
                "token id {max_id} is outside the vocabulary of {} tokens",
                cfg.d_vocab
            )));
        }
        let mut tok = w.embed.rows(&batch.ids.flatten_all()?.to_vec1::<u32>()?)?.reshape((b, p, cfg.d_model))?;
        if let Some(s) = cfg.embed_scale {
            tok = (tok * s)?;
        }
        let mut x = st.apply(HookPoint::Embed, tok)?;
        if let (Positions::Learned { offset }, Some(table)) = (cfg.positions, &w.pos_embed) {
            let pos = table
                .narrow(0, offset + past, p)?
                .unsqueeze(0)?
                .broadcast_as((b, p, cfg.d_model))?
                .contiguous()?;
            let pos = st.apply(HookPoint::PosEmbed, pos)?;
            x = (x + pos)?;
        }
        Ok(x)
    }

    fn block(
        &self,
        l: usize,
        x: Tensor,
        mask: &AttnMask,
        rope: Option<&Arc<RopeTables>>,
        mut kv: Option<&mut Option<(Tensor, Tensor)>>,
        st: &mut HookState,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let lw = &self.weights.layers[l];
        let resid_pre = st.apply(HookPoint::ResidPre(l), x)?;
        let post_norm = |x: Tensor, n: &Option<Norm>| -> Result<Tensor> {
            match n {
                Some(n) => weighted_norm(&x, n, cfg),
                None => Ok(x),
            }
        };

        if cfg.variants.post_ln {
            // Post-LN (OPT-350m): the sublayers read the raw residual; a norm follows each
            // residual addition.
            let split = self.split_inputs(l, &resid_pre, false, st)?;
            let attn_out = self.attention(l, &resid_pre, split, mask, rope, kv.as_deref_mut(), st)?;
            let attn_out = st.apply(HookPoint::AttnOut(l), attn_out)?;
            let normalized = normalize_weighted(&(&resid_pre + &attn_out)?, HookPoint::Ln1Scale(l), HookPoint::Ln1Normalized(l), &lw.ln1, cfg, st)?;
            let resid_mid = st.apply(HookPoint::ResidMid(l), normalized)?;
            let mlp_read = st.apply(HookPoint::MlpIn(l), resid_mid.clone())?;
            let mlp_out = self.mlp_or_moe(l, &mlp_read, st)?;
            let mlp_out = st.apply(HookPoint::MlpOut(l), mlp_out)?;
            let normalized = normalize_weighted(&(resid_mid + mlp_out)?, HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l), &lw.ln2, cfg, st)?;
            return st.apply(HookPoint::ResidPost(l), normalized);
        }

        let split = self.split_inputs(l, &resid_pre, !cfg.variants.no_pre_norms, st)?;
        let attn_in = if cfg.variants.no_pre_norms || split.is_some() {
            resid_pre.clone()
        } else {
            normalize_weighted(&resid_pre, HookPoint::Ln1Scale(l), HookPoint::Ln1Normalized(l), &lw.ln1, cfg, st)?
        };
        let attn_out = post_norm(self.attention(l, &attn_in, split, mask, rope, kv, st)?, &lw.extra.ln1_post)?;
        let attn_out = st.apply(HookPoint::AttnOut(l), attn_out)?;

        let mlp_in_resid = if cfg.parallel_block {
            resid_pre.clone()
        } else {
            st.apply(HookPoint::ResidMid(l), (&resid_pre + &attn_out)?)?
        };
        let mlp_read = st.apply(HookPoint::MlpIn(l), mlp_in_resid.clone())?;
        let mlp_out = if cfg.variants.attn_only {
            // No MLP: its output is zero, so that its hooks keep every method's layout.
            mlp_read.zeros_like()?
        } else {
            let mlp_in = if cfg.variants.no_pre_norms {
                mlp_read
            } else {
                normalize_weighted(&mlp_read, HookPoint::Ln2Scale(l), HookPoint::Ln2Normalized(l), &lw.ln2, cfg, st)?
            };
            post_norm(self.mlp_or_moe(l, &mlp_in, st)?, &lw.extra.ln2_post)?
        };
        let mlp_out = st.apply(HookPoint::MlpOut(l), mlp_out)?;

        let resid_post = if cfg.parallel_block {
            ((resid_pre + attn_out)? + mlp_out)?
        } else {
            (mlp_in_resid + mlp_out)?
        };
        st.apply(HookPoint::ResidPost(l), resid_post)
    }

    fn mlp_or_moe(&self, l: usize, x: &Tensor, st: &mut HookState) -> Result<Tensor> {
        match &self.weights.layers[l].extra.moe {
            Some(moe) => self.moe(l, x, moe, st),
            None => self.mlp(l, x, st),
        }
    }

    /// Mixture of experts: router logits, softmax, the top-k experts per token (their weights
    /// renormalised where the family does), the weighted sum of the chosen experts' outputs.
    /// Every expert runs on every token (exact and differentiable; the unchosen get weight 0).
    fn moe(&self, l: usize, x: &Tensor, moe: &MoeWeights, st: &mut HookState) -> Result<Tensor> {
        let cfg = self.config.variants.moe.ok_or_else(|| Error::Invalid("MoE weights without an MoE config".into()))?;
        let logits = st.apply(HookPoint::RouterLogits(l), linear(x, &moe.router, None)?)?;
        let probs = softmax_last(&logits)?;
        // The top-k mask, chosen on the values (the choice itself has no gradient).
        let (b, p, e) = probs.dims3()?;
        let rows = probs.to_dtype(DType::F32)?.reshape((b * p, e))?.to_vec2::<f32>()?;
        let mut mask = vec![0f32; b * p * e];
        for (r, row) in rows.iter().enumerate() {
            let mut idx: Vec<usize> = (0..e).collect();
            idx.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
            for &i in idx.iter().take(cfg.top_k) {
                mask[r * e + i] = 1.0;
            }
        }
        let mask = Tensor::from_vec(mask, (b, p, e), &Device::Cpu)?.to_dtype(probs.dtype())?;
        let mut weights = (probs * mask)?;
        if cfg.renormalize {
            weights = weights.broadcast_div(&weights.sum_keepdim(D::Minus1)?)?;
        }
        let weights = st.apply(HookPoint::ExpertWeights(l), weights)?;
        let mut out: Option<Tensor> = None;
        for (i, ex) in moe.experts.iter().enumerate() {
            let y = st.apply(HookPoint::ExpertOut(l, i), gated_mlp(x, ex, self.config.mlp.activation)?)?;
            let y = y.broadcast_mul(&weights.narrow(2, i, 1)?)?;
            out = Some(match out {
                Some(o) => (o + y)?,
                None => y,
            });
        }
        let out = out.ok_or_else(|| Error::Invalid("a mixture of experts with no experts".into()))?;
        match &moe.shared {
            // Qwen2-MoE: + sigmoid(gate · x) · shared_expert(x).
            Some((expert, gate)) => {
                let g = (linear(x, gate, None)?.neg()?.exp()? + 1.0)?.recip()?;
                Ok((out + gated_mlp(x, expert, self.config.mlp.activation)?.broadcast_mul(&g)?)?)
            }
            None => Ok(out),
        }
    }

    /// TransformerLens' split attention inputs, where a hook asks for `hook_q_input`,
    /// `hook_k_input` or `hook_v_input` of layer `l`: the residual repeated once per head, hooked,
    /// normalised per head (`normalize`) and projected by that head's rows alone. Returns the
    /// queries, keys and values `[b, p, heads, d_head]`, or `None` where no hook asks (the usual
    /// shared path).
    fn split_inputs(&self, l: usize, resid: &Tensor, normalize: bool, st: &mut HookState) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        let points = [HookPoint::QInput(l), HookPoint::KInput(l), HookPoint::VInput(l)];
        let attn_in = st.asks_for(HookPoint::AttnIn(l));
        if !attn_in && !points.iter().any(|&p| st.asks_for(p)) {
            return Ok(None);
        }
        if attn_in && points.iter().any(|&p| st.asks_for(p)) {
            return Err(Error::Invalid(format!(
                "layer {l}: a run hooks either hook_attn_in (one input per head for query, key and value) or hook_q_input/hook_k_input/hook_v_input, not both"
            )));
        }
        if normalize && (st.asks_for(HookPoint::Ln1Scale(l)) || st.asks_for(HookPoint::Ln1Normalized(l))) {
            return Err(Error::Invalid(format!(
                "layer {l}: a run cannot hook both the per-head inputs (hook_q_input, hook_k_input, hook_v_input) and ln1's hooks; the norm runs once per head there"
            )));
        }
        let (a, cfg) = (&self.weights.layers[l].attn, &self.config);
        // The residual repeated over `n` heads, hooked at `point`, then normalised per head by
        // ln1 (`normalize`).
        let per_head = |point: HookPoint, n: usize, st: &mut HookState| -> Result<Tensor> {
            let (b, p, d) = resid.dims3()?;
            let x = st.apply(point, resid.unsqueeze(2)?.broadcast_as((b, p, n, d))?.contiguous()?)?;
            if normalize {
                weighted_norm(&x, &self.weights.layers[l].ln1, cfg)
            } else {
                Ok(x)
            }
        };
        if attn_in {
            // One input per head for all three (query, key and value heads pair one to one),
            // normalised once.
            let x = per_head(HookPoint::AttnIn(l), cfg.n_heads, st)?;
            let q = self.head_projection(&x, &a.w_q, a.b_q.as_ref())?;
            let k = self.head_projection(&x, &a.w_k, a.b_k.as_ref())?;
            let v = self.head_projection(&x, &a.w_v, a.b_v.as_ref())?;
            return Ok(Some((q, k, v)));
        }
        let q = self.head_projection(&per_head(points[0], cfg.n_heads, st)?, &a.w_q, a.b_q.as_ref())?;
        let k = self.head_projection(&per_head(points[1], cfg.n_kv_heads, st)?, &a.w_k, a.b_k.as_ref())?;
        let v = self.head_projection(&per_head(points[2], cfg.n_kv_heads, st)?, &a.w_v, a.b_v.as_ref())?;
        Ok(Some((q, k, v)))
    }

    /// One projection of the split path: per-head inputs `x: [b, p, n, d_model]` (already
    /// through ln1), each head projected by its own rows of `w`: `[b, p, n, d_head]`.
    fn head_projection(&self, x: &Tensor, w: &Matrix, bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, p, n, d) = x.dims4()?;
        let dh = self.config.d_head;
        // [heads, b·p, d] × [heads, d, d_head]: each head's rows of the projection.
        let xt = x.reshape((b * p, n, d))?.transpose(0, 1)?.contiguous()?;
        let wt = w.tensor()?.to_dtype(x.dtype())?.reshape((n, dh, d))?.transpose(1, 2)?.contiguous()?;
        let y = xt.matmul(&wt)?.transpose(0, 1)?.contiguous()?.reshape((b, p, n, dh))?;
        Ok(match bias {
            Some(bias) => y.broadcast_add(&bias.to_dtype(y.dtype())?.reshape((n, dh))?)?,
            None => y,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: usize,
        x: &Tensor,
        split: Option<(Tensor, Tensor, Tensor)>,
        mask: &AttnMask,
        rope: Option<&Arc<RopeTables>>,
        past_kv: Option<&mut Option<(Tensor, Tensor)>>,
        st: &mut HookState,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let a = &self.weights.layers[l].attn;
        let (b, p, _) = x.dims3()?;
        let (h, kv, dh) = (cfg.n_heads, cfg.n_kv_heads, cfg.d_head);

        let (q, k, v) = match split {
            Some(qkv) => qkv,
            None => (
                self.linear(x, &a.w_q, a.b_q.as_ref())?.reshape((b, p, h, dh))?,
                self.linear(x, &a.w_k, a.b_k.as_ref())?.reshape((b, p, kv, dh))?,
                self.linear(x, &a.w_v, a.b_v.as_ref())?.reshape((b, p, kv, dh))?,
            ),
        };
        let mut q = st.apply(HookPoint::Q(l), q)?;
        let mut k = st.apply(HookPoint::K(l), k)?;
        let v = st.apply(HookPoint::V(l), v)?;
        let extra = &self.weights.layers[l].extra;
        if let (Some(qn), Some(kn)) = (&extra.q_norm, &extra.k_norm) {
            if cfg.variants.qk_norm_full {
                // Over all heads of the projection at once (OLMo-2).
                q = weighted_norm(&q.reshape((b, p, h * dh))?, qn, cfg)?.reshape((b, p, h, dh))?;
                k = weighted_norm(&k.reshape((b, p, kv * dh))?, kn, cfg)?.reshape((b, p, kv, dh))?;
            } else {
                q = weighted_norm(&q, qn, cfg)?;
                k = weighted_norm(&k, kn, cfg)?;
            }
        }
        if let (Some(rope), Positions::Rotary(r)) = (rope, cfg.positions) {
            q = st.apply(HookPoint::RotQ(l), rotary(&q, rope, r.pairing)?)?;
            k = st.apply(HookPoint::RotK(l), rotary(&k, rope, r.pairing)?)?;
        }

        let z = if let Some(slot) = past_kv {
            // A continued run: the new keys and values join the cached ones.
            let (k_all, v_all) = match slot.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
                None => (k.clone(), v.clone()),
            };
            let z = if st.touches(HookPoint::AttnScores(l)) || st.touches(HookPoint::Pattern(l)) {
                self.attention_chain(l, &q, &k_all, &v_all, mask, st)?
            } else {
                let spec = AttnSpec { scale: cfg.attn_scale, softcap: cfg.variants.attn_softcap, mask: mask.rule.clone() };
                fused::attention(&q, &k_all, &v_all, &spec)?
            };
            *slot = Some((k_all.detach(), v_all.detach()));
            z
        } else if st.touches(HookPoint::AttnScores(l)) || st.touches(HookPoint::Pattern(l)) {
            self.attention_chain(l, &q, &k, &v, mask, st)?
        } else {
            let spec = AttnSpec { scale: cfg.attn_scale, softcap: cfg.variants.attn_softcap, mask: mask.rule.clone() };
            fused::attention(&q, &k, &v, &spec)?
        };
        let z = st.apply(HookPoint::Z(l), z)?;
        if st.asks_for(HookPoint::Result(l)) {
            // Each head's output apart, hooked, then summed with the bias.
            let result = st.apply(HookPoint::Result(l), self.head_outputs(l, &z)?)?;
            let out = result.sum(2)?;
            return Ok(match &a.b_o {
                Some(bias) => out.broadcast_add(&bias.to_dtype(out.dtype())?)?,
                None => out,
            });
        }
        self.linear(&z.reshape((b, p, h * dh))?, &a.w_o, a.b_o.as_ref())
    }

    /// The attention core as a chain of candle ops, for runs that hook its scores or pattern:
    /// `z: [b, p, heads, d_head]`.
    fn attention_chain(&self, l: usize, q: &Tensor, k: &Tensor, v: &Tensor, mask: &AttnMask, st: &mut HookState) -> Result<Tensor> {
        let cfg = &self.config;
        // [b, heads, p, dh], key/value heads repeated over their query group.
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = repeat_kv(&k.transpose(1, 2)?, cfg.group_size())?;
        let v = repeat_kv(&v.transpose(1, 2)?, cfg.group_size())?;

        let mut scores = (q.matmul(&k.t()?)? * cfg.attn_scale)?;
        if let Some(c) = cfg.variants.attn_softcap {
            scores = ((scores / c)?.tanh()? * c)?;
        }
        let scores = scores.broadcast_add(mask.additive()?)?;
        let scores = st.apply(HookPoint::AttnScores(l), scores)?;
        let pattern = st.apply(HookPoint::Pattern(l), softmax_last(&scores)?)?;
        Ok(pattern.matmul(&v)?.transpose(1, 2)?)
    }

    fn mlp(&self, l: usize, x: &Tensor, st: &mut HookState) -> Result<Tensor> {
        let cfg = &self.config;
        let m = &self.weights.layers[l].mlp;
        let post = match &m.w_gate {
            Some(w_gate) => {
                let gate = st.apply(HookPoint::MlpPre(l), self.linear(x, w_gate, m.b_gate.as_ref())?)?;
                let up = st.apply(HookPoint::MlpPreLinear(l), self.linear(x, &m.w_in, m.b_in.as_ref())?)?;
                fused::gated(&gate, &up, cfg.mlp.activation)?
            }
            None => {
                let pre = st.apply(HookPoint::MlpPre(l), self.linear(x, &m.w_in, m.b_in.as_ref())?)?;
                fused::activation(&pre, cfg.mlp.activation)?
            }
        };
        let post = st.apply(HookPoint::MlpPost(l), post)?;
        self.linear(&post, &m.w_out, m.b_out.as_ref())
    }

    /// `x @ wᵀ + b` (quantized weights streamed as their blocks).
    fn linear(&self, x: &Tensor, w: &Matrix, b: Option<&Tensor>) -> Result<Tensor> {
        w.linear(x, b)
    }
}

/// Error when any logit is NaN or infinite: a figure computed from it would be meaningless
/// (finite weights can still overflow, e.g. through an intervention that adds a huge vector).
fn check_finite_logits(logits: &Tensor) -> Result<()> {
    // x · 0 is 0 for a finite x and NaN otherwise; a sum keeps a NaN.
    let probe = (logits.detach() * 0.0)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if probe != 0.0 {
        return Err(Error::NonFinite(
            "the model's logits are not finite (NaN or infinite): an intervention or the weights push the activations beyond float range".into(),
        ));
    }
    Ok(())
}

/// A norm's normalisation with its two hooks: the scale (before it divides) and the result.
fn normalize(x: &Tensor, scale_hook: HookPoint, out_hook: HookPoint, cfg: &crate::model::ModelConfig, st: &mut HookState) -> Result<Tensor> {
    let (centred, scale) = norm_parts(x, cfg.norm.kind, cfg.norm.eps)?;
    let scale = st.apply(scale_hook, scale)?;
    st.apply(out_hook, centred.broadcast_div(&scale)?)
}

/// A norm with its weights and its two hooks (the scale, the normalised value) in between:
/// one fused op where neither hook is touched.
fn normalize_weighted(x: &Tensor, scale_hook: HookPoint, out_hook: HookPoint, n: &Norm, cfg: &crate::model::ModelConfig, st: &mut HookState) -> Result<Tensor> {
    if st.touches(scale_hook) || st.touches(out_hook) {
        return apply_norm_weights(&normalize(x, scale_hook, out_hook, cfg, st)?, n);
    }
    weighted_norm(x, n, cfg)
}

/// A norm with its weights, without hooks (post-norms, query/key norms).
fn weighted_norm(x: &Tensor, n: &Norm, cfg: &crate::model::ModelConfig) -> Result<Tensor> {
    fused::norm(x, cfg.norm.kind == NormKind::LayerNorm, cfg.norm.eps, &n.w, n.b.as_ref())
}

/// `w_out · (act(w_gate · x) ⊙ (w_in · x))`: one expert of a mixture.
fn gated_mlp(x: &Tensor, m: &crate::model::weights::MlpWeights, act: crate::model::config::Activation) -> Result<Tensor> {
    let up = m.w_in.linear(x, m.b_in.as_ref())?;
    let hidden = match &m.w_gate {
        Some(g) => fused::gated(&g.linear(x, m.b_gate.as_ref())?, &up, act)?,
        None => fused::activation(&up, act)?,
    };
    m.w_out.linear(&hidden, m.b_out.as_ref())
}

fn apply_norm_weights(normalized: &Tensor, n: &Norm) -> Result<Tensor> {
    let y = normalized.broadcast_mul(&n.w)?;
    Ok(match &n.b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `[b, kv, p, dh]` → `[b, kv*group, p, dh]`, each key/value head serving `group` query heads.
fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.contiguous()?);
    }
    let (b, kv, p, dh) = x.dims4()?;
    Ok(x
        .unsqueeze(2)?
        .broadcast_as((b, kv, group, p, dh))?
        .contiguous()?
        .reshape((b, kv * group, p, dh))?)
}

/// Which keys each query may see: causal (or, in a bidirectional model, every key), within
/// the prompt's real length and the sliding window (`fused::attention::AttnMask`, a rule, not a matrix). The tiled attention core reads
/// the rule; the chain of candle ops (a run that hooks the scores or the pattern) adds
/// `additive()`, built only for such a run.
struct AttnMask {
    rule: MaskRule,
    queries: usize,
    dtype: DType,
    additive: std::cell::OnceCell<Tensor>,
}

impl AttnMask {
    /// Queries at positions `past..past + p` of each prompt (real length `past + len`) over
    /// keys `0..past + p`: causal, within the prompt and the sliding window. Padding queries
    /// (past the prompt's end) see the whole real prompt: a sliding window could otherwise leave
    /// them no key at all, and a row of −∞ gives NaN, which would reach real positions through
    /// `0 · NaN` in the value products.
    fn new(lengths: &[usize], p: usize, past: usize, window: Option<usize>, bidirectional: bool, dtype: DType) -> Self {
        AttnMask { rule: MaskRule { lengths: Arc::new(lengths.to_vec()), past, window, bidirectional }, queries: p, dtype, additive: std::cell::OnceCell::new() }
    }

    /// The additive mask `[b, 1, queries, keys]`: 0 where a query may see a key, -inf elsewhere.
    fn additive(&self) -> Result<&Tensor> {
        if self.additive.get().is_none() {
            let (b, keys) = (self.rule.lengths.len(), self.rule.past + self.queries);
            let mut m = vec![f32::NEG_INFINITY; b * self.queries * keys];
            for bi in 0..b {
                for i in 0..self.queries {
                    let (lo, hi) = self.rule.keys(bi, i);
                    m[(bi * self.queries + i) * keys + lo..(bi * self.queries + i) * keys + hi].fill(0.0);
                }
            }
            let t = Tensor::from_vec(m, (b, 1, self.queries, keys), &Device::Cpu)?.to_dtype(self.dtype)?;
            let _ = self.additive.set(t);
        }
        self.additive.get().ok_or_else(|| Error::Invalid("attention mask not built".into()))
    }
}
