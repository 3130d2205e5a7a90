//! Results as text a person reads at a terminal: one function per result type, used by the
//! method catalog so that every front end that prints text prints the same tables. `rows`
//! limits the longest lists.

use std::fmt::Write;

use crate::methods::alignment::Alignment;
use crate::methods::analyze::{Analysis, SetAnalysis};
use crate::methods::attention::AttentionPatterns;
use crate::methods::attribution::Attribution;
use crate::methods::composition::Composition;
use crate::methods::edges::EdgeAttribution;
use crate::methods::faithfulness::Faithfulness;
use crate::methods::logit_lens::LogitLens;
use crate::methods::next_tokens::NextTokens;
use crate::methods::path_patching::PathPatching;
use crate::methods::patching::Patching;
use crate::methods::sae_attribution::{CircuitFeatures, SaeAttribution};
use crate::methods::scrubbing::Scrubbing;
use crate::methods::stability::Stability;
use crate::methods::steering::GenerationResult;
use crate::methods::token_attribution::TokenAttribution;
use crate::methods::Head;

/// Appends a line (writing to a String cannot fail).
macro_rules! line {
    ($out:expr) => { let _ = writeln!($out); };
    ($out:expr, $($arg:tt)*) => { let _ = writeln!($out, $($arg)*); };
}

/// A percentage with one decimal.
fn pct(x: f32) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// `next_tokens`: the prompt's tokens and the most likely next tokens.
pub fn next_tokens(r: &NextTokens, _rows: usize) -> String {
    let mut o = String::new();
    line!(o, "tokens ({}, {}):", r.tokens.len(), if r.bos_added { "BOS added" } else { "no BOS" });
    for (i, t) in r.tokens.iter().enumerate() {
        line!(o, "  {i:>3}  {:>6}  {:?}", t.id, t.text);
    }
    line!(o, "\ntop next tokens:");
    line!(o, "  {:>4}  {:<20} {:>10} {:>8}", "rank", "token", "logit", "prob");
    for (i, p) in r.top.iter().enumerate() {
        line!(o, "  {:>4}  {:<20} {:>10.4} {:>7.2}%", i + 1, format!("{:?}", p.token), p.logit, 100.0 * p.prob);
    }
    o
}

/// `attribute`.
pub fn attribution(a: &Attribution, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{} {:.4} (clean)   {:.4} (corrupted)", a.metric, a.clean_ld, a.corrupted_ld);
    if let (Some(e), Some(r)) = (a.embed_attribution, a.completeness_residual) {
        line!(o, "embeddings {e:.4}   completeness residual {:.2e} ({} steps)", r, a.n_steps.unwrap_or(0));
    }
    line!(o, "{:<12} {:>12}", "component", "attribution");
    line!(o, "{:<12} {:>12}", "-".repeat(12), "-".repeat(12));
    for s in a.top.iter().take(rows) {
        line!(o, "{:<12} {:>12.4}", s.name, s.score);
    }
    o
}

/// `logit_lens`.
pub fn logit_lens(l: &LogitLens, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "final LD {:.4} (frozen final-norm scale {:.4}; decomposition residual {:.1e})", l.final_ld, l.frozen_scale, l.decomposition_residual);
    line!(o, "{:<8} {:>9} {:>9}  top tokens", "layer", "LD", "shift");
    for (i, ld) in l.logit_diffs.iter().enumerate() {
        let name = if i == 0 { "embed".to_string() } else { format!("{}", i - 1) };
        let shift = if i == 0 { String::new() } else { format!("{:+.3}", l.logit_shifts[i - 1]) };
        let tops: Vec<String> = l.top_tokens[i].iter().map(|t| format!("{:?}", t.token)).collect();
        line!(o, "{:<8} {:>9.3} {:>9}  {}", name, ld, shift, tops.join(" "));
    }
    let mut heads: Vec<(Head, f32)> = l
        .head_direct_effects
        .iter()
        .enumerate()
        .flat_map(|(layer, row)| row.iter().enumerate().map(move |(head, &v)| (Head { layer, head }, v)))
        .collect();
    heads.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    line!(o, "\nlargest head direct effects:");
    for (h, v) in heads.iter().take(rows.min(10)) {
        line!(o, "  {h}  {v:+.4}");
    }
    o
}

/// `token_attribution`.
pub fn token_attribution(t: &TokenAttribution, _rows: usize) -> String {
    let mut o = String::new();
    line!(o, "LD {:.4}   method {}", t.ld, t.method);
    if let (Some(b), Some(r)) = (t.baseline_ld, t.completeness_residual) {
        line!(o, "baseline LD {b:.4}   completeness residual {r:.2e}");
    }
    line!(o, "{:>4}  {:<16} {:>12}", "pos", "token", "attribution");
    for a in &t.tokens {
        line!(o, "{:>4}  {:<16} {:>12.4}", a.position, format!("{:?}", a.token_str), a.attribution);
    }
    o
}

/// `attention_patterns`: one row per head with its scores (the column meanings below the table).
pub fn attention(view: &AttentionPatterns, _rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{:<8} {:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}", "head", "type", "entropy", "prev", "dup", "induct", "bos", "max");
    for h in &view.heads {
        let s = h.scores;
        line!(
            o,
            "{:<8} {:<16} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            h.name, h.head_type, s.entropy, s.previous_token, s.duplicate_token, s.induction, s.bos_sink, s.max_attention
        );
    }
    line!(o, "\nentropy: of the attention over keys (nats, mean over queries); prev: attention to the previous token;");
    line!(o, "dup: to earlier copies of the query's token; induct: to the token after an earlier copy (on a repeated random sequence);");
    line!(o, "bos: to the first position; max: the mean of each query's largest attention weight.");
    o
}

/// `edge_attribution`.
pub fn edges(r: &EdgeAttribution, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{} {:.4} (clean)   {:.4} (corrupted)   {} edges scored", r.metric, r.clean_ld, r.corrupted_ld, r.n_edges);
    line!(o, "{:<10}    {:<14} {:>10}", "sender", "receiver", "score");
    for e in r.top_edges.iter().take(rows) {
        line!(o, "{:<10} →  {:<14} {:>10.4}", e.sender, e.receiver, e.score);
    }
    o
}

/// `evaluate`: the faithfulness curves, CPR and CMD.
pub fn circuit_evaluation(r: &crate::methods::evaluate::CircuitEvaluation, rows: usize) -> String {
    let mut o = String::new();
    let steps = r.n_steps.map(|n| format!(", {n} steps")).unwrap_or_default();
    line!(o, "edge scores: {}{steps}; {} edges; {} prompt(s); metric {}", r.method, r.n_edges, r.n_prompts, r.metric);
    line!(o, "{} full model {:.4}   every edge patched {:.4}   (means over the prompts)", r.metric, r.clean_metric, r.corrupted_metric);
    let ci = (1.0 - r.alpha) * 100.0;
    line!(o, "CPR {:.4} [{:.4}, {:.4}]   (area under f, signed scores; higher is better)", r.cpr.mean, r.cpr.ci_lo, r.cpr.ci_hi);
    line!(o, "CMD {:.4} [{:.4}, {:.4}]   (area under |1 − f|, absolute scores; 0 is best)   [{ci:.0}% bootstrap intervals over prompts]", r.cmd.mean, r.cmd.ci_lo, r.cmd.ci_hi);
    line!(o, "{:>9} {:>8}   {:>26}   {:>26}", "edges %", "edges", "f (signed)", "f (absolute)");
    for (k, f) in r.fractions.iter().enumerate() {
        let (s, a) = (&r.signed, &r.absolute);
        line!(o, "{:>9} {:>8}   {:>8.4} [{:>7.4}, {:>7.4}]   {:>8.4} [{:>7.4}, {:>7.4}]", format!("{}", f * 100.0), s.n_edges[k], s.faithfulness[k], s.ci_lo[k], s.ci_hi[k], a.faithfulness[k], a.ci_lo[k], a.ci_hi[k]);
    }
    line!(o, "f = (m(C) − m(∅)) / (m(N) − m(∅)); areas: {}", r.area_rule);
    if let Some(a) = &r.agreement_with_exact {
        let rho = |r: Option<f32>| r.map_or("n/a (constant scores)".to_string(), |r| format!("{r:.4}"));
        line!(o, "agreement with exact single-edge patching: Spearman ρ {} (signed), {} (|score|); {:.0} % of the exact top 1 % of edges are in this method's top 1 %", rho(a.spearman), rho(a.spearman_abs), a.top1pct_overlap * 100.0);
    }
    if let Some(g) = &r.ground_truth {
        let node = g.node_auroc.map_or("n/a (every component or none is true)".to_string(), |a| format!("{a:.4}"));
        line!(o, "ground truth ({}): {} true edges; edge AUROC {:.4} (|mean score|); {} of {} components true, node AUROC {node}; the whole true circuit is in the top {} edges", g.file, g.true_edges, g.edge_auroc, g.true_nodes, g.n_nodes, g.worst_true_rank);
    }
    line!(o, "best-scored edges (mean score over the prompts):");
    for e in r.top_edges.iter().take(rows) {
        line!(o, "  {:<10} →  {:<14} {:>10.4}", e.sender, e.receiver, e.score);
    }
    o
}

/// The scores of a faithfulness block: sufficiency (and its Taylor estimate when there is one),
/// comprehensiveness, F1 and the category.
fn faithfulness_scores(o: &mut String, f: &Faithfulness) {
    line!(o, "  Sufficiency      : {}  (exact, {} ablation)", pct(f.sufficiency), f.ablation);
    if let Some(t) = f.taylor_sufficiency {
        line!(o, "  Sufficiency ≈    : {}  (first-order Taylor estimate, for comparison)", pct(t));
    }
    line!(o, "  Comprehensiveness: {}", pct(f.comprehensiveness));
    line!(o, "  F1-score         : {}", pct(f.f1));
    line!(o, "  Category         : {}", f.category);
}

/// A circuit's faithfulness block.
pub fn faithfulness(f: &Faithfulness, circuit: &[Head], reached: Option<bool>) -> String {
    let mut o = String::new();
    faithfulness_scores(&mut o, f);
    let names: Vec<String> = circuit.iter().map(|h| h.to_string()).collect();
    let note = if reached == Some(false) { ", target not reached" } else { "" };
    line!(o, "  Circuit ({} heads{note}): {}", circuit.len(), names.join(" "));
    o
}

/// `circuit_faithfulness`.
pub fn circuit_faithfulness(f: &Faithfulness, _rows: usize) -> String {
    let mut o = String::new();
    line!(o, "metric: clean {:.4}   everything ablated {:.4}", f.clean_ld, f.ld_all_ablated);
    line!(o, "        only the circuit {:.4}   the circuit ablated {:.4}", f.ld_circuit_only, f.ld_circuit_ablated);
    faithfulness_scores(&mut o, f);
    o
}

/// `analyze` of one prompt.
pub fn analysis(r: &Analysis, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{} {:.4} (clean)   {:.4} (corrupted)\n", r.metric, r.clean_ld, r.corrupted_ld);
    o.push_str(&faithfulness(&r.faithfulness, &r.circuit, Some(r.target_reached)));
    line!(o, "\n  {:<12} {:>12}", "Head", "Attribution");
    line!(o, "  {:<12} {:>12}", "-".repeat(12), "-".repeat(12));
    for s in r.top_heads.iter().take(rows.min(10)) {
        line!(o, "  {:<12} {:>12.4}", s.name, s.score);
    }
    if let Some(l) = &r.logit_lens {
        line!(o);
        o.push_str(&logit_lens(l, rows));
    }
    o
}

/// `analyze_set`: intervals as percentages beside the point estimates.
pub fn set_analysis(r: &SetAnalysis, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{} prompts   mean clean {} {:.4}   mean corrupted {:.4}\n", r.n, r.metric, r.mean_clean_ld, r.mean_corrupted_ld);
    o.push_str(&faithfulness(&r.faithfulness, &r.circuit, Some(r.target_reached)));
    let b = &r.bootstrap;
    let ci = |i: &crate::methods::bootstrap::Interval| format!("[{}, {}]", pct(i.ci_lo), pct(i.ci_hi));
    line!(o, "  95% CI ({} resamples): sufficiency {}  comprehensiveness {}  F1 {}", b.n_boot, ci(&b.sufficiency), ci(&b.comprehensiveness), ci(&b.f1));
    line!(o, "\n  {:<12} {:>12}", "Head", "Mean attr.");
    for s in r.top_heads.iter().take(rows.min(10)) {
        line!(o, "  {:<12} {:>12.4}", s.name, s.score);
    }
    o
}

/// `exact_patching`: the components with the largest effect. The effect is
/// `(patched − base) / (source − base)`: 1 when the patch alone moves the metric all the way to
/// the run the patch comes from, 0 when it changes nothing.
pub fn patching(p: &Patching, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{} {:.4} (the run patched, {})   {:.4} (the run the patches come from)", p.metric, p.base_ld, p.direction, p.source_ld);
    let mut all: Vec<(String, f32, f32)> = Vec::new();
    for (l, row) in p.heads.iter().enumerate() {
        for (h, &ld) in row.iter().enumerate() {
            all.push((Head { layer: l, head: h }.to_string(), ld, p.head_effects[l][h]));
        }
        all.push((format!("MLP{l:02}"), p.mlps[l], p.mlp_effects[l]));
    }
    all.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    line!(o, "{:<10} {:>12} {:>10}", "component", "patched", "effect");
    for (n, ld, e) in all.iter().take(rows) {
        line!(o, "{:<10} {:>12.4} {:>10.4}", n, ld, e);
    }
    line!(o, "\neffect = (patched − base) / (source − base): 1 moves the metric all the way, 0 not at all.");
    o
}

/// `attribution_stability`.
pub fn stability(s: &Stability, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{} corruptions (p = {}, seed {}): rank consistency (mean Kendall τ-b) {:.3}", s.n_corruptions, s.p, s.seed, s.rank_consistency);
    line!(o, "{:<8} {:>10} {:>10} {:>10}", "head", "mean", "std", "stability");
    for h in s.top_stable_heads.iter().take(rows.min(10)) {
        line!(o, "{:<8} {:>10.4} {:>10.4} {:>10.3}", h.name, h.mean, h.std, h.stability);
    }
    o
}

/// `path_patching`.
pub fn path_patching(r: &PathPatching, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "clean {} {:.4}   corrupted {:.4}   receiver {}", r.metric, r.clean_ld, r.corrupted_ld, r.receiver);
    let mut paths = r.paths.clone();
    paths.sort_by(|a, b| b.effect.abs().total_cmp(&a.effect.abs()));
    line!(o, "{:<8} {:>12} {:>10}", "sender", "patched", "effect");
    for p in paths.iter().take(rows) {
        line!(o, "{:<8} {:>12.4} {:>10.4}", p.name, p.patched_ld, p.effect);
    }
    o
}

/// `causal_scrubbing`.
pub fn scrubbing(r: &Scrubbing, _rows: usize) -> String {
    let mut o = String::new();
    line!(o, "{} prompts", r.n);
    line!(o, "mean LD: clean {:.4}  corrupted {:.4}  scrubbed {:.4}", r.mean_clean_ld, r.mean_corrupted_ld, r.mean_scrubbed_ld);
    line!(o, "preserved: {} of the clean − corrupted LD", pct(r.preserved));
    if r.unmatched > 0 {
        line!(o, "{} head/prompt pairs kept their own output: no other prompt of the same length agreed on the claimed feature", r.unmatched);
    }
    o
}

/// `all_composition_scores`.
pub fn composition(c: &Composition, _rows: usize) -> String {
    let mut o = String::new();
    let b = &c.baseline;
    line!(o, "random heads of these shapes ({} pairs): Q {:.4} ± {:.4}, K {:.4} ± {:.4}, V {:.4} ± {:.4}", b.n_samples, b.q, b.q_std, b.k, b.k_std, b.v, b.v_std);
    line!(o, "{:<8}    {:<8} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}", "sender", "receiver", "Q", "K", "V", "Q−base", "K−base", "V−base");
    for e in &c.combined_edges {
        line!(o, "{:<8} →  {:<8} {:>8.4} {:>8.4} {:>8.4}   {:>+8.4} {:>+8.4} {:>+8.4}", e.sender, e.receiver, e.q, e.k, e.v, e.q_excess, e.k_excess, e.v_excess);
    }
    o
}

/// `sae_attribution`.
pub fn sae_attribution(r: &SaeAttribution, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "SAE at {}{}: {} {:.4}", r.hook, r.hook_out.as_ref().map_or(String::new(), |h| format!(" → {h}")), r.metric, r.clean_ld);
    let ev = r.explained_variance.map_or("n/a (too few positions)".to_string(), |e| format!("{e:.3}"));
    line!(o, "L0 {:.1} features per position, {} active on the prompt, explained variance {ev} (first position, BOS and end-of-text left out)", r.l0, r.n_active);
    line!(o, "error term {:+.4}, decoder bias {:+.4} (gradient × value)", r.error_contribution, r.bias_contribution);
    if let Some(d) = &r.direct {
        line!(
            o,
            "direct effects: features {:+.4} + decoder bias {:+.4} + error {:+.4} + rest of the model {:+.4} + constants {:+.4} (identity residual {:.1e})",
            d.features, d.decoder_bias, d.error, d.rest, d.constant, d.decomposition_residual
        );
    }
    line!(o, "\n  {:>7} {:>10} {:>12} {:>10} {:>10}  {:<10} link", "feature", "activation", "grad × act", "exact", "direct", "direction");
    for f in r.top_features.iter().take(rows) {
        let opt = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:+.4}"));
        line!(
            o,
            "  {:>7} {:>10.4} {:>+12.4} {:>10} {:>10}  {:<10} {}",
            f.feature_id, f.activation, f.ld_contribution, opt(f.exact_effect), opt(f.direct_effect), f.direction, f.neuronpedia_url.as_deref().unwrap_or("")
        );
    }
    o
}

/// `generate`.
pub fn generation(g: &GenerationResult, _rows: usize) -> String {
    let mut o = String::new();
    if let (Some(s), Some(u)) = (&g.steering, &g.unsteered) {
        line!(o, "steer  : {} += {} · ({}), |v| = {:.3}", s.hook, s.scale, s.source, s.norm);
        line!(o, "\nunsteered ({} tokens, {}):\n{}{}", u.tokens.len(), u.stop, g.prompt, u.text);
        line!(o, "\nsteered ({} tokens, {}):\n{}{}", g.generation.tokens.len(), g.generation.stop, g.prompt, g.generation.text);
    } else {
        let n = &g.generation;
        let mean_lp = n.logprobs.iter().map(|&x| x as f64).sum::<f64>() / n.logprobs.len().max(1) as f64;
        line!(o, "{}{}", g.prompt, n.text);
        line!(o, "\n({} tokens, {}, mean log-probability {mean_lp:.3})", n.tokens.len(), n.stop);
    }
    o
}

/// `align_models`.
pub fn alignment(r: &Alignment, _rows: usize) -> String {
    let mut o = String::new();
    line!(o, "FCAS {} ↔ {}: {:.3}  (z = {:.2}, p = {:.4}; null {:.3} ± {:.3} over {} random head sets)", r.model_a, r.model_b, r.fcas, r.z_score, r.p_value, r.null_mean, r.null_std, r.n_null);
    line!(o, "\n  {:>4}  {:<8} {:>6}   {:<8} {:>6}", "rank", "head A", "depth", "head B", "depth");
    for p in &r.pairs {
        line!(o, "  {:>4}  {:<8} {:>6.3}   {:<8} {:>6.3}", p.rank + 1, p.head_a.to_string(), p.depth_a, p.head_b.to_string(), p.depth_b);
    }
    o
}

/// `circuit_features`.
pub fn circuit_features(r: &CircuitFeatures, rows: usize) -> String {
    let mut o = String::new();
    line!(o, "SAE at {}; {}", r.hook, r.approximation);
    for h in &r.heads {
        line!(o, "\n{}:", h.head);
        line!(o, "  {:>7} {:>10} {:>12} {:>10} {:>12}", "feature", "head share", "pre-act", "act", "grad × act");
        for f in h.top_features.iter().take(rows) {
            line!(o, "  {:>7} {:>+10.4} {:>+12.4} {:>10.4} {:>+12.4}", f.feature_id, f.head_contribution, f.pre_activation, f.activation, f.ld_contribution);
        }
    }
    o
}

/// An attribution graph: its scores, targets and the most influential kept features.
pub fn attribution_graph(g: &crate::methods::graph::AttributionGraph, rows: usize) -> String {
    let s = &g.glassbox;
    let mut out = String::new();
    out.push_str(&format!("Prompt: {:?}\n", g.metadata.prompt));
    for t in &s.targets {
        out.push_str(&format!("Target: {} (p = {:.3}, weight {:.3})\n", t.token, t.probability, t.weight));
    }
    out.push_str(&format!(
        "Replacement score {:.4}, completeness score {:.4}\n{} active features, {} with their edges computed; {} nodes and {} edges before pruning, {} nodes and {} links kept\n",
        s.replacement_score, s.completeness_score, s.n_active_features, s.n_selected_features, s.n_nodes, s.n_edges, g.nodes.len(), g.links.len()
    ));
    let mut feats: Vec<&crate::methods::graph::Node> = g.nodes.iter().filter(|n| n.feature_type != "logit").collect();
    feats.sort_by(|a, b| a.influence.unwrap_or(1.0).total_cmp(&b.influence.unwrap_or(1.0)));
    out.push_str(&format!("\n{:<26} {:>6} {:>5} {:>12} {:>10}  {}\n", "node", "layer", "pos", "activation", "influence", "token"));
    for n in feats.iter().take(rows) {
        let tok = g.metadata.prompt_tokens.get(n.ctx_idx).cloned().unwrap_or_default();
        let act = n.activation.map_or("-".to_string(), |a| format!("{a:.3}"));
        out.push_str(&format!("{:<26} {:>6} {:>5} {:>12} {:>10.4}  {:?}\n", format!("{} ({})", n.node_id, match n.feature_type.as_str() { "mlp reconstruction error" => "error", "cross layer transcoder" => "feature", t => t }), n.layer, n.ctx_idx, act, n.influence.unwrap_or(0.0), tok));
    }
    out
}

/// A feature intervention: the logit difference before and after, and the graph's prediction.
pub fn feature_intervention(r: &crate::methods::graph::intervene::FeatureIntervention, _rows: usize) -> String {
    format!(
        "Feature {} (activation {:.4}) set to {:.4} in the {} model\nlogit difference {:.4} -> {:.4}: effect {:+.4}; the graph's direct edge predicts {:+.4}\n",
        r.node_id,
        r.activation,
        r.new_activation,
        if r.frozen { "frozen replacement" } else { "real" },
        r.clean_ld,
        r.intervened_ld,
        r.effect,
        r.predicted_by_graph
    )
}
