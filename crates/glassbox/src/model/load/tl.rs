//! TransformerLens checkpoints: a folder with `config.json` (a `HookedTransformerConfig` as
//! `cfg.to_dict()` writes it), `model.safetensors` (the state dict in TransformerLens' names:
//! `embed.W_E`, `blocks.{l}.attn.W_Q` `[heads, d_model, d_head]`, `blocks.{l}.mlp.W_in`
//! `[d_model, d_mlp]`, `unembed.W_U` `[d_model, d_vocab]`, ...) and `tokenizer.json`. This
//! opens toy models, tracr-compiled programs and InterpBench-style models.
//!
//! The config maps onto `ModelConfig` (`config`); the tensors are rearranged once, at load, into
//! the `[out, in]` matrices `build_weights` reads (`TlSource`), under names of `names()`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::names::{Linear, Qkv, TensorNames, T};
use super::{build_weights, TensorSource};
use crate::error::{Error, Result};
use crate::model::config::{Activation, LayerAttention, MlpConfig, ModelConfig, NormConfig, NormKind, Positions, RotaryConfig, RotaryPairing, Variants};
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;

/// Whether a parsed `config.json` is a TransformerLens config (its own keys, no `model_type`).
pub(crate) fn is_tl_config(json: &serde_json::Value) -> bool {
    let has = |k: &str| json.get(k).is_some();
    !has("model_type") && has("n_layers") && has("d_model") && has("d_head") && has("n_heads") && has("act_fn")
}

/// The keys of `HookedTransformerConfig` that change what the model computes. Every other key
/// (device, seed, initialisation, tokenizer name, ...) does not.
#[derive(Debug, Deserialize)]
struct TlConfig {
    n_layers: usize,
    d_model: usize,
    d_head: usize,
    n_heads: usize,
    n_ctx: usize,
    d_vocab: i64,
    #[serde(default)]
    d_vocab_out: Option<i64>,
    #[serde(default)]
    d_mlp: Option<i64>,
    act_fn: Option<String>,
    #[serde(default)]
    normalization_type: Option<String>,
    #[serde(default)]
    attn_only: bool,
    #[serde(default)]
    attention_dir: Option<String>,
    #[serde(default)]
    positional_embedding_type: Option<String>,
    #[serde(default)]
    rotary_dim: Option<usize>,
    #[serde(default)]
    rotary_base: Option<f64>,
    #[serde(default)]
    rotary_adjacent_pairs: Option<bool>,
    #[serde(default)]
    n_key_value_heads: Option<usize>,
    #[serde(default)]
    gated_mlp: Option<bool>,
    #[serde(default)]
    eps: Option<f64>,
    #[serde(default)]
    use_attn_scale: Option<bool>,
    #[serde(default)]
    attn_scale: Option<f64>,
    #[serde(default)]
    parallel_attn_mlp: Option<bool>,
    #[serde(default)]
    final_rms: Option<bool>,
    #[serde(default)]
    attn_scores_soft_cap: Option<f64>,
    #[serde(default)]
    output_logits_soft_cap: Option<f64>,
    #[serde(default)]
    original_architecture: Option<String>,
    /// Settings glassbox does not compute: each must be off (false, null or absent).
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

/// Keys that, when set, ask for a computation glassbox does not do.
const REFUSED_WHEN_SET: &[(&str, &str)] = &[
    ("use_local_attn", "local attention windows"),
    ("scale_attn_by_inverse_layer_idx", "attention scaled by the inverse layer index"),
    ("use_normalization_before_and_after", "norms before and after each sublayer"),
    ("num_experts", "mixtures of experts"),
    ("use_qk_norm", "query/key norms"),
    ("relative_attention_max_distance", "relative attention"),
    ("use_NTK_by_parts_rope", "NTK-by-parts rotary scaling"),
    ("use_yarn_rope", "YaRN rotary scaling"),
    ("post_embedding_ln", "a norm after the embedding"),
    ("attn_types", "per-layer attention types"),
    ("rotary_base_local", "a separate rotary base for local layers"),
];

/// How the checkpoint normalises.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Norms {
    /// `normalization_type: null`: no norm anywhere.
    None,
    /// A norm with weights (`LN`, `RMS`).
    Weighted(NormKind),
    /// A norm without weights (`LNPre`, `RMSPre`: TransformerLens' folded form).
    Plain(NormKind),
}

fn invalid(what: String) -> Error {
    Error::Invalid(format!("TransformerLens config: {what}"))
}

impl TlConfig {
    fn norms(&self) -> Result<Norms> {
        Ok(match self.normalization_type.as_deref() {
            None => Norms::None,
            Some("LN") => Norms::Weighted(NormKind::LayerNorm),
            Some("LNPre") => Norms::Plain(NormKind::LayerNorm),
            Some("RMS") => Norms::Weighted(NormKind::RmsNorm),
            Some("RMSPre") => Norms::Plain(NormKind::RmsNorm),
            Some(other) => return Err(invalid(format!("normalization_type {other:?}; glassbox reads null, \"LN\", \"LNPre\", \"RMS\" and \"RMSPre\""))),
        })
    }

    fn activation(&self) -> Result<Activation> {
        Ok(match self.act_fn.as_deref() {
            Some("relu") => Activation::Relu,
            Some("gelu") => Activation::Gelu,
            Some("gelu_new" | "gelu_fast" | "gelu_pytorch_tanh") => Activation::GeluTanh,
            Some("silu" | "swish") => Activation::Silu,
            other => return Err(invalid(format!("act_fn {other:?}; glassbox computes relu, gelu, gelu_new, gelu_fast, gelu_pytorch_tanh and silu"))),
        })
    }

    /// The `ModelConfig` this config describes, or an error naming the setting glassbox does not
    /// compute.
    fn model_config(&self) -> Result<ModelConfig> {
        for (key, what) in REFUSED_WHEN_SET {
            if self.rest.get(*key).is_some_and(|v| !(v.is_null() || v == &serde_json::Value::Bool(false))) {
                return Err(invalid(format!("`{key}` asks for {what}, which glassbox does not compute")));
            }
        }
        if let Some(f) = self.rest.get("rotary_scaling_factor").and_then(|v| v.as_f64()).filter(|&f| f != 1.0) {
            return Err(invalid(format!("rotary_scaling_factor {f}: scaled rotary frequencies are not read from TransformerLens configs")));
        }
        let d_vocab = usize::try_from(self.d_vocab).map_err(|_| invalid(format!("d_vocab {} must be positive (the checkpoint's own vocabulary size)", self.d_vocab)))?;
        if let Some(out) = self.d_vocab_out.filter(|&o| o != -1 && o != self.d_vocab) {
            return Err(invalid(format!(
                "d_vocab_out {out} differs from d_vocab {d_vocab}; glassbox reads one vocabulary for input and output (give W_U a column per input token)"
            )));
        }
        // An attention-only model's d_mlp (often left at a default) sizes nothing.
        let d_mlp = if self.attn_only {
            0
        } else {
            let d_mlp = self.d_mlp.ok_or_else(|| invalid("no d_mlp".into()))?;
            usize::try_from(d_mlp).ok().filter(|&m| m > 0).ok_or_else(|| invalid(format!("d_mlp {d_mlp} must be positive")))?
        };
        let bidirectional = match self.attention_dir.as_deref() {
            None | Some("causal") => false,
            Some("bidirectional") => true,
            Some(other) => return Err(invalid(format!("attention_dir {other:?}; give \"causal\" or \"bidirectional\""))),
        };
        let positions = match self.positional_embedding_type.as_deref() {
            None | Some("standard") => Positions::Learned { offset: 0 },
            Some("rotary") => Positions::Rotary(RotaryConfig {
                dim: self.rotary_dim.unwrap_or(self.d_head),
                pairing: if self.rotary_adjacent_pairs.unwrap_or(false) { RotaryPairing::Interleaved } else { RotaryPairing::HalfSplit },
                scaling: Default::default(),
            }),
            Some(other) => return Err(invalid(format!("positional_embedding_type {other:?}; glassbox computes \"standard\" (learned) and \"rotary\""))),
        };
        let norms = self.norms()?;
        let kind = match norms {
            Norms::None => NormKind::LayerNorm,
            Norms::Weighted(k) | Norms::Plain(k) => k,
        };
        if self.final_rms == Some(true) && kind != NormKind::RmsNorm {
            return Err(invalid("final_rms with LayerNorm blocks: a final norm of another kind than the blocks' is not computed".into()));
        }
        let attn_scale = if self.use_attn_scale.unwrap_or(true) {
            let s = self.attn_scale.unwrap_or((self.d_head as f64).sqrt());
            if !(s.is_finite() && s > 0.0) {
                return Err(invalid(format!("attn_scale {s} must be a positive number")));
            }
            1.0 / s
        } else {
            1.0
        };
        let softcap = |v: Option<f64>| v.filter(|&c| c != -1.0);
        let cfg = ModelConfig {
            architecture: format!("transformer_lens ({})", self.original_architecture.as_deref().unwrap_or("HookedTransformer")),
            n_layers: super::layer_count(self.n_layers)?,
            d_model: self.d_model,
            n_heads: self.n_heads,
            n_kv_heads: self.n_key_value_heads.unwrap_or(self.n_heads),
            d_head: self.d_head,
            d_mlp,
            d_vocab,
            n_ctx: self.n_ctx,
            norm: NormConfig { kind, eps: self.eps.unwrap_or(1e-5) },
            positions,
            attn_scale,
            mlp: if self.attn_only { MlpConfig { activation: Activation::Relu, gated: false } } else { MlpConfig { activation: self.activation()?, gated: self.gated_mlp.unwrap_or(false) } },
            parallel_block: self.parallel_attn_mlp.unwrap_or(false),
            tied_embeddings: false,
            embed_scale: None,
            layers: vec![LayerAttention { sliding_window: None, rope_base: self.rotary_base.unwrap_or(10000.0) }; self.n_layers],
            variants: Variants {
                no_pre_norms: norms == Norms::None,
                no_final_norm: norms == Norms::None,
                attn_softcap: softcap(self.attn_scores_soft_cap),
                final_softcap: softcap(self.output_logits_soft_cap),
                bidirectional,
                attn_only: self.attn_only,
                ..Default::default()
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Where `build_weights` finds each weight of a converted checkpoint: `[out, in]` matrices
/// under the names `TlSource` gives them.
fn names(norms: Norms, gated: bool, attn_only: bool) -> TensorNames {
    let w = |n: &'static str| if norms == Norms::None { T::No } else { T::Req(n) };
    let bias = |n: &'static str| if norms == Norms::None { T::No } else { T::Opt(n) };
    // What exists only with an MLP.
    let mlp = |t: T| if attn_only { T::No } else { t };
    TensorNames {
        linear: Linear::OutIn,
        embed: T::Req("embed.W_E"),
        pos_embed: T::Opt("pos_embed.W_pos"),
        ln1_w: w("blocks.{l}.ln1.w"),
        ln1_b: bias("blocks.{l}.ln1.b"),
        qkv: Qkv::Separate {
            q: T::Req("blocks.{l}.attn.q"),
            k: T::Req("blocks.{l}.attn.k"),
            v: T::Req("blocks.{l}.attn.v"),
            bq: T::Opt("blocks.{l}.attn.bq"),
            bk: T::Opt("blocks.{l}.attn.bk"),
            bv: T::Opt("blocks.{l}.attn.bv"),
        },
        o: T::Req("blocks.{l}.attn.o"),
        bo: T::Opt("blocks.{l}.attn.b_O"),
        ln2_w: mlp(w("blocks.{l}.ln2.w")),
        ln2_b: mlp(bias("blocks.{l}.ln2.b")),
        mlp_in: mlp(T::Req("blocks.{l}.mlp.in")),
        mlp_b_in: mlp(T::Opt("blocks.{l}.mlp.b_in")),
        mlp_gate: if gated { mlp(T::Req("blocks.{l}.mlp.gate")) } else { T::No },
        mlp_b_gate: T::No,
        mlp_out: mlp(T::Req("blocks.{l}.mlp.out")),
        mlp_b_out: mlp(T::Opt("blocks.{l}.mlp.b_out")),
        ln_final_w: w("ln_final.w"),
        ln_final_b: bias("ln_final.b"),
        unembed: T::Req("unembed.U"),
        unembed_b: T::Opt("unembed.b_U"),
        ..super::names::NONE
    }
}

/// Buffers TransformerLens keeps in its state dict that no computation reads (the causal mask,
/// the masked score's value, rotary tables): suffixes of `blocks.{l}.`.
const TL_BUFFERS: &[&str] = &["attn.mask", "attn.IGNORE", "attn.rotary_sin", "attn.rotary_cos"];

/// A TransformerLens state dict rearranged into the `[out, in]` matrices of `names()`: every
/// tensor is read, shape-checked against the config and converted once, at load.
struct TlSource {
    tensors: HashMap<String, Tensor>,
    loaded: HashSet<String>,
}

impl TensorSource for TlSource {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }
    fn load(&mut self, name: &str) -> Result<Tensor> {
        self.loaded.insert(name.to_string());
        self.tensors.get(name).cloned().ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn loaded(&self) -> &HashSet<String> {
        &self.loaded
    }
}

/// What one TransformerLens tensor becomes: its new name, the shape it must have in the file,
/// and how it is rearranged.
enum Convert {
    /// Kept as stored.
    Keep,
    /// `[heads, d_model, d_head]` → `[heads · d_head, d_model]` (W_Q, W_K, W_V).
    HeadsIn,
    /// `[heads, d_head]` → `[heads · d_head]` (b_Q, b_K, b_V).
    Flatten,
    /// `[heads, d_head, d_model]` → `[d_model, heads · d_head]` (W_O).
    HeadsOut,
    /// `[in, out]` → `[out, in]` (W_in, W_gate, W_out, W_U).
    Transpose,
}

impl TlSource {
    /// Reads `file`, checking each tensor's shape against `cfg` before converting it.
    fn read(file: &Path, cfg: &ModelConfig, norms: Norms) -> Result<TlSource> {
        super::regular_file(file)?;
        let stored = super::hf::safetensors_names(file)?;
        // SAFETY: the file is memory-mapped read-only; glassbox never writes to it, and every
        // tensor is copied out (to f32) before the map is dropped.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }
            .map_err(|e| Error::Corrupt { path: file.to_path_buf(), detail: format!("not a readable safetensors file ({e})") })?;
        let (d, h, kv, dh, m, v) = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab);
        let mut tensors = HashMap::new();
        for name in stored {
            let (layer, rest) = match name.strip_prefix("blocks.").and_then(|r| r.split_once('.')) {
                Some((l, rest)) => match l.parse::<usize>() {
                    Ok(l) if l < cfg.n_layers => (Some(l), rest),
                    _ => (None, name.as_str()),
                },
                None => (None, name.as_str()),
            };
            if layer.is_some() && TL_BUFFERS.contains(&rest) {
                continue;
            }
            if cfg.variants.attn_only && layer.is_some() && (rest.starts_with("mlp.") || rest.starts_with("ln2.")) {
                return Err(invalid(format!("attn_only is set, yet the state dict holds `{name}`: an attention-only model has no MLP; set attn_only to false or save the model without MLP weights")));
            }
            let at = |s: &str| format!("blocks.{}.{s}", layer.unwrap_or(0));
            let (new, shape, how): (String, Vec<usize>, Convert) = match (layer, rest) {
                (Some(_), "attn.W_Q") => (at("attn.q"), vec![h, d, dh], Convert::HeadsIn),
                (Some(_), "attn.W_K" | "attn._W_K") => (at("attn.k"), vec![kv, d, dh], Convert::HeadsIn),
                (Some(_), "attn.W_V" | "attn._W_V") => (at("attn.v"), vec![kv, d, dh], Convert::HeadsIn),
                (Some(_), "attn.b_Q") => (at("attn.bq"), vec![h, dh], Convert::Flatten),
                (Some(_), "attn.b_K" | "attn._b_K") => (at("attn.bk"), vec![kv, dh], Convert::Flatten),
                (Some(_), "attn.b_V" | "attn._b_V") => (at("attn.bv"), vec![kv, dh], Convert::Flatten),
                (Some(_), "attn.W_O") => (at("attn.o"), vec![h, dh, d], Convert::HeadsOut),
                (Some(_), "mlp.W_in") => (at("mlp.in"), vec![d, m], Convert::Transpose),
                (Some(_), "mlp.W_gate") => (at("mlp.gate"), vec![d, m], Convert::Transpose),
                (Some(_), "mlp.W_out") => (at("mlp.out"), vec![m, d], Convert::Transpose),
                (None, "unembed.W_U") => ("unembed.U".into(), vec![d, v], Convert::Transpose),
                _ => (name.clone(), Vec::new(), Convert::Keep),
            };
            let got = st.get(&name).map(|t| t.shape().to_vec()).map_err(|e| Error::Corrupt { path: file.to_path_buf(), detail: e.to_string() })?;
            if !matches!(how, Convert::Keep) && got != shape {
                return Err(Error::TensorShape { name, expected: shape, got });
            }
            let x = st.load(&name, &Device::Cpu)?.to_dtype(DType::F32)?;
            let x = match how {
                Convert::Keep => x,
                Convert::HeadsIn => x.transpose(1, 2)?.contiguous()?.reshape((shape[0] * dh, d))?,
                Convert::Flatten => x.flatten_all()?,
                Convert::HeadsOut => x.reshape((h * dh, d))?.t()?.contiguous()?,
                Convert::Transpose => x.t()?.contiguous()?,
            };
            tensors.insert(new, x);
        }
        // TransformerLens' gated MLP adds b_in after the product, `act(x W_gate) ⊙ (x W_in) +
        // b_in`, where glassbox adds it inside: folded into b_out (`b_out + W_out b_in`), which
        // gives the same output (hook_post then lacks b_in).
        if cfg.mlp.gated {
            for l in 0..cfg.n_layers {
                if let Some(b_in) = tensors.remove(&format!("blocks.{l}.mlp.b_in")) {
                    let w_out = tensors.get(&format!("blocks.{l}.mlp.out")).ok_or_else(|| Error::MissingTensor { name: format!("blocks.{l}.mlp.W_out") })?;
                    let folded = w_out.matmul(&b_in.unsqueeze(1)?)?.squeeze(1)?;
                    let b_out = match tensors.remove(&format!("blocks.{l}.mlp.b_out")) {
                        Some(b) => (b + folded)?,
                        None => folded,
                    };
                    tensors.insert(format!("blocks.{l}.mlp.b_out"), b_out);
                }
            }
        }
        // LNPre / RMSPre: the norms normalise without a weight of their own.
        if let Norms::Plain(_) = norms {
            let ones = Tensor::ones(d, DType::F32, &Device::Cpu)?;
            for l in 0..cfg.n_layers {
                tensors.insert(format!("blocks.{l}.ln1.w"), ones.clone());
                if !cfg.variants.attn_only {
                    tensors.insert(format!("blocks.{l}.ln2.w"), ones.clone());
                }
            }
            tensors.insert("ln_final.w".into(), ones);
        }
        Ok(TlSource { tensors, loaded: HashSet::new() })
    }
}

/// Loads a TransformerLens checkpoint folder whose `config.json` (read as `text`) is a
/// `HookedTransformerConfig`.
pub(crate) fn load_folder(dir: &Path, text: &str) -> Result<Model> {
    let config_path = dir.join("config.json");
    let tl: TlConfig = serde_json::from_str(text).map_err(|e| Error::Corrupt { path: config_path.clone(), detail: format!("not a TransformerLens config: {e}") })?;
    let mut cfg = tl.model_config()?;
    let norms = tl.norms()?;
    let file = dir.join("model.safetensors");
    if !file.exists() {
        return Err(Error::NotAModel { path: dir.to_path_buf(), reason: "a TransformerLens checkpoint folder holds model.safetensors (the state dict in TransformerLens' names); this one has none".into() });
    }
    let mut src = TlSource::read(&file, &cfg, norms)?;
    let weights = build_weights(&cfg, &names(norms, cfg.mlp.gated, cfg.variants.attn_only), &mut src)?;
    super::check_all_used(&src, &cfg.architecture)?;
    cfg.tied_embeddings = weights.unembed.same_as(&weights.embed);
    let tok = dir.join("tokenizer.json");
    if !tok.exists() {
        return Err(Error::NotAModel {
            path: dir.to_path_buf(),
            reason: "no tokenizer.json: a TransformerLens config names its tokenizer by a hub id, which glassbox does not fetch; put that tokenizer's tokenizer.json in the folder".into(),
        });
    }
    let tokenizer = Tokenizer::from_file(&tok)?;
    let sha256 = super::digest::files_sha256(std::slice::from_ref(&file)).map_err(|e| Error::io(&file, e))?;
    Ok(Model::new(dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), cfg, weights, tokenizer)?.with_weights_sha256(sha256))
}
