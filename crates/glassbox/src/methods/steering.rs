//! Activation steering (Turner et al. 2023, "activation addition"): a direction in a hook's
//! activation space, taken as the difference between two prompts' mean activations or read
//! from a file, added with a scale at every position while the model runs or generates.

use std::path::Path;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Action, Batch, GenerateOptions, Generation, HookPoint, Hooks, Intervention, Model, Sampling};

/// The largest steering scale accepted (in either sign).
pub const MAX_SCALE: f32 = 1e4;

/// The mean activation of `prompt` at `point` over its positions, leaving out the BOS token
/// that the tokenizer puts first (its activation is large and the same for every prompt, so it
/// would only dilute the mean): the hook's per-position shape, e.g. `[d_model]` for the
/// residual stream, `[heads, d_head]` for `hook_z`.
pub fn mean_activation(model: &Model, point: HookPoint, prompt: &str) -> Result<Tensor> {
    point.check(model.config())?;
    let ids = model.tokenize(prompt)?;
    let skip = usize::from(model.tokenizer().bos().is_some_and(|b| ids.first() == Some(&b)) && ids.len() > 1);
    let n = ids.len() - skip;
    let out = model.forward(&Batch::new(&[ids])?, &Hooks::new().cache([point]).last_logits_only())?;
    let act = out.cache.get(point)?;
    if act.rank() < 2 || act.dim(1)? != skip + n {
        return Err(Error::Invalid(format!(
            "{point} has no position axis to average (shape {:?}); steer at a per-position hook such as blocks.L.hook_resid_pre",
            act.dims()
        )));
    }
    Ok(act.narrow(1, skip, n)?.to_dtype(DType::F32)?.mean(1)?.squeeze(0)?)
}

/// `mean_activation(positive) − mean_activation(negative)` at `point`: the direction from the
/// second prompt's concept towards the first's.
pub fn steering_vector(model: &Model, point: HookPoint, positive: &str, negative: &str) -> Result<Tensor> {
    Ok((mean_activation(model, point, positive)? - mean_activation(model, point, negative)?)?)
}

/// Reads a steering vector from a safetensors file: its one tensor, or the tensor named after
/// the hook point (`blocks.6.hook_resid_pre`) where it holds several. Its values must be
/// finite.
pub fn load_steering_vector(path: &Path, point: HookPoint) -> Result<Tensor> {
    let tensors = crate::model::load::read_small_safetensors(path)?;
    let name = point.to_string();
    let t = match tensors.len() {
        0 => return Err(Error::Invalid(format!("{} holds no tensor", path.display()))),
        1 => tensors.into_values().next().ok_or_else(|| Error::Invalid("no tensor".into()))?,
        _ => {
            let mut tensors = tensors;
            let names: Vec<String> = tensors.keys().cloned().collect();
            tensors.remove(&name).ok_or_else(|| {
                Error::Invalid(format!("{} holds several tensors ({}) and none is named {name}", path.display(), names.join(", ")))
            })?
        }
    };
    let t = t.to_dtype(DType::F32)?;
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!("the steering vector in {} holds NaN or infinite values", path.display())));
    }
    Ok(t)
}

/// Hooks that add `scale · vector` to `point` at every position (of every run, so of every
/// generated token too).
pub fn steering_hooks(model: &Model, point: HookPoint, vector: &Tensor, scale: f32) -> Result<Hooks> {
    point.check(model.config())?;
    if !(scale.is_finite() && scale.abs() <= MAX_SCALE) {
        return Err(Error::Invalid(format!("the steering scale is {scale}; it must be a number from -{MAX_SCALE} to {MAX_SCALE}")));
    }
    let v = (vector.to_dtype(DType::F32)? * scale as f64)?;
    Ok(Hooks::new().intervene(Intervention::new(point, Action::Add(v))))
}

pub use crate::files::{FilePath, FILE};

crate::options! {
    /// Options of `generate`: how to continue the prompt, and optionally a steering vector.
    pub struct GenerationOptions {
        /// The most tokens to add.
        pub max_new_tokens: usize = 32,
        /// Sample at this temperature (0 or absent: the most likely token each step).
        pub temperature: Option<f32> = None,
        /// Sample from the K most likely tokens only (implies sampling).
        pub top_k: Option<usize> = None,
        /// Sample from the most likely tokens up to this total probability (implies sampling).
        pub top_p: Option<f32> = None,
        /// Seed of the sampling.
        pub seed: u64 = 0,
        /// Keep going past the model's end-of-sequence token.
        pub ignore_eos: bool = false,
        /// Steer at this hook point; the vector is mean(steer_positive) − mean(steer_negative)
        /// there, or the one in steer_vector.
        pub steer: Option<HookPoint> = None,
        /// The prompt whose activations the steering points towards.
        pub steer_positive: Option<String> = None,
        /// The prompt whose activations the steering points away from.
        pub steer_negative: Option<String> = None,
        /// A safetensors file holding the steering vector (one tensor, or one named after the hook).
        pub steer_vector: Option<FilePath> = None,
        /// Multiplies the steering vector.
        pub steer_scale: f32 = 1.0,
    }
}

/// The steering applied to a generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SteeringInfo {
    /// The hook point.
    pub hook: String,
    /// Where the vector came from.
    pub source: String,
    /// Its scale.
    pub scale: f32,
    /// The vector's L2 norm before scaling.
    pub norm: f32,
}

/// Result of `generate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationResult {
    /// The prompt.
    pub prompt: String,
    /// The steering applied, if any.
    pub steering: Option<SteeringInfo>,
    /// The continuation without steering (when steering, for comparison).
    pub unsteered: Option<Generation>,
    /// The continuation.
    pub generation: Generation,
}

impl GenerationOptions {
    /// The library's generation options: greedy unless a temperature above 0, `top_k` or
    /// `top_p` is given.
    pub fn generate_options(&self) -> GenerateOptions {
        let sample = self.temperature.is_some_and(|t| t != 0.0) || self.top_k.is_some() || self.top_p.is_some();
        let sampling = if sample {
            Sampling::Sample { temperature: self.temperature.filter(|&t| t != 0.0).unwrap_or(1.0), top_k: self.top_k, top_p: self.top_p, seed: self.seed }
        } else {
            Sampling::Greedy
        };
        GenerateOptions { max_new_tokens: self.max_new_tokens, sampling, stop_at_eos: !self.ignore_eos, stop_tokens: Vec::new() }
    }
}

/// Continues `prompt`; with `steer`, also without steering, for comparison.
pub fn generate(model: &Model, prompt: &str, opts: &GenerationOptions) -> Result<GenerationResult> {
    let options = opts.generate_options();
    let given = [opts.steer_positive.is_some(), opts.steer_negative.is_some(), opts.steer_vector.is_some()];
    let steering = match opts.steer {
        None if given.iter().any(|&g| g) => {
            return Err(Error::Invalid("steer_positive, steer_negative and steer_vector need `steer`, the hook point to steer at".into()));
        }
        None => None,
        Some(point) => {
            let (vector, source) = match (&opts.steer_positive, &opts.steer_negative, &opts.steer_vector) {
                (Some(pos), Some(neg), None) => (steering_vector(model, point, pos, neg)?, format!("mean({pos:?}) - mean({neg:?})")),
                (None, None, Some(path)) => (load_steering_vector(&path.0, point)?, path.0.display().to_string()),
                _ => return Err(Error::Invalid("steering needs steer_positive and steer_negative (two prompts), or steer_vector (a file), not both".into())),
            };
            let norm = vector.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
            Some((steering_hooks(model, point, &vector, opts.steer_scale)?, SteeringInfo { hook: point.to_string(), source, scale: opts.steer_scale, norm }))
        }
    };
    let (generation, unsteered, steering) = match steering {
        Some((hooks, info)) => (model.generate(prompt, &options, &hooks)?, Some(model.generate(prompt, &options, &Hooks::new())?), Some(info)),
        None => (model.generate(prompt, &options, &Hooks::new())?, None, None),
    };
    Ok(GenerationResult { prompt: prompt.to_string(), steering, unsteered, generation })
}
