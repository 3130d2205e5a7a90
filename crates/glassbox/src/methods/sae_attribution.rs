//! SAE feature attribution: the metric attributed to the features of a sparse autoencoder (or
//! transcoder) at its hook point, with the SAE spliced into the forward and its
//! reconstruction error kept as an error term, so the forward is unchanged:
//! `y = Σ_f a_f · s · W_dec[f] + (b_dec · s + m) + ε` at the point the SAE writes (its hook,
//! or a transcoder's `hook_name_out`), `s`, `m` the per-position output scale and shift of the
//! SAE's normalisation.
//!
//! Three figures per feature:
//! - `ld_contribution`, the total effect by gradient × activation: `Σ_pos a_f · s · (W_dec[f] ·
//!   ∂M/∂y)` — the first-order estimate of what removing the feature changes, one forward and
//!   one backward pass for every feature at once;
//! - `exact_effect` for the top features: `M(clean) − M(feature removed at every position)`,
//!   batched runs with `a_f · s · W_dec[f]` subtracted at the hook;
//! - `direct_effect` for SAEs on the residual stream and the logit difference: the feature's
//!   write at the last position through the frozen final norm to the unembedding direction.
//!   Its identity: the features' direct effects + the decoder bias's + the error term's + the
//!   rest of the model's (everything written after the hook) + the constant biases = the
//!   logit difference (`decomposition_residual`).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::{Metric, Prompt, Scorer};
use crate::model::{Action, Batch, HookPoint, Intervention, Model};
use crate::sae::Sae;

crate::options! {
    /// Options of `sae_attribution`.
    pub struct SaeAttributionOptions {
        /// Features listed, by |ld_contribution|.
        pub top_k: usize = 20,
        /// How many of the top features also get their exact effect (ablation runs, batched).
        pub n_exact: usize = 10,
        /// The metric.
        pub metric: Metric = Metric::default(),
    }
}


/// One feature's attribution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureAttribution {
    /// The layer of the SAE's hook point.
    pub layer: usize,
    /// The feature's index in the SAE.
    pub feature_id: usize,
    /// Its activation at the answer (last) position.
    pub activation: f32,
    /// Its largest activation over the prompt's positions.
    pub max_activation: f32,
    /// Gradient × activation summed over positions: the first-order effect of removing it.
    pub ld_contribution: f32,
    /// `target` when it raises the metric (the correct answer), `distractor` when it lowers it.
    pub direction: String,
    /// Exact effect of removing it at every position (top `n_exact` features only).
    pub exact_effect: Option<f32>,
    /// Direct effect on the logit difference through the frozen final norm (residual-stream
    /// SAEs and the logit-difference metric only).
    pub direct_effect: Option<f32>,
    /// The feature's Neuronpedia page, when the SAE's config names its Neuronpedia id.
    pub neuronpedia_url: Option<String>,
}

/// The direct-effect decomposition of the logit difference (see the module's documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectDecomposition {
    /// All features' direct effects together.
    pub features: f32,
    /// The decoder bias (and normalisation shift).
    pub decoder_bias: f32,
    /// The SAE's reconstruction error.
    pub error: f32,
    /// Everything the model writes to the residual after the hook.
    pub rest: f32,
    /// The final norm's and the unembedding's biases.
    pub constant: f32,
    /// `|features + decoder_bias + error + rest + constant − logit difference|`.
    pub decomposition_residual: f32,
}

/// Result of `sae_attribution`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaeAttribution {
    /// Where the SAE reads.
    pub hook: String,
    /// Where it writes, when that is elsewhere (a transcoder).
    pub hook_out: Option<String>,
    /// The metric's name.
    pub metric: String,
    /// The metric on the clean prompt.
    pub clean_ld: f32,
    /// Mean number of active features per position.
    pub l0: f32,
    /// Features active at some position.
    pub n_active: usize,
    /// `1 − Σ ε² / Σ (y − ȳ)²` over the prompt's positions but the first and any BOS or
    /// end-of-text token (the positions SAEs are trained on); `None` with fewer than two.
    pub explained_variance: Option<f32>,
    /// Gradient × the error term: what the SAE does not explain, to first order.
    pub error_contribution: f32,
    /// Gradient × the decoder bias (and normalisation shift).
    pub bias_contribution: f32,
    /// The features, by |ld_contribution|.
    pub top_features: Vec<FeatureAttribution>,
    /// The direct-effect decomposition (residual-stream SAEs, logit difference at the last position).
    pub direct: Option<DirectDecomposition>,
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.first().copied().unwrap_or(f32::NAN))
}

/// The metric attributed to the features of `sae` on `prompt`.
pub fn sae_attribution(model: &Model, sae: &Sae, prompt: &Prompt, opts: &SaeAttributionOptions) -> Result<SaeAttribution> {
    Ok(attribution_and_cache(model, sae, prompt, opts, &[])?.0)
}

/// `sae_attribution`, with the clean run's activations at `also_cache` besides (so a caller
/// that needs more of the clean run does not run it again).
fn attribution_and_cache(model: &Model, sae: &Sae, prompt: &Prompt, opts: &SaeAttributionOptions, also_cache: &[HookPoint]) -> Result<(SaeAttribution, crate::model::ActivationCache)> {
    prompt.check(model)?;
    sae.check(model)?;
    super::check_count("top_k", opts.top_k, 1..=100_000)?;
    super::check_count("n_exact", opts.n_exact, 0..=10_000)?;
    let cfg = &sae.cfg;
    let read = cfg.hook;
    let write = cfg.hook_out.unwrap_or(cfg.hook);
    let layer = read.layer().unwrap_or(0);
    let scorer = Scorer::for_answers(model, &prompt.tokens, prompt.correct, prompt.incorrect, &opts.metric)?;
    let last_layer = model.config().n_layers - 1;
    let residual = matches!(write, HookPoint::ResidPre(_) | HookPoint::ResidMid(_) | HookPoint::ResidPost(_));
    let want_direct = residual && matches!(opts.metric, Metric::LogitDiff { position: crate::methods::Position::Last }) && model.config().variants.final_softcap.is_none();
    let mut cached = vec![read, write];
    if want_direct {
        cached.extend([HookPoint::ResidPost(last_layer), HookPoint::LnFinalScale]);
    }
    cached.extend_from_slice(also_cache);
    let batch = Batch::new(std::slice::from_ref(&prompt.tokens))?;
    let out = model.forward(&batch, &scorer.hooks().cache(cached).grad_tap([write]))?;
    let m = scorer.eval(&out)?;
    let clean = scalar(&m)?;
    let grads = out.backward(&m.sum_all()?)?;

    let x = sae.rows(&out.cache.get(read)?.get(0)?)?; // [P, d_in]
    let write_shape = out.cache.get(write)?.get(0)?.dims().to_vec();
    let y = out.cache.get(write)?.get(0)?.to_dtype(DType::F32)?.reshape(((), cfg.d_out))?; // [P, d_out]
    let g = grads.get(write)?.get(0)?.to_dtype(DType::F32)?.reshape(((), cfg.d_out))?;
    let enc = sae.encode(&x)?;
    let recon = sae.output(&x, &enc)?;
    let err = (&y - &recon)?;
    let dirs = sae.write_directions()?; // [d_sae, d_out]
    // Gradient × activation per position and feature: a · s · (W_dec[f] · g).
    let gs = g.broadcast_mul(&enc.out_scale)?;
    let per = (&enc.acts * gs.matmul(&dirs.t()?)?)?; // [P, d_sae]
    let contribution = per.sum(0)?.to_vec1::<f32>()?;
    let error_contribution = scalar(&(&g * &err)?.sum_all()?)?;
    let bias_rows = sae.b_dec.unsqueeze(0)?.broadcast_mul(&enc.out_scale)?.broadcast_add(&enc.out_shift)?;
    let bias_contribution = scalar(&g.broadcast_mul(&bias_rows)?.sum_all()?)?;

    let acts = enc.acts.to_vec2::<f32>()?;
    let n_pos = acts.len();
    let last = n_pos - 1;
    let mut active = vec![false; cfg.d_sae];
    let mut l0 = 0usize;
    for row in &acts {
        for (f, &a) in row.iter().enumerate() {
            if a != 0.0 {
                active[f] = true;
                l0 += 1;
            }
        }
    }
    // Over the positions an SAE is trained on: not the first, not BOS or end-of-text (attention
    // sinks, whose outsized activations would make most of the variance).
    let kept = crate::sae::corpus::kept_rows(std::slice::from_ref(&prompt.tokens), &crate::sae::corpus::excluded_tokens(model))?;
    let explained_variance = if kept.dim(0)? > 1 {
        let (yk, ek) = (y.index_select(&kept, 0)?, err.index_select(&kept, 0)?);
        let var = scalar(&yk.broadcast_sub(&yk.mean_keepdim(0)?)?.sqr()?.sum_all()?)?;
        Some(1.0 - scalar(&ek.sqr()?.sum_all()?)? / var.max(f32::MIN_POSITIVE))
    } else {
        None
    };

    let mut order: Vec<usize> = (0..cfg.d_sae).filter(|&f| active[f]).collect();
    order.sort_by(|&a, &b| contribution[b].abs().total_cmp(&contribution[a].abs()).then(a.cmp(&b)));
    order.truncate(opts.top_k);

    // Direct effects at the last position through the frozen final norm.
    let mut direct = None;
    let mut direct_of = vec![None; order.len()];
    if want_direct {
        let scale = out.cache.get(HookPoint::LnFinalScale)?.get(0)?.get(last)?; // [1]
        let dir = (model.unembed_rows(&[prompt.correct])? - model.unembed_rows(&[prompt.incorrect])?)?.squeeze(0)?.to_dtype(DType::F32)?;
        let through = |v: &Tensor| -> Result<Tensor> {
            // v: [n, d] → [n]
            let normed = model.final_norm_frozen(&v.to_dtype(model.weights().dtype())?, &scale)?.to_dtype(DType::F32)?;
            Ok(normed.broadcast_mul(&dir)?.sum(1)?)
        };
        let s_last = enc.out_scale.get(last)?; // [1]
        let per_unit = through(&dirs)?; // [d_sae]: W_dec[f] through the frozen norm
        let a_last = enc.acts.get(last)?;
        let feats = (a_last.broadcast_mul(&s_last)? * &per_unit)?.to_vec1::<f32>()?;
        let features: f32 = feats.iter().sum();
        let decoder_bias = scalar(&through(&bias_rows.get(last)?.unsqueeze(0)?)?)?;
        let error = scalar(&through(&err.get(last)?.unsqueeze(0)?)?)?;
        let final_resid = out.cache.get(HookPoint::ResidPost(last_layer))?.get(0)?.get(last)?.to_dtype(DType::F32)?;
        let rest = scalar(&through(&(final_resid - y.get(last)?)?.unsqueeze(0)?)?)?;
        let mut constant = model.unembed_bias_diff(prompt.correct, prompt.incorrect)?;
        if let Some(b) = model.final_norm_bias() {
            constant += scalar(&(b.to_dtype(DType::F32)? * &dir)?.sum_all()?)?;
        }
        let total = features + decoder_bias + error + rest + constant;
        direct = Some(DirectDecomposition { features, decoder_bias, error, rest, constant, decomposition_residual: (total - clean).abs() });
        for (i, &f) in order.iter().enumerate() {
            direct_of[i] = Some(feats[f]);
        }
    }

    // Exact effects: each top feature removed at every position, in batches.
    let n_exact = opts.n_exact.min(order.len());
    let mut exact = vec![None; order.len()];
    const CHUNK: usize = 16;
    let write_rows = dirs.index_select(&Tensor::new(order[..n_exact].iter().map(|&f| f as u32).collect::<Vec<_>>(), &candle_core::Device::Cpu)?, 0)?; // [n, d_out]
    for start in (0..n_exact).step_by(CHUNK) {
        let n = CHUNK.min(n_exact - start);
        let mut deltas = Vec::with_capacity(n);
        for (j, &f) in order.iter().enumerate().skip(start).take(n) {
            let a = enc.acts.narrow(1, f, 1)?.mul(&enc.out_scale)?; // [P, 1]
            let d = a.broadcast_mul(&write_rows.get(j)?.unsqueeze(0)?)?.neg()?; // [P, d_out]
            deltas.push(d.reshape(write_shape.as_slice())?);
        }
        let delta = Tensor::stack(&deltas, 0)?.to_dtype(model.weights().dtype())?;
        let rows: Vec<Vec<u32>> = vec![prompt.tokens.clone(); n];
        let hooks = scorer.hooks().intervene(Intervention::new(write, Action::Add(delta)));
        let out = model.forward(&Batch::new(&rows)?, &hooks)?;
        let vals = scorer.eval(&out)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        for (k, v) in vals.iter().enumerate() {
            exact[start + k] = Some(clean - v);
        }
    }

    let top_features = order
        .iter()
        .enumerate()
        .map(|(i, &f)| FeatureAttribution {
            layer,
            feature_id: f,
            activation: acts[last][f],
            max_activation: acts.iter().map(|r| r[f]).fold(0.0, f32::max),
            ld_contribution: contribution[f],
            direction: if contribution[f] >= 0.0 { "target" } else { "distractor" }.into(),
            exact_effect: exact[i],
            direct_effect: direct_of[i],
            neuronpedia_url: sae.neuronpedia_url(f),
        })
        .collect();
    if !clean.is_finite() {
        return Err(Error::NonFinite(format!("the metric on the clean prompt is {clean}")));
    }
    let result = SaeAttribution {
        hook: read.to_string(),
        hook_out: cfg.hook_out.map(|h| h.to_string()),
        metric: opts.metric.name().to_string(),
        clean_ld: clean,
        l0: l0 as f32 / n_pos as f32,
        n_active: active.iter().filter(|&&a| a).count(),
        explained_variance,
        error_contribution,
        bias_contribution,
        top_features,
        direct,
    };
    Ok((result, out.cache))
}

crate::options! {
    /// Options of `circuit_features`.
    pub struct CircuitFeatureOptions {
        /// The circuit's heads.
        pub heads: Vec<crate::methods::Head> = Vec::new(),
        /// Features listed per head.
        pub top_k: usize = 10,
    }
}


/// A feature a head writes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadFeature {
    /// The feature's index in the SAE.
    pub feature_id: usize,
    /// The head's share of the feature's pre-activation at the answer position:
    /// `result_h · W_enc[:, f]` (the linear approximation).
    pub head_contribution: f32,
    /// The feature's pre-activation there, all writers together.
    pub pre_activation: f32,
    /// Its activation there.
    pub activation: f32,
    /// The feature's gradient × activation on the metric (as `sae_attribution` gives it).
    pub ld_contribution: f32,
    /// The feature's Neuronpedia page.
    pub neuronpedia_url: Option<String>,
}

/// The features one circuit head writes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CircuitHeadFeatures {
    /// The head (`L09H06`).
    pub head: String,
    /// Active features by |head_contribution|.
    pub top_features: Vec<HeadFeature>,
}

/// Result of `circuit_features`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CircuitFeatures {
    /// Where the SAE reads.
    pub hook: String,
    /// The approximation made, in words.
    pub approximation: String,
    /// Per head.
    pub heads: Vec<CircuitHeadFeatures>,
    /// The full attribution the features' `ld_contribution` come from.
    pub attribution: SaeAttribution,
}

/// Which of a residual-stream SAE's features each circuit head writes to, at the answer
/// position: a head's result (`z_h W_O,h`, as it joins the residual stream) projected on each
/// active feature's encoder direction. Linear approximation: the SAE's pre-activation is
/// linear in its input, so the projections of everything written before the hook sum to the
/// pre-activation less `b_enc` and the `b_dec` term; the head's share ignores the ReLU/TopK
/// choice and everything between the head's layer and the hook that reads the head's output
/// (later heads and MLPs are counted as themselves, not as the head's). Needs an SAE on the
/// residual stream after the heads' layers, without input normalisation.
pub fn circuit_features(model: &Model, sae: &Sae, prompt: &Prompt, opts: &CircuitFeatureOptions) -> Result<CircuitFeatures> {
    let hook = sae.cfg.hook;
    let after = match hook {
        HookPoint::ResidPost(l) => l as i64,
        HookPoint::ResidMid(l) | HookPoint::ResidPre(l) => l as i64 - 1,
        _ => return Err(Error::Invalid(format!("circuit features need an SAE on the residual stream (hook_resid_pre/mid/post), not at {hook}"))),
    };
    if sae.cfg.normalize != crate::sae::Normalize::None || sae.cfg.hook_out.is_some() {
        return Err(Error::Invalid("circuit features need an SAE without input normalisation (and not a transcoder)".into()));
    }
    if opts.heads.is_empty() {
        return Err(Error::Invalid("give the circuit's heads".into()));
    }
    super::check_count("top_k", opts.top_k, 1..=100_000)?;
    for h in &opts.heads {
        h.check(model.config())?;
        if h.layer as i64 > after {
            return Err(Error::Invalid(format!("{h} writes after the SAE reads ({hook}); give heads of earlier layers or an SAE further on")));
        }
    }
    // One clean run gives the attribution and the heads' outputs.
    let layers: Vec<HookPoint> = opts.heads.iter().map(|h| HookPoint::Z(h.layer)).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let (attribution, cache) = attribution_and_cache(model, sae, prompt, &SaeAttributionOptions { top_k: sae.cfg.d_sae, n_exact: 0, metric: Metric::default() }, &layers)?;
    let by_feature: std::collections::HashMap<usize, f32> = attribution.top_features.iter().map(|f| (f.feature_id, f.ld_contribution)).collect();
    let last = prompt.tokens.len() - 1;
    let x = sae.rows(&cache.get(hook)?.get(0)?.get(last)?.unsqueeze(0)?)?;
    let enc = sae.encode(&x)?;
    let xin = if sae.cfg.apply_b_dec_to_input { x.broadcast_sub(&sae.b_dec)? } else { x };
    let pre = xin.matmul(&sae.w_enc)?.broadcast_add(&sae.b_enc)?.squeeze(0)?.to_vec1::<f32>()?;
    let acts = enc.acts.squeeze(0)?.to_vec1::<f32>()?;
    let mut heads = Vec::new();
    for h in &opts.heads {
        let z = cache.get(HookPoint::Z(h.layer))?;
        let post = model.attn_post_scale(h.layer, z)?;
        let results = model.head_results(h.layer, z, post.as_ref())?; // [1, p, H, d]
        let r = results.get(0)?.get(last)?.get(h.head)?.to_dtype(DType::F32)?.unsqueeze(0)?; // [1, d]
        let contrib = r.matmul(&sae.w_enc)?.squeeze(0)?.to_vec1::<f32>()?;
        let mut active: Vec<usize> = (0..sae.cfg.d_sae).filter(|&f| acts[f] != 0.0).collect();
        active.sort_by(|&a, &b| contrib[b].abs().total_cmp(&contrib[a].abs()).then(a.cmp(&b)));
        active.truncate(opts.top_k);
        heads.push(CircuitHeadFeatures {
            head: h.to_string(),
            top_features: active
                .into_iter()
                .map(|f| HeadFeature {
                    feature_id: f,
                    head_contribution: contrib[f],
                    pre_activation: pre[f],
                    activation: acts[f],
                    ld_contribution: by_feature.get(&f).copied().unwrap_or(0.0),
                    neuronpedia_url: sae.neuronpedia_url(f),
                })
                .collect(),
        });
    }
    Ok(CircuitFeatures {
        hook: hook.to_string(),
        approximation: "linear: a head's share of a feature's pre-activation is its result at the answer position projected on the feature's encoder direction; the activation function and the layers between the head and the SAE are not attributed to the head".into(),
        heads,
        attribution,
    })
}
