//! Circuit evaluation as in the Mechanistic Interpretability Benchmark's circuit-localization
//! track (Mueller et al. 2025): score every edge with a method, build circuits of the top
//! 0.1 % … 100 % of the edges, and measure each circuit's faithfulness exactly by edge-level
//! counterfactual patching (`patch.rs`).
//!
//! For a circuit `C` over a prompt set, `f(C) = (m̄(C) − m̄(∅)) / (m̄(N) − m̄(∅))`, where `m̄` is
//! the metric averaged over the prompts (a ratio of means, as MIB's evaluation code), `N` the
//! full model and `∅` the empty circuit (every edge patched). Circuits from signed scores (the
//! largest first) give CPR, the area under `f`; circuits from absolute scores give CMD, the
//! area under `|1 − f|`. Both areas are trapezoids over the fractions on a linear axis (MIB
//! passes the fractions themselves, not their logarithms, to its trapezoid rule), so with
//! MIB's fractions the axis spans 0.001 to 1 and the 50 % → 100 % step weighs most.

mod mib;
mod patch;
pub mod truth;

pub use patch::{check_model, circuit_metrics};
pub use truth::GroundTruthScore;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::FilePath;
use crate::methods::attribution::{check_steps, Method, DEFAULT_N_STEPS};
use crate::methods::bootstrap::{interval, Interval};
use crate::methods::edges::{all_edge_scores, Edge, EdgeGraph, EdgeOptions};
use crate::methods::{Contrast, Metric, Scorer};
use crate::model::Model;

/// MIB's circuit sizes, as fractions of the edges.
pub const MIB_FRACTIONS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// How many single-edge circuits `exact` scoring holds at once.
const EXACT_CHUNK: usize = 256;

/// The most patched runs (circuits × prompts) `exact` scoring may ask for.
pub const MAX_EXACT_RUNS: usize = 200_000;

crate::choices! {
    /// How the edges are scored before circuits are built from them.
    pub enum ScoreMethod {
        /// Edge attribution patching (first-order Taylor).
        Eap = "eap" | "taylor",
        /// EAP with integrated gradients (`n_steps`).
        EapIg = "eap-ig" | "eap_ig" | "ig" | "integrated_gradients",
        /// Exact: each edge patched alone, `m(N) − m(N without the edge)` (one run per edge and
        /// prompt: small models).
        Exact = "exact",
        /// Scores read from `scores_file`.
        File = "file",
    }
}

impl ScoreMethod {
    /// The attribution method behind EAP (Taylor) and EAP-IG (integrated gradients).
    fn attribution_method(self) -> Method {
        if self == ScoreMethod::EapIg {
            Method::IntegratedGradients
        } else {
            Method::Taylor
        }
    }
}

crate::options! {
    /// Options of `evaluate`.
    pub struct EvaluateOptions {
        /// How edges are scored: `eap`, `eap-ig`, `exact` (every edge patched alone: small
        /// models) or `file` (`scores_file`).
        pub method: ScoreMethod = ScoreMethod::Eap,
        /// Integration steps of EAP-IG.
        pub n_steps: usize = DEFAULT_N_STEPS,
        /// For `file`: a JSON list of `{"sender": "L09H09", "receiver": "logits", "score": 0.3}`
        /// (or `{"edges": [...]}`, or the edges of an `edges` result); edges it leaves out score 0.
        pub scores_file: Option<FilePath> = None,
        /// Circuit sizes as fractions of the edges, increasing (MIB's by default).
        pub fractions: Vec<f64> = MIB_FRACTIONS.to_vec(),
        /// Bootstrap resamples of the prompts for the intervals.
        pub n_boot: usize = 1000,
        /// The intervals are `1 − alpha` percentile intervals.
        pub alpha: f32 = 0.05,
        /// Seed of the resampling.
        pub seed: u64 = 0,
        /// Also write the mean edge scores as MIB's circuit-track JSON to this file (for MIB's
        /// own evaluation); `file` reads that format back.
        pub mib_out: Option<FilePath> = None,
        /// A circuit known to be true (MIB's circuit JSON with `in_graph`, or a JSON list of
        /// edge names): the result gives the scores' edge and node AUROC against it.
        pub ground_truth: Option<FilePath> = None,
        /// Also score every edge exactly and give the rank correlation of the method's scores
        /// with the exact ones (small models: one patched run per edge and prompt).
        pub compare_exact: bool = false,
        /// How many of the best-scored edges the result lists.
        pub top_k: usize = 20,
        /// The metric.
        pub metric: Metric = Metric::default(),
    }
}

/// The faithfulness of the circuits of one kind (signed or absolute scores), by size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    /// Edges in each circuit (`⌊fraction × edges⌋`, as MIB).
    pub n_edges: Vec<usize>,
    /// `f(C)` on the whole prompt set.
    pub faithfulness: Vec<f32>,
    /// Lower ends of the bootstrap intervals.
    pub ci_lo: Vec<f32>,
    /// Upper ends of the bootstrap intervals.
    pub ci_hi: Vec<f32>,
}

/// Result of `evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CircuitEvaluation {
    /// How the edges were scored.
    pub method: ScoreMethod,
    /// Integration steps, for EAP-IG.
    pub n_steps: Option<usize>,
    /// The metric's name.
    pub metric: String,
    /// Prompts evaluated.
    pub n_prompts: usize,
    /// Edges in the model's graph.
    pub n_edges: usize,
    /// The metric of the full model, averaged over the prompts (`m̄(N)`).
    pub clean_metric: f32,
    /// The metric with every edge patched, averaged over the prompts (`m̄(∅)`).
    pub corrupted_metric: f32,
    /// The circuit sizes, as fractions of the edges.
    pub fractions: Vec<f64>,
    /// Circuits of the largest signed scores (CPR's).
    pub signed: Curve,
    /// Circuits of the largest absolute scores (CMD's).
    pub absolute: Curve,
    /// Area under `f` of the signed circuits (higher is better).
    pub cpr: Interval,
    /// Area under `|1 − f|` of the absolute circuits (0 is best).
    pub cmd: Interval,
    /// How the areas are integrated.
    pub area_rule: String,
    /// Graph edges the scores file did not give (scored 0), for `file`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub edges_missing_from_file: Option<usize>,
    /// How the method's edge ranking agrees with exact single-edge patching (`compare_exact`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub agreement_with_exact: Option<RankAgreement>,
    /// The scores against a known circuit (`ground_truth`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ground_truth: Option<GroundTruthScore>,
    /// The best-scored edges (mean score over the prompts), by decreasing |score|.
    pub top_edges: Vec<Edge>,
    /// Bootstrap resamples.
    pub n_boot: usize,
    /// The intervals are `1 − alpha` intervals.
    pub alpha: f32,
    /// Seed of the resampling.
    pub seed: u64,
}

/// Rank correlation of a method's mean edge scores with exact single-edge patching's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankAgreement {
    /// Spearman's ρ of the signed scores (average ranks for ties); absent when either side's
    /// scores are all equal.
    pub spearman: Option<f32>,
    /// Spearman's ρ of the absolute scores (what circuits of absolute scores are built from).
    pub spearman_abs: Option<f32>,
    /// Share of the exact top 1 % of edges (by |score|, at least one) among the method's top 1 %.
    pub top1pct_overlap: f32,
}

/// Ranks from 1, ties given their average rank (Spearman's ρ, the AUROC's rank sum).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0f64; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            r[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: Pearson's correlation of the average ranks (NaN when either side is constant).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let (va, vb): (f64, f64) = (ra.iter().map(|x| (x - ma).powi(2)).sum(), rb.iter().map(|y| (y - mb).powi(2)).sum());
    cov / (va * vb).sqrt()
}

fn agreement(scores: &[f32], exact: &[f32]) -> RankAgreement {
    let f = |v: &[f32], abs: bool| -> Vec<f64> { v.iter().map(|&x| if abs { (x as f64).abs() } else { x as f64 }).collect() };
    let k = (scores.len() / 100).max(1);
    let top = |v: &[f32]| -> std::collections::HashSet<usize> { ranking(v, true).into_iter().take(k).collect() };
    let (a, b) = (top(scores), top(exact));
    RankAgreement {
        spearman: Some(spearman(&f(scores, false), &f(exact, false)) as f32).filter(|r| r.is_finite()),
        spearman_abs: Some(spearman(&f(scores, true), &f(exact, true)) as f32).filter(|r| r.is_finite()),
        top1pct_overlap: a.intersection(&b).count() as f32 / k as f32,
    }
}

/// How the areas are integrated, in words.
pub const AREA_RULE: &str = "trapezoids over the circuit fractions on a linear axis, as MIB's evaluation code: Σ (x[i+1] − x[i]) · (y[i] + y[i+1]) / 2 with y = f for CPR and y = |1 − f| for CMD";

/// The area of `ys` over `xs` by trapezoids (MIB's rule).
pub fn area(xs: &[f64], ys: &[f32]) -> f64 {
    xs.windows(2).zip(ys.windows(2)).map(|(x, y)| (x[1] - x[0]) * (y[0] as f64 + y[1] as f64) / 2.0).sum()
}

/// CPR (area under `f`) and CMD (area under `|1 − f|`) of two curves over `xs`.
pub fn cpr_cmd(xs: &[f64], signed: &[f32], absolute: &[f32]) -> (f64, f64) {
    let gap: Vec<f32> = absolute.iter().map(|f| (1.0 - f).abs()).collect();
    (area(xs, signed), area(xs, &gap))
}

/// The circuit of the `k` best edges of `order`.
fn circuit(order: &[usize], k: usize, n: usize) -> Vec<bool> {
    let mut c = vec![false; n];
    for &e in order.iter().take(k) {
        c[e] = true;
    }
    c
}

/// Edge indices by decreasing score (signed) or |score| (absolute), ties by index.
pub fn ranking(scores: &[f32], absolute: bool) -> Vec<usize> {
    let key = |s: f32| if absolute { s.abs() } else { s };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| key(scores[b]).total_cmp(&key(scores[a])).then(a.cmp(&b)));
    idx
}

fn check_options(opts: &EvaluateOptions) -> Result<()> {
    let f = &opts.fractions;
    if f.is_empty() || f.len() > 100 {
        return Err(Error::Invalid(format!("fractions: give 1 to 100 circuit sizes, not {}", f.len())));
    }
    if f.iter().any(|x| !(x.is_finite() && *x > 0.0 && *x <= 1.0)) || f.windows(2).any(|w| w[1] <= w[0]) {
        return Err(Error::Invalid("fractions must increase strictly, each in (0, 1] (e.g. 0.001,0.01,0.1,1)".into()));
    }
    crate::methods::check_count("the number of bootstrap resamples", opts.n_boot, crate::limits::N_BOOT)?;
    if !(opts.alpha > 0.0 && opts.alpha < 1.0) {
        return Err(Error::Invalid(format!("alpha must be in (0, 1), not {}", opts.alpha)));
    }
    check_steps(opts.method.attribution_method(), opts.n_steps)?;
    match (opts.method, &opts.scores_file) {
        (ScoreMethod::File, None) => Err(Error::Invalid("method `file` reads scores_file: give --scores-file FILE".into())),
        (m, Some(_)) if m != ScoreMethod::File => Err(Error::Invalid("scores_file is read by method `file` only; add --method file".into())),
        _ => Ok(()),
    }
}

/// Edge scores from a file, in `graph`'s order, and how many graph edges it left out.
fn scores_from_file(model: &Model, path: &str, graph: &EdgeGraph) -> Result<(Vec<f32>, usize)> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<Edge>),
        Edges { edges: Vec<Edge> },
        Result { top_edges: Vec<Edge> },
    }
    let text = crate::model::load::read_json_text(std::path::Path::new(path), 1 << 30)?;
    let not_scored = |e: serde_json::Error| Error::Invalid(format!("{path}: not a list of scored edges ({e}); write [{{\"sender\": \"L09H09\", \"receiver\": \"logits\", \"score\": 0.3}}, ...]"));
    let value: serde_json::Value = serde_json::from_str(&text).map_err(not_scored)?;
    if value.get("edges").is_some_and(|e| e.is_object()) {
        return mib::from_json(model, graph, &value, path);
    }
    let form: Form = serde_json::from_value(value).map_err(not_scored)?;
    let list = match form {
        Form::List(l) | Form::Edges { edges: l } | Form::Result { top_edges: l } => l,
    };
    let index: std::collections::HashMap<String, usize> = (0..graph.edges.len()).map(|e| (graph.name(e), e)).collect();
    let mut scores = vec![0f32; graph.edges.len()];
    let mut seen = vec![false; graph.edges.len()];
    for s in &list {
        let name = format!("{}->{}", s.sender, s.receiver);
        let &e = index.get(&name).ok_or_else(|| {
            Error::Invalid(format!("{path}: `{}` is not an edge of this model (senders: embed, L00H00, MLP00; receivers: L01H02.q, L01KV00.k, L01KV00.v, MLP01, logits)", crate::error::printable(&name)))
        })?;
        if !s.score.is_finite() {
            return Err(Error::Invalid(format!("{path}: edge {name} has a score that is not a finite number")));
        }
        scores[e] = s.score;
        seen[e] = true;
    }
    Ok((scores, seen.iter().filter(|s| !**s).count()))
}

/// Mean edge scores over the prompts by EAP, EAP-IG or exact single-edge patching.
fn mean_scores(model: &Model, contrasts: &[Contrast], opts: &EvaluateOptions, graph: &EdgeGraph) -> Result<Vec<f32>> {
    let n_edges = graph.edges.len();
    let mut sum = vec![0f64; n_edges];
    let total = contrasts.len();
    for (k, contrast) in contrasts.iter().enumerate() {
        let scores: Vec<f32> = match opts.method {
            ScoreMethod::Eap | ScoreMethod::EapIg => {
                let eo = EdgeOptions { method: opts.method.attribution_method(), n_steps: opts.n_steps, top_k: 0, metric: opts.metric.clone() };
                all_edge_scores(model, contrast, &eo)?.0
            }
            ScoreMethod::Exact => {
                // The full circuit, then each edge left out alone, a chunk of circuits at a
                // time (n_edges circuits of n_edges edges would not fit in memory).
                let scorer = Scorer::new(model, contrast, &opts.metric)?;
                let full = vec![true; n_edges];
                let m_full = circuit_metrics(model, contrast, &scorer, graph, &[&full], &mut |_| {})?[0];
                let mut scores = Vec::with_capacity(n_edges);
                for start in (0..n_edges).step_by(EXACT_CHUNK) {
                    let circuits: Vec<Vec<bool>> = (start..(start + EXACT_CHUNK).min(n_edges))
                        .map(|e| {
                            let mut c = full.clone();
                            c[e] = false;
                            c
                        })
                        .collect();
                    let refs: Vec<&[bool]> = circuits.iter().map(|c| c.as_slice()).collect();
                    scores.extend(circuit_metrics(model, contrast, &scorer, graph, &refs, &mut |_| {})?.into_iter().map(|x| m_full - x));
                }
                scores
            }
            ScoreMethod::File => return Err(Error::Invalid("internal: file scores are read, not computed".into())),
        };
        for (s, x) in sum.iter_mut().zip(&scores) {
            *s += *x as f64;
        }
        crate::controls::tick(k + 1, total, "prompts scored")?;
    }
    Ok(sum.into_iter().map(|s| (s / contrasts.len() as f64) as f32).collect())
}

/// Faithfulness of each circuit from per-prompt metrics `m[prompt][circuit]` over the prompts
/// `rows` (circuit 0 empty, 1 full, then the circuits in order).
fn faithfulness(m: &[Vec<f32>], rows: &[usize]) -> Vec<f32> {
    let n_c = m.first().map_or(0, |r| r.len());
    let mut mean = vec![0f64; n_c];
    for &r in rows {
        for (s, x) in mean.iter_mut().zip(&m[r]) {
            *s += *x as f64;
        }
    }
    let (empty, full) = (mean[0], mean[1]);
    mean[2..].iter().map(|x| ((x - empty) / (full - empty)) as f32).collect()
}

/// Builds the circuits of MIB's sizes from a method's edge scores and measures each exactly on
/// every prompt: the faithfulness curves, CPR and CMD with bootstrap intervals over prompts.
pub fn evaluate(model: &Model, contrasts: &[Contrast], opts: &EvaluateOptions) -> Result<CircuitEvaluation> {
    check_options(opts)?;
    check_model(model)?;
    if contrasts.is_empty() {
        return Err(Error::Invalid("evaluate needs at least one prompt".into()));
    }
    for c in contrasts {
        c.check(model)?;
    }
    let graph = EdgeGraph::of(model);
    let n_edges = graph.edges.len();
    if opts.compare_exact && opts.method == ScoreMethod::Exact {
        return Err(Error::Invalid("compare_exact compares a method with exact scores; the method is exact already (choose eap, eap-ig or file)".into()));
    }
    if (opts.method == ScoreMethod::Exact || opts.compare_exact) && n_edges.saturating_add(1).saturating_mul(contrasts.len()) > MAX_EXACT_RUNS {
        return Err(Error::Invalid(format!(
            "exact edge scores need one patched run per edge and prompt: {n_edges} edges × {} prompts is more than {MAX_EXACT_RUNS}; use fewer prompts (--n), a smaller model, or eap / eap-ig",
            contrasts.len()
        )));
    }
    if let Some(out) = &opts.mib_out {
        crate::files::check_output_path(&out.0)?;
    }
    let truth = opts.ground_truth.as_ref().map(|path| truth::read(model, &graph, &path.text()).map(|t| (path.text(), t))).transpose()?;
    let (scores, missing) = match (&opts.method, &opts.scores_file) {
        (ScoreMethod::File, Some(path)) => {
            let (s, m) = scores_from_file(model, &path.text(), &graph)?;
            (s, Some(m))
        }
        _ => (mean_scores(model, contrasts, opts, &graph)?, None),
    };
    let agreement_with_exact = if opts.compare_exact {
        let exact = mean_scores(model, contrasts, &EvaluateOptions { method: ScoreMethod::Exact, ..opts.clone() }, &graph)?;
        Some(agreement(&scores, &exact))
    } else {
        None
    };
    if let Some(out) = &opts.mib_out {
        let text = serde_json::to_string(&mib::to_json(model, &graph, &scores)).map_err(|e| Error::Invalid(format!("MIB JSON: {e}")))?;
        crate::files::write_bytes(&out.0, text.as_bytes())?;
    }
    let fr = &opts.fractions;
    let sizes: Vec<usize> = fr.iter().map(|f| (f * n_edges as f64).floor() as usize).collect();
    let (signed_order, abs_order) = (ranking(&scores, false), ranking(&scores, true));
    let mut circuits = vec![vec![false; n_edges], vec![true; n_edges]];
    circuits.extend(sizes.iter().map(|&k| circuit(&signed_order, k, n_edges)));
    circuits.extend(sizes.iter().map(|&k| circuit(&abs_order, k, n_edges)));
    let refs: Vec<&[bool]> = circuits.iter().map(|c| c.as_slice()).collect();

    let total = contrasts.len() * refs.len();
    let mut done = 0;
    let mut m = Vec::with_capacity(contrasts.len());
    for contrast in contrasts {
        let scorer = Scorer::new(model, contrast, &opts.metric)?;
        m.push(circuit_metrics(model, contrast, &scorer, &graph, &refs, &mut |n| {
            done += n;
            crate::controls::step(done, total, "circuits patched");
        })?);
    }
    let mean_of = |c: usize| m.iter().map(|r| r[c] as f64).sum::<f64>() / m.len() as f64;
    let (empty, full) = (mean_of(0), mean_of(1));
    if full == empty {
        return Err(Error::Invalid(format!(
            "the full model and the empty circuit give the same mean {} ({full:.6}): faithfulness divides by their difference, so no circuit can be scored; choose a counterfactual that changes the answer",
            opts.metric.name()
        )));
    }
    let all: Vec<usize> = (0..m.len()).collect();
    let n_fr = fr.len();
    let split = |f: Vec<f32>| -> (Vec<f32>, Vec<f32>) { (f[..n_fr].to_vec(), f[n_fr..].to_vec()) };
    let (signed, absolute) = split(faithfulness(&m, &all));
    let (cpr, cmd) = cpr_cmd(fr, &signed, &absolute);

    let mut rng = crate::rng::Rng::new(opts.seed);
    let (mut cprs, mut cmds) = (Vec::with_capacity(opts.n_boot), Vec::with_capacity(opts.n_boot));
    let mut points = vec![Vec::with_capacity(opts.n_boot); 2 * n_fr];
    for _ in 0..opts.n_boot {
        let rows: Vec<usize> = (0..m.len()).map(|_| rng.below(m.len())).collect();
        let f = faithfulness(&m, &rows);
        let (s, a) = split(f.clone());
        let (c1, c2) = cpr_cmd(fr, &s, &a);
        if c1.is_finite() && c2.is_finite() {
            cprs.push(c1 as f32);
            cmds.push(c2 as f32);
        }
        for (p, x) in points.iter_mut().zip(f) {
            if x.is_finite() {
                p.push(x);
            }
        }
    }
    let n = m.len();
    let curve = |values: Vec<f32>, offset: usize| -> Curve {
        let ivs: Vec<Interval> = values.iter().enumerate().map(|(i, &v)| interval(v, points[offset + i].clone(), opts.alpha, n)).collect();
        Curve { n_edges: sizes.clone(), faithfulness: values, ci_lo: ivs.iter().map(|i| i.ci_lo).collect(), ci_hi: ivs.iter().map(|i| i.ci_hi).collect() }
    };
    let top_edges = graph.top_edges(&scores, opts.top_k);
    let ground_truth = truth.map(|(file, t)| truth::score(model, &graph, &scores, &t, &file));
    Ok(CircuitEvaluation {
        method: opts.method,
        n_steps: (opts.method == ScoreMethod::EapIg).then_some(opts.n_steps),
        metric: opts.metric.name().to_string(),
        n_prompts: n,
        n_edges,
        clean_metric: full as f32,
        corrupted_metric: empty as f32,
        fractions: fr.clone(),
        signed: curve(signed, 0),
        absolute: curve(absolute, n_fr),
        cpr: interval(cpr as f32, cprs, opts.alpha, n),
        cmd: interval(cmd as f32, cmds, opts.alpha, n),
        area_rule: AREA_RULE.to_string(),
        edges_missing_from_file: missing,
        agreement_with_exact,
        ground_truth,
        top_edges,
        n_boot: opts.n_boot,
        alpha: opts.alpha,
        seed: opts.seed,
    })
}

/// Warnings for figures that may mislead.
pub fn warnings(r: &CircuitEvaluation, opts: &EvaluateOptions) -> Vec<String> {
    let mut w = Vec::new();
    if r.n_prompts < 20 {
        w.push(format!("the intervals come from {} prompt(s); with fewer than 20 they are rough (use a task set: --task ioi --n 64)", r.n_prompts));
    }
    let span = (r.clean_metric - r.corrupted_metric).abs();
    if span < 1e-3 * r.clean_metric.abs().max(1.0) {
        w.push(format!("the full model and the empty circuit give almost the same metric ({:.4} vs {:.4}): faithfulness divides by their difference", r.clean_metric, r.corrupted_metric));
    }
    if let Some(m) = r.edges_missing_from_file.filter(|&m| m > 0) {
        w.push(format!("{m} of the graph's {} edges are not in the scores file; they score 0", r.n_edges));
    }
    if opts.method == ScoreMethod::File && r.top_edges.iter().all(|e| e.score == 0.0) {
        w.push("every score read from the file is 0: the circuits are the first edges in the graph's order".into());
    }
    w
}
