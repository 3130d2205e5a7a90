//! Loading models: Hugging Face folders (config.json + safetensors + tokenizer.json) and GGUF
//! files. Each format turns its metadata into a `ModelConfig` through a per-family table, and its
//! tensors into `Weights` through a tensor-name map (`names.rs`); `build_weights` is shared.

pub mod gguf;
pub mod hf;
pub mod names;

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::weights::{AttnWeights, LayerWeights, MlpWeights, Norm, Weights};
use crate::model::Model;
use names::{Linear, Qkv, TensorNames, T};

/// Loads a model from a Hugging Face model folder or a GGUF file.
pub fn load_path(path: &Path) -> Result<Model> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return hf::load_folder(path);
    }
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
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

/// Where `build_weights` reads tensors from: f32 tensors by name.
pub(crate) trait TensorSource {
    fn contains(&self, name: &str) -> bool;
    fn load(&mut self, name: &str) -> Result<Tensor>;
}

fn name_at(template: &str, layer: usize) -> String {
    template.replace("{l}", &layer.to_string())
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
    let (template, required) = match t {
        T::Req(n) => (n, true),
        T::Opt(n) => (n, false),
        T::No => return Ok(None),
    };
    let name = name_at(template, layer);
    if !src.contains(&name) {
        return if required {
            Err(Error::MissingTensor { name })
        } else {
            Ok(None)
        };
    }
    let mut x = src.load(&name)?.to_dtype(DType::F32)?;
    if linear == Some(Linear::InOut) {
        x = x.t()?.contiguous()?;
    }
    if x.dims() != shape {
        return Err(Error::TensorShape {
            name,
            expected: shape.to_vec(),
            got: x.dims().to_vec(),
        });
    }
    Ok(Some(x))
}

fn required(x: Option<Tensor>, t: T, layer: usize) -> Result<Tensor> {
    x.ok_or_else(|| Error::MissingTensor {
        name: match t {
            T::Req(n) | T::Opt(n) => name_at(n, layer),
            T::No => "(a tensor this family's name map does not give)".to_string(),
        },
    })
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
    let norm = |src: &mut dyn TensorSource, w: T, b: T, l: usize| -> Result<Norm> {
        Ok(Norm {
            w: required(fetch(src, w, l, &[d], None)?, w, l)?,
            b: fetch(src, b, l, &[d], None)?,
        })
    };

    let embed = required(fetch(src, names.embed, 0, &[cfg.d_vocab, d], None)?, names.embed, 0)?;
    let pos_embed = match cfg.positions {
        crate::model::config::Positions::Learned { offset } => {
            let t = names.pos_embed;
            let name = match t {
                T::Req(n) | T::Opt(n) => n,
                T::No => "(position embedding)",
            };
            let x = if src.contains(name) {
                src.load(name)?.to_dtype(DType::F32)?
            } else {
                return Err(Error::MissingTensor { name: name.into() });
            };
            let (rows, cols) = x.dims2()?;
            if cols != d || rows < cfg.n_ctx + offset {
                return Err(Error::TensorShape {
                    name: name.into(),
                    expected: vec![cfg.n_ctx + offset, d],
                    got: vec![rows, cols],
                });
            }
            Some(x)
        }
        _ => None,
    };

    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let ln1 = norm(src, names.ln1_w, names.ln1_b, l)?;
        let (w_q, b_q, w_k, b_k, w_v, b_v) = match names.qkv {
            Qkv::Separate { q, k, v, bq, bk, bv } => {
                let mut w_q = required(fetch(src, q, l, &[q_rows, d], lin)?, q, l)?;
                let mut w_k = required(fetch(src, k, l, &[kv_rows, d], lin)?, k, l)?;
                let w_v = required(fetch(src, v, l, &[kv_rows, d], lin)?, v, l)?;
                let mut b_q = fetch(src, bq, l, &[q_rows], None)?;
                let mut b_k = fetch(src, bk, l, &[kv_rows], None)?;
                if names.qk_rows_permuted {
                    w_q = unpermute_rows(&w_q, cfg.n_heads)?;
                    w_k = unpermute_rows(&w_k, cfg.n_kv_heads)?;
                    b_q = b_q.map(|b| unpermute_bias(&b, cfg.n_heads)).transpose()?;
                    b_k = b_k.map(|b| unpermute_bias(&b, cfg.n_kv_heads)).transpose()?;
                }
                let b_v = fetch(src, bv, l, &[kv_rows], None)?;
                (w_q, b_q, w_k, b_k, w_v, b_v)
            }
            Qkv::Fused { w, b } => {
                let rows = q_rows + 2 * kv_rows;
                let wt = required(fetch(src, w, l, &[rows, d], lin)?, w, l)?;
                let bt = fetch(src, b, l, &[rows], None)?;
                let split = |x: &Tensor, start: usize, len: usize| x.narrow(0, start, len)?.contiguous();
                let bsplit = |start: usize, len: usize| -> Result<Option<Tensor>> {
                    Ok(bt.as_ref().map(|b| split(b, start, len)).transpose()?)
                };
                (
                    split(&wt, 0, q_rows)?,
                    bsplit(0, q_rows)?,
                    split(&wt, q_rows, kv_rows)?,
                    bsplit(q_rows, kv_rows)?,
                    split(&wt, q_rows + kv_rows, kv_rows)?,
                    bsplit(q_rows + kv_rows, kv_rows)?,
                )
            }
        };
        let w_o = required(fetch(src, names.o, l, &[d, q_rows], lin)?, names.o, l)?;
        let b_o = fetch(src, names.bo, l, &[d], None)?;
        let ln2 = norm(src, names.ln2_w, names.ln2_b, l)?;
        let m = cfg.d_mlp;
        let w_in = required(fetch(src, names.mlp_in, l, &[m, d], lin)?, names.mlp_in, l)?;
        let b_in = fetch(src, names.mlp_b_in, l, &[m], None)?;
        let w_gate = if cfg.mlp.gated {
            Some(required(fetch(src, names.mlp_gate, l, &[m, d], lin)?, names.mlp_gate, l)?)
        } else {
            None
        };
        let w_out = required(fetch(src, names.mlp_out, l, &[d, m], lin)?, names.mlp_out, l)?;
        let b_out = fetch(src, names.mlp_b_out, l, &[d], None)?;
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
                b_gate: None,
                w_out,
                b_out,
            },
            extra: Default::default(),
        });
    }
    let ln_final = norm(src, names.ln_final_w, names.ln_final_b, 0)?;
    let unembed = fetch(src, names.unembed, 0, &[cfg.d_vocab, d], None)?;
    let unembed = match unembed {
        Some(u) => u,
        None if cfg.tied_embeddings => embed.clone(),
        None => required(None, names.unembed, 0)?,
    };
    let unembed_bias = fetch(src, names.unembed_b, 0, &[cfg.d_vocab], None)?;
    Ok(Weights {
        embed,
        pos_embed,
        layers,
        ln_final,
        unembed,
        unembed_bias,
    })
}

fn unpermute_bias(b: &Tensor, n_heads: usize) -> Result<Tensor> {
    let rows = b.dims1()?;
    unpermute_rows(&b.reshape((rows, 1))?, n_heads)?
        .reshape(rows)
        .map_err(Into::into)
}
