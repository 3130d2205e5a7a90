//! Subcommands for the methods: argument types, calls into the library, and table rendering.

use anyhow::{bail, Context, Result};
use clap::Args;
use glassbox::methods::analyze::{analyze, AnalyzeOptions};
use glassbox::methods::attention::attention_patterns;
use glassbox::methods::patching::{exact_patching, Direction};
use glassbox::methods::attribution::{attribute, Attribution, Component, Method};
use glassbox::methods::edges::edge_attribution;
use glassbox::methods::logit_lens::{logit_lens, LogitLens};
use glassbox::methods::token_attribution::{token_attribution, Baseline, TokenAttribution};
use glassbox::methods::{Contrast, Head};
use glassbox::Model;
use serde::Serialize;

/// A prompt and the two answers whose logit difference is measured.
#[derive(Args, Clone)]
pub struct PromptAnswers {
    #[arg(long)]
    pub prompt: String,
    /// The answer the model should give, e.g. " Mary" (one token).
    #[arg(long)]
    pub correct: String,
    /// The competing answer, e.g. " John" (one token).
    #[arg(long)]
    pub incorrect: String,
}

impl PromptAnswers {
    /// The prompt's tokens and the two answers' token ids.
    pub fn tokens(&self, model: &Model) -> Result<(Vec<u32>, u32, u32)> {
        Ok((model.tokenize(&self.prompt)?, model.answer_token(&self.correct)?, model.answer_token(&self.incorrect)?))
    }
}

/// A prompt with the two answers compared, and optionally the corrupted prompt.
#[derive(Args, Clone)]
pub struct ContrastArgs {
    #[command(flatten)]
    pub answers: PromptAnswers,
    /// The corrupted prompt; by default the two answers' words are swapped in the prompt.
    #[arg(long)]
    pub corrupted: Option<String>,
}

impl ContrastArgs {
    pub fn build(&self, model: &Model) -> Result<Contrast> {
        let a = &self.answers;
        Ok(Contrast::new(model, &a.prompt, &a.correct, &a.incorrect, self.corrupted.as_deref())?)
    }
}

/// The result, or an error naming its first NaN or infinite figure: nothing non-finite is
/// printed as a result.
pub fn finite<T: Serialize>(v: T) -> Result<T> {
    glassbox::check_finite(&v)?;
    Ok(v)
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn parse_component(s: &str) -> Result<Component> {
    Ok(match s {
        "heads" => Component::Heads,
        "mlp" => Component::Mlp,
        "attn_out" | "attn" => Component::AttnOut,
        other => bail!("unknown component `{other}`; use heads, mlp or attn_out"),
    })
}

/// Parses `L9H6`, `L09H06` or `9.6` into a head.
pub fn parse_head(s: &str) -> Result<Head> {
    let t = s.trim().to_ascii_uppercase();
    let (l, h) = if let Some(rest) = t.strip_prefix('L') {
        rest.split_once('H').context("expected LxxHyy")?
    } else {
        t.split_once('.').with_context(|| format!("`{s}` is not a head; write L9H6 or 9.6"))?
    };
    Ok(Head {
        layer: l.parse().with_context(|| format!("bad layer in `{s}`"))?,
        head: h.parse().with_context(|| format!("bad head in `{s}`"))?,
    })
}

pub fn print_contrast(c: &Contrast) {
    println!("clean     : {:?}", c.clean_prompt);
    println!("corrupted : {:?} ({})", c.corrupted_prompt, c.corruption);
    println!("answers   : {:?} vs {:?}", c.correct, c.incorrect);
}

pub fn print_attribution(a: &Attribution, top: usize) {
    println!("clean LD {:.4}   corrupted LD {:.4}", a.clean_ld, a.corrupted_ld);
    if let (Some(e), Some(r)) = (a.embed_attribution, a.completeness_residual) {
        println!("embeddings {e:.4}   completeness residual {:.2e} ({} steps)", r, a.n_steps.unwrap_or(0));
    }
    println!("{:<12} {:>12}", "component", "attribution");
    println!("{:<12} {:>12}", "-".repeat(12), "-".repeat(12));
    for s in a.top.iter().take(top) {
        println!("{:<12} {:>12.4}", s.name, s.score);
    }
}

pub fn run_attribution(model: &Model, c: &ContrastArgs, method: &str, n_steps: usize, component: &str, top: usize, json: bool) -> Result<()> {
    let contrast = c.build(model)?;
    let method: Method = method.parse()?;
    let a = finite(attribute(model, &contrast, parse_component(component)?, method, n_steps)?)?;
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            contrast: &'a Contrast,
            #[serde(flatten)]
            attribution: &'a Attribution,
        }
        return print_json(&Out { contrast: &contrast, attribution: &a });
    }
    print_contrast(&contrast);
    print_attribution(&a, top);
    Ok(())
}

fn print_lens(model: &Model, l: &LogitLens) {
    println!("final LD {:.4} (frozen final-norm scale {:.4}; decomposition residual {:.1e})", l.final_ld, l.frozen_scale, l.decomposition_residual);
    println!("{:<8} {:>9} {:>9}  top tokens", "layer", "LD", "shift");
    for (i, ld) in l.logit_diffs.iter().enumerate() {
        let name = if i == 0 { "embed".to_string() } else { format!("{}", i - 1) };
        let shift = if i == 0 { String::new() } else { format!("{:+.3}", l.logit_shifts[i - 1]) };
        let tops: Vec<String> = l.top_tokens[i].iter().map(|t| format!("{:?}", t.token)).collect();
        println!("{:<8} {:>9.3} {:>9}  {}", name, ld, shift, tops.join(" "));
    }
    let mut heads: Vec<(Head, f32)> = l
        .head_direct_effects
        .iter()
        .enumerate()
        .flat_map(|(layer, row)| row.iter().enumerate().map(move |(head, &v)| (Head { layer, head }, v)))
        .collect();
    heads.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    println!("\nlargest head direct effects:");
    for (h, v) in heads.iter().take(10) {
        println!("  {h}  {v:+.4}");
    }
    let _ = model;
}

pub fn run_logit_lens(model: &Model, pa: &PromptAnswers, top_k: usize, json: bool) -> Result<()> {
    let (tokens, c, i) = pa.tokens(model)?;
    let l = finite(logit_lens(model, &tokens, c, i, top_k)?)?;
    if json {
        return print_json(&l);
    }
    print_lens(model, &l);
    Ok(())
}

pub fn parse_baseline(model: &Model, s: &str) -> Result<Baseline> {
    Ok(match s {
        "zero" => Baseline::Zero,
        "bos" => Baseline::Token(model.tokenizer.bos().context("this model has no BOS token; use zero or a token id")?),
        id => Baseline::Token(id.parse().with_context(|| format!("baseline `{id}`: use zero, bos or a token id"))?),
    })
}

fn print_tokens(t: &TokenAttribution) {
    println!("LD {:.4}   method {}", t.ld, t.method);
    if let (Some(b), Some(r)) = (t.baseline_ld, t.completeness_residual) {
        println!("baseline LD {b:.4}   completeness residual {r:.2e}");
    }
    println!("{:>4}  {:<16} {:>12}", "pos", "token", "attribution");
    for a in &t.tokens {
        println!("{:>4}  {:<16} {:>12.4}", a.position, format!("{:?}", a.token_str), a.attribution);
    }
}

pub fn run_token_attribution(model: &Model, pa: &PromptAnswers, method: &str, n_steps: usize, baseline: &str, json: bool) -> Result<()> {
    let (tokens, c, i) = pa.tokens(model)?;
    let ig = match method {
        "gradient_x_input" | "taylor" => None,
        "integrated_gradients" | "ig" => Some((n_steps, parse_baseline(model, baseline)?)),
        other => bail!("unknown method `{other}`; use gradient_x_input or integrated_gradients"),
    };
    let t = finite(token_attribution(model, &tokens, c, i, ig)?)?;
    if json {
        return print_json(&t);
    }
    print_tokens(&t);
    Ok(())
}

pub fn run_attention(model: &Model, prompt: &str, heads: &[String], top_k: usize, json: bool) -> Result<()> {
    let tokens = model.tokenize(prompt)?;
    let chosen = heads.iter().map(|h| parse_head(h)).collect::<Result<Vec<_>>>()?;
    let view = finite(attention_patterns(model, &tokens, (!chosen.is_empty()).then_some(&chosen[..]), top_k, 0)?)?;
    if json {
        return print_json(&view);
    }
    println!("{:<8} {:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}", "head", "type", "entropy", "prev", "dup", "induct", "bos", "max");
    for h in &view.heads {
        let s = h.scores;
        println!(
            "{:<8} {:<16} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            h.name, h.head_type, s.entropy, s.previous_token, s.duplicate_token, s.induction, s.bos_sink, s.max_attention
        );
    }
    Ok(())
}

pub fn run_edges(model: &Model, c: &ContrastArgs, method: &str, n_steps: usize, top_k: usize, json: bool) -> Result<()> {
    let contrast = c.build(model)?;
    let method = match method {
        "eap" | "taylor" => Method::Taylor,
        "eap-ig" | "eap_ig" | "integrated_gradients" => Method::IntegratedGradients,
        other => bail!("unknown edge method `{other}`; use eap or eap-ig"),
    };
    let r = finite(edge_attribution(model, &contrast, method, n_steps, top_k)?)?;
    if json {
        return print_json(&r);
    }
    print_contrast(&contrast);
    println!("clean LD {:.4}   corrupted LD {:.4}   {} edges scored", r.clean_ld, r.corrupted_ld, r.n_edges);
    println!("{:<10}    {:<14} {:>10}", "sender", "receiver", "score");
    for e in &r.top_edges {
        println!("{:<10} →  {:<14} {:>10.4}", e.sender, e.receiver, e.score);
    }
    Ok(())
}

pub fn analyze_options(method: &str, n_steps: usize, target: f32, max_heads: usize, ablation: &str, lens: bool) -> Result<AnalyzeOptions> {
    Ok(AnalyzeOptions {
        method: method.parse()?,
        n_steps,
        target,
        max_heads,
        ablation: ablation.parse()?,
        include_mlps: false,
        logit_lens: lens,
    })
}

fn print_faithfulness(f: &glassbox::methods::faithfulness::Faithfulness, circuit: &[Head], reached: bool) {
    println!("  Sufficiency      : {:.1}%  (exact, {:?} ablation)", 100.0 * f.sufficiency, f.ablation);
    if let Some(t) = f.taylor_sufficiency {
        println!("  Sufficiency ≈    : {:.1}%  (first-order Taylor estimate, for comparison)", 100.0 * t);
    }
    println!("  Comprehensiveness: {:.1}%", 100.0 * f.comprehensiveness);
    println!("  F1-score         : {:.1}%", 100.0 * f.f1);
    println!("  Category         : {}", f.category);
    let names: Vec<String> = circuit.iter().map(|h| h.to_string()).collect();
    println!("  Circuit ({} heads{}): {}", circuit.len(), if reached { "" } else { ", target not reached" }, names.join(" "));
}

pub fn run_analyze(model: &Model, c: &ContrastArgs, opts: &AnalyzeOptions, json: bool) -> Result<()> {
    let contrast = c.build(model)?;
    let a = finite(analyze(model, &contrast, opts)?)?;
    if json {
        return print_json(&a);
    }
    print_contrast(&contrast);
    println!("clean LD {:.4}   corrupted LD {:.4}", a.clean_ld, a.corrupted_ld);
    println!();
    print_faithfulness(&a.faithfulness, &a.circuit, a.target_reached);
    println!();
    println!("  {:<12} {:>12}", "Head", "Attribution");
    println!("  {:<12} {:>12}", "-".repeat(12), "-".repeat(12));
    for s in a.top_heads.iter().take(10) {
        println!("  {:<12} {:>12.4}", s.name, s.score);
    }
    if let Some(l) = &a.logit_lens {
        println!();
        print_lens(model, l);
    }
    Ok(())
}

pub fn run_patch(model: &Model, c: &ContrastArgs, direction: &str, top: usize, json: bool) -> Result<()> {
    let contrast = c.build(model)?;
    let direction = match direction {
        "into_clean" => Direction::IntoClean,
        "into_corrupted" => Direction::IntoCorrupted,
        o => bail!("unknown direction `{o}`; use into_clean or into_corrupted"),
    };
    let p = finite(exact_patching(model, &contrast, direction)?)?;
    if json {
        return print_json(&p);
    }
    print_contrast(&contrast);
    println!("base LD {:.4}   source LD {:.4}", p.base_ld, p.source_ld);
    let mut all: Vec<(String, f32, f32)> = Vec::new();
    for (l, row) in p.heads.iter().enumerate() {
        for (h, &ld) in row.iter().enumerate() {
            all.push((Head { layer: l, head: h }.to_string(), ld, p.head_effects[l][h]));
        }
        all.push((format!("MLP{l:02}"), p.mlps[l], p.mlp_effects[l]));
    }
    all.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    println!("{:<10} {:>12} {:>10}", "component", "patched LD", "effect");
    for (n, ld, e) in all.iter().take(top) {
        println!("{:<10} {:>12.4} {:>10.4}", n, ld, e);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn run_analyze_task(model: &Model, task: &str, n: usize, corruption: &str, seed: u64, n_boot: usize, opts: &AnalyzeOptions, json: bool) -> Result<()> {
    if task != "ioi" {
        bail!("unknown task `{task}`; the tasks are: ioi");
    }
    if n == 0 {
        bail!("--n must be at least 1");
    }
    let prompts = glassbox::tasks::ioi::generate(model, n, seed, corruption.parse()?)?;
    let contrasts = glassbox::tasks::ioi::contrasts(model, &prompts)?;
    let bar = progress_bar(json);
    bar.set_length(contrasts.len() as u64);
    bar.set_message("attribution");
    let mut progress = |done: usize, total: usize, stage: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(stage.to_string());
    };
    let a = finite(glassbox::methods::analyze::analyze_set(model, &contrasts, opts, n_boot, seed, &mut progress)?)?;
    bar.finish_and_clear();
    if json {
        return print_json(&a);
    }
    println!("task ioi: {} prompts ({corruption} corruption, seed {seed})", a.n);
    println!("mean clean LD {:.4}   mean corrupted LD {:.4}", a.mean_clean_ld, a.mean_corrupted_ld);
    println!();
    print_faithfulness(&a.faithfulness, &a.circuit, a.target_reached);
    let b = &a.bootstrap;
    println!("  95% CI ({} resamples): sufficiency [{:.3}, {:.3}]  comprehensiveness [{:.3}, {:.3}]  F1 [{:.3}, {:.3}]",
        b.n_boot, b.sufficiency.ci_lo, b.sufficiency.ci_hi, b.comprehensiveness.ci_lo, b.comprehensiveness.ci_hi, b.f1.ci_lo, b.f1.ci_hi);
    println!();
    println!("  {:<12} {:>12}", "Head", "Mean attr.");
    for s in a.top_heads.iter().take(10) {
        println!("  {:<12} {:>12.4}", s.name, s.score);
    }
    Ok(())
}

pub fn run_stability(model: &Model, pa: &PromptAnswers, k: usize, p: f32, seed: u64, json: bool) -> Result<()> {
    let (tokens, c, i) = pa.tokens(model)?;
    let bar = progress_bar(json);
    bar.set_length(k as u64);
    bar.set_message("corruptions");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let s = finite(glassbox::methods::stability::attribution_stability(model, &tokens, c, i, k, p, seed, &mut progress)?)?;
    bar.finish_and_clear();
    if json {
        return print_json(&s);
    }
    println!("{} corruptions (p = {}, seed {}): rank consistency (mean Kendall τ-b) {:.3}", s.n_corruptions, s.p, s.seed, s.rank_consistency);
    println!("{:<8} {:>10} {:>10} {:>10}", "head", "mean", "std", "stability");
    for h in s.top_stable_heads.iter().take(10) {
        println!("{:<8} {:>10.4} {:>10.4} {:>10.3}", h.name, h.mean, h.std, h.stability);
    }
    Ok(())
}

fn parse_receiver(s: &str) -> Result<glassbox::methods::path_patching::PathReceiver> {
    use glassbox::methods::path_patching::PathReceiver;
    if s == "logits" {
        return Ok(PathReceiver::Logits);
    }
    let (node, kind) = s.rsplit_once('.').with_context(|| format!("receiver `{s}`: write logits, L10H7.q, L10KV1.k or L10KV1.v"))?;
    let head = parse_head(&node.to_ascii_uppercase().replace("KV", "H"))?;
    Ok(match kind {
        "q" => PathReceiver::Q(head),
        "k" => PathReceiver::K(head),
        "v" => PathReceiver::V(head),
        o => bail!("receiver input `{o}`: use q, k or v"),
    })
}

pub fn run_path_patch(model: &Model, c: &ContrastArgs, receiver: &str, top: usize, json: bool) -> Result<()> {
    let contrast = c.build(model)?;
    let r = finite(glassbox::methods::path_patching::path_patching(model, &contrast, parse_receiver(receiver)?, None)?)?;
    if json {
        return print_json(&r);
    }
    print_contrast(&contrast);
    println!("clean LD {:.4}   corrupted LD {:.4}   receiver {receiver}", r.clean_ld, r.corrupted_ld);
    let mut paths = r.paths.clone();
    paths.sort_by(|a, b| b.effect.abs().total_cmp(&a.effect.abs()));
    println!("{:<8} {:>12} {:>10}", "sender", "patched LD", "effect");
    for p in paths.iter().take(top) {
        println!("{:<8} {:>12.4} {:>10.4}", p.name, p.patched_ld, p.effect);
    }
    Ok(())
}

pub fn run_scrub(model: &Model, hypothesis: &str, n: usize, seed: u64, json: bool) -> Result<()> {
    let hyp = hypothesis
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|pair| {
            let (h, f) = pair.split_once('=').with_context(|| format!("`{pair}`: write HEAD=feature, e.g. L23H3=io"))?;
            Ok((parse_head(h)?, f.trim().to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let prompts = glassbox::tasks::ioi::generate(model, n, seed, glassbox::tasks::ioi::Corruption::NameSwap)?;
    let set = glassbox::tasks::ioi::scrub_prompts(model, &prompts)?;
    let r = finite(glassbox::methods::scrubbing::causal_scrubbing(model, &set, &hyp, seed)?)?;
    if json {
        return print_json(&r);
    }
    println!("{} IOI prompts; hypothesis: {}", r.n, if hyp.is_empty() { "(no head matters)".to_string() } else { hypothesis.to_string() });
    println!("mean LD: clean {:.4}  corrupted {:.4}  scrubbed {:.4}", r.mean_clean_ld, r.mean_corrupted_ld, r.mean_scrubbed_ld);
    println!("preserved: {:.1}% of the clean − corrupted LD ({} unmatched head/prompt pairs)", 100.0 * r.preserved, r.unmatched);
    Ok(())
}

/// A progress bar on stderr when it is a terminal and the output is not JSON; hidden otherwise.
fn progress_bar(json: bool) -> indicatif::ProgressBar {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>20} [{bar:30}] {pos}/{len} ({elapsed})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub fn run_composition(model: &Model, heads: &[String], min_score: f32, json: bool) -> Result<()> {
    let circuit = heads.iter().map(|h| parse_head(h)).collect::<Result<Vec<_>>>()?;
    let c = finite(glassbox::methods::composition::all_composition_scores(model, &circuit, min_score)?)?;
    if json {
        return print_json(&c);
    }
    println!("{:<8}    {:<8} {:>8} {:>8} {:>8}", "sender", "receiver", "Q", "K", "V");
    for e in &c.combined_edges {
        println!("{:<8} →  {:<8} {:>8.4} {:>8.4} {:>8.4}", e.sender, e.receiver, e.q, e.k, e.v);
    }
    Ok(())
}
