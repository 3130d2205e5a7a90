//! The weights of a model in one layout for every family: linear maps as `[out, in]`
//! (PyTorch `nn.Linear`), per-head projections with heads outermost in the `out` rows.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// A norm's elementwise weight and optional bias (LayerNorm has both, RMSNorm only `w`).
#[derive(Debug, Clone)]
pub struct Norm {
    /// Elementwise weight over the normalised axis (`[d_model]` for the block and final norms).
    pub w: Tensor,
    /// Elementwise bias, same shape as `w`, where the norm has one.
    pub b: Option<Tensor>,
}

/// Attention projections. `w_q: [n_heads*d_head, d_model]`, `w_k`/`w_v: [n_kv_heads*d_head, d_model]`,
/// `w_o: [d_model, n_heads*d_head]`.
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// `[n_heads*d_head, d_model]` query projection.
    pub w_q: Tensor,
    /// `[n_heads*d_head]` query bias, where the model has one.
    pub b_q: Option<Tensor>,
    /// `[n_kv_heads*d_head, d_model]` key projection.
    pub w_k: Tensor,
    /// `[n_kv_heads*d_head]` key bias, where the model has one.
    pub b_k: Option<Tensor>,
    /// `[n_kv_heads*d_head, d_model]` value projection.
    pub w_v: Tensor,
    /// `[n_kv_heads*d_head]` value bias, where the model has one.
    pub b_v: Option<Tensor>,
    /// `[d_model, n_heads*d_head]` output projection.
    pub w_o: Tensor,
    /// `[d_model]` output bias, where the model has one.
    pub b_o: Option<Tensor>,
}

/// MLP maps. `w_in`/`w_gate: [d_mlp, d_model]`, `w_out: [d_model, d_mlp]`.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// `[d_mlp, d_model]` input projection (the up projection of a gated MLP).
    pub w_in: Tensor,
    /// `[d_mlp]` input bias, where the model has one.
    pub b_in: Option<Tensor>,
    /// `[d_mlp, d_model]` gate projection, in gated MLPs only.
    pub w_gate: Option<Tensor>,
    /// `[d_mlp]` gate bias, where the model has one.
    pub b_gate: Option<Tensor>,
    /// `[d_model, d_mlp]` output projection.
    pub w_out: Tensor,
    /// `[d_model]` output bias, where the model has one.
    pub b_out: Option<Tensor>,
}

/// A mixture of experts: the router `[n_experts, d_model]` and each expert's gated MLP.
#[derive(Debug, Clone)]
pub struct MoeWeights {
    /// `[n_experts, d_model]` router; its products are `hook_router_logits`.
    pub router: Tensor,
    /// Each expert's MLP, in the router's order.
    pub experts: Vec<MlpWeights>,
    /// A shared expert and its gate `[1, d_model]` (Qwen2-MoE).
    pub shared: Option<(MlpWeights, Tensor)>,
}

/// Weights only some families have (see `config::Variants`).
#[derive(Debug, Clone, Default)]
pub struct LayerExtras {
    /// Norm of the attention output (Gemma 2/3 `post_attention_layernorm`).
    pub ln1_post: Option<Norm>,
    /// Norm of the MLP output (Gemma 2/3 `post_feedforward_layernorm`).
    pub ln2_post: Option<Norm>,
    /// Per-head query and key RMSNorm weights `[d_head]` (Gemma 3).
    pub q_norm: Option<Norm>,
    /// The key norm's weights, as `q_norm` for the keys.
    pub k_norm: Option<Norm>,
    /// Present when the MLP is a mixture of experts (`mlp` is then unused).
    pub moe: Option<MoeWeights>,
}

/// The weights of one block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// The attention's norm (before it; after the residual addition in post-LN models).
    pub ln1: Norm,
    /// Attention projections.
    pub attn: AttnWeights,
    /// The MLP's norm (before it; after the residual addition in post-LN models).
    pub ln2: Norm,
    /// The dense MLP (unused when `extra.moe` is set).
    pub mlp: MlpWeights,
    /// Weights only some families have.
    pub extra: LayerExtras,
}

/// All weights. `embed: [d_vocab, d_model]`, `pos_embed: [n_positions, d_model]`,
/// `unembed: [d_vocab, d_model]` (the same tensor as `embed` when tied).
#[derive(Debug, Clone)]
pub struct Weights {
    /// `[d_vocab, d_model]` token embedding.
    pub embed: Tensor,
    /// `[n_positions, d_model]` learned position table, with `Positions::Learned` only.
    pub pos_embed: Option<Tensor>,
    /// One entry per block, in order.
    pub layers: Vec<LayerWeights>,
    /// The final norm before the unembedding.
    pub ln_final: Norm,
    /// `[d_vocab, d_model]` unembedding (the same tensor as `embed` when tied).
    pub unembed: Tensor,
    /// `[d_vocab]` unembedding bias, where the model has one.
    pub unembed_bias: Option<Tensor>,
    /// Divisors of the rotary frequencies, one per rotating pair (a GGUF file's
    /// `rope_freqs.weight`, llama.cpp's form of Llama 3.1 scaling).
    pub rope_freqs: Option<Vec<f32>>,
}

fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(t.to_dtype(dtype)?)
}

fn cast_opt(t: &Option<Tensor>, dtype: DType) -> Result<Option<Tensor>> {
    t.as_ref().map(|t| cast(t, dtype)).transpose()
}

impl Norm {
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Norm {
            w: cast(&self.w, dtype)?,
            b: cast_opt(&self.b, dtype)?,
        })
    }
}

impl MlpWeights {
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(MlpWeights {
            w_in: cast(&self.w_in, dtype)?,
            b_in: cast_opt(&self.b_in, dtype)?,
            w_gate: cast_opt(&self.w_gate, dtype)?,
            b_gate: cast_opt(&self.b_gate, dtype)?,
            w_out: cast(&self.w_out, dtype)?,
            b_out: cast_opt(&self.b_out, dtype)?,
        })
    }
}

impl Weights {
    /// The weights' dtype (the token embedding's).
    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// A copy of every weight in `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerWeights {
                    ln1: l.ln1.to_dtype(dtype)?,
                    ln2: l.ln2.to_dtype(dtype)?,
                    attn: AttnWeights {
                        w_q: cast(&l.attn.w_q, dtype)?,
                        b_q: cast_opt(&l.attn.b_q, dtype)?,
                        w_k: cast(&l.attn.w_k, dtype)?,
                        b_k: cast_opt(&l.attn.b_k, dtype)?,
                        w_v: cast(&l.attn.w_v, dtype)?,
                        b_v: cast_opt(&l.attn.b_v, dtype)?,
                        w_o: cast(&l.attn.w_o, dtype)?,
                        b_o: cast_opt(&l.attn.b_o, dtype)?,
                    },
                    mlp: l.mlp.to_dtype(dtype)?,
                    extra: LayerExtras {
                        ln1_post: l.extra.ln1_post.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        ln2_post: l.extra.ln2_post.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        q_norm: l.extra.q_norm.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        k_norm: l.extra.k_norm.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        moe: l
                            .extra
                            .moe
                            .as_ref()
                            .map(|m| {
                                Ok::<_, crate::error::Error>(MoeWeights {
                                    router: cast(&m.router, dtype)?,
                                    experts: m.experts.iter().map(|e| e.to_dtype(dtype)).collect::<Result<_>>()?,
                                    shared: m.shared.as_ref().map(|(e, g)| Ok::<_, crate::error::Error>((e.to_dtype(dtype)?, cast(g, dtype)?))).transpose()?,
                                })
                            })
                            .transpose()?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = cast(&self.embed, dtype)?;
        let tied = self.unembed.id() == self.embed.id();
        Ok(Weights {
            unembed: if tied {
                embed.clone()
            } else {
                cast(&self.unembed, dtype)?
            },
            embed,
            pos_embed: cast_opt(&self.pos_embed, dtype)?,
            layers,
            ln_final: self.ln_final.to_dtype(dtype)?,
            unembed_bias: cast_opt(&self.unembed_bias, dtype)?,
            rope_freqs: self.rope_freqs.clone(),
        })
    }
}
