//! The local replacement model of one prompt, and its backward pass.
//!
//! Every MLP is replaced by its transcoder plus an error term (the real MLP output minus the
//! transcoder's output at each position), attention patterns and every norm's scale are
//! frozen at the prompt's run. What is left is linear from the sources (feature activations
//! times their decoder rows, error vectors, token embeddings) to every feature's
//! pre-activation and to the logits: the edge from a source to a target is the source's
//! vector dotted with the target's gradient at the place the source writes.
//!
//! The backward here carries a batch of targets at once through that frozen model, layer by
//! layer from the top: a target is injected where it reads (a feature at its transcoder's
//! input, a logit at the final norm's output), and the gradient of every target at every
//! MLP output and at the embeddings is handed to the caller, who dots it with the sources.
//! Nothing of size features × features is ever formed.

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::NormKind;
use crate::model::{compute, Batch, HookPoint, Hooks, Model};
use crate::sae::set::TranscoderSet;

/// How a transcoder reads its MLP's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Read {
    /// `ln2.hook_normalized`: the residual centred and divided by the (frozen) scale, before
    /// the norm's weight.
    Normalized,
    /// `hook_resid_mid` or `hook_mlp_in`: the residual stream itself.
    Residual,
}

/// A norm with its scale frozen: `centre(x) / scale · w`.
#[derive(Debug, Clone)]
struct FrozenNorm {
    /// `[d]`.
    w: Tensor,
    /// `[1, n, 1]`.
    scale: Tensor,
}

/// One layer of the frozen model.
#[derive(Debug, Clone)]
struct Layer {
    ln1: FrozenNorm,
    ln1_post: Option<FrozenNorm>,
    /// The attention pattern transposed, `[heads, key, query]`.
    pattern_t: Tensor,
    /// `W_Oᵀ`, `[heads · d_head, d]` row-major (for `g · W_O`).
    w_o_t: Vec<f32>,
    /// `W_Vᵀ`, `[d, kv_heads · d_head]` row-major (for `g_v · W_V`).
    w_v_t: Vec<f32>,
    /// The MLP norm's scale `[1, n, 1]` (for `Read::Normalized`).
    ln2_scale: Tensor,
    /// A skip transcoder's `W_skip [d, d]` (`out, in`).
    skip: Option<Tensor>,
}

/// What one prompt's run leaves for the graph: the frozen model, and per layer the
/// transcoder's input and the real MLP output.
pub(super) struct Replacement {
    pub n_pos: usize,
    pub d_model: usize,
    pub read: Read,
    layers: Vec<Layer>,
    final_norm: Option<FrozenNorm>,
    layer_norm: bool,
    heads: usize,
    kv_heads: usize,
    d_head: usize,
    /// Per layer `[n, d_in]`: what each transcoder reads.
    pub mlp_in: Vec<Tensor>,
    /// Per layer `[n, d]`: the real MLP output.
    pub mlp_out: Vec<Tensor>,
    /// `[n, d]`: the token embeddings as they enter the stream (scaled where the model scales them).
    pub embed: Tensor,
    /// `[d_vocab]` logits at the last position.
    pub last_logits: Vec<f32>,
}

/// Where a target reads: a layer's transcoder input, or the final norm's output (a logit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    Layer(usize),
    Logits,
}

/// A target: the vector it reads at one position.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub at: At,
    pub pos: usize,
    /// `[d]`.
    pub vector: Vec<f32>,
}

fn f32s(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

/// Error unless the set's hooks are ones the graph can linearise around.
fn read_of(set: &TranscoderSet) -> Result<Read> {
    let t = set.transcoders.first().ok_or_else(|| Error::Invalid("an empty transcoder set".into()))?;
    let read = match t.cfg.hook {
        HookPoint::Ln2Normalized(_) => Read::Normalized,
        HookPoint::ResidMid(_) | HookPoint::MlpIn(_) => Read::Residual,
        other => {
            return Err(Error::Invalid(format!(
                "an attribution graph needs transcoders that read ln2.hook_normalized, hook_resid_mid or hook_mlp_in; this set reads {other}"
            )))
        }
    };
    for (l, t) in set.transcoders.iter().enumerate() {
        if !matches!(t.cfg.hook_out, Some(HookPoint::MlpOut(m)) if m == l) {
            return Err(Error::Invalid(format!("layer {l}'s transcoder must write hook_mlp_out of its own layer to replace the MLP (it writes {:?})", t.cfg.hook_out.map(|h| h.to_string()))));
        }
        let same = match (read, t.cfg.hook) {
            (Read::Normalized, HookPoint::Ln2Normalized(m)) => m == l,
            (Read::Residual, HookPoint::ResidMid(m) | HookPoint::MlpIn(m)) => m == l,
            _ => false,
        };
        if !same {
            return Err(Error::Invalid(format!("layer {l}'s transcoder reads {}; every transcoder of a set must read the same hook of its own layer", t.cfg.hook)));
        }
    }
    Ok(read)
}

impl Replacement {
    /// Runs the prompt once and freezes what the graph holds fixed.
    pub fn build(model: &Model, set: &TranscoderSet, tokens: &[u32]) -> Result<Replacement> {
        set.check(model)?;
        let cfg = model.config();
        if cfg.parallel_block || cfg.variants.post_ln || cfg.variants.no_pre_norms {
            return Err(Error::Invalid(format!(
                "attribution graphs need sequential pre-norm blocks (attention, then the MLP, each reading a normalised residual); {} {}",
                cfg.architecture,
                if cfg.parallel_block { "runs attention and the MLP in parallel" } else { "normalises after its sublayers" }
            )));
        }
        if cfg.variants.bidirectional {
            return Err(Error::Invalid("attribution graphs carry gradients back through causal attention only (a target reads no later position); this model's attention is bidirectional".into()));
        }
        let read = read_of(set)?;
        let n_layers = cfg.n_layers;
        let mut points = vec![HookPoint::Embed, HookPoint::LnFinalScale];
        for l in 0..n_layers {
            points.extend([HookPoint::Ln1Scale(l), HookPoint::Pattern(l), HookPoint::Ln2Scale(l), HookPoint::MlpOut(l), set.transcoders[l].cfg.hook]);
            if model.weights().layers[l].extra.ln1_post.is_some() {
                points.push(HookPoint::Z(l));
            }
        }
        let batch = Batch::new(&[tokens.to_vec()])?;
        let out = model.forward(&batch, &Hooks::new().cache(points).last_logits_only())?;
        let n = tokens.len();
        let get = |p: HookPoint| -> Result<Tensor> { f32s(out.cache.get(p)?) };
        let mut layers = Vec::with_capacity(n_layers);
        let (mut mlp_in, mut mlp_out) = (Vec::with_capacity(n_layers), Vec::with_capacity(n_layers));
        for l in 0..n_layers {
            let lw = &model.weights().layers[l];
            let ln1_post = match &lw.extra.ln1_post {
                Some(norm) => {
                    let scale = model.attn_post_scale(l, &get(HookPoint::Z(l))?)?.ok_or_else(|| Error::Invalid("no attention post-norm scale".into()))?;
                    Some(FrozenNorm { w: f32s(&norm.w)?, scale: f32s(&scale)? })
                }
                None => None,
            };
            layers.push(Layer {
                ln1: FrozenNorm { w: f32s(&lw.ln1.w)?, scale: get(HookPoint::Ln1Scale(l))? },
                ln1_post,
                pattern_t: get(HookPoint::Pattern(l))?.squeeze(0)?.transpose(1, 2)?.contiguous()?,
                w_o_t: f32s(&lw.attn.w_o.tensor()?)?.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
                w_v_t: f32s(&lw.attn.w_v.tensor()?)?.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?,
                ln2_scale: get(HookPoint::Ln2Scale(l))?,
                skip: set.transcoders[l].w_skip.clone(),
            });
            mlp_in.push(get(set.transcoders[l].cfg.hook)?.reshape((n, ()))?);
            mlp_out.push(get(HookPoint::MlpOut(l))?.reshape((n, ()))?);
        }
        let final_norm = if cfg.variants.no_final_norm { None } else { Some(FrozenNorm { w: f32s(&model.weights().ln_final.w)?, scale: get(HookPoint::LnFinalScale)? }) };
        let last_logits = out.last_logits()?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Replacement {
            n_pos: n,
            d_model: cfg.d_model,
            read,
            layers,
            final_norm,
            layer_norm: cfg.norm.kind == NormKind::LayerNorm,
            heads: cfg.n_heads,
            kv_heads: cfg.n_kv_heads,
            d_head: cfg.d_head,
            mlp_in,
            mlp_out,
            embed: get(HookPoint::Embed)?.reshape((n, ()))?,
            last_logits,
        })
    }

    fn centre(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.layer_norm { x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)? } else { x.clone() })
    }

    /// The gradient at a frozen norm's input from the gradient at its output (after its
    /// weight), for the first `g.dim(1)` positions.
    fn through(&self, g: &Tensor, norm: &FrozenNorm) -> Result<Tensor> {
        Ok(self.centre(&g.broadcast_mul(&norm.w)?)?.broadcast_div(&norm.scale.narrow(1, 0, g.dim(1)?)?)?)
    }

    /// The gradient at the residual stream from the gradient at a transcoder's input.
    fn read_back(&self, g: &Tensor, layer: usize) -> Result<Tensor> {
        Ok(match self.read {
            Read::Normalized => self.centre(g)?.broadcast_div(&self.layers[layer].ln2_scale.narrow(1, 0, g.dim(1)?)?)?,
            Read::Residual => g.clone(),
        })
    }

    /// The gradient at the residual entering `layer` that attention adds, from the gradient
    /// `g [B, n, d]` at the residual after it (patterns and norm scales frozen).
    fn attention_back(&self, layer: usize, g: &Tensor) -> Result<Tensor> {
        let ly = &self.layers[layer];
        let (b, n, d) = g.dims3()?;
        let g = match &ly.ln1_post {
            Some(norm) => self.through(g, norm)?,
            None => g.clone(),
        };
        let (h, kv, dh) = (self.heads, self.kv_heads, self.d_head);
        // y = z · W_Oᵀ  ⇒  g_z = g · W_O, laid out per head as [h, n, B·dh]
        let gz = compute::rows_times(&g.flatten_all()?.to_vec1::<f32>()?, &ly.w_o_t, b * n, d, h * dh)?;
        let gz = Tensor::from_vec(gz, (b, n, h, dh), &Device::Cpu)?.permute((2, 1, 0, 3))?.contiguous()?.reshape((h, n, b * dh))?;
        // z[p] = Σ_q P[p, q] v[q]  ⇒  g_v[q] = Σ_p P[p, q] g_z[p]: one product per head
        let pattern_t = if n == self.n_pos { ly.pattern_t.clone() } else { ly.pattern_t.narrow(1, 0, n)?.narrow(2, 0, n)?.contiguous()? };
        let gv = pattern_t.matmul(&gz)?.reshape((h, n, b, dh))?;
        let gv = if kv == h { gv } else { gv.reshape((kv, h / kv, n, b, dh))?.sum(1)? };
        let gv = gv.permute((2, 1, 0, 3))?.contiguous()?.reshape((b * n, kv * dh))?;
        let gx = compute::rows_times(&gv.flatten_all()?.to_vec1::<f32>()?, &ly.w_v_t, b * n, kv * dh, d)?;
        let gx = Tensor::from_vec(gx, (b, n, d), &Device::Cpu)?;
        self.through(&gx, &ly.ln1)
    }

    /// Carries `targets` back through the frozen model. `at_mlp_out(l, g)` receives every
    /// target's gradient `[B, m, d]` at layer `l`'s MLP output (top layer first), and
    /// `at_embed(g)` the gradient at the token embeddings; `m` is one past the last position a
    /// target reads (attention is causal: no gradient reaches later positions).
    pub fn backward(&self, targets: &[Target], mut at_mlp_out: impl FnMut(usize, &Tensor) -> Result<()>, at_embed: impl FnOnce(&Tensor) -> Result<()>) -> Result<()> {
        let n = targets.iter().map(|t| t.pos + 1).max().unwrap_or(1).min(self.n_pos);
        let (b, d) = (targets.len(), self.d_model);
        let inject = |which: At| -> Result<Option<Tensor>> {
            if !targets.iter().any(|t| t.at == which) {
                return Ok(None);
            }
            let mut data = vec![0f32; b * n * d];
            let mut any = false;
            for (i, t) in targets.iter().enumerate().filter(|(_, t)| t.at == which) {
                if t.vector.len() != d || t.pos >= self.n_pos {
                    return Err(Error::Invalid(format!("a graph target reads {} values at position {}; the model has d_model {d} and the prompt {n} positions", t.vector.len(), t.pos)));
                }
                data[(i * n + t.pos) * d..(i * n + t.pos + 1) * d].copy_from_slice(&t.vector);
                any = true;
            }
            Ok(if any { Some(Tensor::from_vec(data, (b, n, d), &Device::Cpu)?) } else { None })
        };
        let mut g = Tensor::zeros((b, n, d), DType::F32, &Device::Cpu)?;
        if let Some(v) = inject(At::Logits)? {
            g = (g + match &self.final_norm {
                Some(norm) => self.through(&v, norm)?,
                None => v,
            })?;
        }
        let top = targets.iter().map(|t| match t.at {
            At::Layer(l) => l + 1,
            At::Logits => self.layers.len(),
        });
        let start = top.max().unwrap_or(0).min(self.layers.len());
        for l in (0..start).rev() {
            at_mlp_out(l, &g)?;
            if let Some(w) = &self.layers[l].skip {
                // skip(x) = x · W_skipᵀ  ⇒  g_x = g · W_skip
                let gx = g.reshape((b * n, d))?.matmul(w)?.reshape((b, n, ()))?;
                g = (g + self.read_back(&gx, l)?)?;
            }
            if let Some(v) = inject(At::Layer(l))? {
                g = (g + self.read_back(&v, l)?)?;
            }
            g = (&g + self.attention_back(l, &g)?)?;
        }
        at_embed(&g)
    }
}
