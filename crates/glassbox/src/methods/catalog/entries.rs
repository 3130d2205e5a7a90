//! The entries of the catalog: one `Def` per method, and `CATALOG`, the list of them. A new
//! method is one file under `methods/`, one `Def` here and one line in `CATALOG`.

use serde::{Deserialize, Serialize};

use super::{Def, Entry, Input, InputKind, Needs};
use crate::inputs::Contrast;
use crate::methods::*;
use crate::plot::{Plot, Svg};

fn none<R, O>(_: &R, _: &O) -> Vec<String> {
    Vec::new()
}

fn no_metric<O>(_: &O) -> Option<String> {
    None
}

fn plot_of<R: Plot>(r: &R) -> Svg {
    r.plot()
}

/// What works instead of first-order scores of KL, per kind of score.
const KL_HEADS: &str = "use integrated gradients (--method integrated_gradients), which integrates the gradient from the corrupted run, or exact patching (glassbox patch --metric kl)";
const KL_EDGES: &str = "use EAP-IG (--method eap-ig), which integrates the gradient from the corrupted run, or exact edge scores (glassbox evaluate --method exact)";

fn attribution_warnings(r: &attribution::Attribution, o: &attribution::AttributionOptions) -> Vec<String> {
    let kl = warnings::first_order_kl(&o.metric, o.method == attribution::Method::Taylor, KL_HEADS);
    let zero = || warnings::near_zero_scores(r.scores.iter().flatten().copied(), r.clean_ld - r.corrupted_ld, "attribution");
    let residual = warnings::ig_residual(r.completeness_residual, r.n_steps);
    kl.or_else(zero).into_iter().chain(residual).collect()
}

fn analyze_warnings(r: &AnalyzeResult, o: &analyze::AnalyzeOptions) -> Vec<String> {
    let kl = warnings::first_order_kl(&o.metric, o.method == attribution::Method::Taylor, KL_HEADS);
    match r {
        AnalyzeResult::One(a) => kl.or_else(|| warnings::near_zero_scores(a.attributions.values().copied(), a.clean_ld - a.corrupted_ld, "head attribution")).into_iter().collect(),
        AnalyzeResult::Set(s) => kl
            .or_else(|| warnings::near_zero_scores(s.attributions.values().copied(), s.mean_clean_ld - s.mean_corrupted_ld, "mean head attribution"))
            .into_iter()
            .chain(warnings::few_prompts(s.n))
            .collect(),
    }
}

const ONLY_MODEL: Needs = Needs { sae: false, model_b: false, transcoders: false };

/// `analyze`'s result: one prompt's analysis, or a prompt set's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnalyzeResult {
    /// A prompt set (tried first: it has `n` and `bootstrap`).
    Set(analyze::SetAnalysis),
    /// One prompt.
    One(analyze::Analysis),
}

static NEXT_TOKENS: Def<next_tokens::NextTokenOptions, next_tokens::NextTokens> = Def {
    name: "run",
    python: "next_tokens",
    summary: "Tokenize a prompt and show the model's most likely next tokens.",
    input: InputKind::Text,
    needs: ONLY_MODEL,
    run: |cx, i, o| next_tokens::next_tokens(cx.model, i.text()?.1, o),
    report: crate::report::next_tokens,
    plot: None,
    warnings: none,
    many: None,
    metric: no_metric,
};

static ANALYZE: Def<analyze::AnalyzeOptions, AnalyzeResult> = Def {
    name: "analyze",
    python: "analyze",
    summary: "Find the circuit behind a prediction, with exact faithfulness figures (one prompt, or a task set with bootstrap intervals).",
    input: InputKind::ContrastOrTask,
    needs: ONLY_MODEL,
    run: |cx, i, o| match i {
        Input::Set(..) => Ok(AnalyzeResult::Set(analyze::analyze_set(cx.model, &i.contrasts()?, o, &mut |d, t, s| crate::controls::step(d, t, s))?)),
        _ => Ok(AnalyzeResult::One(analyze::analyze(cx.model, i.contrast()?, o)?)),
    },
    report: |r, rows| match r {
        AnalyzeResult::Set(s) => crate::report::set_analysis(s, rows),
        AnalyzeResult::One(a) => crate::report::analysis(a, rows),
    },
    plot: Some(|r| match r {
        AnalyzeResult::Set(s) => crate::plot::results::set_analysis(s),
        AnalyzeResult::One(a) => a.plot(),
    }),
    warnings: analyze_warnings,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static ATTRIBUTION: Def<attribution::AttributionOptions, attribution::Attribution> = Def {
    name: "attribution",
    python: "attribute",
    summary: "Attribution patching (Taylor) or integrated gradients per head, MLP or attention output.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| attribution::attribute(cx.model, i.contrast()?, o),
    report: crate::report::attribution,
    plot: Some(plot_of),
    warnings: attribution_warnings,
    many: Some(|cx, cs, o| attribution::attribute_many(cx.model, cs, o)),
    metric: |o| Some(o.metric.name().to_string()),
};

static PATCH: Def<patching::PatchingOptions, patching::Patching> = Def {
    name: "patch",
    python: "exact_patching",
    summary: "Exact activation patching of every head and MLP (batched).",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| patching::exact_patching(cx.model, i.contrast()?, o),
    report: crate::report::patching,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static PATH_PATCH: Def<path_patching::PathPatchingOptions, path_patching::PathPatching> = Def {
    name: "path-patch",
    python: "path_patching",
    summary: "Path patching: the effect of the paths from every earlier head to a receiver.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| path_patching::path_patching(cx.model, i.contrast()?, o),
    report: crate::report::path_patching,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static EDGES: Def<edges::EdgeOptions, edges::EdgeAttribution> = Def {
    name: "edges",
    python: "edge_attribution",
    summary: "Edge attribution patching (EAP, or EAP-IG) over every sender → receiver edge.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| edges::edge_attribution(cx.model, i.contrast()?, o),
    report: crate::report::edges,
    plot: Some(plot_of),
    warnings: |_, o| warnings::first_order_kl(&o.metric, o.method == attribution::Method::Taylor, KL_EDGES).into_iter().collect(),
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static EVALUATE: Def<evaluate::EvaluateOptions, evaluate::CircuitEvaluation> = Def {
    name: "evaluate",
    python: "evaluate_circuits",
    summary: "MIB's circuit evaluation: circuits of 0.1–100 % of the edges from a method's scores, each measured exactly by edge patching; faithfulness curves, CPR and CMD with intervals.",
    input: InputKind::ContrastOrTask,
    needs: ONLY_MODEL,
    run: |cx, i, o| evaluate::evaluate(cx.model, &i.contrasts()?, o),
    report: crate::report::circuit_evaluation,
    plot: Some(plot_of),
    warnings: |r, o| warnings::first_order_kl(&o.metric, o.method == evaluate::ScoreMethod::Eap, KL_EDGES).into_iter().chain(evaluate::warnings(r, o)).collect(),
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static LOGIT_LENS: Def<logit_lens::LogitLensOptions, logit_lens::LogitLens> = Def {
    name: "logit-lens",
    python: "logit_lens",
    summary: "Logit lens: the logit difference and top tokens after every layer, and per-head direct effects.",
    input: InputKind::Prompt,
    needs: ONLY_MODEL,
    run: |cx, i, o| logit_lens::logit_lens(cx.model, i.prompt()?, o),
    report: crate::report::logit_lens,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static TOKEN_ATTRIBUTION: Def<token_attribution::TokenAttributionOptions, token_attribution::TokenAttribution> = Def {
    name: "token-attribution",
    python: "token_attribution",
    summary: "Token saliency: gradient × input, or integrated gradients from a baseline.",
    input: InputKind::Prompt,
    needs: ONLY_MODEL,
    run: |cx, i, o| token_attribution::token_attribution(cx.model, i.prompt()?, o),
    report: crate::report::token_attribution,
    plot: Some(plot_of),
    warnings: |r, _| warnings::ig_residual(r.completeness_residual, r.n_steps).into_iter().collect(),
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static ATTENTION: Def<attention::AttentionOptions, attention::AttentionPatterns> = Def {
    name: "attention",
    python: "attention_patterns",
    summary: "Attention patterns, entropy and head types of a prompt.",
    input: InputKind::Text,
    needs: ONLY_MODEL,
    run: |cx, i, o| attention::attention_patterns(cx.model, i.text()?.1, o),
    report: crate::report::attention,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: no_metric,
};

static STABILITY: Def<stability::StabilityOptions, stability::Stability> = Def {
    name: "stability",
    python: "attribution_stability",
    summary: "Attribution stability across random corruptions (per-head stability, Kendall τ-b).",
    input: InputKind::Prompt,
    needs: ONLY_MODEL,
    run: |cx, i, o| stability::attribution_stability_with_progress(cx.model, i.prompt()?, o, &mut |d, t| crate::controls::step(d, t, "corruptions")),
    report: crate::report::stability,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static COMPOSITION: Def<composition::CompositionOptions, composition::Composition> = Def {
    name: "composition",
    python: "all_composition_scores",
    summary: "Q/K/V composition scores between heads (Elhage et al. 2021), from the weights alone.",
    input: InputKind::Weights,
    needs: ONLY_MODEL,
    run: |cx, _, o| composition::all_composition_scores(cx.model, &o.heads, o),
    report: crate::report::composition,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: no_metric,
};

static SCRUB: Def<scrubbing::ScrubOptions, scrubbing::Scrubbing> = Def {
    name: "scrub",
    python: "causal_scrubbing",
    summary: "Causal scrubbing of a head → feature hypothesis on a generated prompt set.",
    input: InputKind::Task,
    needs: ONLY_MODEL,
    run: |cx, i, o| scrubbing::causal_scrubbing(cx.model, i.set()?, o),
    report: crate::report::scrubbing,
    plot: None,
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static FAITHFULNESS: Def<faithfulness::CircuitFaithfulnessOptions, faithfulness::Faithfulness> = Def {
    name: "faithfulness",
    python: "circuit_faithfulness",
    summary: "The exact faithfulness (sufficiency, comprehensiveness, F1) of a circuit you give.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| faithfulness::circuit_faithfulness(cx.model, i.contrast()?, o),
    report: crate::report::circuit_faithfulness,
    plot: None,
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static SAE_ATTRIBUTE: Def<sae_attribution::SaeAttributionOptions, sae_attribution::SaeAttribution> = Def {
    name: "sae-attribute",
    python: "sae_attribution",
    summary: "Which features of a sparse autoencoder or transcoder drive the prediction.",
    input: InputKind::Prompt,
    needs: Needs { sae: true, model_b: false, transcoders: false },
    run: |cx, i, o| sae_attribution::sae_attribution(cx.model, cx.sae()?, i.prompt()?, o),
    report: crate::report::sae_attribution,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static SAE_CIRCUIT: Def<sae_attribution::CircuitFeatureOptions, sae_attribution::CircuitFeatures> = Def {
    name: "sae-circuit-features",
    python: "sae_circuit_features",
    summary: "Which active SAE features the circuit's heads write to at the answer position (a linear approximation, stated).",
    input: InputKind::Prompt,
    needs: Needs { sae: true, model_b: false, transcoders: false },
    run: |cx, i, o| sae_attribution::circuit_features(cx.model, cx.sae()?, i.prompt()?, o),
    report: crate::report::circuit_features,
    plot: None,
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static GENERATE: Def<steering::GenerationOptions, steering::GenerationResult> = Def {
    name: "generate",
    python: "generate_text",
    summary: "Continue a prompt (greedy or sampled), optionally steered by a vector at a hook point.",
    input: InputKind::Text,
    needs: ONLY_MODEL,
    run: |cx, i, o| steering::generate(cx.model, i.text()?.0, o),
    report: crate::report::generation,
    plot: None,
    warnings: none,
    many: None,
    metric: no_metric,
};

static ALIGN: Def<alignment::AlignmentOptions, alignment::Alignment> = Def {
    name: "align",
    python: "align",
    summary: "Cross-model circuit alignment (FCAS) of two models' top heads, with a Monte Carlo null.",
    input: InputKind::ContrastOrTask,
    needs: Needs { sae: false, model_b: true, transcoders: false },
    run: |cx, i, o| {
        let b = cx.model_b()?;
        // Each model reads the input through its own tokenizer.
        let ca = i.contrasts()?;
        let cb = match i {
            Input::Set(t, _) => crate::tasks::generate(b, t)?.into_iter().map(|p| p.contrast).collect(),
            _ => {
                let c = i.contrast()?;
                let corrupted = (c.corruption == "given").then_some(c.corrupted_prompt.as_str());
                vec![Contrast::new(b, &c.clean_prompt, &c.correct, &c.incorrect, corrupted)?]
            }
        };
        alignment::align_models((cx.model, &ca), (b, &cb), o)
    },
    report: crate::report::alignment,
    plot: None,
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static GRAPH: Def<graph::GraphOptions, graph::AttributionGraph> = Def {
    name: "graph",
    python: "attribution_graph",
    summary: "The attribution graph of a prediction over a transcoder set: which features cause it, pruned, with replacement and completeness scores (the frontend's JSON).",
    input: InputKind::Prompt,
    needs: Needs { sae: false, model_b: false, transcoders: true },
    run: |cx, i, o| graph::graph(cx.model, cx.transcoders()?, i.prompt()?, o),
    report: crate::report::attribution_graph,
    plot: Some(plot_of),
    warnings: |r, _| graph::warnings(r),
    many: None,
    metric: |o| Some(o.target.name().to_string()),
};

static INTERVENE: Def<graph::intervene::InterventionOptions, graph::intervene::FeatureIntervention> = Def {
    name: "feature-intervention",
    python: "feature_intervention",
    summary: "Set a transcoder feature to a multiple of its activation and see the logit difference change, beside the attribution graph's prediction.",
    input: InputKind::Prompt,
    needs: Needs { sae: false, model_b: false, transcoders: true },
    run: |cx, i, o| graph::intervene::feature_intervention(cx.model, cx.transcoders()?, i.prompt()?, o),
    report: crate::report::feature_intervention,
    plot: None,
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

/// Every method, in the order front ends list them.
pub static CATALOG: &[&dyn Entry] = &[
    &ANALYZE,
    &ATTRIBUTION,
    &PATCH,
    &PATH_PATCH,
    &EDGES,
    &EVALUATE,
    &LOGIT_LENS,
    &TOKEN_ATTRIBUTION,
    &ATTENTION,
    &STABILITY,
    &COMPOSITION,
    &SCRUB,
    &FAITHFULNESS,
    &SAE_ATTRIBUTE,
    &SAE_CIRCUIT,
    &GRAPH,
    &INTERVENE,
    &GENERATE,
    &ALIGN,
    &NEXT_TOKENS,
];
