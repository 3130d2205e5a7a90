//! Transcoder sets: one transcoder per MLP (a per-layer transcoder set, PLT), the replacement
//! an attribution graph is built over.
//!
//! glassbox writes a set as a folder holding `config.yaml` in circuit-tracer's layout
//! (`model_kind: transcoder_set`, `feature_input_hook`, `feature_output_hook` relative to the
//! block, `transcoders:` one file per layer in order) and one safetensors file per layer with
//! `W_enc [d_sae, d_in]`, `b_enc`, `W_dec [d_sae, d_out]`, `b_dec`, `activation_function.threshold`
//! (JumpReLU), as circuit-tracer's `SingleLayerTranscoder.to_safetensors` writes them.

use std::path::Path;

use serde_json::Value;

use super::{Architecture, Normalize, Sae, SaeConfig};
use crate::error::{Error, Result};
use crate::model::HookPoint;

/// The config file of a transcoder-set folder.
pub const SET_CONFIG: &str = "config.yaml";

/// The most layers a set file may list.
const MAX_LAYERS: usize = 1024;

/// One transcoder per layer, in layer order.
#[derive(Debug, Clone)]
pub struct TranscoderSet {
    /// Layer `l`'s transcoder: reads its MLP's input, writes its MLP's output.
    pub transcoders: Vec<Sae>,
    /// The model it was trained on, as the config names it.
    pub model_name: Option<String>,
    /// Where it came from (`glassbox`, `circuit-tracer`, ...).
    pub format: String,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupt { path: path.to_path_buf(), detail: detail.into() }
}

/// A config's `key: value` pairs, in order.
type Keys = Vec<(String, String)>;

/// The simple YAML of a transcoder-set config: `key: value` lines and one list of strings
/// (`transcoders:` followed by `  - item` lines). Values may be quoted; `#` starts a comment.
fn parse_config(text: &str, path: &Path) -> Result<(Keys, Vec<String>)> {
    let unquote = |s: &str| -> String {
        let s = s.trim();
        let q = (s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\''));
        if q && s.len() >= 2 {
            s[1..s.len() - 1].to_string()
        } else {
            s.to_string()
        }
    };
    let (mut keys, mut list) = (Vec::new(), Vec::new());
    let mut in_list = false;
    for (i, raw) in text.lines().enumerate() {
        let line = match raw.find(" #") {
            Some(p) => &raw[..p],
            None if raw.trim_start().starts_with('#') => "",
            None => raw,
        };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(item) = line.trim_start().strip_prefix("- ") {
            if !in_list {
                return Err(bad(path, format!("line {}: a list item outside `transcoders:`", i + 1)));
            }
            if list.len() >= MAX_LAYERS {
                return Err(bad(path, format!("more than {MAX_LAYERS} transcoders")));
            }
            list.push(unquote(item));
            continue;
        }
        if line.starts_with(' ') {
            // Nested values (e.g. glassbox's training notes) are not read.
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad(path, format!("line {}: expected `key: value`", i + 1)))?;
        in_list = k.trim() == "transcoders" && v.trim().is_empty();
        if !in_list {
            keys.push((k.trim().to_string(), unquote(v)));
        }
    }
    Ok((keys, list))
}

/// A block hook name (`ln2.hook_normalized`, `hook_mlp_out`, or with `blocks.{l}.`) at layer `l`.
fn hook_at(name: &str, layer: usize, path: &Path) -> Result<HookPoint> {
    let rel = match name.strip_prefix("blocks.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, r)| r),
        None => name,
    };
    format!("blocks.{layer}.{rel}").parse::<HookPoint>().map_err(|e| bad(path, format!("hook `{name}`: {e}")))
}

impl TranscoderSet {
    /// The text of a `config.yaml` for a set of `files` (relative to the folder).
    pub fn config_text(model_name: &str, input_hook: &str, output_hook: &str, files: &[String], notes: &Value) -> String {
        let mut s = String::new();
        s.push_str("model_kind: transcoder_set\n");
        s.push_str(&format!("model_name: {}\n", serde_json::to_string(model_name).unwrap_or_default()));
        s.push_str(&format!("feature_input_hook: {input_hook}\n"));
        s.push_str(&format!("feature_output_hook: {output_hook}\n"));
        s.push_str("scan: null\n");
        s.push_str(&format!("glassbox: {}\n", serde_json::to_string(notes).unwrap_or_default()));
        s.push_str("transcoders:\n");
        for f in files {
            s.push_str(&format!("  - {f}\n"));
        }
        s
    }

    /// Loads a transcoder set folder (`config.yaml` and its files).
    pub fn load(dir: &Path) -> Result<TranscoderSet> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::NotAModel { path: dir.to_path_buf(), reason: format!("a transcoder set is a folder holding {SET_CONFIG} and one file per layer") });
        }
        let cfg_path = dir.join(SET_CONFIG);
        let text = crate::model::load::read_json_text(&cfg_path, 1 << 20)?;
        let (keys, files) = parse_config(&text, &cfg_path)?;
        let get = |k: &str| keys.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        if files.is_empty() {
            return Err(bad(&cfg_path, "no `transcoders:` list"));
        }
        let input = get("feature_input_hook").ok_or_else(|| bad(&cfg_path, "no `feature_input_hook`"))?;
        let output = get("feature_output_hook").ok_or_else(|| bad(&cfg_path, "no `feature_output_hook`"))?;
        let model_name = get("model_name").filter(|m| *m != "null").map(str::to_string);
        let mut transcoders = Vec::with_capacity(files.len());
        for (l, f) in files.iter().enumerate() {
            if f.contains("://") || Path::new(f).is_absolute() || f.split('/').any(|c| c == "..") {
                return Err(bad(&cfg_path, format!("transcoder file `{f}`: give a path inside the set's folder (this set names a remote or outside file)")));
            }
            let path = dir.join(f);
            let mut tensors = super::read_tensors(&path)?;
            // circuit-tracer's per-layer layout: W_enc [d_sae, d_in] (SAELens' is its transpose),
            // the JumpReLU threshold as `activation_function.threshold`.
            let w_enc = tensors.remove("W_enc").ok_or_else(|| bad(&path, "no W_enc"))?;
            let (d_sae, d_in) = w_enc.dims2().map_err(|_| bad(&path, "W_enc must be a matrix [d_sae, d_in]"))?;
            tensors.insert("W_enc".into(), w_enc.t()?.contiguous()?);
            if let Some(th) = tensors.remove("activation_function.threshold") {
                tensors.insert("threshold".into(), th);
            }
            let d_out = tensors.get("W_dec").and_then(|w| w.dims2().ok()).map_or(d_in, |d| d.1);
            let jump = tensors.contains_key("threshold");
            let skip = tensors.contains_key("W_skip");
            let cfg = SaeConfig {
                architecture: if jump { Architecture::JumpRelu } else { Architecture::Standard },
                d_in,
                d_sae,
                d_out,
                hook: hook_at(input, l, &cfg_path)?,
                hook_out: Some(hook_at(output, l, &cfg_path)?),
                apply_b_dec_to_input: false,
                normalize: Normalize::None,
                reshape_hook_z: false,
                neuronpedia_id: None,
                model_name: model_name.clone(),
                format: "transcoder set".into(),
                unapplied_scaling: false,
            };
            transcoders.push(Sae::from_tensors(cfg, tensors, &path, skip)?);
        }
        Ok(TranscoderSet { transcoders, model_name, format: "glassbox".into() })
    }

    /// Error unless every transcoder fits `model` and there is one per layer.
    pub fn check(&self, model: &crate::model::Model) -> Result<()> {
        if model.config().variants.attn_only {
            return Err(Error::Invalid("this model is attention-only: a transcoder set replaces MLPs, and it has none".into()));
        }
        if self.transcoders.len() != model.config().n_layers {
            return Err(Error::Invalid(format!(
                "this transcoder set has {} transcoders; the model has {} layers (a set replaces every MLP)",
                self.transcoders.len(),
                model.config().n_layers
            )));
        }
        self.transcoders.iter().try_for_each(|t| t.check(model))
    }
}
