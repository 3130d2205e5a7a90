//! Loading models: Hugging Face folders (config.json + safetensors + tokenizer.json) and GGUF
//! files. Each format turns its metadata into a `ModelConfig` through a per-family table, and its
//! tensors into `Weights` through a tensor-name map (`names.rs`); `build_weights` is shared.

pub mod gguf;
mod gguf_header;
pub(crate) mod digest;
pub mod hf;
mod hf_config;
mod layers;
pub(crate) mod names;
mod tl;

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::quant::QMatrix;
use crate::model::weights::{AttnWeights, LayerExtras, LayerWeights, Matrix, MlpWeights, MoeWeights, Norm, Weights};
use crate::model::Model;
use names::{Linear, Qkv, TensorNames, T};

/// Loads a model from a Hugging Face model folder or a GGUF file.
pub fn load_path(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return hf::load_folder(path);
    }
    regular_file(path)?;
    let mut magic = [0u8; 4];
    let mut file = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    if n == 4 && &magic == b"GGUF" {
        return gguf::load_file(path);
    }
    let hint = if path.extension().is_some_and(|e| e == "safetensors" || e == "json") {
        "give the folder that holds config.json, the safetensors weights and tokenizer.json"
    } else {
        "expected a GGUF file (it starts with the bytes `GGUF`) or a Hugging Face model folder"
    };
    Err(Error::NotAModel {
        path: path.to_path_buf(),
        reason: hint.to_string(),
    })
}

/// A layer count from a file, checked against `LIMITS` before anything is allocated per layer.
pub(crate) fn layer_count(n: usize) -> Result<usize> {
    let max = crate::model::config::LIMITS.layers;
    if n == 0 || n > max {
        return Err(Error::Invalid(format!("model config: {n} layers; glassbox takes 1 to {max}")));
    }
    Ok(n)
}

/// Error unless `path` is a regular file (or a link to one): a FIFO would block the reader
/// forever, a device such as `/dev/zero` would never end.
pub(crate) fn regular_file(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a folder" } else { "not a regular file (a FIFO, socket or device)" };
        return Err(Error::NotAModel { path: path.to_path_buf(), reason: format!("it is {kind}; give a regular file") });
    }
    Ok(meta)
}

/// The bytes of a regular file of at most `limit` bytes (checked before reading, and the read
/// stops there should the file grow).
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let meta = regular_file(path)?;
    if meta.len() > limit {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("it is {} bytes; a file of this kind is at most {limit} bytes", meta.len()),
        });
    }
    let mut bytes = Vec::new();
    crate::files::open_regular(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

/// Reads a JSON file of at most `limit` bytes (config.json, tokenizer.json, a shard index).
pub(crate) fn read_json_text(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_limited(path, limit)?)
        .map_err(|e| Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// The most bytes of a small safetensors file read whole (a steering vector, a saved input).
pub const MAX_SMALL_SAFETENSORS_BYTES: u64 = 1 << 30;

/// Reads every tensor of a safetensors file of at most `MAX_SMALL_SAFETENSORS_BYTES` (a
/// steering vector, a dictionary of inputs), with its header and offsets checked.
pub fn read_small_safetensors(path: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    let bytes = read_limited(path, MAX_SMALL_SAFETENSORS_BYTES)?;
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    // The safetensors crate checks the header and that every tensor's bytes lie in the file.
    let parsed = std::panic::catch_unwind(|| candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu))
        .map_err(|_| corrupt("not a readable safetensors file".into()))?
        .map_err(|e| corrupt(format!("not a readable safetensors file ({e})")))?;
    Ok(parsed)
}

/// Where `build_weights` reads tensors from: f32 tensors by name.
pub(crate) trait TensorSource {
    fn contains(&self, name: &str) -> bool;
    /// The stored shape (row-major), checked before the tensor is read.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    fn load(&mut self, name: &str) -> Result<Tensor>;
    /// A 2-D tensor kept in its quantized blocks, where the source stores it in a format the
    /// kernels stream (`quant::FORMATS`) and this CPU runs them; `None` otherwise (`load` then
    /// reads it as f32).
    fn load_quantized(&mut self, _name: &str) -> Result<Option<QMatrix>> {
        Ok(None)
    }
    /// Every tensor name in the file.
    fn names(&self) -> Vec<String>;
    /// The names `load` has read so far.
    fn loaded(&self) -> &HashSet<String>;
}

/// Tensors that checkpoints store but no computation reads (name suffixes): rotary frequency
/// tables and causal-mask buffers that older `transformers` versions saved.
pub const KNOWN_BUFFERS: &[&str] = &[".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias"];

/// Error naming the tensors in the file that no part of the model read (beyond
/// `KNOWN_BUFFERS`): each would be a part of the checkpoint glassbox leaves out, so it would
/// compute another model.
pub(crate) fn check_all_used(src: &dyn TensorSource, arch: &str) -> Result<()> {
    let mut unused: Vec<String> = src
        .names()
        .into_iter()
        .filter(|n| !src.loaded().contains(n) && !KNOWN_BUFFERS.iter().any(|b| n.ends_with(b)))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    unused.sort();
    let n = unused.len();
    let shown: Vec<String> = unused.iter().take(8).map(|u| gguf_header::printable(u)).collect();
    Err(Error::UnusedTensors {
        arch: arch.to_string(),
        names: format!("{}{}", shown.join(", "), if n > 8 { format!(" and {} more", n - 8) } else { String::new() }),
    })
}

pub(crate) fn name_at(template: &str, layer: usize) -> String {
    template.replace("{l}", &layer.to_string())
}

/// A map entry with `{e}` (an expert's index) filled in.
fn expert(t: T, e: usize) -> (T, String) {
    match t {
        T::Req(n) | T::Opt(n) => (t, n.replace("{e}", &e.to_string())),
        T::No => (t, String::new()),
    }
}

/// Reads one tensor of the map (at `layer`), checks it against `shape`, as `[out, in]`
/// when `linear` (transposing a Conv1D layout).
fn fetch(
    src: &mut dyn TensorSource,
    t: T,
    layer: usize,
    shape: &[usize],
    linear: Option<Linear>,
) -> Result<Option<Tensor>> {
    match t {
        T::Req(n) | T::Opt(n) => fetch_name(src, &name_at(n, layer), matches!(t, T::Req(_)), shape, linear),
        T::No => Ok(None),
    }
}

fn fetch_name(
    src: &mut dyn TensorSource,
    name: &str,
    required: bool,
    shape: &[usize],
    linear: Option<Linear>,
) -> Result<Option<Tensor>> {
    let name = name.to_string();
    let Some(mut stored) = src.shape(&name) else {
        return if required {
            Err(Error::MissingTensor { name })
        } else {
            Ok(None)
        };
    };
    if linear == Some(Linear::InOut) {
        stored.reverse();
    }
    if stored != shape {
        return Err(Error::TensorShape { name, expected: shape.to_vec(), got: stored });
    }
    let mut x = src.load(&name)?.to_dtype(DType::F32)?;
    if linear == Some(Linear::InOut) {
        x = x.t()?.contiguous()?;
    }
    check_finite(&x, &name)?;
    Ok(Some(x))
}

/// `fetch` for a weight matrix: kept quantized where the source can (`load_quantized`; never
/// for a transposed Conv1D layout), a dense f32 tensor otherwise.
fn fetch_matrix(src: &mut dyn TensorSource, t: T, layer: usize, shape: &[usize], linear: Option<Linear>) -> Result<Option<Matrix>> {
    match t {
        T::Req(n) | T::Opt(n) => fetch_name_matrix(src, &name_at(n, layer), matches!(t, T::Req(_)), shape, linear),
        T::No => Ok(None),
    }
}

fn fetch_name_matrix(src: &mut dyn TensorSource, name: &str, required: bool, shape: &[usize], linear: Option<Linear>) -> Result<Option<Matrix>> {
    if linear != Some(Linear::InOut) && shape.len() == 2 && src.shape(name).as_deref() == Some(shape) {
        if let Some(q) = src.load_quantized(name)? {
            if !q.all_finite() {
                return Err(non_finite(name));
            }
            return Ok(Some(Matrix::Quantized(std::sync::Arc::new(q))));
        }
    }
    Ok(fetch_name(src, name, required, shape, linear)?.map(Matrix::Dense))
}

fn required_matrix(x: Option<Matrix>, t: T, layer: usize) -> Result<Matrix> {
    x.ok_or_else(|| missing(t, layer))
}

/// `unpermute_rows` for a matrix, dense or quantized.
fn unpermute_matrix(w: Matrix, n_heads: usize) -> Result<Matrix> {
    match w {
        Matrix::Dense(t) => Ok(Matrix::Dense(unpermute_rows(&t, n_heads)?)),
        Matrix::Quantized(q) => q
            .unpermute_rows(n_heads)
            .map(|q| Matrix::Quantized(std::sync::Arc::new(q)))
            .ok_or_else(|| Error::Invalid(format!("a Q or K projection of {} rows does not split into {n_heads} heads of an even size", q.rows()))),
    }
}

/// Rows `start..start + len` of a matrix, dense or quantized.
fn narrow_matrix(w: &Matrix, start: usize, len: usize) -> Result<Matrix> {
    Ok(match w {
        Matrix::Dense(t) => Matrix::Dense(t.narrow(0, start, len)?.contiguous()?),
        Matrix::Quantized(q) => Matrix::Quantized(std::sync::Arc::new(q.narrow_rows(start, len)?)),
    })
}

fn non_finite(name: &str) -> Error {
    Error::Invalid(format!(
        "tensor `{}` holds NaN or infinite values; the file is damaged or was saved from a diverged model",
        gguf_header::printable(name)
    ))
}

/// Error naming the tensor when any of its values is NaN or infinite: such a weight would
/// make every figure NaN.
pub(crate) fn check_finite(x: &Tensor, name: &str) -> Result<()> {
    let bad = {
        let (storage, layout) = x.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => v[a..b]
                .chunks(4096)
                .any(|c| c.iter().fold(0u32, |acc, x| acc | u32::from(x.to_bits() & 0x7f80_0000 == 0x7f80_0000)) != 0),
            _ => x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.iter().any(|v| !v.is_finite()),
        }
    };
    if bad {
        return Err(non_finite(name));
    }
    Ok(())
}

fn required(x: Option<Tensor>, t: T, layer: usize) -> Result<Tensor> {
    x.ok_or_else(|| missing(t, layer))
}

/// The error for a tensor of the map (at `layer`) that the file lacks.
fn missing(t: T, layer: usize) -> Error {
    Error::MissingTensor {
        name: match t {
            T::Req(n) | T::Opt(n) => name_at(n, layer),
            T::No => "(a tensor this family's name map does not give)".to_string(),
        },
    }
}

/// Undoes llama.cpp's row permutation of a Q or K projection: `[heads*d_head, d_model]`.
pub(crate) fn unpermute_rows(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let d_head = rows / n_heads;
    Ok(w
        .reshape((n_heads, d_head / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Builds `Weights` for `cfg` from a source through a name map, checking every shape.
/// The unembedding is the embedding exactly when `cfg.tied_embeddings` (set by the loader
/// from the absence of the output tensor).
pub(crate) fn build_weights(
    cfg: &ModelConfig,
    names: &TensorNames,
    src: &mut dyn TensorSource,
) -> Result<Weights> {
    let d = cfg.d_model;
    let (q_rows, kv_rows) = (cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head);
    let lin = Some(names.linear);
    let plus_one = names.norm_plus_one;
    let norm_of = |src: &mut dyn TensorSource, w: T, b: T, l: usize, width: usize| -> Result<Norm> {
        let mut wt = required(fetch(src, w, l, &[width], None)?, w, l)?;
        if plus_one {
            wt = (wt + 1.0)?;
        }
        Ok(Norm { w: wt, b: fetch(src, b, l, &[width], None)? })
    };
    // A block norm the name map leaves out (OLMo-2's pre-norms, the MLP norm of an
    // attention-only model) is the identity, unused by the forward (`Variants::no_pre_norms`,
    // `Variants::attn_only`).
    let norm = |src: &mut dyn TensorSource, w: T, b: T, l: usize| -> Result<Norm> {
        if w == T::No && (cfg.variants.no_pre_norms || cfg.variants.attn_only) {
            return Ok(Norm { w: Tensor::ones(d, DType::F32, &candle_core::Device::Cpu)?, b: None });
        }
        norm_of(src, w, b, l, d)
    };
    let opt_norm = |src: &mut dyn TensorSource, w: T, l: usize, width: usize| -> Result<Option<Norm>> {
        if w == T::No {
            return Ok(None);
        }
        norm_of(src, w, T::No, l, width).map(Some)
    };

    // A narrower embedding with maps to and from the residual stream (OPT-350m) is folded:
    // embed = E · P_inᵀ, and below, unembed = E · P_out (exact up to float rounding).
    let narrow = match names.project_in {
        T::Req(n) | T::Opt(n) => src.shape(n).filter(|s| s.len() == 2 && s[0] == d).map(|s| s[1]),
        T::No => None,
    };
    let (embed, narrow_embed) = match narrow {
        Some(e) => {
            let raw = required(fetch(src, names.embed, 0, &[cfg.d_vocab, e], None)?, names.embed, 0)?;
            let p_in = required(fetch(src, names.project_in, 0, &[d, e], None)?, names.project_in, 0)?;
            (Matrix::Dense(raw.matmul(&p_in.t()?)?), Some(raw))
        }
        None => (required_matrix(fetch_matrix(src, names.embed, 0, &[cfg.d_vocab, d], None)?, names.embed, 0)?, None),
    };
    let pos_embed = match cfg.positions {
        crate::model::config::Positions::Learned { offset } => {
            let t = names.pos_embed;
            let name = match t {
                T::Req(n) | T::Opt(n) => n,
                T::No => "(position embedding)",
            };
            let stored = src.shape(name).ok_or_else(|| Error::MissingTensor { name: name.into() })?;
            let rows_needed = cfg.n_ctx.saturating_add(offset);
            if stored.len() != 2 || stored[1] != d || stored[0] < rows_needed {
                return Err(Error::TensorShape { name: name.into(), expected: vec![rows_needed, d], got: stored });
            }
            let x = src.load(name)?.to_dtype(DType::F32)?;
            check_finite(&x, name)?;
            Some(x)
        }
        _ => None,
    };

    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let ln1 = norm(src, names.ln1_w, names.ln1_b, l)?;
        let (w_q, b_q, w_k, b_k, w_v, b_v) = match names.qkv {
            Qkv::Separate { q, k, v, bq, bk, bv } => {
                let mut w_q = required_matrix(fetch_matrix(src, q, l, &[q_rows, d], lin)?, q, l)?;
                let mut w_k = required_matrix(fetch_matrix(src, k, l, &[kv_rows, d], lin)?, k, l)?;
                let w_v = required_matrix(fetch_matrix(src, v, l, &[kv_rows, d], lin)?, v, l)?;
                let mut b_q = fetch(src, bq, l, &[q_rows], None)?;
                let mut b_k = fetch(src, bk, l, &[kv_rows], None)?;
                if names.qk_rows_permuted {
                    w_q = unpermute_matrix(w_q, cfg.n_heads)?;
                    w_k = unpermute_matrix(w_k, cfg.n_kv_heads)?;
                    b_q = b_q.map(|b| unpermute_bias(&b, cfg.n_heads)).transpose()?;
                    b_k = b_k.map(|b| unpermute_bias(&b, cfg.n_kv_heads)).transpose()?;
                }
                let b_v = fetch(src, bv, l, &[kv_rows], None)?;
                (w_q, b_q, w_k, b_k, w_v, b_v)
            }
            Qkv::FusedPerHead { w, b } => {
                // Rows [head][q, k, v][d_head] (GPT-NeoX; no GQA).
                let rows = 3 * q_rows;
                let wt = required(fetch(src, w, l, &[rows, d], lin)?, w, l)?;
                let bt = fetch(src, b, l, &[rows], None)?;
                let (h, dh) = (cfg.n_heads, cfg.d_head);
                let part = |x: &Tensor, i: usize| -> Result<Tensor> {
                    let cols: usize = x.dims()[1..].iter().product();
                    Ok(x.reshape((h, 3, dh, cols))?.narrow(1, i, 1)?.contiguous()?.reshape((h * dh, cols))?)
                };
                let bpart = |i: usize| -> Result<Option<Tensor>> {
                    bt.as_ref().map(|b| Ok(part(&b.reshape((rows, 1))?, i)?.reshape(h * dh)?)).transpose()
                };
                (part(&wt, 0)?.into(), bpart(0)?, part(&wt, 1)?.into(), bpart(1)?, part(&wt, 2)?.into(), bpart(2)?)
            }
            Qkv::Fused { w, b } => {
                let rows = q_rows + 2 * kv_rows;
                let wt = required_matrix(fetch_matrix(src, w, l, &[rows, d], lin)?, w, l)?;
                let bt = fetch(src, b, l, &[rows], None)?;
                let split = |x: &Tensor, start: usize, len: usize| x.narrow(0, start, len)?.contiguous();
                let bsplit = |start: usize, len: usize| -> Result<Option<Tensor>> {
                    Ok(bt.as_ref().map(|b| split(b, start, len)).transpose()?)
                };
                (
                    narrow_matrix(&wt, 0, q_rows)?,
                    bsplit(0, q_rows)?,
                    narrow_matrix(&wt, q_rows, kv_rows)?,
                    bsplit(q_rows, kv_rows)?,
                    narrow_matrix(&wt, q_rows + kv_rows, kv_rows)?,
                    bsplit(q_rows + kv_rows, kv_rows)?,
                )
            }
        };
        let w_o = required_matrix(fetch_matrix(src, names.o, l, &[d, q_rows], lin)?, names.o, l)?;
        let b_o = fetch(src, names.bo, l, &[d], None)?;
        let ln2 = norm(src, names.ln2_w, names.ln2_b, l)?;
        let m = cfg.d_mlp;
        let moe = match cfg.variants.moe {
            Some(moe) => {
                let router = required(fetch(src, names.moe_router, l, &[moe.n_experts, d], lin)?, names.moe_router, l)?;
                let n = moe.n_experts;
                let stacked = if names.experts_stacked {
                    let mut get = |t: T, shape: &[usize]| required(fetch(src, t, l, shape, None)?, t, l);
                    Some((get(names.expert_gate, &[n, m, d])?, get(names.expert_up, &[n, m, d])?, get(names.expert_down, &[n, d, m])?))
                } else {
                    None
                };
                let experts = (0..moe.n_experts)
                    .map(|e| {
                        if let Some((g, u, dn)) = &stacked {
                            let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.get(e)?.contiguous()?) };
                            return Ok(MlpWeights::gated_unbiased(pick(g)?.into(), pick(u)?.into(), pick(dn)?.into()));
                        }
                        let mut get = |t: T, shape: &[usize]| -> Result<Matrix> {
                            let (t, template) = expert(t, e);
                            let name = name_at(&template, l);
                            fetch_name_matrix(src, &name, t != T::No, shape, lin)?.ok_or(Error::MissingTensor { name })
                        };
                        Ok(MlpWeights::gated_unbiased(get(names.expert_gate, &[m, d])?, get(names.expert_up, &[m, d])?, get(names.expert_down, &[d, m])?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let shared = match moe.shared_expert {
                    Some(w) => {
                        let mut get = |t: T, shape: &[usize]| -> Result<Matrix> { required_matrix(fetch_matrix(src, t, l, shape, lin)?, t, l) };
                        let expert = MlpWeights::gated_unbiased(get(names.shared_gate, &[w, d])?, get(names.shared_up, &[w, d])?, get(names.shared_down, &[d, w])?);
                        Some((expert, required(fetch(src, names.shared_expert_gate, l, &[1, d], lin)?, names.shared_expert_gate, l)?))
                    }
                    None => None,
                };
                Some(MoeWeights { router, experts, shared })
            }
            None => None,
        };
        // Attention-only models have no MLP weights: empty matrices, never multiplied.
        let dense = moe.is_none() && !cfg.variants.attn_only;
        // One matrix `[gate; up]` (Phi-3), or the two apart.
        let gate_up = if dense && names.mlp_gate_up != T::No {
            let both = required_matrix(fetch_matrix(src, names.mlp_gate_up, l, &[2 * m, d], lin)?, names.mlp_gate_up, l)?;
            Some((narrow_matrix(&both, 0, m)?, narrow_matrix(&both, m, m)?))
        } else {
            None
        };
        let w_in = match (&gate_up, dense) {
            (Some((_, up)), _) => up.clone(),
            (None, true) => required_matrix(fetch_matrix(src, names.mlp_in, l, &[m, d], lin)?, names.mlp_in, l)?,
            (None, false) => Tensor::zeros((0, d), DType::F32, &candle_core::Device::Cpu)?.into(),
        };
        let b_in = if dense { fetch(src, names.mlp_b_in, l, &[m], None)? } else { None };
        let b_gate = if cfg.mlp.gated && dense { fetch(src, names.mlp_b_gate, l, &[m], None)? } else { None };
        let w_gate = match (&gate_up, cfg.mlp.gated && dense) {
            (Some((gate, _)), _) => Some(gate.clone()),
            (None, true) => Some(required_matrix(fetch_matrix(src, names.mlp_gate, l, &[m, d], lin)?, names.mlp_gate, l)?),
            (None, false) => None,
        };
        let w_out = if dense {
            required_matrix(fetch_matrix(src, names.mlp_out, l, &[d, m], lin)?, names.mlp_out, l)?
        } else {
            Tensor::zeros((d, 0), DType::F32, &candle_core::Device::Cpu)?.into()
        };
        let b_out = if dense { fetch(src, names.mlp_b_out, l, &[d], None)? } else { None };
        let extra = LayerExtras {
            ln1_post: opt_norm(src, names.ln1_post, l, d)?,
            ln2_post: opt_norm(src, names.ln2_post, l, d)?,
            q_norm: opt_norm(src, names.q_norm, l, if cfg.variants.qk_norm_full { q_rows } else { cfg.d_head })?,
            k_norm: opt_norm(src, names.k_norm, l, if cfg.variants.qk_norm_full { kv_rows } else { cfg.d_head })?,
            moe,
        };
        layers.push(LayerWeights {
            ln1,
            attn: AttnWeights {
                w_q,
                b_q,
                w_k,
                b_k,
                w_v,
                b_v,
                w_o,
                b_o,
            },
            ln2,
            mlp: MlpWeights {
                w_in,
                b_in,
                w_gate,
                b_gate,
                w_out,
                b_out,
            },
            extra,
        });
    }
    let ln_final = if cfg.variants.no_final_norm {
        Norm { w: Tensor::ones(d, DType::F32, &candle_core::Device::Cpu)?, b: None }
    } else {
        norm(src, names.ln_final_w, names.ln_final_b, 0)?
    };
    let unembed = match (&narrow_embed, narrow) {
        (Some(raw), Some(e)) => {
            let stored = fetch(src, names.unembed, 0, &[cfg.d_vocab, e], None)?;
            let p_out = required(fetch(src, names.project_out, 0, &[e, d], None)?, names.project_out, 0)?;
            Matrix::Dense(stored.as_ref().unwrap_or(raw).matmul(&p_out)?)
        }
        _ => match fetch_matrix(src, names.unembed, 0, &[cfg.d_vocab, d], None)? {
            Some(u) => u,
            None if cfg.tied_embeddings => embed.clone(),
            None => required_matrix(None, names.unembed, 0)?,
        },
    };
    let unembed_bias = fetch(src, names.unembed_b, 0, &[cfg.d_vocab], None)?;
    Ok(Weights {
        embed,
        pos_embed,
        layers,
        ln_final,
        unembed,
        unembed_bias,
        rope_freqs: None,
    })
}

fn unpermute_bias(b: &Tensor, n_heads: usize) -> Result<Tensor> {
    let rows = b.dims1()?;
    unpermute_rows(&b.reshape((rows, 1))?, n_heads)?
        .reshape(rows)
        .map_err(Into::into)
}
