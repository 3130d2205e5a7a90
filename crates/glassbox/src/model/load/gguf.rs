//! GGUF files (llama.cpp): config from the metadata; weight matrices kept in their quantized
//! blocks (`quant::QMatrix`, on CPUs with the kernels), other tensors dequantized to f32;
//! tokenizer from the embedded vocabulary.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use std::collections::HashSet;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use super::names::{self, TensorNames, T};
use super::{build_weights, TensorSource};
use crate::model::kernels;
use crate::model::quant::QMatrix;
use crate::error::{Error, Result};
use super::layers::{Layout, Pattern};
use crate::model::config::{Activation, MlpConfig, Moe, ModelConfig, NormConfig, NormKind, Positions, RopeScaling, RotaryConfig, RotaryPairing, Variants};
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;

/// A family as llama.cpp names it in `general.architecture`.
struct GgufFamily {
    arch: &'static str,
    config: fn(&Meta) -> Result<ModelConfig>,
    names: &'static TensorNames,
    /// Whether a BOS token goes first, as `transformers` decides when it loads a GGUF file of
    /// this architecture (its tokenizer class: LLaMA and Gemma add one, Qwen none). llama.cpp
    /// reads the file's `tokenizer.ggml.add_bos_token` instead: where the two differ
    /// (SmolLM2's file says false), glassbox follows `transformers`, the reference of its
    /// parity tests; `prepend_bos` overrides it.
    bos: bool,
}

const FAMILIES: &[GgufFamily] = &[
    GgufFamily { arch: "llama", config: llama_config, names: &names::LLAMA_GGUF, bos: true },
    GgufFamily { arch: "qwen2", config: llama_config, names: &names::QWEN2_GGUF, bos: false },
    GgufFamily { arch: "qwen3", config: qwen3_config, names: &names::QWEN3_GGUF, bos: false },
    GgufFamily { arch: "phi3", config: llama_config, names: &names::PHI3_GGUF, bos: true },
    GgufFamily { arch: "gemma", config: gemma_config, names: &names::GEMMA_GGUF, bos: true },
    GgufFamily { arch: "gemma2", config: gemma_config, names: &names::GEMMA2_GGUF, bos: true },
    GgufFamily { arch: "gemma3", config: gemma_config, names: &names::GEMMA3_GGUF, bos: true },
];

/// The `general.architecture` values the GGUF loader reads.
pub fn supported_architectures() -> Vec<&'static str> {
    FAMILIES.iter().map(|f| f.arch).collect()
}

/// GGUF metadata with typed getters whose errors name the missing key.
pub(crate) struct Meta<'a> {
    content: &'a Content,
    arch: String,
}

impl Meta<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{}", self.arch, suffix)
    }
    fn value(&self, suffix: &str) -> Option<&Value> {
        self.content.metadata.get(&self.key(suffix))
    }
    fn usize(&self, suffix: &str) -> Result<usize> {
        let v = self.value(suffix).ok_or_else(|| Error::MissingMetadata {
            format: "GGUF",
            arch: self.arch.clone(),
            key: self.key(suffix),
        })?;
        as_u64(v)
            .map(|x| x as usize)
            .ok_or_else(|| Error::Invalid(format!("GGUF key `{}` is not a whole number", self.key(suffix))))
    }
    fn usize_or(&self, suffix: &str, default: usize) -> Result<usize> {
        match self.value(suffix) {
            Some(_) => self.usize(suffix),
            None => Ok(default),
        }
    }
    fn f64_or(&self, suffix: &str, default: f64) -> Result<f64> {
        match self.value(suffix) {
            Some(Value::F32(x)) => Ok(*x as f64),
            Some(Value::F64(x)) => Ok(*x),
            Some(_) => Err(Error::Invalid(format!("GGUF key `{}` is not a number", self.key(suffix)))),
            None => Ok(default),
        }
    }
    fn tensor_rows(&self, name: &str) -> Option<usize> {
        self.content.tensor_infos.get(name).and_then(|t| t.shape.dims().first().copied())
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) if *x >= 0 => Some(*x as u64),
        Value::I16(x) if *x >= 0 => Some(*x as u64),
        Value::I32(x) if *x >= 0 => Some(*x as u64),
        Value::I64(x) if *x >= 0 => Some(*x as u64),
        _ => None,
    }
}

fn llama_config(m: &Meta) -> Result<ModelConfig> {
    let d_model = m.usize("embedding_length")?;
    let n_heads = m.usize("attention.head_count")?;
    let n_layers = super::layer_count(m.usize("block_count")?)?;
    let d_head = m.usize_or("attention.key_length", d_model / n_heads.max(1))?;
    let d_vocab = match m.tensor_rows("token_embd.weight") {
        Some(v) => v,
        None => m.usize("vocab_size")?,
    };
    let window = match m.value("attention.sliding_window") {
        Some(_) => Some(m.usize("attention.sliding_window")?),
        None => None,
    };
    let layout = Layout { pattern: Pattern::Uniform, window, rope_base: m.f64_or("rope.freq_base", 10_000.0)?, local_rope_base: None };
    let n_ctx = m.usize("context_length")?;
    let moe = match m.value("expert_count") {
        Some(_) => Some(Moe { n_experts: m.usize("expert_count")?, top_k: m.usize("expert_used_count")?, renormalize: true, shared_expert: None }),
        None => None,
    };
    Ok(ModelConfig {
        architecture: m.arch.clone(),
        n_layers,
        d_model,
        n_heads,
        n_kv_heads: m.usize_or("attention.head_count_kv", n_heads)?,
        d_head,
        d_mlp: m.usize("feed_forward_length")?,
        d_vocab,
        n_ctx,
        norm: NormConfig {
            kind: NormKind::RmsNorm,
            eps: m.f64_or("attention.layer_norm_rms_epsilon", 1e-5)?,
        },
        positions: Positions::Rotary(RotaryConfig {
            dim: m.usize_or("rope.dimension_count", d_head)?,
            // After undoing llama.cpp's row permutation, pairs are half-split as in HF.
            pairing: RotaryPairing::HalfSplit,
            scaling: rope_scaling(m, n_ctx)?,
        }),
        attn_scale: 1.0 / (d_head as f64).sqrt(),
        mlp: MlpConfig {
            activation: Activation::Silu,
            gated: true,
        },
        parallel_block: false,
        tied_embeddings: true,
        embed_scale: None,
        layers: layout.layers(n_layers)?,
        variants: Variants { moe, ..Default::default() },
    })
}

/// `{arch}.rope.scaling.*`: none, linear or YaRN (with llama.cpp's defaults for the keys a
/// file leaves out). Llama 3.1 scaling comes as the `rope_freqs.weight` tensor instead.
fn rope_scaling(m: &Meta, n_ctx: usize) -> Result<RopeScaling> {
    let kind = match m.value("rope.scaling.type") {
        None => return Ok(RopeScaling::None),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Error::Invalid(format!("GGUF key `{}` is not a string", m.key("rope.scaling.type")))),
    };
    let factor = m.f64_or("rope.scaling.factor", 1.0)?;
    let original_max = m.usize_or("rope.scaling.original_context_length", n_ctx)?;
    Ok(match kind {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "yarn" => RopeScaling::Yarn {
            factor,
            original_max,
            beta_fast: m.f64_or("rope.scaling.yarn_beta_fast", 32.0)?,
            beta_slow: m.f64_or("rope.scaling.yarn_beta_slow", 1.0)?,
            attention_factor: m.f64_or("rope.scaling.attn_factor", if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 })?,
            truncate: true,
        },
        other => {
            return Err(Error::Invalid(format!(
                "GGUF rope scaling `{other}` is not supported (none, linear, yarn); glassbox would compute another model"
            )))
        }
    })
}

/// Qwen3: LLaMA's block with an RMSNorm of each query and key head before rotary.
fn qwen3_config(m: &Meta) -> Result<ModelConfig> {
    let mut cfg = llama_config(m)?;
    cfg.variants.qk_norm = true;
    Ok(cfg)
}

/// Gemma 1, 2 and 3 as llama.cpp writes them, with what their files leave out taken from the
/// architecture as llama.cpp and `transformers` do: GeGLU, embeddings × √d_model; Gemma 2
/// alternates sliding and global layers (layer 0 sliding) and soft-caps; Gemma 3 makes every
/// sixth layer (5, 11, 17, ...) global with the file's rotary base and gives the sliding
/// layers base 10 000, with query/key norms. The query scale is `1/sqrt(head_dim)`
/// (`query_pre_attn_scalar = head_dim`), except Gemma 2 27B (46 layers), where llama.cpp and
/// the published config use `d_model / heads`.
const GEMMA3_GLOBAL_EVERY: usize = 6;
const GEMMA3_LOCAL_ROPE_BASE: f64 = 10_000.0;

fn gemma_config(m: &Meta) -> Result<ModelConfig> {
    let mut cfg = llama_config(m)?;
    let (v2, v3) = (m.arch != "gemma", m.arch == "gemma3");
    if v2 {
        let window = Some(m.usize("attention.sliding_window")?);
        let layout = if v3 {
            Layout {
                pattern: Pattern::EveryNthGlobal(GEMMA3_GLOBAL_EVERY),
                window,
                rope_base: m.f64_or("rope.freq_base", 1_000_000.0)?,
                local_rope_base: Some(GEMMA3_LOCAL_ROPE_BASE),
            }
        } else {
            Layout { pattern: Pattern::EveryNthGlobal(2), window, rope_base: m.f64_or("rope.freq_base", 10_000.0)?, local_rope_base: None }
        };
        cfg.layers = layout.layers(cfg.n_layers)?;
        cfg.variants.post_norms = true;
    }
    cfg.norm.eps = m.f64_or("attention.layer_norm_rms_epsilon", 1e-6)?;
    cfg.embed_scale = Some((cfg.d_model as f64).sqrt());
    cfg.mlp = MlpConfig { activation: Activation::GeluTanh, gated: true };
    let scalar = if m.arch == "gemma2" && cfg.n_layers == 46 { (cfg.d_model / cfg.n_heads) as f64 } else { cfg.d_head as f64 };
    cfg.attn_scale = 1.0 / scalar.sqrt();
    if m.arch == "gemma2" {
        cfg.variants.attn_softcap = Some(m.f64_or("attn_logit_softcapping", 50.0)?);
        cfg.variants.final_softcap = Some(m.f64_or("final_logit_softcapping", 30.0)?);
    }
    cfg.variants.qk_norm = v3;
    Ok(cfg)
}

/// `rope_freqs.weight`: llama.cpp's divisors of the rotary frequencies (Llama 3.1 scaling),
/// one per rotating pair, each positive.
fn rope_freqs(src: &mut GgufSource, cfg: &ModelConfig) -> Result<Option<Vec<f32>>> {
    const NAME: &str = "rope_freqs.weight";
    if !src.contains(NAME) {
        return Ok(None);
    }
    let Positions::Rotary(r) = cfg.positions else {
        return Err(Error::Invalid(format!("{NAME} is in the file but the model has no rotary embedding")));
    };
    let want = [r.dim / 2];
    if src.shape(NAME).as_deref() != Some(&want[..]) {
        return Err(Error::TensorShape { name: NAME.into(), expected: want.to_vec(), got: src.shape(NAME).unwrap_or_default() });
    }
    let v = src.load(NAME)?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    if v.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
        return Err(Error::Invalid(format!("{NAME} holds a divisor that is not a positive number")));
    }
    Ok(Some(v))
}

struct GgufSource {
    content: Content,
    reader: super::digest::HashingReader<BufReader<File>>,
    path: PathBuf,
    loaded: HashSet<String>,
}

impl TensorSource for GgufSource {
    fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|t| t.shape.dims().to_vec())
    }
    fn names(&self) -> Vec<String> {
        self.content.tensor_infos.keys().cloned().collect()
    }
    fn loaded(&self) -> &HashSet<String> {
        &self.loaded
    }
    fn load(&mut self, name: &str) -> Result<Tensor> {
        self.loaded.insert(name.to_string());
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                detail: format!("tensor `{}`: {e}", super::gguf_header::printable(name)),
            })?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// The tensor's blocks read straight from the file into a `QMatrix` (the header checked
    /// its offset and size against the file).
    fn load_quantized(&mut self, name: &str) -> Result<Option<QMatrix>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        let (rows, cols) = match info.shape.dims() {
            &[rows, cols] => (rows, cols),
            _ => return Ok(None),
        };
        if !kernels::available() || !QMatrix::supports(info.ggml_dtype) {
            return Ok(None);
        }
        let start = self.content.tensor_data_offset.checked_add(info.offset);
        let (reader, path) = (&mut self.reader, &self.path);
        let corrupt = |detail: String| Error::Corrupt { path: path.clone(), detail: format!("tensor `{}`: {detail}", super::gguf_header::printable(name)) };
        let q = QMatrix::filled(info.ggml_dtype, rows, cols, |dst| {
            let start = start.ok_or_else(|| corrupt("offset past the end of the file".into()))?;
            reader.seek(SeekFrom::Start(start)).map_err(|e| corrupt(e.to_string()))?;
            reader.read_exact(dst).map_err(|e| corrupt(e.to_string()))
        })?;
        if q.is_some() {
            self.loaded.insert(name.to_string());
        }
        Ok(q)
    }
}

/// Reads a GGUF file's header and metadata (not its tensors), checked against the file
/// (`gguf_header`).
pub fn read_content(path: &Path) -> Result<(Content, BufReader<File>)> {
    super::gguf_header::read(path)
}

/// Loads a GGUF file.
pub fn load_file(path: &Path) -> Result<Model> {
    let (content, reader) = read_content(path)?;
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: "no `general.architecture` in the metadata".into(),
            })
        }
    };
    let family = FAMILIES.iter().find(|f| f.arch == arch).ok_or_else(|| {
        Error::UnknownArchitecture {
            name: arch.clone(),
            supported: supported_architectures().join(", "),
        }
    })?;
    let meta = Meta {
        content: &content,
        arch: arch.clone(),
    };
    let mut cfg = (family.config)(&meta)?;
    let tokenizer = Tokenizer::from_gguf(&content, family.bos)?;
    let unembed_stored = match family.names.unembed {
        T::Req(n) | T::Opt(n) => content.tensor_infos.contains_key(n),
        T::No => false,
    };
    cfg.tied_embeddings = !unembed_stored;
    cfg.validate()?;
    let reader = super::digest::HashingReader::new(reader).map_err(|e| Error::io(path, e))?;
    let mut src = GgufSource {
        content,
        reader,
        path: path.to_path_buf(),
        loaded: HashSet::new(),
    };
    let mut weights = build_weights(&cfg, family.names, &mut src)?;
    weights.rope_freqs = rope_freqs(&mut src, &cfg)?;
    super::check_all_used(&src, &arch)?;
    let sha256 = src.reader.finish().map_err(|e| Error::io(path, e))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Model::new(name, cfg, weights, tokenizer)?.with_weights_sha256(sha256))
}
