//! `ActivationCache`: the activations a forward pass cached, by hook point, with
//! TransformerLens' helpers (`accumulated_resid`, `decompose_resid`, `stack_head_results`,
//! `stack_neuron_results`, `apply_ln_to_stack`, `logit_attrs`) and slicing by batch row and
//! position.
//!
//! The helpers read the model's weights, so they take it as an argument (a TransformerLens cache
//! holds a reference to its model). A stack is `[components, b, p, d_model]` with a label per
//! component, as in TransformerLens. Two differences, both because glassbox does not fold
//! norm weights into the following matrices: `apply_ln_to_stack` multiplies by the final
//! norm's weight after dividing by its frozen scale, and `logit_attrs` then takes the plain
//! unembedding rows; so `logit_attrs(apply_ln_to_stack(stack))` is each component's direct
//! effect exactly as the logit lens defines it. Models whose attention or MLP output has its
//! own norm (Gemma 2/3, OLMo-2) have that norm's scale frozen too, so that per-head and
//! per-neuron results add up to `hook_attn_out` and `hook_mlp_out`.

use std::collections::HashMap;

use candle_core::{IndexOp, Tensor};

use crate::error::{Error, Result};
use crate::model::{HookPoint, Model};

/// Cached activations by hook point.
#[derive(Debug, Clone, Default)]
pub struct ActivationCache {
    /// The tensors, by hook point (shapes as listed in `hooks`).
    pub values: HashMap<HookPoint, Tensor>,
}

/// A stack of residual-stream components `[components, b, p, d_model]` and their labels.
#[derive(Debug, Clone)]
pub struct Stack {
    /// `[components, b, p, d_model]`.
    pub tensor: Tensor,
    /// One label per component, in stack order (e.g. `embed`, `3_attn_out`, `L3H5`).
    pub labels: Vec<String>,
}

/// How `apply_ln_to_stack_as` puts a stack through a norm. TransformerLens (without folded
/// norms) uses `Frozen` everywhere but in `accumulated_resid` at the unembedding, where it uses
/// `Recomputed`; glassbox's own helpers (`apply_ln_to_stack`, the `apply_ln` flags) use
/// `FrozenWeighted`, whose final-norm images give direct effects under `logit_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackNorm {
    /// Centred where the norm is a LayerNorm and divided by the scale the run cached for that
    /// norm; no weight, no bias (TransformerLens' `apply_ln_to_stack`). Linear.
    Frozen,
    /// `Frozen` times the norm's weight (what TransformerLens folds into the next matrix with
    /// `fold_ln`). Linear.
    FrozenWeighted,
    /// The final norm applied to each component with statistics of its own, weight and bias
    /// included (TransformerLens' `recompute_ln=True`: each stream's logit lens). Final norm
    /// only; not linear.
    Recomputed,
}

/// Which components `decompose_resid` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decompose {
    /// Attention and MLP outputs.
    All,
    /// Attention outputs only.
    Attn,
    /// MLP outputs only.
    Mlp,
}

impl Stack {
    fn new(parts: Vec<(String, Tensor)>) -> Result<Stack> {
        if parts.is_empty() {
            return Err(Error::Invalid("the stack has no components (layer 0 with nothing before it)".into()));
        }
        let (labels, tensors): (Vec<String>, Vec<Tensor>) = parts.into_iter().unzip();
        Ok(Stack { tensor: Tensor::stack(&tensors, 0)?, labels })
    }

    /// The sum over the components: `[b, p, d_model]`.
    pub fn sum(&self) -> Result<Tensor> {
        Ok(self.tensor.sum(0)?)
    }
}

impl ActivationCache {
    /// The cached value at `point`, or an error saying it was not cached.
    pub fn get(&self, point: HookPoint) -> Result<&Tensor> {
        self.values
            .get(&point)
            .ok_or_else(|| Error::Invalid(format!("{point} was not cached in this run; add it to the hooks' cache set")))
    }

    /// The cache with every tensor restricted to batch rows `rows` (each kept as a row).
    pub fn batch_rows(&self, rows: &[usize]) -> Result<ActivationCache> {
        self.map(|_, t| {
            let idx = Tensor::from_slice(&rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), t.device())?;
            check_index(rows, t.dim(0)?, "batch row")?;
            Ok(t.contiguous()?.index_select(&idx, 0)?)
        })
    }

    /// The cache with every tensor restricted to `positions` along its position axis (the query
    /// axis of attention scores and patterns).
    pub fn at_positions(&self, positions: &[usize]) -> Result<ActivationCache> {
        self.map(|p, t| {
            let axis = p.axes().pos;
            check_index(positions, t.dim(axis)?, "position")?;
            let idx = Tensor::from_slice(&positions.iter().map(|&r| r as u32).collect::<Vec<_>>(), positions.len(), t.device())?;
            Ok(t.contiguous()?.index_select(&idx, axis)?)
        })
    }

    fn map(&self, f: impl Fn(HookPoint, &Tensor) -> Result<Tensor>) -> Result<ActivationCache> {
        let values = self.values.iter().map(|(p, t)| Ok((*p, f(*p, t)?))).collect::<Result<HashMap<_, _>>>()?;
        Ok(ActivationCache { values })
    }

    /// The residual stream entering each layer before `layer` (all layers, plus the final
    /// `resid_post`, for `None`), with `resid_mid` after each when `incl_mid`; normalised by
    /// the final norm with its frozen scale when `apply_ln` (`apply_ln_to_stack`). Labels
    /// `0_pre`, `0_mid`, …, `final_post`. Needs `hook_resid_pre` (and `hook_resid_mid`,
    /// `hook_resid_post`, `ln_final.hook_scale` as asked) cached.
    pub fn accumulated_resid(&self, model: &Model, layer: Option<usize>, incl_mid: bool, apply_ln: bool) -> Result<Stack> {
        let n = self.upto(model, layer)?;
        let mut parts = Vec::new();
        for l in 0..n {
            parts.push((format!("{l}_pre"), self.get(HookPoint::ResidPre(l))?.clone()));
            if incl_mid {
                parts.push((format!("{l}_mid"), self.get(HookPoint::ResidMid(l))?.clone()));
            }
        }
        if layer.is_none() {
            parts.push(("final_post".into(), self.get(HookPoint::ResidPost(model.config.n_layers - 1))?.clone()));
        }
        self.maybe_ln(model, Stack::new(parts)?, apply_ln)
    }

    /// The residual stream at `layer` (after the last block for `None`) as the sum of its
    /// parts: the embeddings (`embed`, `pos_embed` where the model has learned positions) when
    /// `incl_embeds`, then each earlier block's `{l}_attn_out` and `{l}_mlp_out` (as `mode`
    /// chooses). With every part, they sum to `hook_resid_pre` of `layer` (`hook_resid_post`
    /// of the last block for `None`). Post-LN models renormalise the stream after every block,
    /// so there the parts do not add up (the logit lens reports by how much).
    pub fn decompose_resid(&self, model: &Model, layer: Option<usize>, mode: Decompose, apply_ln: bool, incl_embeds: bool) -> Result<Stack> {
        let n = self.upto(model, layer)?;
        let mut parts = Vec::new();
        if incl_embeds {
            parts.extend(self.embeds(model)?);
        }
        for l in 0..n {
            if mode != Decompose::Mlp {
                parts.push((format!("{l}_attn_out"), self.get(HookPoint::AttnOut(l))?.clone()));
            }
            if mode != Decompose::Attn {
                parts.push((format!("{l}_mlp_out"), self.get(HookPoint::MlpOut(l))?.clone()));
            }
        }
        self.maybe_ln(model, Stack::new(parts)?, apply_ln)
    }

    /// Each head's output as it joins the residual stream, for every head of the layers before
    /// `layer` (all for `None`): labels `L{l}H{h}`, from `hook_z`. With the attention output
    /// biases (`Model::attn_bias_result`), the embeddings and the MLP outputs they sum to the
    /// residual stream. `incl_remainder` adds a `remainder` component: the residual stream at
    /// `layer` minus the heads (everything else), so the stack sums to it.
    pub fn stack_head_results(&self, model: &Model, layer: Option<usize>, apply_ln: bool, incl_remainder: bool) -> Result<Stack> {
        let parts = split_per_layer(self.upto(model, layer)?, model.config.n_heads, 'H', |l| {
            let z = self.get(HookPoint::Z(l))?;
            model.head_results(l, z, model.attn_post_scale(l, z)?.as_ref()) // [b, p, h, d]
        })?;
        self.with_remainder(model, layer, parts, incl_remainder, apply_ln)
    }

    /// Each MLP neuron's output as it joins the stream (`hook_post` times its row of the
    /// output matrix), for the dense layers before `layer`, labels `L{l}N{n}`. Large:
    /// `[n · d_mlp, b, p, d_model]`; restrict the cache to the positions wanted first
    /// (`at_positions`).
    pub fn stack_neuron_results(&self, model: &Model, layer: Option<usize>, apply_ln: bool, incl_remainder: bool) -> Result<Stack> {
        let parts = split_per_layer(self.upto(model, layer)?, model.config.d_mlp, 'N', |l| {
            let post = self.get(HookPoint::MlpPost(l))?;
            model.neuron_results(l, post, model.mlp_post_scale(l, post)?.as_ref()) // [b, p, m, d]
        })?;
        self.with_remainder(model, layer, parts, incl_remainder, apply_ln)
    }

    /// A stack of residual-stream components through the final norm with the scale frozen at
    /// the run's `ln_final.hook_scale` (centred for LayerNorm, divided by the scale, times the
    /// norm's weight; the bias is a constant of its own: `Model::final_norm_bias`). Linear, so
    /// the normalised components sum to the normalised stream.
    pub fn apply_ln_to_stack(&self, model: &Model, stack: &Stack) -> Result<Stack> {
        let scale = self.get(HookPoint::LnFinalScale)?; // [b, p, 1]
        Ok(Stack { tensor: model.final_norm_frozen(&stack.tensor, &scale.unsqueeze(0)?)?, labels: stack.labels.clone() })
    }

    /// Each component's logit of `token` (minus its logit of `incorrect`, when given) at every
    /// batch row and position: `[components, b, p]`. On a stack through `apply_ln_to_stack`
    /// these are the components' direct effects; with the final-norm bias and the unembedding
    /// bias they sum to the model's logits (before a soft-cap).
    pub fn logit_attrs(&self, model: &Model, stack: &Stack, token: u32, incorrect: Option<u32>) -> Result<Tensor> {
        let mut dir = model.unembed_rows(&[token])?.squeeze(0)?;
        if let Some(i) = incorrect {
            dir = (dir - model.unembed_rows(&[i])?.squeeze(0)?)?;
        }
        Ok(stack.tensor.broadcast_mul(&dir)?.sum(3)?)
    }

    /// A stack through the norm that reads the stream at `layer` (`None`: the final norm;
    /// `Some(l)`: block `l`'s attention norm, or its MLP norm when `mlp_input`), as `how` says
    /// (`StackNorm`). The scale comes from the run (`hook_scale` of that norm, cached, with
    /// the stack's batch rows and positions). A model without that norm returns the stack
    /// unchanged where it has no final norm, and an error for a block norm it lacks.
    pub fn apply_ln_to_stack_as(&self, model: &Model, stack: &Stack, layer: Option<usize>, mlp_input: bool, how: StackNorm) -> Result<Stack> {
        let c = &model.config;
        let (norm, scale_at) = match layer.filter(|&l| l != c.n_layers) {
            None => {
                if mlp_input {
                    return Err(Error::Invalid("mlp_input names a block's MLP norm; the final norm (layer None or n_layers) has none".into()));
                }
                if c.variants.no_final_norm {
                    return Ok(stack.clone());
                }
                (&model.weights().ln_final, HookPoint::LnFinalScale)
            }
            Some(l) => {
                if l > c.n_layers {
                    return Err(Error::LayerOutOfRange { layer: l, n_layers: c.n_layers });
                }
                if how == StackNorm::Recomputed {
                    return Err(Error::Invalid(format!("recompute_ln applies to the final norm only (layer None or {}); layer {l}'s norm takes the frozen scale", c.n_layers)));
                }
                let point = if mlp_input { HookPoint::Ln2Scale(l) } else { HookPoint::Ln1Scale(l) };
                if !point.present_in(c) {
                    return Err(Error::Invalid(format!("{point} is absent from this model: it has no such norm before block {l}'s {}", if mlp_input { "MLP" } else { "attention" })));
                }
                let lw = &model.weights().layers[l];
                (if mlp_input { &lw.ln2 } else { &lw.ln1 }, point)
            }
        };
        let tensor = match how {
            StackNorm::Recomputed => model.final_norm(&stack.tensor)?,
            StackNorm::Frozen | StackNorm::FrozenWeighted => {
                let scale = self.get(scale_at)?.unsqueeze(0)?; // [1, b, p, 1]
                let x = model.centre(&stack.tensor)?.broadcast_div(&scale)?;
                if how == StackNorm::FrozenWeighted {
                    x.broadcast_mul(&norm.w)?
                } else {
                    x
                }
            }
        };
        Ok(Stack { tensor, labels: stack.labels.clone() })
    }

    fn maybe_ln(&self, model: &Model, stack: Stack, apply_ln: bool) -> Result<Stack> {
        if apply_ln {
            self.apply_ln_to_stack(model, &stack)
        } else {
            Ok(stack)
        }
    }

    fn with_remainder(&self, model: &Model, layer: Option<usize>, mut parts: Vec<(String, Tensor)>, incl_remainder: bool, apply_ln: bool) -> Result<Stack> {
        if incl_remainder {
            let total = self.resid_at(model, layer)?;
            let mut rest = total.clone();
            for (_, t) in &parts {
                rest = (rest - t)?;
            }
            parts.push(("remainder".into(), rest));
        }
        self.maybe_ln(model, Stack::new(parts)?, apply_ln)
    }

    /// The residual stream entering `layer`, or after the last block for `None`.
    fn resid_at(&self, model: &Model, layer: Option<usize>) -> Result<Tensor> {
        Ok(match layer {
            Some(l) if l < model.config.n_layers => self.get(HookPoint::ResidPre(l))?.clone(),
            _ => self.get(HookPoint::ResidPost(model.config.n_layers - 1))?.clone(),
        })
    }

    fn embeds(&self, model: &Model) -> Result<Vec<(String, Tensor)>> {
        let mut v = vec![("embed".to_string(), self.get(HookPoint::Embed)?.clone())];
        if HookPoint::PosEmbed.present_in(&model.config) {
            v.push(("pos_embed".into(), self.get(HookPoint::PosEmbed)?.clone()));
        }
        Ok(v)
    }

    /// How many layers a helper covers: `layer` (checked), or all of them.
    fn upto(&self, model: &Model, layer: Option<usize>) -> Result<usize> {
        match layer {
            Some(l) if l > model.config.n_layers => Err(Error::LayerOutOfRange { layer: l, n_layers: model.config.n_layers }),
            Some(l) => Ok(l),
            None => Ok(model.config.n_layers),
        }
    }
}

fn check_index(idx: &[usize], n: usize, what: &str) -> Result<()> {
    match idx.iter().find(|&&i| i >= n) {
        Some(i) => Err(Error::Invalid(format!("{what} {i} is out of range: there are {n}"))),
        None => Ok(()),
    }
}

/// The components of the first `n` layers, labelled `L{l}{kind}{c}`: `results(l)` gives layer
/// `l`'s `[b, p, per_layer, d]`, split along its third dimension into `per_layer` tensors
/// `[b, p, d]`.
fn split_per_layer(n: usize, per_layer: usize, kind: char, results: impl Fn(usize) -> Result<Tensor>) -> Result<Vec<(String, Tensor)>> {
    let mut parts = Vec::new();
    for l in 0..n {
        let r = results(l)?;
        for c in 0..per_layer {
            parts.push((format!("L{l}{kind}{c}"), r.i((.., .., c))?.contiguous()?));
        }
    }
    Ok(parts)
}
