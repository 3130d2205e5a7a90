//! `ModelConfig`: one description for every architecture. The forward pass reads only this;
//! it never asks which family a model belongs to.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which normalisation a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * w + b`
    LayerNorm,
    /// `x / sqrt(mean(x^2) + eps) * w`
    RmsNorm,
}

/// The normalisation every norm of the model uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormConfig {
    /// LayerNorm or RMSNorm.
    pub kind: NormKind,
    /// Added to the variance (mean square for RMSNorm) before the square root.
    pub eps: f64,
}

/// How rotary embedding pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RotaryPairing {
    /// Dimension i pairs with i + rot_dim/2 (Hugging Face LLaMA, NeoX `rotate_half`).
    HalfSplit,
    /// Dimension 2i pairs with 2i+1 (GPT-J, original Meta LLaMA).
    Interleaved,
}

/// Rotary position embedding: how many dimensions rotate, how they pair, how frequencies scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RotaryConfig {
    /// Number of leading dimensions of each head that rotate (== d_head for full rotary).
    pub dim: usize,
    /// Which dimensions rotate together.
    pub pairing: RotaryPairing,
    /// How the frequencies are scaled for long contexts (see `model::rope`).
    #[serde(default)]
    pub scaling: RopeScaling,
}

/// Rotary frequency scaling, as `transformers` computes each type (`modeling_rope_utils.py`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Unscaled frequencies.
    #[default]
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// NTK-aware: for a run longer than `max_positions`, the base is multiplied by
    /// `(factor · len / max_positions − (factor − 1))^(dim / (dim − 2))`, `len` the run's
    /// (padded) length; shorter runs are unscaled.
    Dynamic {
        /// The scaling factor.
        factor: f64,
        /// Run length beyond which the base is scaled.
        max_positions: usize,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth blend between
    /// wavelengths `original_max / high_freq_factor` and `original_max / low_freq_factor`.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// `original_max / low_freq_factor` is the wavelength beyond which frequencies are divided.
        low_freq_factor: f64,
        /// `original_max / high_freq_factor` is the wavelength below which frequencies are kept.
        high_freq_factor: f64,
        /// The context length the model was trained with.
        original_max: usize,
    },
    /// YaRN: interpolated and extrapolated frequencies blended over the correction range of
    /// `beta_fast`..`beta_slow` rotations, cos and sin multiplied by `attention_factor`.
    Yarn {
        /// Divisor of the interpolated frequencies.
        factor: f64,
        /// The context length the model was trained with.
        original_max: usize,
        /// Rotations over `original_max` at the fast end of the correction range.
        beta_fast: f64,
        /// Rotations over `original_max` at the slow end of the correction range.
        beta_slow: f64,
        /// Multiplier of cos and sin.
        attention_factor: f64,
        /// Round the correction range's bounds to whole dimensions (`transformers`' `truncate`).
        truncate: bool,
    },
}

impl RopeScaling {
    /// Error text unless every parameter is in its domain (factors positive, lengths and
    /// frequency bands sensible): a factor of 0 or a NaN would make every angle NaN.
    pub fn validate(&self, dim: usize) -> std::result::Result<(), String> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let ok = match *self {
            RopeScaling::None => true,
            RopeScaling::Linear { factor } => positive(factor),
            RopeScaling::Dynamic { factor, max_positions } => positive(factor) && max_positions > 0 && dim > 2,
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
                positive(factor) && positive(low_freq_factor) && positive(high_freq_factor) && high_freq_factor > low_freq_factor && original_max > 0
            }
            RopeScaling::Yarn { factor, original_max, beta_fast, beta_slow, attention_factor, .. } => {
                positive(factor) && original_max > 0 && positive(beta_fast) && positive(beta_slow) && positive(attention_factor)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("rope scaling {self:?} has a parameter out of its domain (factors and lengths must be positive, high_freq_factor above low_freq_factor)"))
        }
    }
}

/// How positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// A learned table added to the token embedding; row `pos + offset` is used.
    Learned {
        /// Added to each position to find its row (2 in OPT).
        offset: usize,
    },
    /// Rotary embedding of queries and keys (the base is per layer, see `LayerAttention`).
    Rotary(RotaryConfig),
    /// No position information beyond the causal mask.
    None,
}

/// The MLP's activation function (applied to the gate in gated MLPs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU with erf.
    Gelu,
    /// The tanh approximation of GELU (GPT-2's `gelu_new`).
    GeluTanh,
    /// `max(x, 0)`.
    Relu,
    /// `x · sigmoid(x)` (SwiGLU's gate).
    Silu,
}

/// The MLP's activation and whether it is gated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Applied to `hook_pre` (the gate projection in gated MLPs).
    pub activation: Activation,
    /// Gated MLP: `act(x W_gate) * (x W_in)` (SwiGLU, GeGLU).
    pub gated: bool,
}

/// Per-layer attention settings; most models use the same for every layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerAttention {
    /// Keys further back than this many positions are masked (sliding-window layers).
    pub sliding_window: Option<usize>,
    /// Rotary base (theta) of this layer; ignored without rotary positions.
    pub rope_base: f64,
}

/// Mixture of experts in place of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moe {
    /// Experts per layer.
    pub n_experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Divide the chosen experts' softmax weights by their sum (Mixtral, Qwen3-MoE).
    pub renormalize: bool,
    /// Width of a shared expert every token goes through, scaled by
    /// `sigmoid(shared_expert_gate · x)` (Qwen2-MoE).
    #[serde(default)]
    pub shared_expert: Option<usize>,
}

/// Components that only some families have; the default is none of them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Variants {
    /// Norms after the residual additions instead of before the sublayers (OPT-350m).
    pub post_ln: bool,
    /// No final norm before the unembedding (post-LN OPT); its hooks then carry scale 1.
    pub no_final_norm: bool,
    /// Extra norms on the attention and MLP outputs before they join the residual (Gemma 2/3).
    pub post_norms: bool,
    /// RMSNorm of each head's query and key before rotary (Gemma 3, Qwen3).
    pub qk_norm: bool,
    /// The query and key norms span the whole projection (all heads), not one head (OLMo-2).
    #[serde(default)]
    pub qk_norm_full: bool,
    /// No norms before the sublayers: they read the raw residual (OLMo-2, whose only norms
    /// are the post-norms).
    #[serde(default)]
    pub no_pre_norms: bool,
    /// `scores = c · tanh(scores / c)` before the mask (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// `logits = c · tanh(logits / c)` (Gemma 2).
    pub final_softcap: Option<f64>,
    /// A mixture of experts in place of the MLP (see `Moe`).
    pub moe: Option<Moe>,
    /// Attention without the causal mask: every position sees the whole prompt (tracr-compiled
    /// models, TransformerLens' `attention_dir = "bidirectional"`). Such a model is not
    /// generated from and has no KV cache.
    #[serde(default)]
    pub bidirectional: bool,
    /// No MLPs: each block is attention alone (TransformerLens' `attn_only` toy models).
    /// `d_mlp` is 0; `hook_mlp_in` and `hook_mlp_out` remain, the latter always zero, so that
    /// patching and edge methods keep one layout; the norm before the MLP and the MLP's inner
    /// hooks do not exist.
    #[serde(default)]
    pub attn_only: bool,
}

/// The largest model glassbox accepts, so that sizes from a file cannot ask for absurd memory
/// or overflow: far beyond any released model.
pub struct Limits {
    /// Most layers.
    pub layers: usize,
    /// d_model, d_head, d_mlp.
    pub width: usize,
    /// Most query heads.
    pub heads: usize,
    /// Most vocabulary entries.
    pub vocab: usize,
    /// Most positions (`n_ctx`).
    pub context: usize,
    /// Most experts per mixture.
    pub experts: usize,
    /// Elements of one weight matrix.
    pub elements: usize,
}

/// The limits `ModelConfig::validate` enforces.
pub const LIMITS: Limits = Limits {
    layers: 1024,
    width: 1 << 18,
    heads: 1024,
    vocab: 1 << 22,
    context: 1 << 24,
    experts: 1024,
    elements: 1 << 36,
};

/// Everything the forward pass needs to know about a model's shape and components.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The family the model was loaded as (for display; the forward never reads it).
    pub architecture: String,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Query heads per attention layer.
    pub n_heads: usize,
    /// Key/value heads: equal to `n_heads` for MHA, fewer for GQA/MQA.
    pub n_kv_heads: usize,
    /// Width of one head's queries, keys and values.
    pub d_head: usize,
    /// Hidden width of the MLP (of each expert in a mixture).
    pub d_mlp: usize,
    /// Vocabulary size: rows of the embedding and the unembedding.
    pub d_vocab: usize,
    /// The most positions the model takes.
    pub n_ctx: usize,
    /// Kind and epsilon of every norm.
    pub norm: NormConfig,
    /// How positions enter: a learned table, rotary, or not at all.
    pub positions: Positions,
    /// Multiplier of `q·k` (usually `1/sqrt(d_head)`).
    pub attn_scale: f64,
    /// MLP activation and gating.
    pub mlp: MlpConfig,
    /// Attention and MLP both read the block's input (GPT-J, NeoX).
    pub parallel_block: bool,
    /// The unembedding is the token embedding.
    pub tied_embeddings: bool,
    /// The token embedding is multiplied by this (Gemma: sqrt(d_model)).
    pub embed_scale: Option<f64>,
    /// Attention settings of each layer, `n_layers` of them.
    pub layers: Vec<LayerAttention>,
    /// Components only some families have (none by default).
    #[serde(default)]
    pub variants: Variants,
}

impl ModelConfig {
    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    /// Checks the invariants the forward relies on; loaders call this before building a model.
    /// Every size is within `LIMITS`, every product of sizes the loader or forward computes
    /// fits, and every number that enters the arithmetic is finite and in its domain (a norm
    /// epsilon ≤ 0 or a rotary base ≤ 0 would give NaN).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("model config: {what}")));
        let mlp_ok = if self.variants.attn_only { self.d_mlp == 0 } else { self.d_mlp > 0 };
        if self.n_layers == 0 || self.d_model == 0 || self.n_heads == 0 || self.d_head == 0 || !mlp_ok || self.d_vocab == 0 || self.n_ctx == 0 {
            return bad(format!(
                "layers ({}), d_model ({}), heads ({}), d_head ({}), d_mlp ({}{}), vocabulary ({}) and context ({}) must be positive",
                self.n_layers,
                self.d_model,
                self.n_heads,
                self.d_head,
                self.d_mlp,
                if self.variants.attn_only { ": 0 in an attention-only model" } else { "" },
                self.d_vocab,
                self.n_ctx
            ));
        }
        if self.variants.attn_only && (self.variants.moe.is_some() || self.parallel_block || self.variants.post_ln) {
            return bad("an attention-only model has no MLP, so no mixture of experts, parallel block or post-LN MLP norm".into());
        }
        for (what, value, max) in [
            ("layers", self.n_layers, LIMITS.layers),
            ("d_model", self.d_model, LIMITS.width),
            ("heads", self.n_heads, LIMITS.heads),
            ("d_head", self.d_head, LIMITS.width),
            ("d_mlp", self.d_mlp, LIMITS.width),
            ("vocabulary", self.d_vocab, LIMITS.vocab),
            ("context", self.n_ctx, LIMITS.context),
        ] {
            if value > max {
                return bad(format!("{what} is {value}; glassbox takes at most {max}"));
            }
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} query heads cannot be grouped over {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        // Products the loader and the forward compute (q/k/v rows, fused qkv, tables).
        let rows = self.n_heads.checked_mul(self.d_head).and_then(|q| q.checked_mul(3));
        let table = self.d_vocab.checked_mul(self.d_model);
        let mlp = self.d_mlp.checked_mul(self.d_model);
        if rows.is_none_or(|r| r > LIMITS.width * 64) || table.is_none_or(|t| t > LIMITS.elements) || mlp.is_none_or(|m| m > LIMITS.elements) {
            return bad(format!(
                "{} heads × d_head {}, vocabulary {} × d_model {} or d_mlp {} × d_model are too large",
                self.n_heads, self.d_head, self.d_vocab, self.d_model, self.d_mlp
            ));
        }
        if self.layers.len() != self.n_layers {
            return bad(format!(
                "{} per-layer attention settings for {} layers",
                self.layers.len(),
                self.n_layers
            ));
        }
        if let Some(m) = self.variants.moe {
            if m.top_k == 0 || m.top_k > m.n_experts || m.n_experts > LIMITS.experts {
                return bad(format!("top-{} routing over {} experts (at most {})", m.top_k, m.n_experts, LIMITS.experts));
            }
        }
        if let Positions::Rotary(r) = self.positions {
            if r.dim == 0 || r.dim > self.d_head || r.dim % 2 != 0 {
                return bad(format!(
                    "rotary dimension {} must be even and within d_head {}",
                    r.dim, self.d_head
                ));
            }
            if let Some(la) = self.layers.iter().find(|la| !(la.rope_base.is_finite() && la.rope_base > 0.0)) {
                return bad(format!("rotary base {} must be a positive number", la.rope_base));
            }
            r.scaling.validate(r.dim).or_else(&bad)?;
        }
        if let Some(w) = self.layers.iter().find_map(|la| la.sliding_window.filter(|&w| w == 0)) {
            return bad(format!("a sliding window of {w} keys; a window holds at least one"));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        // An epsilon far above the activations' variance flattens every norm's output towards
        // zero (1e38 gives logits that are all 0.0): no released model uses more than 1e-3.
        if !positive(self.norm.eps) || self.norm.eps > 1.0 {
            return bad(format!("norm epsilon {} must be a number in (0, 1] (models use 1e-12 to 1e-5)", self.norm.eps));
        }
        if !positive(self.attn_scale) {
            return bad(format!("attention scale {} must be a positive number (query_pre_attn_scalar > 0)", self.attn_scale));
        }
        for (what, cap) in [("attention soft-cap", self.variants.attn_softcap), ("final soft-cap", self.variants.final_softcap), ("embedding scale", self.embed_scale)] {
            if let Some(c) = cap.filter(|&c| !positive(c)) {
                return bad(format!("{what} {c} must be a positive number"));
            }
        }
        Ok(())
    }

    /// Error unless `layer` is a layer of this model.
    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.n_layers {
            return Err(Error::LayerOutOfRange {
                layer,
                n_layers: self.n_layers,
            });
        }
        Ok(())
    }
}
