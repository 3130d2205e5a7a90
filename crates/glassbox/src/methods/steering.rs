//! Activation steering (Turner et al. 2023, "activation addition"): a direction in a hook's
//! activation space, taken as the difference between two prompts' mean activations or read
//! from a file, added with a scale at every position while the model runs or generates.

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::{Action, Batch, HookPoint, Hooks, Intervention, Model};

/// The largest steering scale accepted (in either sign).
pub const MAX_SCALE: f32 = 1e4;

/// The mean activation of `prompt` at `point` over its positions, leaving out the BOS token
/// that the tokenizer puts first (its activation is large and the same for every prompt, so it
/// would only dilute the mean): the hook's per-position shape, e.g. `[d_model]` for the
/// residual stream, `[heads, d_head]` for `hook_z`.
pub fn mean_activation(model: &Model, point: HookPoint, prompt: &str) -> Result<Tensor> {
    point.check(&model.config)?;
    let ids = model.tokenize(prompt)?;
    let skip = usize::from(model.tokenizer.bos().is_some_and(|b| ids.first() == Some(&b)) && ids.len() > 1);
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
    point.check(&model.config)?;
    if !(scale.is_finite() && scale.abs() <= MAX_SCALE) {
        return Err(Error::Invalid(format!("the steering scale is {scale}; it must be a number from -{MAX_SCALE} to {MAX_SCALE}")));
    }
    let v = (vector.to_dtype(DType::F32)? * scale as f64)?;
    Ok(Hooks::new().intervene(Intervention::new(point, Action::Add(v))))
}
