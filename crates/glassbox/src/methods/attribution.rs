//! Attribution patching (Nanda et al. 2023) and integrated gradients (Sundararajan et al. 2017)
//! over attention heads (`hook_z`), MLP outputs (`hook_mlp_out`) or attention outputs
//! (`hook_attn_out`), for the logit difference `LD = logit[correct] - logit[incorrect]` at the
//! last position.
//!
//! Taylor: `attr(c) = Σ_pos ∇_{a_c} LD · (a_clean − a_corr)`, the gradient taken on the normal
//! computation graph of the clean run (every later head and MLP carries gradient), so `attr(c)`
//! estimates `LD_clean − LD(clean with c patched from the corrupted run)` to first order.
//!
//! Integrated gradients: the features are the token embeddings and the chosen activation at
//! every layer, all moved together on the straight line from the corrupted run (α = 0) to the
//! clean run (α = 1) by `Replace` interventions; the gradient at each feature is averaged over
//! the midpoints of `n_steps` intervals, all steps in one batched forward and backward (chunked
//! to keep the batch within 128 token rows). With the embeddings included the path starts
//! exactly at the corrupted run, so completeness holds:
//! `Σ attr + embed_attribution = LD_clean − LD_corr` up to the midpoint rule's error, which
//! `completeness_residual` reports.
//!
//! What IG over heads (or attention outputs) measures: with every attention output fixed on the
//! path, attention no longer moves anything between positions, so a head's IG score is its
//! contribution at the last position (directly and through the later MLPs there); its effect
//! at earlier positions through later heads is not in it (Taylor attribution, on the full
//! graph, carries those). Since no other position reaches the logits, the path is run at the
//! last position alone: the same figures for 1/p of the work (tested against the full path).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::{order_by_magnitude, sum_in_order, Contrast, Head, Metric, Scorer};
use crate::model::config::Positions;
use crate::model::compute;
use crate::model::{Action, ActivationCache, Batch, ForwardOutput, Gradients, HookPoint, Intervention, Model};

crate::choices! {
    /// Which activations are attributed.
    pub enum Component {
        /// Every attention head, at `hook_z`.
        Heads = "heads",
        /// Every layer's MLP output.
        Mlp = "mlp" | "mlps",
        /// Every layer's attention output (all heads and the output bias).
        AttnOut = "attn_out" | "attn",
    }
}

impl Component {
    /// Error when `model` lacks this component (MLPs of an attention-only model).
    pub fn check(self, model: &Model) -> Result<()> {
        if self == Component::Mlp && model.config().variants.attn_only {
            return Err(Error::Invalid("this model is attention-only: it has no MLPs to attribute; use component heads or attn_out".into()));
        }
        Ok(())
    }

    /// The hook point attributed at `layer`: `hook_z`, `hook_mlp_out` or `hook_attn_out`.
    pub fn point(self, layer: usize) -> HookPoint {
        match self {
            Component::Heads => HookPoint::Z(layer),
            Component::Mlp => HookPoint::MlpOut(layer),
            Component::AttnOut => HookPoint::AttnOut(layer),
        }
    }

    fn label(self, layer: usize, unit: usize) -> String {
        match self {
            Component::Heads => Head { layer, head: unit }.to_string(),
            Component::Mlp => format!("MLP{layer:02}"),
            Component::AttnOut => format!("ATTN{layer:02}"),
        }
    }
}

crate::choices! {
    /// How a method attributes: the first-order Taylor estimate on the clean run's gradients, or
    /// integrated gradients along the straight path from the corrupted run (`n_steps` steps).
    pub enum Method {
        /// First-order Taylor estimate (attribution patching) on the clean run's gradients.
        Taylor = "taylor" | "eap",
        /// Integrated gradients from the corrupted run, `n_steps` midpoint steps.
        IntegratedGradients = "integrated_gradients" | "ig" | "eap-ig" | "eap_ig",
    }
}

/// Error unless `n_steps` is within `limits::N_STEPS` (for integrated gradients; Taylor takes none).
pub(crate) fn check_steps(method: Method, n_steps: usize) -> Result<()> {
    match method {
        Method::IntegratedGradients => super::check_count("the number of integration steps", n_steps, super::limits::N_STEPS),
        Method::Taylor => Ok(()),
    }
}

/// The reference tool's default number of integration steps is 10 (`n_steps=10`); glassbox's is
/// 20, which halves the midpoint rule's completeness residual on the IOI prompt.
pub const DEFAULT_N_STEPS: usize = 20;

crate::options! {
    /// Options of `attribute`.
    pub struct AttributionOptions {
        /// Which activations are attributed.
        pub component: Component = Component::Heads,
        /// Taylor (attribution patching) or integrated gradients.
        pub method: Method = Method::Taylor,
        /// Integration steps of integrated gradients (midpoints of equal intervals).
        pub n_steps: usize = DEFAULT_N_STEPS,
        /// The metric attributed.
        pub metric: Metric = Metric::default(),
    }
}

/// One attributed component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scored {
    /// The component's name (`L09H09`, `MLP03`, `ATTN03`).
    pub name: String,
    /// The component's layer.
    pub layer: usize,
    /// The head, for head attributions.
    pub head: Option<usize>,
    /// The attribution, in units of the metric: the component's share of `clean_ld − corrupted_ld`.
    pub score: f32,
}

/// Result of `attribute`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attribution {
    /// The attribution method.
    pub method: Method,
    /// The kind of component attributed.
    pub component: Component,
    /// Integration steps, for integrated gradients.
    pub n_steps: Option<usize>,
    /// The metric attributed (`logit_diff` unless chosen otherwise).
    pub metric: String,
    /// `scores[layer][head]` (one entry per layer for MLP and attention outputs).
    pub scores: Vec<Vec<f32>>,
    /// Score by name (`L09H09`, `MLP03`, `ATTN03`).
    pub attributions: BTreeMap<String, f32>,
    /// All components by decreasing |score|.
    pub top: Vec<Scored>,
    /// The metric of the clean and the corrupted run.
    pub clean_ld: f32,
    /// The metric of the corrupted run.
    pub corrupted_ld: f32,
    /// Integrated gradients only: the token embeddings' share of `LD_clean − LD_corr`.
    pub embed_attribution: Option<f32>,
    /// Integrated gradients only: `|Σ attr + embed − (LD_clean − LD_corr)| / |LD_clean − LD_corr|`.
    pub completeness_residual: Option<f32>,
}

/// Sums `x: [p, ...]` to one value per unit: per head for head activations `[p, h, d_head]`.
fn per_unit(x: &Tensor, component: Component) -> Result<Vec<f32>> {
    let x = x.to_dtype(DType::F32)?;
    Ok(match component {
        Component::Heads => x.sum(2)?.sum(0)?.to_vec1::<f32>()?,
        _ => vec![x.sum_all()?.to_scalar::<f32>()?],
    })
}

/// `Σ_pos ∇a · (a_clean − a_corr)` per component unit at each point, from the clean run's
/// gradients and cache (row 0) and row `corr_row` of a corrupted run's cache.
fn taylor_scores(
    points: &[HookPoint],
    grads: &Gradients,
    clean: &ActivationCache,
    corr: &ActivationCache,
    corr_row: usize,
    component: Component,
) -> Result<Vec<Vec<f32>>> {
    points
        .iter()
        .map(|&p| {
            let delta = (clean.get(p)?.get(0)? - corr.get(p)?.get(corr_row)?)?;
            per_unit(&(grads.get(p)?.get(0)? * delta)?, component)
        })
        .collect()
}

/// Scores by name, and every component by decreasing |score|.
pub fn ranked(scores: &[Vec<f32>], component: Component) -> (BTreeMap<String, f32>, Vec<Scored>) {
    let mut named = BTreeMap::new();
    let mut flat = Vec::new();
    for (l, row) in scores.iter().enumerate() {
        for (u, &s) in row.iter().enumerate() {
            let name = component.label(l, u);
            named.insert(name.clone(), s);
            flat.push(Scored {
                name,
                layer: l,
                head: (component == Component::Heads).then_some(u),
                score: s,
            });
        }
    }
    let values: Vec<f32> = flat.iter().map(|s| s.score).collect();
    let top = order_by_magnitude(&values).into_iter().map(|i| flat[i].clone()).collect();
    (named, top)
}

/// Attribution of every component of kind `component` for the contrast.
pub fn attribute(model: &Model, contrast: &Contrast, opts: &AttributionOptions) -> Result<Attribution> {
    Ok(attribute_caching(model, contrast, opts, &[])?.0)
}

/// The clean and corrupted runs' caches of a Taylor attribution (one prompt each, `[1, ...]`).
pub(crate) struct Runs {
    pub clean: ActivationCache,
    pub corrupted: ActivationCache,
}

/// `attribute`, also caching `extra` points in the clean and corrupted runs and returning
/// them (Taylor only; integrated gradients return `None`), so that a caller that needs those
/// runs again (`analyze`'s circuit evaluator) does not repeat them.
pub(crate) fn attribute_caching(
    model: &Model,
    contrast: &Contrast,
    opts: &AttributionOptions,
    extra: &[HookPoint],
) -> Result<(Attribution, Option<Runs>)> {
    contrast.check(model)?;
    check_steps(opts.method, opts.n_steps)?;
    opts.component.check(model)?;
    let (component, method, n_steps) = (opts.component, opts.method, opts.n_steps);
    let scorer = Scorer::new(model, contrast, &opts.metric)?;
    let layers = model.config().n_layers;
    let points: Vec<HookPoint> = (0..layers).map(|l| component.point(l)).collect();
    let batch = contrast.batch()?;
    let mut runs = None;

    let (scores, lds, embed_attribution) = match method {
        Method::Taylor => {
            // The corrupted run needs no gradient: run apart, the backward pass carries only the
            // clean prompt's rows (10 % faster than one batch of both, measured). It runs at
            // the same time as the clean forward and backward, on the other core.
            let cached = points.iter().chain(extra).copied();
            let corr_hooks = scorer.hooks().cache(cached.clone());
            let hooks = scorer.hooks().cache(cached).grad_tap(points.iter().copied());
            let (corr, clean) = compute::concurrently(
                || model.forward(&Batch::new(std::slice::from_ref(&contrast.corrupted))?, &corr_hooks),
                || -> Result<_> {
                    let clean = model.forward(&Batch::new(std::slice::from_ref(&contrast.clean))?, &hooks)?;
                    let ld_clean = scorer.eval(&clean)?;
                    let grads = clean.backward(&ld_clean.sum_all()?)?;
                    Ok((clean, ld_clean, grads))
                },
            );
            let (corr, (clean, ld_clean, grads)) = (corr?, clean?);
            let ld_corr = scorer.eval(&corr)?;
            let scores = taylor_scores(&points, &grads, &clean.cache, &corr.cache, 0, component)?;
            let lds = Tensor::cat(&[ld_clean, ld_corr], 0)?;
            let detached = |c: &ActivationCache| ActivationCache {
                values: c.values.iter().map(|(p, t)| (*p, t.detach())).collect(),
            };
            runs = Some(Runs { clean: detached(&clean.cache), corrupted: detached(&corr.cache) });
            (scores, lds.to_dtype(DType::F32)?.to_vec1::<f32>()?, None)
        }
        Method::IntegratedGradients => {
            let mut features = vec![HookPoint::Embed];
            features.extend(points.iter().copied());
            let out = model.forward(&batch, &scorer.hooks().cache(features.iter().copied()))?;
            let lds = scorer.values(&out)?;
            let ends = features
                .iter()
                .map(|&p| {
                    let act = out.cache.get(p)?;
                    let corr = act.get(1)?;
                    Ok((corr.clone(), (act.get(0)? - corr)?))
                })
                .collect::<Result<Vec<_>>>()?;
            // With every attention output on the path fixed (all heads' z, or every attention
            // output), attention no longer carries anything between positions: only the last
            // position reaches the logits and every other position's gradient is zero. The path
            // is then run at the last position alone: the same figures for 1/p of the work
            // (when the metric reads the last position only).
            let last_only = matches!(component, Component::Heads | Component::AttnOut) && scorer.reads_last_position_only();
            let mean_grads = integrated_gradients(model, &contrast.clean, &features, &ends, &scorer, n_steps, last_only)?;
            let mut attrs = features
                .iter()
                .zip(&ends)
                .zip(&mean_grads)
                .map(|((&p, (_, delta)), g)| {
                    let prod = (g * delta)?;
                    if p == HookPoint::Embed {
                        Ok(vec![prod.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?])
                    } else {
                        per_unit(&prod, component)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let embed = attrs.remove(0)[0];
            (attrs, lds, Some(embed))
        }
    };

    let (clean_ld, corrupted_ld) = (lds[0], lds[1]);
    let completeness_residual = embed_attribution.map(|e| {
        let total: f32 = scores.iter().flatten().sum::<f32>() + e;
        let change = clean_ld - corrupted_ld;
        (total - change).abs() / change.abs().max(1e-12)
    });
    let (attributions, top) = ranked(&scores, component);
    let attribution = Attribution {
        method,
        component,
        n_steps: (method == Method::IntegratedGradients).then_some(n_steps),
        metric: opts.metric.name().to_string(),
        scores,
        attributions,
        top,
        clean_ld,
        corrupted_ld,
        embed_attribution,
        completeness_residual,
    };
    Ok((attribution, runs))
}

/// `attribute` for each contrast. Taylor attribution of the logit difference at the last
/// position runs the contrasts together: their clean prompts in one right-padded batch
/// (forward and backward), their corrupted prompts in another, each row's scores summed over
/// its own positions only (a padding position's gradient is zero, and causal attention keeps
/// a real position from seeing the padding after it). Each result equals `attribute` on its
/// contrast up to float rounding. Other methods and metrics run one contrast at a time.
pub fn attribute_many(model: &Model, contrasts: &[Contrast], opts: &AttributionOptions) -> Result<Vec<Attribution>> {
    let last_ld = matches!(opts.metric, Metric::LogitDiff { position: crate::methods::Position::Last });
    if opts.method != Method::Taylor || !last_ld || contrasts.len() < 2 || model.config().variants.final_softcap.is_some() {
        return contrasts.iter().map(|c| attribute(model, c, opts)).collect();
    }
    for c in contrasts {
        c.check(model)?;
    }
    opts.component.check(model)?;
    let component = opts.component;
    let points: Vec<HookPoint> = (0..model.config().n_layers).map(|l| component.point(l)).collect();
    let correct: Vec<u32> = contrasts.iter().map(|c| c.correct_id).collect();
    let incorrect: Vec<u32> = contrasts.iter().map(|c| c.incorrect_id).collect();
    let clean_rows: Vec<Vec<u32>> = contrasts.iter().map(|c| c.clean.clone()).collect();
    let corr_rows: Vec<Vec<u32>> = contrasts.iter().map(|c| c.corrupted.clone()).collect();
    let hooks = crate::model::Hooks::new().last_logits_only().cache(points.iter().copied());
    let (corr, clean) = compute::concurrently(
        || model.forward(&Batch::new(&corr_rows)?, &hooks),
        || -> Result<_> {
            let clean = model.forward(&Batch::new(&clean_rows)?, &hooks.clone().grad_tap(points.iter().copied()))?;
            let ld = clean.logit_diff(&correct, &incorrect)?;
            let grads = clean.backward(&ld.sum_all()?)?;
            Ok((clean, ld, grads))
        },
    );
    let (corr, (clean, ld_clean, grads)) = (corr?, clean?);
    let ld_clean = ld_clean.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let ld_corr = corr.logit_diff(&correct, &incorrect)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(contrasts.len());
    for (r, c) in contrasts.iter().enumerate() {
        let n = c.clean.len();
        let scores = points
            .iter()
            .map(|&p| {
                let delta = (clean.cache.get(p)?.get(r)?.narrow(0, 0, n)? - corr.cache.get(p)?.get(r)?.narrow(0, 0, n)?)?;
                per_unit(&(grads.get(p)?.get(r)?.narrow(0, 0, n)? * delta)?, component)
            })
            .collect::<Result<Vec<_>>>()?;
        let (attributions, top) = ranked(&scores, component);
        out.push(Attribution {
            method: Method::Taylor,
            component,
            n_steps: None,
            metric: opts.metric.name().to_string(),
            scores,
            attributions,
            top,
            clean_ld: ld_clean[r],
            corrupted_ld: ld_corr[r],
            embed_attribution: None,
            completeness_residual: None,
        });
    }
    Ok(out)
}

/// Taylor attribution of one clean prompt against many corrupted ones (same length): the
/// gradient is the clean run's, so one forward and backward of the clean prompt serves every
/// corruption, and the corrupted prompts run in batches of up to 160 token rows with only
/// their activations cached. Returns `scores[corruption][layer][unit]`, each equal to
/// `attribute(.., Method::Taylor, ..)` for that corruption; `progress(done, total)` per batch.
pub(crate) fn taylor_many(
    model: &Model,
    clean: &[u32],
    corrupted: &[Vec<u32>],
    scorer: &Scorer,
    component: Component,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<Vec<f32>>>> {
    component.check(model)?;
    if let Some(c) = corrupted.iter().find(|c| c.len() != clean.len()) {
        return Err(Error::Invalid(format!(
            "a corrupted prompt has {} tokens, the clean one {}: position-aligned attribution needs equal lengths",
            c.len(),
            clean.len()
        )));
    }
    let points: Vec<HookPoint> = (0..model.config().n_layers).map(|l| component.point(l)).collect();
    let hooks = scorer.hooks().cache(points.iter().copied()).grad_tap(points.iter().copied());
    let corr_hooks = scorer.hooks().cache(points.iter().copied());
    let per_batch = (160 / clean.len().max(1)).max(1);
    let mut chunks = corrupted.chunks(per_batch);
    let Some(first) = chunks.next() else {
        return Ok(Vec::new());
    };
    // The clean forward and backward run at the same time as the first batch of corruptions.
    let (clean_run, first_run) = compute::concurrently(
        || -> Result<_> {
            let run = model.forward(&Batch::new(&[clean.to_vec()])?, &hooks)?;
            let grads = run.backward(&scorer.eval(&run)?.sum_all()?)?;
            Ok((run, grads))
        },
        || model.forward(&Batch::new(first)?, &corr_hooks),
    );
    let (run, grads) = clean_run?;
    let mut scores = Vec::with_capacity(corrupted.len());
    let mut score_batch = |corr: &ForwardOutput, rows: usize| -> Result<()> {
        for r in 0..rows {
            scores.push(taylor_scores(&points, &grads, &run.cache, &corr.cache, r, component)?);
        }
        progress(scores.len(), corrupted.len());
        Ok(())
    };
    score_batch(&first_run?, first.len())?;
    for chunk in chunks {
        score_batch(&model.forward(&Batch::new(chunk)?, &corr_hooks)?, chunk.len())?;
    }
    Ok(scores)
}

/// Mean gradient of the scorer's metric at each feature over the midpoints `α = (k + 0.5) / n_steps` of the path
/// `corr + α · delta` (all features moved together), batched in chunks of ≤ 128 token rows.
/// Each feature's ends are `[p, ...]` (position first).
///
/// `last_only`: the features fix every attention output (so no position but the last reaches
/// the logits); the path runs at the last position alone and the other positions' gradients
/// are returned as the zeros they are. Learned position embeddings are set to the last
/// position's.
pub(crate) fn integrated_gradients(
    model: &Model,
    tokens: &[u32],
    features: &[HookPoint],
    ends: &[(Tensor, Tensor)],
    scorer: &Scorer,
    n_steps: usize,
    last_only: bool,
) -> Result<Vec<Tensor>> {
    if !last_only || tokens.len() == 1 {
        return ig_path(model, tokens, features, ends, scorer, n_steps, None);
    }
    let p = tokens.len();
    let last = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(0, p - 1, 1)?) };
    let ends_last = ends.iter().map(|(c, d)| Ok((last(c)?, last(d)?))).collect::<Result<Vec<_>>>()?;
    let pos = match (model.config().positions, &model.weights().pos_embed) {
        (Positions::Learned { offset }, Some(table)) => Some(table.narrow(0, offset + p - 1, 1)?),
        _ => None,
    };
    let grads = ig_path(model, &tokens[p - 1..], features, &ends_last, scorer, n_steps, pos.as_ref())?;
    grads
        .into_iter()
        .map(|g| {
            let mut dims = g.dims().to_vec();
            dims[0] = p - 1;
            let zeros = Tensor::zeros(dims, g.dtype(), g.device())?;
            Ok(Tensor::cat(&[zeros, g], 0)?)
        })
        .collect()
}

/// The batched path of `integrated_gradients`; `pos` replaces the position embedding `[p, d]`.
fn ig_path(
    model: &Model,
    tokens: &[u32],
    features: &[HookPoint],
    ends: &[(Tensor, Tensor)],
    scorer: &Scorer,
    n_steps: usize,
    pos: Option<&Tensor>,
) -> Result<Vec<Tensor>> {
    let p = tokens.len();
    let chunk = (128 / p.max(1)).clamp(1, n_steps);
    // Each chunk of steps: the gradient at every feature, summed over the chunk's steps.
    let chunk_grads = |&(k, c): &(usize, usize)| -> Result<Vec<Tensor>> {
        let alphas: Vec<f32> = (k..k + c).map(|i| (i as f32 + 0.5) / n_steps as f32).collect();
        let mut hooks = scorer.hooks();
        for (&point, (corr, delta)) in features.iter().zip(ends) {
            let mut shape = vec![c];
            shape.extend(std::iter::repeat_n(1, corr.rank()));
            let a = Tensor::from_vec(alphas.clone(), shape, &Device::Cpu)?.to_dtype(corr.dtype())?;
            let value = corr.unsqueeze(0)?.broadcast_add(&a.broadcast_mul(&delta.unsqueeze(0)?)?)?;
            hooks = hooks.intervene(Intervention::new(point, Action::Replace(value))).grad_tap([point]);
        }
        if let Some(pos) = pos {
            hooks = hooks.intervene(Intervention::new(HookPoint::PosEmbed, Action::Replace(pos.unsqueeze(0)?)));
        }
        let batch = Batch::new(&vec![tokens.to_vec(); c])?;
        let out = model.forward(&batch, &hooks)?;
        let metric = scorer.eval(&out)?.sum_all()?;
        let grads = out.backward(&metric)?;
        features.iter().map(|&point| Ok(grads.get(point)?.sum(0)?)).collect()
    };
    let chunks: Vec<(usize, usize)> = (0..n_steps).step_by(chunk).map(|k| (k, chunk.min(n_steps - k))).collect();
    // The chunks run as two streams; their sums are added in the chunks' order.
    let sums = sum_in_order(compute::map_in_two_streams(&chunks, "integration steps", chunk_grads, || Err(Error::Cancelled)))?.ok_or_else(|| Error::Invalid("no steps".into()))?;
    sums.into_iter().map(|s| Ok((s / n_steps as f64)?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Taylor attribution against many corruptions at once equals one `attribute` call per
    /// corruption.
    #[test]
    fn taylor_many_equals_one_attribution_per_corruption() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for name in ["tiny-gpt2", "tiny-llama"] {
            let model = Model::load(&root.join(name)).unwrap();
            let base = Contrast::new(&model, "When Mary and John went to the store, John gave a drink to", " Mary", " John", None).unwrap();
            let mut prompts = vec![base.corrupted.clone()];
            for k in 1..4u32 {
                let mut p = base.clean.clone();
                p[2 + k as usize] = (p[2 + k as usize] + 7 * k) % model.config().d_vocab as u32;
                prompts.push(p);
            }
            for component in [Component::Heads, Component::Mlp] {
                let scorer = Scorer::new(&model, &base, &Metric::default()).unwrap();
                let many = taylor_many(&model, &base.clean, &prompts, &scorer, component, &mut |_, _| {}).unwrap();
                for (p, scores) in prompts.iter().zip(&many) {
                    let c = Contrast { corrupted: p.clone(), ..base.clone() };
                    let one = attribute(&model, &c, &AttributionOptions { component, ..Default::default() }).unwrap();
                    for (a, b) in one.scores.iter().flatten().zip(scores.iter().flatten()) {
                        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{name} {component:?}: {a} vs {b}");
                    }
                }
            }
        }
    }

    /// The last-position path of integrated gradients gives the full path's gradients, on
    /// learned (GPT-2), rotary (LLaMA), parallel-attention (NeoX) and post-norm (Gemma 3)
    /// models, for heads and attention outputs.
    #[test]
    fn last_position_path_equals_the_full_path() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for name in ["tiny-gpt2", "tiny-llama", "tiny-neox", "tiny-gemma3"] {
            let model = Model::load(&root.join(name)).unwrap();
            let contrast = Contrast::new(&model, "When Mary and John went to the store, John gave a drink to", " Mary", " John", None).unwrap();
            for component in [Component::Heads, Component::AttnOut] {
                let mut features = vec![HookPoint::Embed];
                features.extend((0..model.config().n_layers).map(|l| component.point(l)));
                let out = model.forward(&contrast.batch().unwrap(), &crate::model::Hooks::new().cache(features.iter().copied())).unwrap();
                let ends: Vec<(Tensor, Tensor)> = features
                    .iter()
                    .map(|&p| {
                        let a = out.cache.get(p).unwrap();
                        let corr = a.get(1).unwrap();
                        (corr.clone(), (a.get(0).unwrap() - corr).unwrap())
                    })
                    .collect();
                let scorer = Scorer::new(&model, &contrast, &Metric::default()).unwrap();
                let fast = integrated_gradients(&model, &contrast.clean, &features, &ends, &scorer, 7, true).unwrap();
                let full = integrated_gradients(&model, &contrast.clean, &features, &ends, &scorer, 7, false).unwrap();
                for ((f, g), p) in fast.iter().zip(&full).zip(&features) {
                    assert_eq!(f.dims(), g.dims(), "{name} {p}");
                    let scale = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
                    let err = (f - g).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                    assert!(err <= 1e-5 * scale.max(1.0), "{name} {component:?} {p}: {err} (scale {scale})");
                }
            }
        }
    }
}
