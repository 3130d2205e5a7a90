//! Feature interventions: set one transcoder feature's activation to `scale` times its value
//! and see what the logit difference does, to test what an attribution graph claims.
//!
//! - `frozen: true` runs the local replacement model: attention patterns, norm scales and every
//!   MLP output frozen at the prompt's run, the feature's decoder row times the change added to
//!   its layer's MLP output. The change of the logit difference is then exactly
//!   `(scale − 1) · A[logit_diff, feature]`, the graph's edge (tested).
//! - `frozen: false` adds the same vector to the real model's MLP output at that layer and
//!   position and runs everything after it as the model does (attention, norms and the real
//!   MLPs respond): how far the graph's direct effect predicts the real one.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::linear::{At, Replacement, Target};
use crate::error::{Error, Result};
use crate::inputs::Prompt;
use crate::model::{Action, Batch, HookPoint, Hooks, Intervention, Model};
use crate::sae::set::TranscoderSet;

crate::options! {
    /// Options of `feature_intervention`.
    pub struct InterventionOptions {
        /// The feature's layer.
        pub layer: usize = 0,
        /// The feature's index in its layer's transcoder.
        pub feature: usize = 0,
        /// The position (default: the last).
        pub position: Option<usize> = None,
        /// Its activation becomes `scale` times what it was (0: ablated; 2: doubled).
        pub scale: f32 = 0.0,
        /// Run the frozen replacement model (attention patterns, norm scales and MLP outputs
        /// frozen) instead of the real model.
        pub frozen: bool = false,
    }
}

/// Result of `feature_intervention`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureIntervention {
    /// `{layer}_{feature}_{position}`, as the graph names it.
    pub node_id: String,
    /// Its activation on the prompt.
    pub activation: f32,
    /// The activation it was set to.
    pub new_activation: f32,
    /// Whether the replacement model was frozen.
    pub frozen: bool,
    /// `logit[correct] − logit[incorrect]` of the prompt's run.
    pub clean_ld: f32,
    /// With the intervention.
    pub intervened_ld: f32,
    /// `intervened_ld − clean_ld`.
    pub effect: f32,
    /// What the graph's edge into the logit difference predicts: `(scale − 1) · A[ld, feature]`.
    pub predicted_by_graph: f32,
}

/// Sets one feature to `scale` times its activation and runs the model (frozen or not).
pub fn feature_intervention(model: &Model, set: &TranscoderSet, prompt: &Prompt, o: &InterventionOptions) -> Result<FeatureIntervention> {
    let n = prompt.tokens.len();
    let p = o.position.unwrap_or(n.saturating_sub(1));
    if p == 0 || p >= n {
        return Err(Error::Invalid(format!("position {p}: give 1 to {} (position 0 is an attention sink, never a feature node)", n.saturating_sub(1))));
    }
    model.config().check_layer(o.layer)?;
    if !o.scale.is_finite() {
        return Err(Error::Invalid(format!("scale {}: give a finite number", o.scale)));
    }
    let t = set.transcoders.get(o.layer).ok_or_else(|| Error::Invalid(format!("layer {}: the set has {} transcoders", o.layer, set.transcoders.len())))?;
    if o.feature >= t.cfg.d_sae {
        return Err(Error::Invalid(format!("feature {}: layer {}'s transcoder has {} features", o.feature, o.layer, t.cfg.d_sae)));
    }
    if o.frozen && model.weights().layers.iter().any(|lw| lw.extra.ln1_post.is_some()) {
        return Err(Error::Invalid("the frozen intervention does not yet freeze attention post-norms (Gemma 2/3, OLMo-2); run it with frozen: false".into()));
    }
    let rep = Replacement::build(model, set, &prompt.tokens)?;
    let x = t.rows(&rep.mlp_in[o.layer])?;
    let a = t.encode(&x)?.acts.get(p)?.get(o.feature)?.to_scalar::<f32>()?;
    if a == 0.0 {
        return Err(Error::Invalid(format!("feature {} of layer {} is not active at position {p} on this prompt: scaling it changes nothing (the graph's nodes are the active features)", o.feature, o.layer)));
    }
    let delta_a = a * (o.scale - 1.0);
    let dec = t.write_directions()?.get(o.feature)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let d = model.config().d_model;
    let mut add = vec![0f32; n * d];
    for (k, v) in dec.iter().enumerate() {
        add[p * d + k] = v * delta_a;
    }
    let add = Tensor::from_vec(add, (1, n, d), &Device::Cpu)?.to_dtype(model.weights().dtype())?;

    // The graph's prediction: the feature's direct edge into the logit difference.
    let (c, i) = (model.unembed_rows(&[prompt.correct])?, model.unembed_rows(&[prompt.incorrect])?);
    let v = (c - i)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut grad_at = None;
    rep.backward(
        &[Target { at: At::Logits, pos: n - 1, vector: v }],
        |l, g| {
            if l == o.layer {
                grad_at = Some(g.get(0)?.get(p)?.to_vec1::<f32>()?);
            }
            Ok(())
        },
        |_| Ok(()),
    )?;
    let g = grad_at.ok_or_else(|| Error::Invalid("the backward did not reach the feature's layer".into()))?;
    let edge: f64 = dec.iter().zip(&g).map(|(w, g)| f64::from(*w) * f64::from(*g) * f64::from(a)).sum();

    let ld = |hooks: Hooks| -> Result<f32> {
        let out = model.forward(&Batch::new(std::slice::from_ref(&prompt.tokens))?, &hooks.logits_for(&[prompt.correct, prompt.incorrect]))?;
        Ok(out.logit_diff(&[prompt.correct], &[prompt.incorrect])?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0])
    };
    let clean_ld = ld(Hooks::new())?;
    let intervened_ld = if o.frozen {
        let mut points = vec![HookPoint::LnFinalScale];
        for l in 0..model.config().n_layers {
            points.extend([HookPoint::Pattern(l), HookPoint::Ln1Scale(l), HookPoint::Ln2Scale(l), HookPoint::MlpOut(l)]);
        }
        let clean = model.forward(&Batch::new(std::slice::from_ref(&prompt.tokens))?, &Hooks::new().cache(points.clone()))?;
        let mut hooks = Hooks::new();
        for &pt in &points {
            let mut value = clean.cache.get(pt)?.clone();
            if pt == HookPoint::MlpOut(o.layer) {
                value = (value + &add)?;
            }
            hooks = hooks.intervene(Intervention::new(pt, Action::Replace(value)));
        }
        ld(hooks)?
    } else {
        ld(Hooks::new().intervene(Intervention::new(HookPoint::MlpOut(o.layer), Action::Add(add))))?
    };
    Ok(FeatureIntervention {
        node_id: format!("{}_{}_{p}", o.layer, o.feature),
        activation: a,
        new_activation: a * o.scale,
        frozen: o.frozen,
        clean_ld,
        intervened_ld,
        effect: intervened_ld - clean_ld,
        predicted_by_graph: ((f64::from(o.scale) - 1.0) * edge) as f32,
    })
}
