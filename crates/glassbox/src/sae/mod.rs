//! Sparse autoencoders and transcoders, as SAELens saves them and as Gemma Scope ships them.
//!
//! Formats read:
//! - SAELens 6.x: `cfg.json` (`architecture`, `d_in`, `d_sae`, `apply_b_dec_to_input`,
//!   `normalize_activations`, `reshape_activations`, `k`, `rescale_acts_by_decoder_norm`,
//!   `d_out`, and `metadata` with `hook_name`, `hook_name_out`, `model_name`, `neuronpedia_id`)
//!   beside `sae_weights.safetensors` (`W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc`,
//!   `b_dec`, and `threshold` for JumpReLU, `b_gate`/`r_mag`/`b_mag` for gated, `W_skip` for
//!   skip transcoders).
//! - SAELens before 6.0: the flat `cfg.json` (`hook_name` or `hook_point`,
//!   `activation_fn_str` `relu`|`topk` with `activation_fn_kwargs.k`, boolean or named
//!   `normalize_activations`, `neuronpedia_id` at the top level), converted as SAELens'
//!   `handle_pre_6_0_config` does.
//! - Gemma Scope: `params.npz` (uncompressed, as `np.savez` writes it) or `params.safetensors`
//!   with `W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold` (lowercase `w_` accepted): JumpReLU
//!   with `apply_b_dec_to_input` false. The files name no hook point, so the caller gives it.
//!
//! Architectures: ReLU (`standard`), TopK (exactly `k` pre-activations chosen, then ReLU, as
//! SAELens does; optionally scaled by the decoder norms), JumpReLU (`relu(h)·[h > θ]`, which is
//! also how SAELens saves a BatchTopK SAE: its threshold), gated, and transcoders (ReLU,
//! JumpReLU, with or without a skip connection). `normalize_activations`: `none`,
//! `constant_norm_rescale`, `layer_norm` as SAELens defines them; `expected_average_only_in`
//! keeps its scaling factor outside the files (SAELens' `load_from_disk` applies none either),
//! so it reads as the identity and `Sae::unapplied_scaling` says so.

pub mod corpus;
pub mod eval;
pub mod set;
pub mod train;
pub mod train_set;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{HookPoint, Model};

/// The most bytes of an SAE's weight file.
pub const MAX_SAE_BYTES: u64 = 8 << 30;

/// How feature activations are computed from the pre-activations `h`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Architecture {
    /// `relu(h)`.
    Standard,
    /// The `k` largest pre-activations kept (then ReLU), the rest zero.
    TopK {
        /// Features kept per position.
        k: usize,
        /// Pre-activations multiplied by each feature's decoder norm before the choice (and
        /// the activations divided by it before decoding).
        rescale_by_decoder_norm: bool,
    },
    /// `relu(h) · [h > threshold]`.
    JumpRelu,
    /// Gated: `[x·W_enc + b_gate > 0] · relu(x·(W_enc ⊙ exp(r_mag)) + b_mag)`.
    Gated,
}

/// Normalisation of the input inside the SAE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// None.
    None,
    /// `x · √d_in / ‖x‖` in, the inverse out.
    ConstantNormRescale,
    /// `(x − mean) / (std + 1e-5)` in (std with N − 1), `y · std + mean` out.
    LayerNorm,
}

/// What an SAE reads and how it computes its features.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaeConfig {
    /// The activation function.
    pub architecture: Architecture,
    /// Input width (for `attn.hook_z`: heads × d_head).
    pub d_in: usize,
    /// Number of features.
    pub d_sae: usize,
    /// Output width: `d_in` for an SAE, the target's width for a transcoder.
    pub d_out: usize,
    /// Where it reads (and, for an SAE, what it reconstructs).
    pub hook: HookPoint,
    /// A transcoder's target (`hook_mlp_out`); `None` for an SAE.
    pub hook_out: Option<HookPoint>,
    /// `b_dec` subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// Normalisation inside the SAE.
    pub normalize: Normalize,
    /// The input is `attn.hook_z`'s `[.., heads, d_head]`, flattened.
    pub reshape_hook_z: bool,
    /// Neuronpedia's id of this SAE (`gpt2-small/0-res-jb`), for feature links.
    pub neuronpedia_id: Option<String>,
    /// The model it was trained on, as its config names it.
    pub model_name: Option<String>,
    /// Where it came from: `sae-lens 6`, `sae-lens < 6` or `gemma-scope`.
    pub format: String,
    /// `expected_average_only_in`: a scaling factor SAELens keeps outside the files (not
    /// applied here, as SAELens' `load_from_disk` does not apply it either).
    pub unapplied_scaling: bool,
}

/// A sparse autoencoder (or transcoder) with its weights, in f32.
#[derive(Debug, Clone)]
pub struct Sae {
    /// What it reads and how.
    pub cfg: SaeConfig,
    /// `[d_in, d_sae]`.
    pub w_enc: Tensor,
    /// `[d_sae, d_out]`.
    pub w_dec: Tensor,
    /// `[d_sae]` (gated: `b_gate`).
    pub b_enc: Tensor,
    /// `[d_out]`.
    pub b_dec: Tensor,
    /// JumpReLU: `[d_sae]`.
    pub threshold: Option<Tensor>,
    /// Gated: `r_mag` and `b_mag`, each `[d_sae]`.
    pub gated: Option<(Tensor, Tensor)>,
    /// Skip transcoders: `W_skip [d_out, d_in]`.
    pub w_skip: Option<Tensor>,
    /// TopK with rescaling: each feature's decoder norm, `[d_sae]`.
    decoder_norms: Option<Tensor>,
    /// The folder it was loaded from (`None` when made in memory).
    pub source: Option<std::path::PathBuf>,
}

/// Features of some activations: `acts [n, d_sae]`, and how decoding undoes the input's
/// normalisation, so that `x̂ = (acts · W_dec + b_dec) · out_scale + out_shift` row by row.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Feature activations, `[n, d_sae]`.
    pub acts: Tensor,
    /// Per-row factor of the decoded output, `[n, 1]` (ones without normalisation; for TopK
    /// with rescaling the decoder-norm division is folded into `acts_to_write`).
    pub out_scale: Tensor,
    /// Per-row shift of the decoded output, `[n, 1]`.
    pub out_shift: Tensor,
}

fn bad(dir: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupt { path: dir.to_path_buf(), detail: detail.into() }
}

/// A config value read through SAELens' two layouts: the top level, then `metadata`.
fn meta<'a>(cfg: &'a Value, key: &str) -> Option<&'a Value> {
    cfg.get(key).filter(|v| !v.is_null()).or_else(|| cfg.get("metadata").and_then(|m| m.get(key)).filter(|v| !v.is_null()))
}

fn usize_of(cfg: &Value, key: &str, dir: &Path) -> Result<usize> {
    meta(cfg, key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .filter(|v| (1..=1 << 24).contains(v))
        .ok_or_else(|| bad(dir, format!("cfg.json: `{key}` must be a whole number from 1 to 2^24")))
}

fn str_of<'a>(cfg: &'a Value, key: &str) -> Option<&'a str> {
    meta(cfg, key).and_then(Value::as_str)
}

fn hook_of(cfg: &Value, keys: &[&str], dir: &Path) -> Result<Option<HookPoint>> {
    for k in keys {
        if let Some(s) = str_of(cfg, k) {
            return s.parse::<HookPoint>().map(Some).map_err(|e| bad(dir, format!("cfg.json: `{k}` {s:?}: {e}")));
        }
    }
    Ok(None)
}

impl Sae {
    /// Loads an SAE from a folder: SAELens' `cfg.json` + `sae_weights.safetensors`, or Gemma
    /// Scope's `params.npz` / `params.safetensors` (which need `hook`, as the files name none).
    /// `hook` overrides the config's hook point.
    pub fn load(dir: &Path, hook: Option<HookPoint>) -> Result<Sae> {
        let meta_dir = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta_dir.is_dir() {
            return Err(Error::NotAModel { path: dir.to_path_buf(), reason: "an SAE is a folder (SAELens' cfg.json and sae_weights.safetensors, or Gemma Scope's params.npz)".into() });
        }
        if dir.join("cfg.json").exists() {
            return Self::load_sae_lens(dir, hook).map(|s| Sae { source: Some(dir.to_path_buf()), ..s });
        }
        for name in ["params.safetensors", "params.npz"] {
            if dir.join(name).exists() {
                let hook = hook.ok_or_else(|| Error::Invalid(format!(
                    "{} holds Gemma Scope parameters, which name no hook point; give it (e.g. --hook blocks.12.hook_resid_post)",
                    crate::error::printable(&dir.display())
                )))?;
                return Self::load_gemma_scope(&dir.join(name), hook).map(|s| Sae { source: Some(dir.to_path_buf()), ..s });
            }
        }
        Err(Error::NotAModel {
            path: dir.to_path_buf(),
            reason: "no cfg.json (SAELens) and no params.npz or params.safetensors (Gemma Scope) in the folder".into(),
        })
    }

    fn load_sae_lens(dir: &Path, hook_override: Option<HookPoint>) -> Result<Sae> {
        let cfg_path = dir.join("cfg.json");
        let text = crate::model::load::read_json_text(&cfg_path, 16 << 20)?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(&cfg_path, format!("not JSON: {e}")))?;
        if !cfg.is_object() {
            return Err(bad(&cfg_path, "cfg.json must be a JSON object"));
        }
        let version = str_of(&cfg, "sae_lens_version").unwrap_or("");
        let new_layout = cfg.get("metadata").is_some_and(Value::is_object) && version.split('.').next().and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 6);
        let d_in = usize_of(&cfg, "d_in", &cfg_path)?;
        let d_sae = usize_of(&cfg, "d_sae", &cfg_path)?;
        let arch_name = str_of(&cfg, "architecture").unwrap_or("standard");
        let activation = str_of(&cfg, "activation_fn_str").or_else(|| str_of(&cfg, "activation_fn")).unwrap_or("relu");
        let k_old = meta(&cfg, "activation_fn_kwargs").and_then(|k| k.get("k")).and_then(Value::as_u64);
        let (architecture, transcoder, skip) = match arch_name {
            "standard" if !new_layout && activation == "topk" => {
                let k = k_old.ok_or_else(|| bad(&cfg_path, "a topk activation needs activation_fn_kwargs.k"))?;
                (Architecture::TopK { k: k as usize, rescale_by_decoder_norm: false }, false, false)
            }
            "standard" => (Architecture::Standard, false, false),
            "topk" => {
                let k = meta(&cfg, "k").and_then(Value::as_u64).or(k_old).ok_or_else(|| bad(&cfg_path, "a topk SAE needs `k`"))?;
                let rescale = meta(&cfg, "rescale_acts_by_decoder_norm").and_then(Value::as_bool).unwrap_or(false);
                (Architecture::TopK { k: k as usize, rescale_by_decoder_norm: rescale }, false, false)
            }
            "jumprelu" => (Architecture::JumpRelu, false, false),
            "gated" => (Architecture::Gated, false, false),
            "transcoder" => (Architecture::Standard, true, false),
            "skip_transcoder" => (Architecture::Standard, true, true),
            "jumprelu_transcoder" => (Architecture::JumpRelu, true, false),
            "jumprelu_skip_transcoder" => (Architecture::JumpRelu, true, true),
            "batchtopk" | "matryoshka_batchtopk" => {
                return Err(bad(&cfg_path, format!("`{arch_name}` is a training checkpoint; save it with SAELens' save_inference_model (which writes it as jumprelu with its threshold)")))
            }
            other => return Err(bad(&cfg_path, format!("architecture `{other}` is not supported (standard, topk, jumprelu, gated, transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder)"))),
        };
        if let Architecture::TopK { k, .. } = architecture {
            if k == 0 || k > d_sae {
                return Err(bad(&cfg_path, format!("k = {k}: it must be from 1 to d_sae ({d_sae})")));
            }
        }
        let (normalize, unapplied_scaling) = match meta(&cfg, "normalize_activations") {
            None | Some(Value::Bool(false)) => (Normalize::None, false),
            Some(Value::Bool(true)) => (Normalize::None, true),
            Some(Value::String(s)) => match s.as_str() {
                "none" => (Normalize::None, false),
                "expected_average_only_in" => (Normalize::None, true),
                "constant_norm_rescale" => (Normalize::ConstantNormRescale, false),
                "layer_norm" => (Normalize::LayerNorm, false),
                other => return Err(bad(&cfg_path, format!("normalize_activations `{other}` is not supported (none, expected_average_only_in, constant_norm_rescale, layer_norm)"))),
            },
            Some(v) => return Err(bad(&cfg_path, format!("normalize_activations {v}: expected a name"))),
        };
        let hook = match hook_override {
            Some(h) => h,
            None => hook_of(&cfg, &["hook_name", "hook_point"], &cfg_path)?
                .ok_or_else(|| bad(&cfg_path, "cfg.json names no hook point (hook_name); give one (--hook)"))?,
        };
        let hook_out = if transcoder { hook_of(&cfg, &["hook_name_out"], &cfg_path)? } else { None };
        let reshape = match str_of(&cfg, "reshape_activations") {
            Some("hook_z") => true,
            Some("none") => false,
            Some(o) => return Err(bad(&cfg_path, format!("reshape_activations `{o}` is not supported (none, hook_z)"))),
            None => !new_layout && matches!(hook, HookPoint::Z(_)),
        };
        let d_out = if transcoder { usize_of(&cfg, "d_out", &cfg_path)? } else { d_in };
        let apply_b_dec = if transcoder { false } else { meta(&cfg, "apply_b_dec_to_input").and_then(Value::as_bool).unwrap_or(true) };
        let config = SaeConfig {
            architecture,
            d_in,
            d_sae,
            d_out,
            hook,
            hook_out,
            apply_b_dec_to_input: apply_b_dec,
            normalize: if transcoder { Normalize::None } else { normalize },
            reshape_hook_z: reshape && !transcoder,
            neuronpedia_id: str_of(&cfg, "neuronpedia_id").map(str::to_string),
            model_name: str_of(&cfg, "model_name").map(str::to_string),
            format: if new_layout { "sae-lens 6".into() } else { "sae-lens < 6".into() },
            unapplied_scaling,
        };
        let weights = dir.join("sae_weights.safetensors");
        let tensors = read_tensors(&weights)?;
        Self::from_tensors(config, tensors, &weights, skip)
    }

    fn load_gemma_scope(path: &Path, hook: HookPoint) -> Result<Sae> {
        let tensors: HashMap<String, Tensor> = if path.extension().is_some_and(|e| e == "npz") { read_npz(path)? } else { read_tensors(path)? }
            .into_iter()
            .map(|(k, v)| (if let Some(rest) = k.strip_prefix("w_") { format!("W_{rest}") } else { k }, v))
            .collect();
        let w_enc = tensors.get("W_enc").ok_or_else(|| bad(path, "no W_enc"))?;
        let (d_in, d_sae) = w_enc.dims2().map_err(|_| bad(path, "W_enc must be a matrix [d_in, d_sae]"))?;
        let skip = tensors.contains_key("affine_skip_connection");
        let d_out = tensors.get("W_dec").and_then(|w| w.dims2().ok()).map_or(d_in, |d| d.1);
        let config = SaeConfig {
            architecture: Architecture::JumpRelu,
            d_in,
            d_sae,
            d_out,
            hook,
            hook_out: None,
            apply_b_dec_to_input: false,
            normalize: Normalize::None,
            reshape_hook_z: matches!(hook, HookPoint::Z(_)),
            neuronpedia_id: None,
            model_name: None,
            format: "gemma-scope".into(),
            unapplied_scaling: false,
        };
        let mut tensors = tensors;
        if let Some(s) = tensors.remove("affine_skip_connection") {
            tensors.insert("W_skip".into(), s.t()?.contiguous()?);
        }
        Self::from_tensors(config, tensors, path, skip)
    }

    /// Checks every tensor's shape against the config and that all are finite.
    fn from_tensors(cfg: SaeConfig, mut t: HashMap<String, Tensor>, path: &Path, skip: bool) -> Result<Sae> {
        let (d_in, d_sae, d_out) = (cfg.d_in, cfg.d_sae, cfg.d_out);
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let x = t.remove(name).ok_or_else(|| bad(path, format!("no tensor `{name}`")))?;
            if x.dims() != shape {
                return Err(bad(path, format!("`{name}` has shape {:?}; the config says {shape:?}", x.dims())));
            }
            let x = x.to_dtype(DType::F32)?.contiguous()?;
            crate::model::load::check_finite(&x, name)?;
            Ok(x)
        };
        let w_enc = take("W_enc", &[d_in, d_sae])?;
        let w_dec = take("W_dec", &[d_sae, d_out])?;
        let b_dec = take("b_dec", &[d_out])?;
        let (b_enc, gated) = if cfg.architecture == Architecture::Gated {
            (take("b_gate", &[d_sae])?, Some((take("r_mag", &[d_sae])?, take("b_mag", &[d_sae])?)))
        } else {
            (take("b_enc", &[d_sae])?, None)
        };
        let threshold = if cfg.architecture == Architecture::JumpRelu { Some(take("threshold", &[d_sae])?) } else { None };
        let w_skip = if skip { Some(take("W_skip", &[d_out, d_in])?) } else { None };
        let mut rest: Vec<&String> = t.keys().collect();
        rest.sort();
        if !rest.is_empty() {
            return Err(bad(path, format!("tensors no part of a {:?} SAE reads: {}", cfg.architecture, rest.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))));
        }
        let decoder_norms = match cfg.architecture {
            Architecture::TopK { rescale_by_decoder_norm: true, .. } => Some(w_dec.sqr()?.sum(1)?.sqrt()?),
            _ => None,
        };
        Ok(Sae { cfg, w_enc, w_dec, b_enc, b_dec, threshold, gated, w_skip, decoder_norms, source: None })
    }

    /// Error unless the SAE fits `model`: its hook points exist and have its widths.
    pub fn check(&self, model: &Model) -> Result<()> {
        let c = &self.cfg;
        c.hook.check(model.config())?;
        let width = hook_width(model, c.hook)?;
        if width != c.d_in {
            return Err(Error::Invalid(format!(
                "this SAE reads {} values at {}, where this model has {width}; it was made for another model{}",
                c.d_in,
                c.hook,
                c.model_name.as_ref().map_or(String::new(), |m| format!(" ({m})"))
            )));
        }
        if let Some(h) = c.hook_out {
            h.check(model.config())?;
            let w = hook_width(model, h)?;
            if w != c.d_out {
                return Err(Error::Invalid(format!("this transcoder writes {} values at {h}, where this model has {w}", c.d_out)));
            }
        }
        Ok(())
    }

    /// The activations at the hook `[.., d_in]` (or `[.., heads, d_head]` for `hook_z`) as
    /// rows `[n, d_in]`.
    pub fn rows(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let last = if self.cfg.reshape_hook_z && x.rank() >= 2 { x.dims()[x.rank() - 2] * x.dims()[x.rank() - 1] } else { x.dims().last().copied().unwrap_or(0) };
        if last != self.cfg.d_in {
            return Err(Error::Invalid(format!("the SAE reads {} values per position; got shape {:?}", self.cfg.d_in, x.dims())));
        }
        Ok(x.reshape(((), self.cfg.d_in))?)
    }

    /// Feature activations of rows `x [n, d_in]`, with what decoding needs.
    pub fn encode(&self, x: &Tensor) -> Result<Encoded> {
        let n = x.dim(0)?;
        let ones = Tensor::ones((n, 1), DType::F32, &Device::Cpu)?;
        let zeros = Tensor::zeros((n, 1), DType::F32, &Device::Cpu)?;
        let (xn, out_scale, out_shift) = match self.cfg.normalize {
            Normalize::None => (x.clone(), ones, zeros),
            Normalize::ConstantNormRescale => {
                let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                let c = ((norm.recip()? * (self.cfg.d_in as f64).sqrt())?).contiguous()?;
                (x.broadcast_mul(&c)?, c.recip()?, zeros)
            }
            Normalize::LayerNorm => {
                let mu = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mu)?;
                let var = (xc.sqr()?.sum_keepdim(D::Minus1)? / (self.cfg.d_in.saturating_sub(1).max(1)) as f64)?;
                let std = var.sqrt()?;
                (xc.broadcast_div(&(&std + 1e-5)?)?, std, mu)
            }
        };
        let xin = if self.cfg.apply_b_dec_to_input { xn.broadcast_sub(&self.b_dec)? } else { xn };
        let h = xin.matmul(&self.w_enc)?.broadcast_add(&self.b_enc)?;
        let acts = match self.cfg.architecture {
            Architecture::Standard => h.relu()?,
            Architecture::JumpRelu => {
                let th = self.threshold.as_ref().ok_or_else(|| Error::Invalid("a JumpReLU SAE without a threshold".into()))?;
                let on = h.broadcast_gt(th)?.to_dtype(DType::F32)?;
                (h.relu()? * on)?
            }
            Architecture::Gated => {
                let (r_mag, b_mag) = self.gated.as_ref().ok_or_else(|| Error::Invalid("a gated SAE without r_mag and b_mag".into()))?;
                let gate = h.gt(0.0)?.to_dtype(DType::F32)?;
                let w_mag = self.w_enc.broadcast_mul(&r_mag.exp()?.unsqueeze(0)?)?;
                let mag = xin.matmul(&w_mag)?.broadcast_add(b_mag)?.relu()?;
                (gate * mag)?
            }
            Architecture::TopK { k, .. } => {
                let h = match &self.decoder_norms {
                    Some(n) => h.broadcast_mul(n)?,
                    None => h,
                };
                top_k_relu(&h, k)?
            }
        };
        Ok(Encoded { acts, out_scale, out_shift })
    }

    /// What each unit of a feature's activation writes, before the per-row `out_scale`:
    /// `W_dec`, or for TopK with rescaling `W_dec / ‖W_dec[f]‖`, `[d_sae, d_out]`.
    pub fn write_directions(&self) -> Result<Tensor> {
        Ok(match &self.decoder_norms {
            Some(n) => self.w_dec.broadcast_div(&n.unsqueeze(1)?)?,
            None => self.w_dec.clone(),
        })
    }

    /// The reconstruction `[n, d_out]` of encoded rows (a transcoder's output, without its
    /// skip connection).
    pub fn decode(&self, e: &Encoded) -> Result<Tensor> {
        let y = e.acts.matmul(&self.write_directions()?)?.broadcast_add(&self.b_dec)?;
        Ok(y.broadcast_mul(&e.out_scale)?.broadcast_add(&e.out_shift)?)
    }

    /// A transcoder's full output: `decode` plus the skip connection `x · W_skipᵀ`.
    pub fn output(&self, x: &Tensor, e: &Encoded) -> Result<Tensor> {
        let y = self.decode(e)?;
        Ok(match &self.w_skip {
            Some(w) => (y + x.matmul(&w.t()?)?)?,
            None => y,
        })
    }

    /// Neuronpedia's page of feature `f`, when the config names the SAE's Neuronpedia id.
    pub fn neuronpedia_url(&self, f: usize) -> Option<String> {
        self.cfg.neuronpedia_id.as_ref().map(|id| format!("https://www.neuronpedia.org/{id}/{f}"))
    }
}

/// The width per position of a hook point in `model` (heads × d_head for `hook_z`).
pub fn hook_width(model: &Model, hook: HookPoint) -> Result<usize> {
    let c = &model.config();
    Ok(match hook {
        HookPoint::Embed | HookPoint::PosEmbed | HookPoint::ResidPre(_) | HookPoint::ResidMid(_) | HookPoint::ResidPost(_) | HookPoint::AttnOut(_) | HookPoint::MlpOut(_) | HookPoint::MlpIn(_) | HookPoint::Ln1Normalized(_) | HookPoint::Ln2Normalized(_) | HookPoint::LnFinalNormalized => c.d_model,
        HookPoint::Z(_) | HookPoint::Q(_) | HookPoint::RotQ(_) => c.n_heads * c.d_head,
        HookPoint::MlpPre(_) | HookPoint::MlpPost(_) | HookPoint::MlpPreLinear(_) => c.d_mlp,
        other => return Err(Error::Invalid(format!("{other}: SAEs on this hook point are not supported (residual stream, attention and MLP outputs, hook_z, MLP activations)"))),
    })
}

/// Per row, `value(h, kept)` at the `k` largest values (`kept` true) and elsewhere (false);
/// ties go to the lower index.
pub(crate) fn top_k_map(rows: &[Vec<f32>], k: usize, value: impl Fn(f32, bool) -> f32) -> Result<Tensor> {
    let d = rows.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(rows.len() * d);
    let mut idx: Vec<usize> = Vec::with_capacity(d);
    let mut kept = vec![false; d];
    for row in rows {
        idx.clear();
        idx.extend(0..d);
        let k = k.min(d);
        if k > 0 && k < d {
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        }
        kept.iter_mut().for_each(|x| *x = false);
        for &i in &idx[..k] {
            kept[i] = true;
        }
        out.extend(row.iter().zip(&kept).map(|(&v, &on)| value(v, on)));
    }
    Ok(Tensor::from_vec(out, (rows.len(), d), &Device::Cpu)?)
}

/// Per row, the `k` largest values kept (then ReLU), the rest zero.
fn top_k_relu(h: &Tensor, k: usize) -> Result<Tensor> {
    top_k_map(&h.to_vec2::<f32>()?, k, |v, on| if on { v.max(0.0) } else { 0.0 })
}

/// Every tensor of a safetensors file of at most `MAX_SAE_BYTES`.
fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = crate::model::load::read_limited(path, MAX_SAE_BYTES)?;
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    let tensors = std::panic::catch_unwind(|| candle_core::safetensors::load_buffer(&bytes, &Device::Cpu))
        .map_err(|_| corrupt("not a readable safetensors file".into()))?
        .map_err(|e| corrupt(format!("not a readable safetensors file ({e})")))?;
    all_finite(tensors)
}

/// Largest weight magnitude an SAE may hold: trained SAEs stay within a few hundred, and
/// below this bound encoding and decoding cannot overflow f32 for any sane input.
const MAX_SAE_WEIGHT: f64 = 1e15;

/// The tensors, when every value of each is finite (a NaN weight makes every figure NaN) and
/// below `MAX_SAE_WEIGHT` in magnitude (a damaged file's 3e38 overflows the first product).
fn all_finite(tensors: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    for (name, t) in &tensors {
        crate::model::load::check_finite(t, name)?;
        if t.elem_count() == 0 {
            continue;
        }
        // The largest magnitude from the largest and the smallest value: two reductions over
        // the weights as they are, with no f64 or absolute-value copy of an SAE's matrices.
        let flat = t.to_dtype(candle_core::DType::F32)?.flatten_all()?;
        let (hi, lo) = (flat.max(0)?.to_scalar::<f32>()?, flat.min(0)?.to_scalar::<f32>()?);
        let big = f64::from(hi.abs().max(lo.abs()));
        if big > MAX_SAE_WEIGHT {
            return Err(Error::Invalid(format!("tensor `{}` holds a value of magnitude {big:.3e}; SAE weights beyond {MAX_SAE_WEIGHT:e} overflow in use, so the file is damaged", crate::error::printable(name))));
        }
    }
    Ok(tensors)
}

/// The arrays of an uncompressed `.npz` (a zip of `.npy` files, as `np.savez` writes it):
/// little-endian f32 or f64, C order. Sizes are checked against the file before reading.
fn read_npz(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = crate::model::load::read_limited(path, MAX_SAE_BYTES)?;
    let corrupt = |detail: String| Error::Corrupt { path: path.to_path_buf(), detail };
    let u16_at = |b: &[u8], i: usize| -> Option<usize> { Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?) as usize) };
    let u32_at = |b: &[u8], i: usize| -> Option<u64> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as u64) };
    let mut out = HashMap::new();
    let mut pos = 0usize;
    while bytes.get(pos..pos + 4) == Some(b"PK\x03\x04") {
        let short = || corrupt("a zip entry runs past the end of the file".into());
        let flags = u16_at(&bytes, pos + 6).ok_or_else(short)?;
        let method = u16_at(&bytes, pos + 8).ok_or_else(short)?;
        let mut size = u32_at(&bytes, pos + 18).ok_or_else(short)?;
        let name_len = u16_at(&bytes, pos + 26).ok_or_else(short)?;
        let extra_len = u16_at(&bytes, pos + 28).ok_or_else(short)?;
        let name_start = pos + 30;
        // Shown in messages: a damaged length can make it any bytes of the file.
        let name = crate::error::excerpt(&String::from_utf8_lossy(bytes.get(name_start..name_start + name_len).ok_or_else(short)?), 80);
        let extra = bytes.get(name_start + name_len..name_start + name_len + extra_len).ok_or_else(short)?;
        if method != 0 {
            return Err(corrupt(format!("`{name}` is compressed (np.savez_compressed); save the parameters with np.savez or as safetensors")));
        }
        if flags & 0x8 != 0 {
            return Err(corrupt(format!("`{name}`: zip entries with trailing data descriptors are not read")));
        }
        if size == 0xFFFF_FFFF {
            // Zip64: the extra field 0x0001 holds the 8-byte sizes.
            let mut i = 0;
            while i + 4 <= extra.len() {
                let (id, len) = (u16_at(extra, i).unwrap_or(0), u16_at(extra, i + 2).unwrap_or(0));
                if id == 1 && len >= 16 {
                    size = u64::from_le_bytes(extra.get(i + 12..i + 20).ok_or_else(short)?.try_into().map_err(|_| short())?);
                }
                i += 4 + len;
            }
        }
        let data_start = name_start + name_len + extra_len;
        let size = usize::try_from(size).map_err(|_| short())?;
        let data = bytes.get(data_start..data_start.checked_add(size).ok_or_else(short)?).ok_or_else(short)?;
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.insert(key.clone(), read_npy(data).map_err(|d| corrupt(format!("`{name}`: {d}")))?);
        pos = data_start + size;
    }
    if out.is_empty() {
        return Err(corrupt("not an .npz file (no zip entries)".into()));
    }
    all_finite(out)
}

/// One `.npy` array: `<f4` or `<f8`, C order, any rank.
fn read_npy(b: &[u8]) -> std::result::Result<Tensor, String> {
    if b.get(..6) != Some(b"\x93NUMPY") {
        return Err("not a .npy array".into());
    }
    let major = *b.get(6).ok_or("truncated")?;
    let (hlen, start) = if major == 1 { (u16::from_le_bytes(b.get(8..10).ok_or("truncated")?.try_into().map_err(|_| "truncated")?) as usize, 10) } else { (u32::from_le_bytes(b.get(8..12).ok_or("truncated")?.try_into().map_err(|_| "truncated")?) as usize, 12) };
    let header = std::str::from_utf8(b.get(start..start + hlen).ok_or("truncated header")?).map_err(|_| "header not text")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))?;
        Some(header[i + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr").and_then(|s| s.strip_prefix('\'')).and_then(|s| s.split('\'').next()).ok_or("no descr")?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err("Fortran-order arrays are not read".into());
    }
    let shape_text = field("shape").and_then(|s| s.strip_prefix('(')).and_then(|s| s.split(')').next()).ok_or("no shape")?;
    let shape: Vec<usize> = shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse::<usize>().map_err(|_| format!("shape ({shape_text})"))).collect::<std::result::Result<_, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let data = &b[start + hlen..];
    let mut rd = data;
    let values: Vec<f32> = match descr {
        "<f4" => {
            let need = count.checked_mul(4).ok_or("too large")?;
            if data.len() < need {
                return Err(format!("{} bytes for {count} f32 values", data.len()));
            }
            let mut v = vec![0f32; count];
            for x in v.iter_mut() {
                let mut w = [0u8; 4];
                rd.read_exact(&mut w).map_err(|e| e.to_string())?;
                *x = f32::from_le_bytes(w);
            }
            v
        }
        "<f8" => {
            let need = count.checked_mul(8).ok_or("too large")?;
            if data.len() < need {
                return Err(format!("{} bytes for {count} f64 values", data.len()));
            }
            data[..need].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
        }
        other => return Err(format!("dtype {other} (only <f4 and <f8 are read)")),
    };
    Tensor::from_vec(values, shape, &Device::Cpu).map_err(|e| e.to_string())
}
