//! Exact faithfulness of a circuit (a set of heads, optionally MLPs), in the ERASER sense
//! (DeYoung et al. 2020), by ablation runs rather than a Taylor estimate.
//!
//! The universe is every attention head (and every MLP with `include_mlps`); MLPs outside the
//! universe run normally. Three runs of the clean prompt, batched:
//! - `ld_circuit_only`: everything in the universe but the circuit ablated;
//! - `ld_circuit_ablated`: the circuit ablated;
//! - `ld_all_ablated` (`B`): the whole universe ablated.
//!
//! `sufficiency = (ld_circuit_only − B) / (LD_clean − B)`,
//! `comprehensiveness = (LD_clean − ld_circuit_ablated) / (LD_clean − B)`, `f1` their harmonic
//! mean (each clipped at 0). So the full model has sufficiency 1, the empty circuit comprehensiveness 0.
//! Ablation: `resample` (the corrupted run's activation; default), `mean` (mean over a prompt
//! set of the same length) or `zero`.
//!
//! `category` from the exact figures, first match: `faithful` (suff ≥ 0.8 and comp ≥ 0.5),
//! `backup_mechanisms` (suff ≥ 0.6 and comp < 0.5: the circuit suffices, yet removing it
//! hurts less than it should, so other heads take over), `incomplete` (suff < 0.6 and
//! comp ≥ 0.5), `weak` (suff < 0.3 and comp < 0.3), else `moderate`.
//! `taylor_sufficiency` is the reference tool's first-order estimate `Σ_{h∈C} attr(h) / LD_clean`
//! (`suff_is_approx` refers to `sufficiency`, which here is exact).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::attribution::Runs;
use crate::methods::{Contrast, Head, Metric, Scorer};
use crate::model::{Action, Batch, HookPoint, Hooks, Intervention, Model, Start};

crate::choices! {
    /// How an ablated component's activation is replaced.
    pub enum Ablation {
        /// By its value in the corrupted run.
        Resample = "resample",
        /// By its mean over a prompt set (by default the clean and corrupted prompts).
        Mean = "mean",
        /// By zeros.
        Zero = "zero",
    }
}

/// A circuit: attention heads and, counted only with `include_mlps`, MLP layers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    /// The circuit's heads.
    pub heads: Vec<Head>,
    /// Layers whose MLP is in the circuit (used only with `include_mlps`).
    #[serde(default)]
    pub mlps: Vec<usize>,
}

/// Exact faithfulness figures of a circuit (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Faithfulness {
    /// `(ld_circuit_only − ld_all_ablated) / (clean_ld − ld_all_ablated)`: the fraction of the
    /// effect the circuit alone keeps.
    pub sufficiency: f32,
    /// `(clean_ld − ld_circuit_ablated) / (clean_ld − ld_all_ablated)`: the fraction of the effect
    /// lost when the circuit is ablated.
    pub comprehensiveness: f32,
    /// Harmonic mean of sufficiency and comprehensiveness, each clipped at 0.
    pub f1: f32,
    /// `faithful`, `backup_mechanisms`, `incomplete`, `weak` or `moderate` (see `category`).
    pub category: String,
    /// Whether `sufficiency` is a first-order estimate (never here: it is exact).
    pub suff_is_approx: bool,
    /// The reference tool's Taylor estimate of sufficiency, when attributions were given.
    pub taylor_sufficiency: Option<f32>,
    /// The metric of the clean run (mean over the prompts of a set).
    pub clean_ld: f32,
    /// The metric with everything in the universe but the circuit ablated (mean over the prompts).
    pub ld_circuit_only: f32,
    /// The metric with the circuit ablated (mean over the prompts).
    pub ld_circuit_ablated: f32,
    /// The metric with the whole universe ablated (mean over the prompts).
    pub ld_all_ablated: f32,
    /// The ablation used.
    pub ablation: Ablation,
    /// Whether the MLPs were in the ablated universe.
    pub include_mlps: bool,
}

/// The category of exact figures, first match: `faithful` (suff ≥ 0.8, comp ≥ 0.5),
/// `backup_mechanisms` (suff ≥ 0.6, comp < 0.5), `incomplete` (suff < 0.6, comp ≥ 0.5),
/// `weak` (both < 0.3), else `moderate`.
pub fn category(suff: f32, comp: f32) -> &'static str {
    if suff >= 0.8 && comp >= 0.5 {
        "faithful"
    } else if suff >= 0.6 && comp < 0.5 {
        "backup_mechanisms"
    } else if suff < 0.6 && comp >= 0.5 {
        "incomplete"
    } else if suff < 0.3 && comp < 0.3 {
        "weak"
    } else {
        "moderate"
    }
}

/// Harmonic mean of sufficiency and comprehensiveness, each clipped at 0 (a negative figure
/// counts as none).
pub fn f1(s: f32, c: f32) -> f32 {
    let (s, c) = (s.max(0.0), c.max(0.0));
    if s + c <= 0.0 {
        0.0
    } else {
        2.0 * s * c / (s + c)
    }
}

crate::options! {
    /// Options of a circuit's evaluation (`faithfulness`, `CircuitEvaluator`).
    pub struct EvaluatorOptions {
        /// How ablated components are replaced.
        pub ablation: Ablation = Ablation::Resample,
        /// Whether the circuit's MLPs count (otherwise every MLP stays as it is).
        pub include_mlps: bool = false,
        /// Mean ablation only: the prompts (token ids, each as long as the contrast) whose mean
        /// activations replace the ablated ones; by default each prompt's clean and corrupted runs.
        pub mean_set: Option<Vec<Vec<u32>>> = None,
        /// The metric the figures are computed from.
        pub metric: Metric = Metric::default(),
    }
}


/// One prompt's state in a `CircuitEvaluator`.
struct PromptState {
    contrast: Contrast,
    scorer: Scorer,
    /// Per layer: the ablation value of `hook_z` and of `hook_mlp_out`, `[1, p, ...]`.
    values: Vec<(Tensor, Tensor)>,
    clean_ld: f32,
    all_ablated_ld: f32,
    /// Per layer: `hook_resid_pre` of the clean run and of the all-ablated run, `[1, p, d]`.
    /// A run that ablates a circuit equals the clean run before the circuit's first layer, and
    /// a run that keeps only the circuit equals the all-ablated run there: each starts at that
    /// layer from these.
    clean_resid: Vec<Tensor>,
    ablated_resid: Vec<Tensor>,
}

impl PromptState {
    /// A prompt whose all-ablated run (and clean run, when `clean_resid` is empty) is still
    /// to do: `CircuitEvaluator::complete` runs it.
    fn pending(contrast: &Contrast, scorer: Scorer, values: Vec<(Tensor, Tensor)>, clean_ld: f32, clean_resid: Vec<Tensor>) -> Self {
        PromptState { contrast: contrast.clone(), scorer, values, clean_ld, all_ablated_ld: 0.0, clean_resid, ablated_resid: Vec::new() }
    }
}

/// LDs of one circuit on one prompt: the circuit alone, and the circuit ablated.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PromptLds {
    /// The metric of the clean run.
    pub clean_ld: f32,
    /// The metric with everything in the universe but the circuit ablated.
    pub ld_circuit_only: f32,
    /// The metric with the circuit ablated.
    pub ld_circuit_ablated: f32,
    /// The metric with the whole universe ablated.
    pub ld_all_ablated: f32,
}

/// Evaluates many circuits against one or more contrasts (a prompt set), batched; the ablation
/// values are computed once. Over a prompt set the figures are ratios of sums:
/// `sufficiency = Σ(ld_only − B) / Σ(LD_clean − B)` and likewise comprehensiveness.
pub struct CircuitEvaluator<'a> {
    model: &'a Model,
    include_mlps: bool,
    prompts: Vec<PromptState>,
    /// The ablation the evaluator's replacement values were computed with.
    pub ablation: Ablation,
}

impl<'a> CircuitEvaluator<'a> {
    /// `mean_set`: the prompts (same token count as the contrast) whose mean activations
    /// `Ablation::Mean` uses; by default each prompt's clean and corrupted runs.
    pub fn new(model: &'a Model, contrast: &Contrast, opts: &EvaluatorOptions) -> Result<Self> {
        Self::for_set(model, std::slice::from_ref(contrast), opts)
    }

    /// The evaluator of a prompt set: the figures are ratios of sums over the prompts.
    pub fn for_set(model: &'a Model, contrasts: &[Contrast], opts: &EvaluatorOptions) -> Result<Self> {
        let (ablation, include_mlps, mean_set) = (opts.ablation, opts.include_mlps, opts.mean_set.as_deref());
        if contrasts.is_empty() {
            return Err(Error::Invalid("no prompts to evaluate the circuit on".into()));
        }
        let layers = model.config().n_layers;
        let points = Self::run_points(layers);
        let mut prompts = Vec::with_capacity(contrasts.len());
        for contrast in contrasts {
            contrast.check(model)?;
            let scorer = Scorer::new(model, contrast, &opts.metric)?;
            let set: Vec<Vec<u32>> = match (ablation, mean_set) {
                (Ablation::Mean, Some(s)) => {
                    if s.iter().any(|t| t.len() != contrast.n_pos()) {
                        return Err(Error::Invalid("mean ablation prompts must have the clean prompt's token count".into()));
                    }
                    s.to_vec()
                }
                _ => vec![contrast.clean.clone(), contrast.corrupted.clone()],
            };
            let out = model.forward(&Batch::new(&set)?, &scorer.hooks().cache(points.iter().copied()))?;
            let values = (0..layers)
                .map(|l| {
                    let pick = |p: HookPoint| -> Result<Tensor> {
                        let a = out.cache.get(p)?;
                        Ok(match ablation {
                            Ablation::Resample => a.narrow(0, 1, 1)?,
                            Ablation::Mean => a.mean_keepdim(0)?,
                            Ablation::Zero => a.narrow(0, 0, 1)?.zeros_like()?,
                        })
                    };
                    Ok((pick(HookPoint::Z(l))?, pick(HookPoint::MlpOut(l))?))
                })
                .collect::<Result<Vec<_>>>()?;
            // When the set's first prompt is the clean one (every case but a given mean set),
            // this run is also the clean run.
            let (clean_ld, clean_resid) = if set[0] == contrast.clean {
                let resid = (0..layers).map(|l| Ok(out.cache.get(HookPoint::ResidPre(l))?.narrow(0, 0, 1)?)).collect::<Result<Vec<_>>>()?;
                (scorer.values(&out)?[0], resid)
            } else {
                (0.0, Vec::new())
            };
            prompts.push(PromptState::pending(contrast, scorer, values, clean_ld, clean_resid));
        }
        Self::completed(model, include_mlps, prompts, ablation)
    }

    /// The evaluator, after each pending prompt's remaining runs.
    fn completed(model: &'a Model, include_mlps: bool, prompts: Vec<PromptState>, ablation: Ablation) -> Result<Self> {
        let mut ev = CircuitEvaluator { model, include_mlps, prompts, ablation };
        for i in 0..ev.prompts.len() {
            ev.complete(i)?;
        }
        Ok(ev)
    }

    /// Runs what prompt `i` still lacks from the tokens: the all-ablated run, and the clean run
    /// when it was not given.
    fn complete(&mut self, i: usize) -> Result<()> {
        let empty = Circuit::default();
        let has_clean = !self.prompts[i].clean_resid.is_empty();
        let rows: &[Ablate] = if has_clean { &[Ablate::Complement(&empty)] } else { &[Ablate::Nothing, Ablate::Complement(&empty)] };
        let (lds, resid) = self.run_from_tokens(i, rows)?;
        let row = |r: usize| resid.iter().map(|t| t.narrow(0, r, 1)).collect::<candle_core::Result<Vec<_>>>();
        let st = &mut self.prompts[i];
        if !has_clean {
            st.clean_ld = lds[0];
            st.clean_resid = row(0)?;
        }
        st.all_ablated_ld = lds[rows.len() - 1];
        st.ablated_resid = row(rows.len() - 1)?;
        Ok(())
    }

    /// The evaluator of one contrast with resample ablation, from a clean run that cached
    /// `hook_resid_pre` and a corrupted run that cached `hook_z` and `hook_mlp_out` at every
    /// layer (`[1, ...]` each; `analyze` takes them from its attribution runs). Only the
    /// all-ablated run is left to do.
    pub(crate) fn from_runs(model: &'a Model, contrast: &Contrast, scorer: Scorer, include_mlps: bool, runs: &Runs, clean_ld: f32) -> Result<Self> {
        let layers = model.config().n_layers;
        let values = (0..layers)
            .map(|l| Ok((runs.corrupted.get(HookPoint::Z(l))?.clone(), runs.corrupted.get(HookPoint::MlpOut(l))?.clone())))
            .collect::<Result<Vec<_>>>()?;
        let clean_resid = (0..layers).map(|l| Ok(runs.clean.get(HookPoint::ResidPre(l))?.clone())).collect::<Result<Vec<_>>>()?;
        let prompt = PromptState::pending(contrast, scorer, values, clean_ld, clean_resid);
        Self::completed(model, include_mlps, vec![prompt], Ablation::Resample)
    }

    /// The points `from_runs` needs cached in the clean and corrupted runs.
    pub(crate) fn run_points(layers: usize) -> Vec<HookPoint> {
        (0..layers).flat_map(|l| [HookPoint::ResidPre(l), HookPoint::Z(l), HookPoint::MlpOut(l)]).collect()
    }

    /// Number of prompts the evaluator judges circuits on.
    pub fn n_prompts(&self) -> usize {
        self.prompts.len()
    }

    /// The hooks that apply each row's ablation from layer `first` on.
    fn hooks(&self, i: usize, rows: &[&Ablate], first: usize) -> Hooks {
        let cfg = &self.model.config();
        let st = &self.prompts[i];
        let mut hooks = st.scorer.hooks();
        for l in first..cfg.n_layers {
            let (z, mlp) = &st.values[l];
            for (r, ab) in rows.iter().enumerate() {
                let (circuit, complement) = match ab {
                    Ablate::Complement(c) => (*c, true),
                    Ablate::Circuit(c) => (*c, false),
                    Ablate::Nothing => continue,
                };
                let in_circuit: Vec<usize> = circuit.heads.iter().filter(|h| h.layer == l).map(|h| h.head).collect();
                let heads: Vec<usize> = (0..cfg.n_heads).filter(|h| in_circuit.contains(h) != complement).collect();
                if !heads.is_empty() {
                    hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z.clone())).heads(heads).batch(vec![r]));
                }
                if self.include_mlps && (circuit.mlps.contains(&l) != complement) {
                    hooks = hooks.intervene(Intervention::new(HookPoint::MlpOut(l), Action::Replace(mlp.clone())).batch(vec![r]));
                }
            }
        }
        hooks
    }

    /// LDs of prompt `i`'s runs with the given ablations, and each layer's `hook_resid_pre`
    /// (`[rows, p, d]`), all from the tokens in one batch.
    fn run_from_tokens(&self, i: usize, rows: &[Ablate]) -> Result<(Vec<f32>, Vec<Tensor>)> {
        let st = &self.prompts[i];
        let layers = self.model.config().n_layers;
        let n = rows.len();
        let refs: Vec<&Ablate> = rows.iter().collect();
        let hooks = self.hooks(i, &refs, 0).cache((0..layers).map(HookPoint::ResidPre));
        let out = self.model.forward(&Batch::new(&vec![st.contrast.clean.clone(); n])?, &hooks)?;
        let resid = (0..layers).map(|l| Ok(out.cache.get(HookPoint::ResidPre(l))?.clone())).collect::<Result<Vec<_>>>()?;
        Ok((st.scorer.values(&out)?, resid))
    }

    /// The first layer where a row's run departs from the run it starts from (the clean run
    /// for `Circuit`, the all-ablated run for `Complement`); the last layer when it never does.
    fn first_layer(&self, ab: &Ablate) -> usize {
        let last = self.model.config().n_layers - 1;
        let c = match ab {
            Ablate::Complement(c) | Ablate::Circuit(c) => c,
            Ablate::Nothing => return last,
        };
        let heads = c.heads.iter().map(|h| h.layer);
        let mlps = c.mlps.iter().copied().filter(|_| self.include_mlps);
        heads.chain(mlps).min().unwrap_or(last).min(last)
    }

    /// LDs of prompt `i`'s clean run with the given ablations, one row each. Each row starts at
    /// its circuit's first layer from the clean or all-ablated residual stream (the runs are
    /// equal before it); rows are sorted by that layer and batched 8 at a time.
    fn run(&self, i: usize, rows: &[Ablate]) -> Result<Vec<f32>> {
        let st = &self.prompts[i];
        let starts: Vec<usize> = rows.iter().map(|ab| self.first_layer(ab)).collect();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&r| std::cmp::Reverse(starts[r]));
        // Rows that start at the same layer run together (a row started earlier than it needs
        // costs the layers between), at most 8 a batch.
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        for &r in &order {
            match chunks.last_mut() {
                Some(c) if c.len() < 8 && starts[c[0]] == starts[r] => c.push(r),
                _ => chunks.push(vec![r]),
            }
        }
        let mut lds = vec![0f32; rows.len()];
        for chunk in &chunks {
            let n = chunk.len();
            let first = starts[chunk[0]];
            let picked: Vec<&Ablate> = chunk.iter().map(|&r| &rows[r]).collect();
            let resid = picked
                .iter()
                .map(|ab| match ab {
                    Ablate::Complement(_) => &st.ablated_resid[first],
                    _ => &st.clean_resid[first],
                })
                .cloned()
                .collect::<Vec<_>>();
            let resid = Tensor::cat(&resid, 0)?;
            let lengths = vec![st.contrast.n_pos(); n];
            let hooks = self.hooks(i, &picked, first);
            let out = self.model.forward_from(Start::Residual { layer: first, resid: &resid, lengths: &lengths }, &hooks)?;
            let ld = st.scorer.eval(&out)?;
            for (&r, v) in chunk.iter().zip(ld.to_dtype(DType::F32)?.to_vec1::<f32>()?) {
                lds[r] = v;
            }
        }
        Ok(lds)
    }

    fn check(&self, circuits: &[Circuit]) -> Result<()> {
        let cfg = &self.model.config();
        for c in circuits {
            for h in &c.heads {
                h.check(cfg)?;
            }
            if let Some(&l) = c.mlps.iter().find(|&&l| l >= cfg.n_layers) {
                return Err(Error::LayerOutOfRange { layer: l, n_layers: cfg.n_layers });
            }
        }
        Ok(())
    }

    /// Per circuit, per prompt: the LDs of the ablation runs (two runs per circuit and prompt).
    pub fn prompt_lds(&self, circuits: &[Circuit]) -> Result<Vec<Vec<PromptLds>>> {
        self.check(circuits)?;
        let rows: Vec<Ablate> = circuits.iter().flat_map(|c| [Ablate::Complement(c), Ablate::Circuit(c)]).collect();
        let mut per_circuit = vec![Vec::with_capacity(self.prompts.len()); circuits.len()];
        for (i, st) in self.prompts.iter().enumerate() {
            let lds = self.run(i, &rows)?;
            for (k, pair) in lds.chunks(2).enumerate() {
                per_circuit[k].push(PromptLds {
                    clean_ld: st.clean_ld,
                    ld_circuit_only: pair[0],
                    ld_circuit_ablated: pair[1],
                    ld_all_ablated: st.all_ablated_ld,
                });
            }
        }
        Ok(per_circuit)
    }

    /// Exact faithfulness of each circuit over the prompt set.
    pub fn evaluate(&self, circuits: &[Circuit]) -> Result<Vec<Faithfulness>> {
        Ok(self
            .prompt_lds(circuits)?
            .iter()
            .map(|lds| figures(lds, self.ablation, self.include_mlps))
            .collect())
    }
}

/// Faithfulness from per-prompt LDs (ratios of sums; averages of the LDs).
pub fn figures(lds: &[PromptLds], ablation: Ablation, include_mlps: bool) -> Faithfulness {
    let n = lds.len().max(1) as f32;
    let sum = |f: &dyn Fn(&PromptLds) -> f32| lds.iter().map(f).sum::<f32>();
    let span = sum(&|p| p.clean_ld - p.ld_all_ablated);
    let norm = |x: f32| if span.abs() > 1e-12 { x / span } else { 0.0 };
    let s = norm(sum(&|p| p.ld_circuit_only - p.ld_all_ablated));
    let c = norm(sum(&|p| p.clean_ld - p.ld_circuit_ablated));
    Faithfulness {
        sufficiency: s,
        comprehensiveness: c,
        f1: f1(s, c),
        category: category(s, c).to_string(),
        suff_is_approx: false,
        taylor_sufficiency: None,
        clean_ld: sum(&|p| p.clean_ld) / n,
        ld_circuit_only: sum(&|p| p.ld_circuit_only) / n,
        ld_circuit_ablated: sum(&|p| p.ld_circuit_ablated) / n,
        ld_all_ablated: sum(&|p| p.ld_all_ablated) / n,
        ablation,
        include_mlps,
    }
}

enum Ablate<'c> {
    /// The clean run as it is.
    Nothing,
    /// Ablate everything in the universe except the circuit.
    Complement(&'c Circuit),
    /// Ablate the circuit.
    Circuit(&'c Circuit),
}

/// Faithfulness of one circuit; `attributions[layer][head]` adds the Taylor estimate.
pub fn faithfulness(model: &Model, contrast: &Contrast, circuit: &Circuit, opts: &EvaluatorOptions, attributions: Option<&[Vec<f32>]>) -> Result<Faithfulness> {
    let ev = CircuitEvaluator::new(model, contrast, opts)?;
    let mut f = ev.evaluate(std::slice::from_ref(circuit))?.remove(0);
    f.taylor_sufficiency = attributions.map(|a| taylor_sufficiency(circuit, a, f.clean_ld));
    Ok(f)
}

crate::options! {
    /// Options of `circuit_faithfulness`: the circuit, and how it is judged.
    pub struct CircuitFaithfulnessOptions {
        /// The circuit's heads (repeatable).
        pub heads: Vec<Head> = Vec::new(),
        /// Layers whose MLP is in the circuit (with include_mlps).
        pub mlps: Vec<usize> = Vec::new(),
        /// How ablated components are replaced.
        pub ablation: Ablation = Ablation::Resample,
        /// Whether MLPs count as components (otherwise every MLP stays as it is).
        pub include_mlps: bool = false,
        /// The metric the figures are computed from.
        pub metric: Metric = Metric::default(),
        /// Also the first-order Taylor estimate of the sufficiency (one attribution pass).
        pub taylor: bool = true,
    }
}

/// The exact faithfulness of a circuit given by its heads (and MLPs): what a researcher editing
/// a circuit re-scores.
pub fn circuit_faithfulness(model: &Model, contrast: &Contrast, opts: &CircuitFaithfulnessOptions) -> Result<Faithfulness> {
    let circuit = Circuit { heads: opts.heads.clone(), mlps: opts.mlps.clone() };
    for h in &circuit.heads {
        h.check(model.config())?;
    }
    for &l in &circuit.mlps {
        model.config().check_layer(l)?;
    }
    let ev = EvaluatorOptions { ablation: opts.ablation, include_mlps: opts.include_mlps, mean_set: None, metric: opts.metric.clone() };
    let attributions = if opts.taylor {
        let a = crate::methods::attribution::AttributionOptions { metric: opts.metric.clone(), ..Default::default() };
        Some(crate::methods::attribution::attribute(model, contrast, &a)?.scores)
    } else {
        None
    };
    faithfulness(model, contrast, &circuit, &ev, attributions.as_deref())
}

/// The reference tool's estimate: `Σ_{h∈C} attr(h) / LD_clean`.
pub fn taylor_sufficiency(circuit: &Circuit, attributions: &[Vec<f32>], clean_ld: f32) -> f32 {
    let s: f32 = circuit.heads.iter().filter_map(|h| attributions.get(h.layer).and_then(|r| r.get(h.head))).sum();
    if clean_ld.abs() > 1e-12 {
        s / clean_ld
    } else {
        0.0
    }
}
