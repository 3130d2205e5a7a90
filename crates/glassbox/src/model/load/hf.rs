//! Hugging Face model folders: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`) and `tokenizer.json`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use serde_json::Value;

use super::names::{self, TensorNames, T};
use super::{build_weights, TensorSource};
use crate::error::{Error, Result};
use crate::model::config::{
    Activation, LayerAttention, MlpConfig, Moe, ModelConfig, NormConfig, NormKind, Positions,
    RotaryConfig, RotaryPairing, Variants,
};
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;

/// A family as seen in `config.json`: its `model_type`s, how its config maps onto
/// `ModelConfig`, and where its tensors live.
struct HfFamily {
    model_types: &'static [&'static str],
    config: fn(&Cfg) -> Result<ModelConfig>,
    names: &'static TensorNames,
}

const FAMILIES: &[HfFamily] = &[
    HfFamily {
        model_types: &["gpt2"],
        config: gpt2_config,
        names: &names::GPT2_HF,
    },
    HfFamily {
        model_types: &["llama", "qwen2", "mistral"],
        config: llama_config,
        names: &names::LLAMA_HF,
    },
    HfFamily {
        model_types: &["mixtral"],
        config: mixtral_config,
        names: &names::MIXTRAL_HF,
    },
    HfFamily {
        model_types: &["gemma"],
        config: gemma_config,
        names: &names::GEMMA_HF,
    },
    HfFamily {
        model_types: &["gemma2"],
        config: gemma_config,
        names: &names::GEMMA2_HF,
    },
    HfFamily {
        model_types: &["gemma3_text", "gemma3"],
        config: gemma_config,
        names: &names::GEMMA3_HF,
    },
    HfFamily {
        model_types: &["gpt_neox"],
        config: neox_config,
        names: &names::NEOX_HF,
    },
    HfFamily {
        model_types: &["opt"],
        config: opt_config,
        names: &names::OPT_HF,
    },
    HfFamily {
        model_types: &["gpt_neo"],
        config: gptneo_config,
        names: &names::GPTNEO_HF,
    },
];

/// The supported `model_type`s, for error messages and docs.
pub fn supported_model_types() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect()
}

/// `config.json` with typed getters whose errors name the missing key.
pub(crate) struct Cfg {
    json: Value,
    arch: String,
}

impl Cfg {
    fn missing(&self, key: &str) -> Error {
        Error::MissingMetadata {
            format: "config.json",
            arch: self.arch.clone(),
            key: key.to_string(),
        }
    }
    fn get(&self, key: &str) -> Option<&Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_or(key, None)
    }
    fn usize_or(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| Error::Invalid(format!("config.json: `{key}` is not a whole number: {v}"))),
            None => default.ok_or_else(|| self.missing(key)),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::Invalid(format!("config.json: `{key}` is not a number: {v}"))),
            None => Ok(default),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            Some(v) => v.as_bool().ok_or_else(|| Error::Invalid(format!("config.json: `{key}` is not true or false: {v}"))),
            None => Ok(default),
        }
    }
    fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            Some(v) => v.as_str().ok_or_else(|| Error::Invalid(format!("config.json: `{key}` is not a string: {v}"))),
            None => Ok(default),
        }
    }
    /// An optional number (absent or null: `None`).
    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.f64_or(key, 0.0)).transpose()
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

fn gpt2_config(c: &Cfg) -> Result<ModelConfig> {
    let d_model = c.usize("n_embd")?;
    let n_heads = c.usize("n_head")?;
    let n_layers = super::layer_count(c.usize("n_layer")?)?;
    let d_head = d_model / n_heads.max(1);
    let scale = if c.bool_or("scale_attn_weights", true)? {
        1.0 / (d_head as f64).sqrt()
    } else {
        1.0
    };
    Ok(ModelConfig {
        architecture: "gpt2".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: c.usize_or("n_inner", Some(4 * d_model))?,
        d_vocab: c.usize("vocab_size")?,
        n_ctx: c.usize("n_positions")?,
        norm: NormConfig {
            kind: NormKind::LayerNorm,
            eps: c.f64_or("layer_norm_epsilon", 1e-5)?,
        },
        positions: Positions::Learned { offset: 0 },
        attn_scale: scale,
        mlp: MlpConfig {
            activation: activation(c.str_or("activation_function", "gelu_new")?)?,
            gated: false,
        },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", true)?,
        embed_scale: None,
        layers: vec![
            LayerAttention {
                sliding_window: None,
                rope_base: 0.0
            };
            n_layers
        ],
        variants: Default::default(),
    })
}

fn llama_config(c: &Cfg) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = super::layer_count(c.usize("num_hidden_layers")?)?;
    let d_head = c.usize_or("head_dim", Some(d_model / n_heads.max(1)))?;
    if let Some(s) = c.get("rope_scaling") {
        let kind = s.get("rope_type").or(s.get("type")).and_then(Value::as_str).unwrap_or("?");
        if kind != "default" {
            return Err(Error::Invalid(format!(
                "rope scaling `{kind}` is not supported yet; glassbox implements unscaled rotary"
            )));
        }
    }
    let rope_base = c.f64_or("rope_theta", 10_000.0)?;
    let windows = sliding_windows(c, n_layers)?;
    Ok(ModelConfig {
        architecture: c.arch.clone(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: c.usize_or("num_key_value_heads", Some(n_heads))?,
        d_head,
        d_mlp: c.usize("intermediate_size")?,
        d_vocab: c.usize("vocab_size")?,
        n_ctx: c.usize("max_position_embeddings")?,
        norm: NormConfig {
            kind: NormKind::RmsNorm,
            eps: c.f64_or("rms_norm_eps", 1e-6)?,
        },
        positions: Positions::Rotary(RotaryConfig {
            dim: d_head,
            pairing: RotaryPairing::HalfSplit,
        }),
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        mlp: MlpConfig {
            activation: activation(c.str_or("hidden_act", "silu")?)?,
            gated: true,
        },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", false)?,
        embed_scale: None,
        layers: windows
            .into_iter()
            .map(|sliding_window| LayerAttention { sliding_window, rope_base })
            .collect(),
        variants: Default::default(),
    })
}

/// Each layer's sliding window: from `layer_types` where the config lists them, else the
/// config's `sliding_window` for every layer (Mistral; Qwen2 only with `use_sliding_window`).
fn sliding_windows(c: &Cfg, n_layers: usize) -> Result<Vec<Option<usize>>> {
    let window = match c.get("sliding_window") {
        Some(_) => Some(c.usize("sliding_window")?),
        None => None,
    };
    if window == Some(0) {
        return Err(Error::Invalid("config.json: `sliding_window` is 0; a window must hold at least one key (or be null for none)".into()));
    }
    if let Some(types) = c.get("layer_types").and_then(Value::as_array) {
        if types.len() != n_layers {
            return Err(Error::Invalid(format!("config.json: {} layer_types for {n_layers} layers", types.len())));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(window),
                Some("full_attention") => Ok(None),
                _ => Err(Error::Invalid(format!("config.json: layer type {t} is neither \"sliding_attention\" nor \"full_attention\""))),
            })
            .collect();
    }
    let used = c.arch != "qwen2" || c.bool_or("use_sliding_window", false)?;
    Ok(vec![if used { window } else { None }; n_layers])
}

fn mixtral_config(c: &Cfg) -> Result<ModelConfig> {
    let mut cfg = llama_config(c)?;
    cfg.variants.moe = Some(Moe {
        n_experts: c.usize("num_local_experts")?,
        top_k: c.usize("num_experts_per_tok")?,
        renormalize: true,
    });
    Ok(cfg)
}

/// Gemma 1, 2 and 3: `(1 + w)` RMSNorm (added at load), embeddings scaled by √d_model, GeGLU,
/// tied; Gemma 2 adds post-norms, soft-capping and `query_pre_attn_scalar`; Gemma 3 drops the
/// soft-capping, adds query/key norms and a separate rotary base for its sliding layers.
fn gemma_config(c: &Cfg) -> Result<ModelConfig> {
    let mut cfg = llama_config(c)?;
    let v2 = c.arch != "gemma";
    cfg.tied_embeddings = c.bool_or("tie_word_embeddings", true)?;
    cfg.embed_scale = Some((cfg.d_model as f64).sqrt());
    let act = match c.get("hidden_activation") {
        Some(_) => c.str_or("hidden_activation", "gelu_pytorch_tanh")?,
        None => c.str_or("hidden_act", "gelu_pytorch_tanh")?,
    };
    cfg.mlp = MlpConfig { activation: activation(act)?, gated: true };
    cfg.norm.eps = c.f64_or("rms_norm_eps", 1e-6)?;
    if v2 {
        let scalar = c.f64_or("query_pre_attn_scalar", cfg.d_head as f64)?;
        cfg.attn_scale = 1.0 / scalar.sqrt();
        cfg.variants.post_norms = true;
        cfg.variants.attn_softcap = c.f64_opt("attn_logit_softcapping")?;
        cfg.variants.final_softcap = c.f64_opt("final_logit_softcapping")?;
    }
    if c.arch.starts_with("gemma3") {
        cfg.variants.qk_norm = true;
        let local = c.f64_or("rope_local_base_freq", 10_000.0)?;
        for la in &mut cfg.layers {
            if la.sliding_window.is_some() {
                la.rope_base = local;
            }
        }
    }
    Ok(cfg)
}

fn neox_config(c: &Cfg) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = super::layer_count(c.usize("num_hidden_layers")?)?;
    let d_head = d_model / n_heads.max(1);
    let pct = match c.get("partial_rotary_factor") {
        Some(_) => c.f64_or("partial_rotary_factor", 1.0)?,
        None => c.f64_or("rotary_pct", 1.0)?,
    };
    let rope_base = match c.get("rope_theta") {
        Some(_) => c.f64_or("rope_theta", 10_000.0)?,
        None => c.f64_or("rotary_emb_base", 10_000.0)?,
    };
    Ok(ModelConfig {
        architecture: "gpt_neox".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head,
        d_mlp: c.usize_or("intermediate_size", Some(4 * d_model))?,
        d_vocab: c.usize("vocab_size")?,
        n_ctx: c.usize("max_position_embeddings")?,
        norm: NormConfig { kind: NormKind::LayerNorm, eps: c.f64_or("layer_norm_eps", 1e-5)? },
        positions: Positions::Rotary(RotaryConfig {
            dim: ((d_head as f64 * pct) as usize) / 2 * 2,
            pairing: RotaryPairing::HalfSplit,
        }),
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        mlp: MlpConfig { activation: activation(c.str_or("hidden_act", "gelu")?)?, gated: false },
        parallel_block: c.bool_or("use_parallel_residual", true)?,
        tied_embeddings: c.bool_or("tie_word_embeddings", false)?,
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base }; n_layers],
        variants: Default::default(),
    })
}

fn opt_config(c: &Cfg) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = super::layer_count(c.usize("num_hidden_layers")?)?;
    if c.usize_or("word_embed_proj_dim", Some(d_model))? != d_model {
        return Err(Error::Invalid(
            "OPT models whose word_embed_proj_dim differs from hidden_size (project_in/out) are not supported yet".into(),
        ));
    }
    let pre = c.bool_or("do_layer_norm_before", true)?;
    Ok(ModelConfig {
        architecture: "opt".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head: d_model / n_heads.max(1),
        d_mlp: c.usize("ffn_dim")?,
        d_vocab: c.usize("vocab_size")?,
        n_ctx: c.usize("max_position_embeddings")?,
        norm: NormConfig { kind: NormKind::LayerNorm, eps: 1e-5 },
        positions: Positions::Learned { offset: 2 },
        attn_scale: 1.0 / ((d_model / n_heads.max(1)) as f64).sqrt(),
        mlp: MlpConfig { activation: activation(c.str_or("activation_function", "relu")?)?, gated: false },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", true)?,
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base: 0.0 }; n_layers],
        variants: Variants { post_ln: !pre, no_final_norm: !pre, ..Default::default() },
    })
}

fn gptneo_config(c: &Cfg) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_heads")?;
    let n_layers = super::layer_count(c.usize("num_layers")?)?;
    let window = c.usize_or("window_size", Some(256))?;
    // attention_types: [[["global", "local"], repeats], ...]
    let mut kinds: Vec<String> = Vec::new();
    let bad = |what: &str| Error::Invalid(format!("config.json: `attention_types` {what}; write [[[\"global\", \"local\"], repeats], ...]"));
    for group in c.get("attention_types").and_then(Value::as_array).ok_or_else(|| bad("is missing or not a list"))? {
        let pattern = group.get(0).and_then(Value::as_array).ok_or_else(|| bad("holds a group without a list of kinds"))?;
        let pattern = pattern
            .iter()
            .map(|k| match k.as_str() {
                Some(k @ ("global" | "local")) => Ok(k.to_string()),
                _ => Err(bad(&format!("holds the kind {k}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let times = group.get(1).and_then(Value::as_u64).ok_or_else(|| bad("holds a group without a repeat count"))?;
        // Stop as soon as the groups give more layers than the model has (a huge count
        // would otherwise loop for ever).
        for _ in 0..times {
            if pattern.is_empty() || kinds.len() > n_layers {
                break;
            }
            kinds.extend(pattern.iter().cloned());
        }
    }
    if kinds.len() != n_layers {
        return Err(Error::Invalid(format!("config.json: attention_types give {} layers, num_layers is {n_layers}", kinds.len())));
    }
    Ok(ModelConfig {
        architecture: "gpt_neo".into(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: n_heads,
        d_head: d_model / n_heads.max(1),
        d_mlp: c.usize_or("intermediate_size", Some(4 * d_model))?,
        d_vocab: c.usize("vocab_size")?,
        n_ctx: c.usize("max_position_embeddings")?,
        norm: NormConfig { kind: NormKind::LayerNorm, eps: c.f64_or("layer_norm_epsilon", 1e-5)? },
        positions: Positions::Learned { offset: 0 },
        // GPT-Neo does not scale its attention scores.
        attn_scale: 1.0,
        mlp: MlpConfig { activation: activation(c.str_or("activation_function", "gelu_new")?)?, gated: false },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", true)?,
        embed_scale: None,
        layers: kinds
            .iter()
            .map(|k| LayerAttention { sliding_window: (k == "local").then_some(window), rope_base: 0.0 })
            .collect(),
        variants: Default::default(),
    })
}

struct SafetensorsSource {
    st: MmapedSafetensors,
    names: HashSet<String>,
}

impl TensorSource for SafetensorsSource {
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if !self.names.contains(name) {
            return None;
        }
        self.st.get(name).ok().map(|v| v.shape().to_vec())
    }
    fn load(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.st.load(name, &Device::Cpu)?)
    }
}

/// The most bytes of a config.json, of a shard index and of a safetensors header.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
const MAX_INDEX_BYTES: u64 = 64 << 20;
const MAX_HEADER_BYTES: u64 = 100 << 20;

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let corrupt = |detail: String| Error::Corrupt { path: index.clone(), detail };
        let text = super::read_json_text(&index, MAX_INDEX_BYTES)?;
        let json: Value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let map = json.get("weight_map").and_then(Value::as_object).ok_or_else(|| corrupt("no `weight_map` object".into()))?;
        let mut files = Vec::new();
        for (tensor, f) in map {
            let f = f.as_str().ok_or_else(|| corrupt(format!("the file of `{tensor}` is not a string")))?;
            // A shard is a file in this folder: no absolute path, no `..`, no subfolder.
            let mut parts = Path::new(f).components();
            match (parts.next(), parts.next()) {
                (Some(std::path::Component::Normal(name)), None) => files.push(dir.join(name)),
                _ => return Err(corrupt(format!("the shard {f:?} of `{tensor}` is not a file name in the model folder"))),
            }
        }
        files.sort();
        files.dedup();
        return Ok(files);
    }
    Err(Error::NotAModel {
        path: dir.to_path_buf(),
        reason: "no model.safetensors or model.safetensors.index.json in the folder (PyTorch .bin checkpoints are not read; convert them to safetensors)".into(),
    })
}

/// The tensor names in a safetensors file's header, each checked to appear once (a repeated
/// name would otherwise silently replace the first).
fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    let size = super::regular_file(path)?.len();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|_| corrupt("not a safetensors file: shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES || n > size.saturating_sub(8) {
        return Err(corrupt(format!("not a safetensors file: its header claims {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let keys: UniqueKeys = serde_json::from_slice(&header).map_err(|e| corrupt(format!("not a safetensors header: {e}")))?;
    Ok(keys.0.into_iter().filter(|k| k != "__metadata__").collect())
}

/// The keys of a JSON object, an error when one repeats.
struct UniqueKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<UniqueKeys, A::Error> {
                let mut seen = HashSet::new();
                let mut keys = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("the tensor `{}` is listed twice", super::gguf_header::printable(&k))));
                    }
                    keys.push(k);
                }
                Ok(UniqueKeys(keys))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Loads a Hugging Face model folder.
pub fn load_folder(dir: &Path) -> Result<Model> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(Error::NotAModel {
            path: dir.to_path_buf(),
            reason: "the folder has no config.json".into(),
        });
    }
    let text = super::read_json_text(&config_path, MAX_CONFIG_BYTES)?;
    let json: Value = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        path: config_path.clone(),
        detail: e.to_string(),
    })?;
    let model_type = json
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let family = FAMILIES
        .iter()
        .find(|f| f.model_types.contains(&model_type.as_str()))
        .ok_or_else(|| Error::UnknownArchitecture {
            name: if model_type.is_empty() {
                "(config.json has no model_type)".into()
            } else {
                model_type.clone()
            },
            supported: supported_model_types().join(", "),
        })?;
    let cfg_json = Cfg {
        json,
        arch: model_type,
    };
    let mut cfg = (family.config)(&cfg_json)?;

    let files = weight_files(dir)?;
    if files.is_empty() {
        return Err(Error::Corrupt {
            path: dir.join("model.safetensors.index.json"),
            detail: "the index lists no weight files".into(),
        });
    }
    // Each tensor in one file only, listed once there.
    let mut owner: std::collections::HashMap<String, &Path> = std::collections::HashMap::new();
    for f in &files {
        for name in safetensors_names(f)? {
            if let Some(first) = owner.insert(name.clone(), f) {
                return Err(Error::Corrupt {
                    path: f.clone(),
                    detail: format!("the tensor `{}` is also in {}", super::gguf_header::printable(&name), first.display()),
                });
            }
        }
    }
    // Safety: the files are memory-mapped read-only; glassbox never writes to them, and the
    // tensors are copied out (to f32) before the map is dropped.
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::Corrupt {
        path: files[0].clone(),
        detail: format!("not a readable safetensors file ({e})"),
    })?;
    let names: HashSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let mut src = SafetensorsSource { st, names };
    let unembed_name = match family.names.unembed {
        T::Req(n) | T::Opt(n) => Some(n),
        T::No => None,
    };
    let stored_unembed = unembed_name.is_some_and(|n| src.contains(n));
    if !stored_unembed && !cfg.tied_embeddings {
        return Err(Error::MissingTensor {
            name: unembed_name.unwrap_or("lm_head.weight").into(),
        });
    }
    cfg.tied_embeddings = !stored_unembed;
    cfg.validate()?;
    let weights = build_weights(&cfg, family.names, &mut src).map_err(|e| match e {
        Error::Candle(c) => Error::Corrupt {
            path: files[0].clone(),
            detail: c.to_string(),
        },
        other => other,
    })?;
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    Model::new(
        dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        cfg,
        weights,
        tokenizer,
    )
}
