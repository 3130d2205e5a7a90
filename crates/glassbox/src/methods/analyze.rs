//! `analyze`: one call from a prompt to a circuit with exact faithfulness figures.
//!
//! Attribution (Taylor or integrated gradients) ranks the heads; the minimum faithful circuit
//! grows and prunes by exact sufficiency; the circuit's faithfulness is reported exactly, with
//! the reference tool's Taylor sufficiency beside it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::attribution::{attribute, attribute_caching, ranked, AttributionOptions, Component, Method, Scored};
use crate::methods::attention::AttentionOptions;
use crate::methods::bootstrap::{bootstrap, Bootstrap, BootstrapOptions};
use crate::methods::circuit::{minimum_faithful_circuit, CircuitOptions, Step};
use crate::methods::faithfulness::{taylor_sufficiency, Ablation, Circuit, CircuitEvaluator, EvaluatorOptions, Faithfulness};
use crate::methods::logit_lens::{logit_lens, LogitLens, LogitLensOptions};
use crate::methods::{Contrast, Head, Metric, Prompt, Scorer};
use crate::model::Model;

crate::options! {
    /// Options of `analyze` (and of `analyze_set`, which also reads `n_boot` and `seed`).
    pub struct AnalyzeOptions {
        /// How heads are ranked: Taylor attribution or integrated gradients.
        pub method: Method = Method::Taylor,
        /// Integration steps of integrated gradients.
        pub n_steps: usize = crate::methods::attribution::DEFAULT_N_STEPS,
        /// Target exact sufficiency of the circuit.
        pub target: f32 = 0.85,
        /// Most heads the circuit may grow to.
        pub max_heads: usize = 40,
        /// How ablated heads are replaced.
        pub ablation: Ablation = Ablation::Resample,
        /// Count every MLP in the ablated universe (the circuit itself holds heads only).
        pub include_mlps: bool = false,
        /// Include the logit lens in the result (one prompt only).
        pub logit_lens: bool = false,
        /// The metric attributed and judged.
        pub metric: Metric = Metric::default(),
        /// Prompt sets: bootstrap resamples of the prompts for the confidence intervals.
        pub n_boot: usize = 1000,
        /// Prompt sets: seed of the bootstrap resampling.
        pub seed: u64 = 0,
    }
}

impl AnalyzeOptions {
    /// Error unless the options are in range: steps (for integrated gradients) and the
    /// circuit's largest size within `limits`, a target sufficiency from 0 to 1.
    pub fn check(&self) -> crate::error::Result<()> {
        crate::methods::attribution::check_steps(self.method, self.n_steps)?;
        super::check_number("the target sufficiency", self.target, 0.0, 1.0)?;
        super::check_count("the most heads of the circuit", self.max_heads, super::limits::MAX_HEADS)
    }

    fn circuit(&self) -> CircuitOptions {
        CircuitOptions { target: self.target, max_heads: self.max_heads }
    }

    fn evaluator(&self) -> EvaluatorOptions {
        EvaluatorOptions { ablation: self.ablation, include_mlps: self.include_mlps, mean_set: None, metric: self.metric.clone() }
    }
}

/// Result of `analyze`: head attributions, the minimum faithful circuit and its exact faithfulness.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    /// The model's name.
    pub model: String,
    /// The clean prompt.
    pub prompt: String,
    /// The correct answer.
    pub correct: String,
    /// The incorrect answer.
    pub incorrect: String,
    /// The corrupted prompt.
    pub corrupted_prompt: String,
    /// How the corrupted prompt was made: `given` or `name_swap`.
    pub corruption: String,
    /// How the heads were ranked (Taylor or integrated gradients).
    pub method: Method,
    /// The metric's name (`logit_diff`, `logprob`, `prob`, `kl`, `custom`).
    pub metric: String,
    /// The circuit's heads, by decreasing attribution.
    pub circuit: Vec<Head>,
    /// Attribution per head, by name (`L09H09`).
    pub attributions: BTreeMap<String, f32>,
    /// The 20 heads of largest |attribution|, by decreasing |score|.
    pub top_heads: Vec<Scored>,
    /// The metric of the clean run.
    pub clean_ld: f32,
    /// The metric of the corrupted run.
    pub corrupted_ld: f32,
    /// Exact faithfulness of the circuit, with the Taylor sufficiency estimate beside it.
    pub faithfulness: Faithfulness,
    /// Whether the circuit reached the target sufficiency within `max_heads`.
    pub target_reached: bool,
    /// The search's add and remove steps, in order.
    pub trajectory: Vec<Step>,
    /// The logit lens of the clean prompt, when `logit_lens` was asked for.
    pub logit_lens: Option<LogitLens>,
    /// The attention type of each circuit head on the clean prompt (`{"L09H06": "induction"}`,
    /// as `attention_patterns` types them), for the picture.
    #[serde(default)]
    pub head_types: BTreeMap<String, String>,
}

/// Ranks every head by attribution, grows and prunes the minimum faithful circuit by exact
/// sufficiency and reports its faithfulness; errors on options out of range or a contrast that
/// does not fit the model.
pub fn analyze(model: &Model, contrast: &Contrast, opts: &AnalyzeOptions) -> Result<Analysis> {
    opts.check()?;
    // The attribution's clean and corrupted runs also give the evaluator its clean residual
    // stream and resample values, so those runs are not repeated.
    let resample = opts.ablation == Ablation::Resample;
    let extra = if resample { CircuitEvaluator::run_points(model.config().n_layers) } else { Vec::new() };
    let attr_opts = AttributionOptions { component: Component::Heads, method: opts.method, n_steps: opts.n_steps, metric: opts.metric.clone() };
    let (attr, runs) = attribute_caching(model, contrast, &attr_opts, &extra)?;
    let ev = match runs {
        Some(runs) if resample => {
            let scorer = Scorer::new(model, contrast, &opts.metric)?;
            CircuitEvaluator::from_runs(model, contrast, scorer, opts.include_mlps, &runs, attr.clean_ld)?
        }
        _ => CircuitEvaluator::new(model, contrast, &opts.evaluator())?,
    };
    let search = minimum_faithful_circuit(&ev, &attr.scores, &opts.circuit())?;
    let mut faithfulness = search.faithfulness;
    let circuit = Circuit { heads: search.circuit.clone(), mlps: vec![] };
    faithfulness.taylor_sufficiency = Some(taylor_sufficiency(&circuit, &attr.scores, attr.clean_ld));
    let logit_lens = if opts.logit_lens {
        let prompt = Prompt { tokens: contrast.clean.clone(), correct: contrast.correct_id, incorrect: contrast.incorrect_id };
        Some(logit_lens(model, &prompt, &LogitLensOptions::default())?)
    } else {
        None
    };
    let head_types = if search.circuit.is_empty() {
        BTreeMap::new()
    } else {
        let view = AttentionOptions { heads: Some(search.circuit.clone()), ..Default::default() };
        crate::methods::attention::attention_patterns(model, &contrast.clean, &view)?.head_types
    };
    Ok(Analysis {
        model: model.name().to_string(),
        prompt: contrast.clean_prompt.clone(),
        correct: contrast.correct.clone(),
        incorrect: contrast.incorrect.clone(),
        corrupted_prompt: contrast.corrupted_prompt.clone(),
        corruption: contrast.corruption.clone(),
        method: opts.method,
        metric: opts.metric.name().to_string(),
        circuit: search.circuit,
        attributions: attr.attributions,
        top_heads: attr.top.into_iter().take(20).collect(),
        clean_ld: attr.clean_ld,
        corrupted_ld: attr.corrupted_ld,
        faithfulness,
        target_reached: search.reached,
        head_types,
        trajectory: search.trajectory,
        logit_lens,
    })
}

/// `analyze` over a prompt set: mean attributions, one circuit judged on all prompts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetAnalysis {
    /// The model's name.
    pub model: String,
    /// Number of prompts.
    pub n: usize,
    /// How the heads were ranked (Taylor or integrated gradients).
    pub method: Method,
    /// The metric's name (`logit_diff`, `logprob`, `prob`, `kl`, `custom`).
    pub metric: String,
    /// Mean metric of the clean runs.
    pub mean_clean_ld: f32,
    /// Mean metric of the corrupted runs.
    pub mean_corrupted_ld: f32,
    /// The circuit found from the mean attributions, by decreasing mean attribution.
    pub circuit: Vec<Head>,
    /// Mean attribution per head.
    pub attributions: BTreeMap<String, f32>,
    /// The 20 heads of largest |mean attribution|, by decreasing |score|.
    pub top_heads: Vec<Scored>,
    /// Exact faithfulness of the circuit over the set (ratios of sums over the prompts).
    pub faithfulness: Faithfulness,
    /// Whether the circuit reached the target sufficiency within `max_heads`.
    pub target_reached: bool,
    /// The search's add and remove steps, in order.
    pub trajectory: Vec<Step>,
    /// Percentile bootstrap of the exact figures over the prompts.
    pub bootstrap: Bootstrap,
    /// Each prompt's figures for the circuit, in input order.
    pub prompts: Vec<PromptFigures>,
}

/// One prompt's metric values for the set's circuit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptFigures {
    /// The clean prompt.
    pub prompt: String,
    /// The corrupted prompt.
    pub corrupted_prompt: String,
    /// The metric of the clean run.
    pub clean_ld: f32,
    /// The metric of the corrupted run.
    pub corrupted_ld: f32,
    /// The metric with everything but the circuit ablated.
    pub ld_circuit_only: f32,
    /// The metric with the circuit ablated.
    pub ld_circuit_ablated: f32,
}

/// Runs `analyze` over a prompt set; `progress(done, total, stage)` is called as it goes.
pub fn analyze_set(model: &Model, contrasts: &[Contrast], opts: &AnalyzeOptions, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<SetAnalysis> {
    let (n_boot, seed) = (opts.n_boot, opts.seed);
    let cfg = &model.config();
    let n = contrasts.len();
    super::check_count("the number of prompts", n, super::limits::N_PROMPTS)?;
    super::check_count("the number of bootstrap resamples", n_boot, super::limits::N_BOOT)?;
    opts.check()?;
    let attr_opts = AttributionOptions { component: Component::Heads, method: opts.method, n_steps: opts.n_steps, metric: opts.metric.clone() };
    let mut sum = vec![vec![0f32; cfg.n_heads]; cfg.n_layers];
    let (mut clean, mut corrupted) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, c) in contrasts.iter().enumerate() {
        let a = attribute(model, c, &attr_opts)?;
        for (row, s) in sum.iter_mut().zip(&a.scores) {
            for (x, y) in row.iter_mut().zip(s) {
                *x += y / n as f32;
            }
        }
        clean.push(a.clean_ld);
        corrupted.push(a.corrupted_ld);
        progress(i + 1, n, "attribution");
    }
    progress(0, 1, "ablation baselines");
    let ev = CircuitEvaluator::for_set(model, contrasts, &opts.evaluator())?;
    progress(0, 1, "circuit search");
    let search = minimum_faithful_circuit(&ev, &sum, &opts.circuit())?;
    let circuit = Circuit { heads: search.circuit.clone(), mlps: vec![] };
    let lds = ev.prompt_lds(std::slice::from_ref(&circuit))?.remove(0);
    let mean_clean = clean.iter().sum::<f32>() / n as f32;
    let mut faithfulness = search.faithfulness;
    faithfulness.taylor_sufficiency = Some(taylor_sufficiency(&circuit, &sum, mean_clean));
    let (named, mut flat) = ranked(&sum, Component::Heads);
    flat.truncate(20);
    Ok(SetAnalysis {
        model: model.name().to_string(),
        n,
        method: opts.method,
        metric: opts.metric.name().to_string(),
        mean_clean_ld: mean_clean,
        mean_corrupted_ld: corrupted.iter().sum::<f32>() / n as f32,
        circuit: search.circuit,
        attributions: named,
        top_heads: flat,
        faithfulness,
        target_reached: search.reached,
        trajectory: search.trajectory,
        bootstrap: bootstrap(&lds, &BootstrapOptions { n_boot, alpha: 0.05, seed })?,
        prompts: contrasts
            .iter()
            .zip(&lds)
            .zip(&corrupted)
            .map(|((c, l), &corr)| PromptFigures {
                prompt: c.clean_prompt.clone(),
                corrupted_prompt: c.corrupted_prompt.clone(),
                clean_ld: l.clean_ld,
                corrupted_ld: corr,
                ld_circuit_only: l.ld_circuit_only,
                ld_circuit_ablated: l.ld_circuit_ablated,
            })
            .collect(),
    })
}
