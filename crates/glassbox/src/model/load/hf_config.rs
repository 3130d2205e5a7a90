//! `config.json` as typed data: one serde struct holding every key glassbox reads from any
//! family (a key of the wrong type is an error naming it), each family's defaults for absent
//! keys as `transformers` 4.57 sets them (a table, `Defaults`), and one builder per family
//! onto `ModelConfig`. The attention layout (which layers slide, which rotary base) comes from
//! `layers::Layout`, shared with the GGUF loader.

use serde::Deserialize;

use super::layers::{Layout, Pattern};
use crate::error::{Error, Result};
use crate::model::config::{
    Activation, LayerAttention, MlpConfig, Moe, ModelConfig, NormConfig, NormKind, Positions, RopeScaling, RotaryConfig, RotaryPairing,
    Variants,
};

/// `Some(None)` for a key present as `null`, `None` for an absent key (where `transformers`
/// tells the two apart: Mistral's absent `sliding_window` is 4096, a `null` one none).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// Every `config.json` key glassbox reads, from any family. Unknown keys are ignored here;
/// `unsupported` refuses those that would change the computation.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Json {
    pub model_type: Option<String>,
    // sizes, under each family's names
    pub hidden_size: Option<usize>,
    pub n_embd: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub n_layer: Option<usize>,
    pub num_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub n_head: Option<usize>,
    pub num_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub n_inner: Option<usize>,
    pub ffn_dim: Option<usize>,
    /// OPT's embedding width where it differs from the residual's (checked against the weights).
    pub word_embed_proj_dim: Option<usize>,
    pub vocab_size: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub n_positions: Option<usize>,
    // norms
    pub rms_norm_eps: Option<f64>,
    pub layer_norm_eps: Option<f64>,
    pub layer_norm_epsilon: Option<f64>,
    pub do_layer_norm_before: Option<bool>,
    #[serde(rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: Option<bool>,
    pub layer_norm_elementwise_affine: Option<bool>,
    // positions
    pub rope_theta: Option<f64>,
    pub rotary_emb_base: Option<f64>,
    pub rotary_pct: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_scaling: Option<RopeScalingJson>,
    pub rope_local_base_freq: Option<f64>,
    // attention
    #[serde(default, deserialize_with = "present")]
    pub sliding_window: Option<Option<usize>>,
    pub layer_types: Option<Vec<String>>,
    pub sliding_window_pattern: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub attention_types: Option<serde_json::Value>,
    pub window_size: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    pub attn_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub final_logit_softcapping: Option<Option<f64>>,
    pub scale_attn_weights: Option<bool>,
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
    // MLP
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub activation_function: Option<String>,
    pub num_local_experts: Option<usize>,
    pub num_experts: Option<usize>,
    pub num_experts_per_tok: Option<usize>,
    pub moe_intermediate_size: Option<usize>,
    pub shared_expert_intermediate_size: Option<usize>,
    pub norm_topk_prob: Option<bool>,
    pub decoder_sparse_step: Option<usize>,
    pub mlp_only_layers: Option<Vec<usize>>,
    // blocks
    pub use_parallel_residual: Option<bool>,
    pub tie_word_embeddings: Option<bool>,
    // tokens
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<OneOrMany>,
}

/// A token id or a list of them (`eos_token_id` is either).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![*x],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `rope_scaling` as a config writes it (`rope_type`, or `type` in older files).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RopeScalingJson {
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub attention_factor: Option<f64>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub truncate: Option<bool>,
}

/// Reads a config.json document into `Json`; a key of the wrong type is an error naming it.
pub(crate) fn parse(text: &str) -> std::result::Result<Json, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        format!("`{path}`: {}", e.into_inner())
    })
}

/// What `transformers` assumes for keys a family's config.json may leave out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub rope_theta: f64,
    pub eps: f64,
    pub tied: bool,
    /// `sliding_window` when the key is absent.
    pub sliding_window: Option<usize>,
    pub activation: &'static str,
    pub max_positions: usize,
    /// `head_dim` when absent (`None`: d_model / heads).
    pub head_dim: Option<usize>,
}

const LLAMA: Defaults = Defaults { rope_theta: 10_000.0, eps: 1e-6, tied: false, sliding_window: None, activation: "silu", max_positions: 2048, head_dim: None };

impl Json {
    fn need<T: Copy>(&self, value: Option<T>, key: &str) -> Result<T> {
        value.ok_or_else(|| Error::MissingMetadata { format: "config.json", arch: self.model_type.clone().unwrap_or_default(), key: key.into() })
    }
    fn d_model(&self) -> Result<usize> {
        self.need(self.hidden_size.or(self.n_embd), "hidden_size")
    }
    fn n_heads(&self) -> Result<usize> {
        self.need(self.num_attention_heads.or(self.n_head).or(self.num_heads), "num_attention_heads")
    }
    fn n_layers(&self) -> Result<usize> {
        super::layer_count(self.need(self.num_hidden_layers.or(self.n_layer).or(self.num_layers), "num_hidden_layers")?)
    }
    fn d_vocab(&self) -> Result<usize> {
        self.need(self.vocab_size, "vocab_size")
    }
    /// `head_dim`, else the family's default, else `d_model / heads`.
    fn d_head(&self, d: &Defaults, d_model: usize, heads: usize) -> usize {
        self.head_dim.or(d.head_dim).unwrap_or(d_model / heads.max(1))
    }
    fn rope_theta(&self, d: &Defaults) -> f64 {
        self.rope_theta.or(self.rotary_emb_base).unwrap_or(d.rope_theta)
    }
    /// The sliding window as `transformers` reads it: absent → the family's default, `null` →
    /// none, 0 → an error.
    fn window(&self, d: &Defaults) -> Result<Option<usize>> {
        let w = match self.sliding_window {
            None => d.sliding_window,
            Some(w) => w,
        };
        if w == Some(0) {
            return Err(Error::Invalid("config.json: `sliding_window` is 0; a window must hold at least one key (or be null for none)".into()));
        }
        Ok(w)
    }
    /// `layer_types`, when the config lists them.
    fn listed_layers(&self) -> Result<Option<Pattern>> {
        let Some(types) = &self.layer_types else { return Ok(None) };
        let sliding = types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(Error::Invalid(format!("config.json: layer type {other:?} is neither \"sliding_attention\" nor \"full_attention\""))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Pattern::Listed(sliding)))
    }
    /// The activation named by whichever key the family uses.
    fn activation(&self, d: &Defaults) -> Result<Activation> {
        activation(self.hidden_activation.as_deref().or(self.hidden_act.as_deref()).or(self.activation_function.as_deref()).unwrap_or(d.activation))
    }
    /// Rotary settings for `d_head`-sized heads rotating a `fraction` of their dimensions.
    fn rotary(&self, d_head: usize, fraction: f64, max_positions: usize) -> Result<RotaryConfig> {
        Ok(RotaryConfig {
            dim: ((d_head as f64 * fraction) as usize) / 2 * 2,
            pairing: RotaryPairing::HalfSplit,
            scaling: rope_scaling(self.rope_scaling.as_ref(), max_positions)?,
        })
    }
}

fn activation(name: &str) -> Result<Activation> {
    Ok(match name {
        "gelu" => Activation::Gelu,
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        "silu" | "swish" => Activation::Silu,
        other => {
            return Err(Error::Invalid(format!(
                "activation `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu)"
            )))
        }
    })
}

/// A config's `rope_scaling` as glassbox's `RopeScaling`, with `transformers`' defaults for
/// the keys each type may leave out; a type glassbox does not implement is an error.
pub(crate) fn rope_scaling(s: Option<&RopeScalingJson>, max_positions: usize) -> Result<RopeScaling> {
    let Some(s) = s else { return Ok(RopeScaling::None) };
    let kind = s.rope_type.as_deref().or(s.kind.as_deref()).unwrap_or("default");
    let need = |v: Option<f64>, key: &str| {
        v.ok_or_else(|| Error::Invalid(format!("config.json: rope_scaling of type `{kind}` lacks `{key}`")))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need(s.factor, "factor")? },
        "dynamic" => RopeScaling::Dynamic { factor: need(s.factor, "factor")?, max_positions },
        "llama3" => RopeScaling::Llama3 {
            factor: need(s.factor, "factor")?,
            low_freq_factor: need(s.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(s.high_freq_factor, "high_freq_factor")?,
            original_max: s.original_max_position_embeddings.ok_or_else(|| Error::Invalid("config.json: rope_scaling of type `llama3` lacks `original_max_position_embeddings`".into()))?,
        },
        "yarn" => {
            let mut factor = need(s.factor, "factor")?;
            let original_max = s.original_max_position_embeddings.unwrap_or(max_positions);
            // transformers: a config that names the original length scales by the ratio of
            // the two lengths instead of `factor`.
            if s.original_max_position_embeddings.is_some() {
                factor = max_positions as f64 / original_max as f64;
            }
            let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = match (s.attention_factor, s.mscale, s.mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => get_mscale(factor, m) / get_mscale(factor, all),
                _ => get_mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max,
                beta_fast: s.beta_fast.unwrap_or(32.0),
                beta_slow: s.beta_slow.unwrap_or(1.0),
                attention_factor,
                truncate: s.truncate.unwrap_or(true),
            }
        }
        other => {
            return Err(Error::Invalid(format!(
                "rope scaling `{other}` is not supported (default, linear, dynamic, llama3, yarn); glassbox would compute another model"
            )))
        }
    })
}

/// Config keys that change the computation in a way glassbox does not implement, with the
/// value that is harmless: any other value is an error rather than a silently wrong model.
pub(crate) fn unsupported(j: &Json) -> Result<()> {
    let refuse = |key: &str| Err(Error::Invalid(format!("config.json: `{key}` changes the computation in a way glassbox does not implement")));
    if j.scale_attn_by_inverse_layer_idx == Some(true) {
        return refuse("scale_attn_by_inverse_layer_idx");
    }
    if j.layer_norm_elementwise_affine == Some(false) {
        return refuse("layer_norm_elementwise_affine");
    }
    Ok(())
}

/// The model's n_ctx: `max_position_embeddings`, times the factor for dynamic scaling (which
/// exists to run beyond it).
fn context(max_positions: usize, scaling: RopeScaling) -> usize {
    match scaling {
        RopeScaling::Dynamic { factor, .. } => ((max_positions as f64 * factor) as usize).max(max_positions),
        _ => max_positions,
    }
}

/// LLaMA and the families built on its block (Qwen2, Mistral, Mixtral, Gemma): RMSNorm,
/// rotary, gated MLP, grouped-query attention; `d` gives the family's defaults, `layout`
/// which layers slide.
fn llama_like(j: &Json, d: &Defaults, layout: Option<Pattern>, local_rope_base: Option<f64>) -> Result<ModelConfig> {
    let d_model = j.d_model()?;
    let n_heads = j.n_heads()?;
    let n_layers = j.n_layers()?;
    let d_head = j.d_head(d, d_model, n_heads);
    let max_positions = j.max_position_embeddings.unwrap_or(d.max_positions);
    let rotary = j.rotary(d_head, j.partial_rotary_factor.unwrap_or(1.0), max_positions)?;
    let window = j.window(d)?;
    let pattern = match j.listed_layers()? {
        Some(p) => p,
        None => layout.unwrap_or(Pattern::Uniform),
    };
    let layers = Layout { pattern, window, rope_base: j.rope_theta(d), local_rope_base }.layers(n_layers)?;
    Ok(ModelConfig {
        architecture: j.model_type.clone().unwrap_or_default(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: j.num_key_value_heads.unwrap_or(n_heads),
        d_head,
        d_mlp: j.need(j.intermediate_size, "intermediate_size")?,
        d_vocab: j.d_vocab()?,
        n_ctx: context(max_positions, rotary.scaling),
        norm: NormConfig { kind: NormKind::RmsNorm, eps: j.rms_norm_eps.unwrap_or(d.eps) },
        positions: Positions::Rotary(rotary),
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        mlp: MlpConfig { activation: j.activation(d)?, gated: true },
        parallel_block: false,
        tied_embeddings: j.tie_word_embeddings.unwrap_or(d.tied),
        embed_scale: None,
        layers,
        variants: Default::default(),
    })
}

pub(crate) fn llama(j: &Json) -> Result<ModelConfig> {
    llama_like(j, &LLAMA, None, None)
}

pub(crate) fn mistral(j: &Json) -> Result<ModelConfig> {
    let d = Defaults { sliding_window: Some(4096), max_positions: 4096 * 32, ..LLAMA };
    llama_like(j, &d, None, None)
}

/// Qwen2: a window only with `use_sliding_window`, and then only from `max_window_layers` on.
pub(crate) fn qwen2(j: &Json) -> Result<ModelConfig> {
    let d = Defaults { sliding_window: Some(4096), max_positions: 32768, ..LLAMA };
    let mut cfg = llama_like(j, &d, Some(Pattern::SlidingFrom(j.max_window_layers.unwrap_or(28))), None)?;
    if !j.use_sliding_window.unwrap_or(false) {
        no_windows(&mut cfg);
    }
    Ok(cfg)
}

/// Every layer global (families whose window a config key switches off).
fn no_windows(cfg: &mut ModelConfig) {
    for la in &mut cfg.layers {
        la.sliding_window = None;
    }
}

pub(crate) fn mixtral(j: &Json) -> Result<ModelConfig> {
    let d = Defaults { rope_theta: 1e6, eps: 1e-5, max_positions: 4096 * 32, ..LLAMA };
    let mut cfg = llama_like(j, &d, None, None)?;
    cfg.variants.moe = Some(Moe {
        n_experts: j.need(j.num_local_experts, "num_local_experts")?,
        top_k: j.need(j.num_experts_per_tok, "num_experts_per_tok")?,
        renormalize: true,
        shared_expert: None,
    });
    Ok(cfg)
}

/// Qwen3: Qwen2's block without q/k/v biases, with an RMSNorm of each query and key head.
pub(crate) fn qwen3(j: &Json) -> Result<ModelConfig> {
    let d = Defaults { sliding_window: Some(4096), max_positions: 32768, head_dim: Some(128), ..LLAMA };
    let mut cfg = llama_like(j, &d, Some(Pattern::SlidingFrom(j.max_window_layers.unwrap_or(28))), None)?;
    if !j.use_sliding_window.unwrap_or(false) {
        no_windows(&mut cfg);
    }
    cfg.variants.qk_norm = true;
    Ok(cfg)
}

/// Qwen2-MoE and Qwen3-MoE: every layer a mixture of experts (softmax router, top-k, the
/// chosen weights renormalised only with `norm_topk_prob`), experts of width
/// `moe_intermediate_size`; Qwen2-MoE adds a gated shared expert, Qwen3-MoE Qwen3's q/k norms.
pub(crate) fn qwen_moe(j: &Json) -> Result<ModelConfig> {
    let v3 = j.model_type.as_deref() == Some("qwen3_moe");
    let mut cfg = if v3 { qwen3(j)? } else { qwen2(j)? };
    let step = j.decoder_sparse_step.unwrap_or(1);
    if step != 1 || j.mlp_only_layers.as_ref().is_some_and(|l| !l.is_empty()) {
        return Err(Error::Invalid(
            "config.json: `decoder_sparse_step` other than 1 or a non-empty `mlp_only_layers` (dense MLP layers among the experts) is not supported yet".into(),
        ));
    }
    cfg.d_mlp = j.need(j.moe_intermediate_size, "moe_intermediate_size")?;
    cfg.variants.moe = Some(Moe {
        n_experts: j.need(j.num_experts, "num_experts")?,
        top_k: j.need(j.num_experts_per_tok, "num_experts_per_tok")?,
        renormalize: j.norm_topk_prob.unwrap_or(false),
        shared_expert: if v3 { None } else { Some(j.shared_expert_intermediate_size.unwrap_or(5632)) },
    });
    Ok(cfg)
}

/// Phi-3: LLaMA's block with fused projections (the name map splits them); `longrope`
/// scaling (the 128k variants) is refused by `rope_scaling`.
pub(crate) fn phi3(j: &Json) -> Result<ModelConfig> {
    let d = Defaults { eps: 1e-5, max_positions: 4096, ..LLAMA };
    llama_like(j, &d, None, None)
}

/// OLMo-2: no norms before the sublayers, post-norms after them, query/key norms over the
/// whole projections.
pub(crate) fn olmo2(j: &Json) -> Result<ModelConfig> {
    let d = Defaults { eps: 1e-5, ..LLAMA };
    let mut cfg = llama_like(j, &d, None, None)?;
    cfg.variants.no_pre_norms = true;
    cfg.variants.post_norms = true;
    cfg.variants.qk_norm = true;
    cfg.variants.qk_norm_full = true;
    Ok(cfg)
}

/// Gemma 1, 2 and 3: `(1 + w)` RMSNorm (added at load), embeddings scaled by √d_model, GeGLU,
/// tied; Gemma 2 adds post-norms, soft-capping, `query_pre_attn_scalar` and alternating
/// sliding/global layers; Gemma 3 drops the soft-capping, adds query/key norms, a sliding
/// pattern of 6 and a separate rotary base for its sliding layers.
pub(crate) fn gemma(j: &Json) -> Result<ModelConfig> {
    let arch = j.model_type.as_deref().unwrap_or("gemma");
    let v3 = arch.starts_with("gemma3");
    let v2 = arch != "gemma";
    let d = Defaults {
        rope_theta: if v3 { 1e6 } else { 1e4 },
        eps: 1e-6,
        tied: true,
        sliding_window: v2.then_some(4096),
        activation: "gelu_pytorch_tanh",
        max_positions: if v3 { 131_072 } else { 8192 },
        head_dim: Some(256),
    };
    let (pattern, local) = match (v2, v3) {
        (_, true) => (Some(Pattern::EveryNthGlobal(j.sliding_window_pattern.unwrap_or(6))), Some(j.rope_local_base_freq.unwrap_or(10_000.0))),
        (true, false) => (Some(Pattern::EveryNthGlobal(2)), None),
        _ => (None, None),
    };
    let mut cfg = llama_like(j, &d, pattern, local)?;
    if !v2 {
        // Gemma 1 has no sliding window at all.
        no_windows(&mut cfg);
    }
    cfg.embed_scale = Some((cfg.d_model as f64).sqrt());
    if v2 {
        let scalar = j.query_pre_attn_scalar.unwrap_or(256.0);
        cfg.attn_scale = 1.0 / scalar.sqrt();
        cfg.variants.post_norms = true;
        let (attn_cap, final_cap) = if v3 { (None, None) } else { (Some(50.0), Some(30.0)) };
        cfg.variants.attn_softcap = j.attn_logit_softcapping.unwrap_or(attn_cap);
        cfg.variants.final_softcap = j.final_logit_softcapping.unwrap_or(final_cap);
    }
    cfg.variants.qk_norm = v3;
    Ok(cfg)
}

pub(crate) fn gpt2(j: &Json) -> Result<ModelConfig> {
    let d_model = j.d_model()?;
    let n_heads = j.n_heads()?;
    let n_layers = j.n_layers()?;
    let d_head = d_model / n_heads.max(1);
    let d = Defaults { rope_theta: 0.0, eps: 1e-5, tied: true, sliding_window: None, activation: "gelu_new", max_positions: 1024, head_dim: None };
    Ok(ModelConfig {
        architecture: "gpt2".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: j.n_inner.unwrap_or(4 * d_model),
        d_vocab: j.d_vocab()?,
        n_ctx: j.n_positions.unwrap_or(d.max_positions),
        norm: NormConfig { kind: NormKind::LayerNorm, eps: j.layer_norm_epsilon.unwrap_or(d.eps) },
        positions: Positions::Learned { offset: 0 },
        attn_scale: if j.scale_attn_weights.unwrap_or(true) { 1.0 / (d_head as f64).sqrt() } else { 1.0 },
        mlp: MlpConfig { activation: j.activation(&d)?, gated: false },
        parallel_block: false,
        tied_embeddings: j.tie_word_embeddings.unwrap_or(d.tied),
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base: 0.0 }; n_layers],
        variants: Default::default(),
    })
}

pub(crate) fn neox(j: &Json) -> Result<ModelConfig> {
    let d_model = j.d_model()?;
    let n_heads = j.n_heads()?;
    let n_layers = j.n_layers()?;
    let d_head = d_model / n_heads.max(1);
    let d = Defaults { rope_theta: 10_000.0, eps: 1e-5, tied: false, sliding_window: None, activation: "gelu", max_positions: 2048, head_dim: None };
    let max_positions = j.max_position_embeddings.unwrap_or(d.max_positions);
    let rotary = j.rotary(d_head, j.partial_rotary_factor.or(j.rotary_pct).unwrap_or(0.25), max_positions)?;
    Ok(ModelConfig {
        architecture: "gpt_neox".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: j.intermediate_size.unwrap_or(4 * d_model),
        d_vocab: j.d_vocab()?,
        n_ctx: context(max_positions, rotary.scaling),
        norm: NormConfig { kind: NormKind::LayerNorm, eps: j.layer_norm_eps.unwrap_or(d.eps) },
        positions: Positions::Rotary(rotary),
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        mlp: MlpConfig { activation: j.activation(&d)?, gated: false },
        parallel_block: j.use_parallel_residual.unwrap_or(true),
        tied_embeddings: j.tie_word_embeddings.unwrap_or(d.tied),
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base: j.rope_theta(&d) }; n_layers],
        variants: Default::default(),
    })
}

pub(crate) fn opt(j: &Json) -> Result<ModelConfig> {
    let d_model = j.d_model()?;
    let n_heads = j.n_heads()?;
    let n_layers = j.n_layers()?;
    let d = Defaults { rope_theta: 0.0, eps: 1e-5, tied: true, sliding_window: None, activation: "relu", max_positions: 2048, head_dim: None };
    let pre = j.do_layer_norm_before.unwrap_or(true);
    Ok(ModelConfig {
        architecture: "opt".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head: d_model / n_heads.max(1),
        d_mlp: j.need(j.ffn_dim, "ffn_dim")?,
        d_vocab: j.d_vocab()?,
        n_ctx: j.max_position_embeddings.unwrap_or(d.max_positions),
        norm: NormConfig { kind: NormKind::LayerNorm, eps: d.eps },
        positions: Positions::Learned { offset: 2 },
        attn_scale: 1.0 / ((d_model / n_heads.max(1)) as f64).sqrt(),
        mlp: MlpConfig { activation: j.activation(&d)?, gated: false },
        parallel_block: false,
        tied_embeddings: j.tie_word_embeddings.unwrap_or(d.tied),
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base: 0.0 }; n_layers],
        variants: Variants { post_ln: !pre, no_final_norm: !pre || j.remove_final_layer_norm.unwrap_or(false), ..Default::default() },
    })
}

pub(crate) fn gptneo(j: &Json) -> Result<ModelConfig> {
    let d_model = j.d_model()?;
    let n_heads = j.n_heads()?;
    let n_layers = j.n_layers()?;
    let window = j.window_size.unwrap_or(256);
    // attention_types: [[["global", "local"], repeats], ...]
    let mut sliding: Vec<bool> = Vec::new();
    let bad = |what: &str| Error::Invalid(format!("config.json: `attention_types` {what}; write [[[\"global\", \"local\"], repeats], ...]"));
    for group in j.attention_types.as_ref().and_then(|v| v.as_array()).ok_or_else(|| bad("is missing or not a list"))? {
        let pattern = group.get(0).and_then(|v| v.as_array()).ok_or_else(|| bad("holds a group without a list of kinds"))?;
        let pattern = pattern
            .iter()
            .map(|k| match k.as_str() {
                Some("global") => Ok(false),
                Some("local") => Ok(true),
                _ => Err(bad(&format!("holds the kind {k}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let times = group.get(1).and_then(|v| v.as_u64()).ok_or_else(|| bad("holds a group without a repeat count"))?;
        // Stop as soon as the groups give more layers than the model has (a huge count would
        // otherwise loop for ever).
        for _ in 0..times {
            if pattern.is_empty() || sliding.len() > n_layers {
                break;
            }
            sliding.extend(&pattern);
        }
    }
    if sliding.len() != n_layers {
        return Err(Error::Invalid(format!("config.json: attention_types give {} layers, num_layers is {n_layers}", sliding.len())));
    }
    let d = Defaults { rope_theta: 0.0, eps: 1e-5, tied: true, sliding_window: None, activation: "gelu_new", max_positions: 2048, head_dim: None };
    let layers = Layout { pattern: Pattern::Listed(sliding), window: Some(window), rope_base: 0.0, local_rope_base: None }.layers(n_layers)?;
    Ok(ModelConfig {
        architecture: "gpt_neo".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head: d_model / n_heads.max(1),
        d_mlp: j.intermediate_size.unwrap_or(4 * d_model),
        d_vocab: j.d_vocab()?,
        n_ctx: j.max_position_embeddings.unwrap_or(d.max_positions),
        norm: NormConfig { kind: NormKind::LayerNorm, eps: j.layer_norm_epsilon.unwrap_or(d.eps) },
        positions: Positions::Learned { offset: 0 },
        // GPT-Neo does not scale its attention scores.
        attn_scale: 1.0,
        mlp: MlpConfig { activation: j.activation(&d)?, gated: false },
        parallel_block: false,
        tied_embeddings: j.tie_word_embeddings.unwrap_or(d.tied),
        embed_scale: None,
        layers,
        variants: Default::default(),
    })
}
