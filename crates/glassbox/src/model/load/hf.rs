//! Hugging Face model folders: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`) and `tokenizer.json`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use serde_json::Value;

use super::hf_config::{self, Json};
use super::names::{self, TensorNames, T};
use super::{build_weights, TensorSource};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;

/// A family as seen in `config.json`: its `model_type`s, how its config maps onto
/// `ModelConfig` (`hf_config`), and where its tensors live.
struct HfFamily {
    model_types: &'static [&'static str],
    config: fn(&Json) -> Result<ModelConfig>,
    names: &'static TensorNames,
}

const FAMILIES: &[HfFamily] = &[
    HfFamily { model_types: &["gpt2"], config: hf_config::gpt2, names: &names::GPT2_HF },
    HfFamily { model_types: &["llama"], config: hf_config::llama, names: &names::LLAMA_HF },
    HfFamily { model_types: &["qwen2"], config: hf_config::qwen2, names: &names::LLAMA_HF },
    HfFamily { model_types: &["mistral"], config: hf_config::mistral, names: &names::LLAMA_HF },
    HfFamily { model_types: &["mixtral"], config: hf_config::mixtral, names: &names::MIXTRAL_HF },
    HfFamily { model_types: &["gemma"], config: hf_config::gemma, names: &names::GEMMA_HF },
    HfFamily { model_types: &["gemma2"], config: hf_config::gemma, names: &names::GEMMA2_HF },
    HfFamily { model_types: &["gemma3_text", "gemma3"], config: hf_config::gemma, names: &names::GEMMA3_HF },
    HfFamily { model_types: &["gpt_neox"], config: hf_config::neox, names: &names::NEOX_HF },
    HfFamily { model_types: &["opt"], config: hf_config::opt, names: &names::OPT_PROJ_HF },
    HfFamily { model_types: &["qwen3"], config: hf_config::qwen3, names: &names::QWEN3_HF },
    HfFamily { model_types: &["qwen2_moe"], config: hf_config::qwen_moe, names: &names::QWEN2_MOE_HF },
    HfFamily { model_types: &["qwen3_moe"], config: hf_config::qwen_moe, names: &names::QWEN3_MOE_HF },
    HfFamily { model_types: &["phi3"], config: hf_config::phi3, names: &names::PHI3_HF },
    HfFamily { model_types: &["olmo2"], config: hf_config::olmo2, names: &names::OLMO2_HF },
    HfFamily { model_types: &["gpt_neo"], config: hf_config::gptneo, names: &names::GPTNEO_HF },
];

/// The supported `model_type`s, for error messages and docs.
pub fn supported_model_types() -> Vec<&'static str> {
    FAMILIES.iter().flat_map(|f| f.model_types.iter().copied()).collect()
}

struct SafetensorsSource {
    st: MmapedSafetensors,
    names: HashSet<String>,
    loaded: HashSet<String>,
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
    fn names(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }
    fn loaded(&self) -> &HashSet<String> {
        &self.loaded
    }
    fn load(&mut self, name: &str) -> Result<Tensor> {
        self.loaded.insert(name.to_string());
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
pub(super) fn safetensors_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    let size = super::regular_file(path)?.len();
    let mut f = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
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
    if serde_json::from_str::<Value>(&text).is_ok_and(|v| super::tl::is_tl_config(&v)) {
        return super::tl::load_folder(dir, &text);
    }
    let json = hf_config::parse(&text).map_err(|detail| Error::Corrupt { path: config_path.clone(), detail })?;
    let model_type = json.model_type.clone().unwrap_or_default();
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
    hf_config::unsupported(&json)?;
    let mut cfg = (family.config)(&json)?;

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
    // SAFETY: the files are memory-mapped read-only; glassbox never writes to them, and the
    // tensors are copied out (to f32) before the map is dropped.
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::Corrupt {
        path: files[0].clone(),
        detail: format!("not a readable safetensors file ({e})"),
    })?;
    let names: HashSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let mut src = SafetensorsSource { st, names, loaded: HashSet::new() };
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
    // A width the config states and the weights also give must agree.
    if let (Some(w), T::Req(embed) | T::Opt(embed)) = (json.word_embed_proj_dim, family.names.embed) {
        if let Some(cols) = src.shape(embed).and_then(|s| s.get(1).copied()).filter(|&c| c != w) {
            return Err(Error::Corrupt {
                path: config_path.clone(),
                detail: format!("word_embed_proj_dim is {w} but the embedding `{embed}` has {cols} columns; the config contradicts the weights"),
            });
        }
    }
    let weights = build_weights(&cfg, family.names, &mut src).map_err(|e| match e {
        Error::Candle(c) => Error::Corrupt {
            path: files[0].clone(),
            detail: c.to_string(),
        },
        other => other,
    })?;
    super::check_all_used(&src, &cfg.architecture)?;
    // Folded maps (OPT-350m) give an unembedding that is not the embedding.
    cfg.tied_embeddings = weights.unembed.same_as(&weights.embed);
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?.with_bos_token(json.bos_token_id)
        .with_eos_tokens(json.eos_token_id.as_ref().map(|e| e.ids()).unwrap_or_default());
    // The weight files were read through a memory map; their hash is one more read of them
    // (from the page cache).
    let sha256 = super::digest::files_sha256(&files).map_err(|e| Error::io(&files[0], e))?;
    Ok(Model::new(
        dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        cfg,
        weights,
        tokenizer,
    )?
    .with_weights_sha256(sha256))
}
