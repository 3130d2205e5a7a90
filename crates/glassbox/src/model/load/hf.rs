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
    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.get(key).and_then(Value::as_bool).unwrap_or(default)
    }
    fn str_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).and_then(Value::as_str).unwrap_or(default)
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
    let n_layers = c.usize("n_layer")?;
    let d_head = d_model / n_heads.max(1);
    let scale = if c.bool_or("scale_attn_weights", true) {
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
            activation: activation(c.str_or("activation_function", "gelu_new"))?,
            gated: false,
        },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", true),
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
    let n_layers = c.usize("num_hidden_layers")?;
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
            activation: activation(c.str_or("hidden_act", "silu"))?,
            gated: true,
        },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", false),
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
    if let Some(types) = c.get("layer_types").and_then(Value::as_array) {
        if types.len() != n_layers {
            return Err(Error::Invalid(format!("config.json: {} layer_types for {n_layers} layers", types.len())));
        }
        return Ok(types
            .iter()
            .map(|t| if t.as_str() == Some("sliding_attention") { window } else { None })
            .collect());
    }
    let used = c.arch != "qwen2" || c.bool_or("use_sliding_window", false);
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
    cfg.tied_embeddings = c.bool_or("tie_word_embeddings", true);
    cfg.embed_scale = Some((cfg.d_model as f64).sqrt());
    let act = c.get("hidden_activation").or(c.get("hidden_act")).and_then(Value::as_str).unwrap_or("gelu_pytorch_tanh");
    cfg.mlp = MlpConfig { activation: activation(act)?, gated: true };
    cfg.norm.eps = c.f64_or("rms_norm_eps", 1e-6)?;
    if v2 {
        let scalar = c.f64_or("query_pre_attn_scalar", cfg.d_head as f64)?;
        cfg.attn_scale = 1.0 / scalar.sqrt();
        cfg.variants.post_norms = true;
        cfg.variants.attn_softcap = c.get("attn_logit_softcapping").and_then(Value::as_f64);
        cfg.variants.final_softcap = c.get("final_logit_softcapping").and_then(Value::as_f64);
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
    let n_layers = c.usize("num_hidden_layers")?;
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
        mlp: MlpConfig { activation: activation(c.str_or("hidden_act", "gelu"))?, gated: false },
        parallel_block: c.bool_or("use_parallel_residual", true),
        tied_embeddings: c.bool_or("tie_word_embeddings", false),
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base }; n_layers],
        variants: Default::default(),
    })
}

fn opt_config(c: &Cfg) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = c.usize("num_hidden_layers")?;
    if c.usize_or("word_embed_proj_dim", Some(d_model))? != d_model {
        return Err(Error::Invalid(
            "OPT models whose word_embed_proj_dim differs from hidden_size (project_in/out) are not supported yet".into(),
        ));
    }
    let pre = c.bool_or("do_layer_norm_before", true);
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
        mlp: MlpConfig { activation: activation(c.str_or("activation_function", "relu"))?, gated: false },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", true),
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base: 0.0 }; n_layers],
        variants: Variants { post_ln: !pre, no_final_norm: !pre, ..Default::default() },
    })
}

fn gptneo_config(c: &Cfg) -> Result<ModelConfig> {
    let d_model = c.usize("hidden_size")?;
    let n_heads = c.usize("num_heads")?;
    let n_layers = c.usize("num_layers")?;
    let window = c.usize_or("window_size", Some(256))?;
    // attention_types: [[["global", "local"], repeats], ...]
    let mut kinds: Vec<String> = Vec::new();
    for group in c.get("attention_types").and_then(Value::as_array).into_iter().flatten() {
        let pattern = group.get(0).and_then(Value::as_array);
        let times = group.get(1).and_then(Value::as_u64).unwrap_or(1);
        for _ in 0..times {
            kinds.extend(pattern.into_iter().flatten().filter_map(Value::as_str).map(String::from));
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
        mlp: MlpConfig { activation: activation(c.str_or("activation_function", "gelu_new"))?, gated: false },
        parallel_block: false,
        tied_embeddings: c.bool_or("tie_word_embeddings", true),
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
    fn load(&mut self, name: &str) -> Result<Tensor> {
        Ok(self.st.load(name, &Device::Cpu)?)
    }
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: index.clone(),
            detail: e.to_string(),
        })?;
        let map = json.get("weight_map").and_then(Value::as_object).ok_or_else(|| Error::Corrupt {
            path: index.clone(),
            detail: "no `weight_map` object".into(),
        })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    Err(Error::NotAModel {
        path: dir.to_path_buf(),
        reason: "no model.safetensors or model.safetensors.index.json in the folder (PyTorch .bin checkpoints are not read; convert them to safetensors)".into(),
    })
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
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
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
    for f in &files {
        if !f.exists() {
            return Err(Error::io(f, std::io::Error::from(std::io::ErrorKind::NotFound)));
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
