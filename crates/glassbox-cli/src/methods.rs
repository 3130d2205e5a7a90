//! Subcommands for the methods: their arguments (one `Args` struct each, enum options as
//! `ValueEnum`), calls into the library with its option structs, and table rendering.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use glassbox::methods::analyze::{analyze, analyze_set, AnalyzeOptions, SetOptions};
use glassbox::methods::attention::{attention_patterns, AttentionOptions};
use glassbox::methods::attribution::{attribute, Attribution, AttributionOptions, Component, Method};
use glassbox::methods::composition::{all_composition_scores, CompositionOptions};
use glassbox::methods::edges::{edge_attribution, EdgeOptions};
use glassbox::methods::faithfulness::Ablation;
use glassbox::methods::logit_lens::{logit_lens, LogitLens, LogitLensOptions};
use glassbox::methods::path_patching::{path_patching, PathPatchingOptions, PathReceiver};
use glassbox::methods::patching::{exact_patching, Direction, PatchingOptions};
use glassbox::methods::scrubbing::{causal_scrubbing, ScrubOptions};
use glassbox::methods::stability::{attribution_stability_with_progress, StabilityOptions};
use glassbox::methods::token_attribution::{token_attribution, Baseline, TokenAttribution, TokenAttributionOptions, TokenMethod};
use glassbox::methods::{Contrast, Head, Metric, Prompt};
use glassbox::plot::Plot;
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
    pub fn prompt(&self, model: &Model) -> Result<Prompt> {
        Ok(Prompt::new(model, &self.prompt, &self.correct, &self.incorrect)?)
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

/// One prompt with its answers (and optionally the corrupted prompt), or a generated task set
/// instead: the input of the commands that take either (`analyze`, `align`).
#[derive(Args, Clone)]
pub struct PromptOrTask {
    /// The prompt (or give --task).
    #[arg(long, required_unless_present = "task")]
    pub prompt: Option<String>,
    /// The answer the model should give, e.g. " Mary" (one token).
    #[arg(long, required_unless_present = "task")]
    pub correct: Option<String>,
    /// The competing answer, e.g. " John" (one token).
    #[arg(long, required_unless_present = "task")]
    pub incorrect: Option<String>,
    /// The corrupted prompt; by default the two answers' words are swapped in the prompt.
    #[arg(long)]
    pub corrupted: Option<String>,
    /// Run over a generated prompt set instead: `ioi`.
    #[arg(long, conflicts_with_all = ["prompt", "correct", "incorrect", "corrupted"])]
    pub task: Option<String>,
}

impl PromptOrTask {
    /// The one prompt's contrast (when no task is given).
    pub fn contrast(&self, model: &Model) -> Result<Contrast> {
        let (p, c, i) = (self.prompt.as_deref().unwrap_or_default(), self.correct.as_deref().unwrap_or_default(), self.incorrect.as_deref().unwrap_or_default());
        Ok(Contrast::new(model, p, c, i, self.corrupted.as_deref())?)
    }

    /// The task's name, checked (`ioi` is the one task), or `None` for one prompt.
    pub fn task(&self) -> Result<Option<&str>> {
        match self.task.as_deref() {
            None => Ok(None),
            Some("ioi") => Ok(Some("ioi")),
            Some(t) => bail!("unknown task `{t}`; the tasks are: ioi"),
        }
    }
}

/// What a method measures of each run.
#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum MetricArg {
    /// logit[correct] − logit[incorrect] at the last position.
    LogitDiff,
    /// log p(correct).
    Logprob,
    /// p(correct).
    Prob,
    /// KL divergence from the clean run's next-token distribution.
    Kl,
}

impl MetricArg {
    pub fn metric(self) -> Metric {
        let position = glassbox::methods::Position::Last;
        match self {
            MetricArg::LogitDiff => Metric::LogitDiff { position },
            MetricArg::Logprob => Metric::Logprob { position },
            MetricArg::Prob => Metric::Prob { position },
            MetricArg::Kl => Metric::Kl { position },
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum MethodArg {
    Taylor,
    #[value(alias = "ig")]
    IntegratedGradients,
}

impl MethodArg {
    fn method(self, n_steps: usize) -> Method {
        match self {
            MethodArg::Taylor => Method::Taylor,
            MethodArg::IntegratedGradients => Method::IntegratedGradients { n_steps },
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ComponentArg {
    Heads,
    Mlp,
    #[value(alias = "attn")]
    AttnOut,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum DirectionArg {
    IntoClean,
    IntoCorrupted,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum AblationArg {
    Resample,
    Mean,
    Zero,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum EdgeMethodArg {
    #[value(alias = "taylor")]
    Eap,
    #[value(name = "eap-ig", alias = "eap_ig")]
    EapIg,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum TokenMethodArg {
    #[value(alias = "taylor")]
    GradientXInput,
    #[value(alias = "ig")]
    IntegratedGradients,
}

#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum CorruptionArg {
    NameSwap,
    Abc,
}

/// The result, or an error naming its first NaN or infinite figure: nothing non-finite is
/// printed as a result.
pub fn finite<T: Serialize>(v: T) -> Result<T> {
    glassbox::check_finite(&v)?;
    Ok(v)
}

/// Writes the result's picture when `--plot` was given.
fn write_plot(path: &Option<std::path::PathBuf>, r: &impl Plot) -> Result<()> {
    if let Some(p) = path {
        crate::plot::write(p, &r.plot())?;
    }
    Ok(())
}

pub fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn print_contrast(c: &Contrast) {
    println!("clean     : {:?}", c.clean_prompt);
    println!("corrupted : {:?} ({})", c.corrupted_prompt, c.corruption);
    println!("answers   : {:?} vs {:?}", c.correct, c.incorrect);
}

fn parse_heads(heads: &[String]) -> Result<Vec<Head>> {
    Ok(heads.iter().map(|h| h.parse::<Head>()).collect::<glassbox::Result<Vec<_>>>()?)
}

fn print_attribution(a: &Attribution, top: usize) {
    println!("{} {:.4} (clean)   {:.4} (corrupted)", a.metric, a.clean_ld, a.corrupted_ld);
    if let (Some(e), Some(r)) = (a.embed_attribution, a.completeness_residual) {
        println!("embeddings {e:.4}   completeness residual {:.2e} ({} steps)", r, a.n_steps.unwrap_or(0));
    }
    println!("{:<12} {:>12}", "component", "attribution");
    println!("{:<12} {:>12}", "-".repeat(12), "-".repeat(12));
    for s in a.top.iter().take(top) {
        println!("{:<12} {:>12.4}", s.name, s.score);
    }
}

/// `glassbox attribution`.
#[derive(Args)]
pub struct AttributionArgs {
    #[command(flatten)]
    pub contrast: ContrastArgs,
    #[arg(long, value_enum, default_value = "taylor")]
    pub method: MethodArg,
    /// Integration steps for integrated_gradients.
    #[arg(long, default_value_t = 20)]
    pub n_steps: usize,
    #[arg(long, value_enum, default_value = "heads")]
    pub component: ComponentArg,
    #[arg(long, value_enum, default_value = "logit_diff")]
    pub metric: MetricArg,
    /// Rows of the table.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_attribution(model: &Model, a: &AttributionArgs) -> Result<()> {
    let contrast = a.contrast.build(model)?;
    let component = match a.component {
        ComponentArg::Heads => Component::Heads,
        ComponentArg::Mlp => Component::Mlp,
        ComponentArg::AttnOut => Component::AttnOut,
    };
    let opts = AttributionOptions { component, method: a.method.method(a.n_steps), metric: a.metric.metric() };
    let r = finite(attribute(model, &contrast, &opts)?)?;
    write_plot(&a.plot, &r)?;
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            contrast: &'a Contrast,
            #[serde(flatten)]
            attribution: &'a Attribution,
        }
        return print_json(&Out { contrast: &contrast, attribution: &r });
    }
    print_contrast(&contrast);
    print_attribution(&r, a.top);
    Ok(())
}

fn print_lens(l: &LogitLens) {
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
}

/// `glassbox logit-lens`.
#[derive(Args)]
pub struct LogitLensArgs {
    #[command(flatten)]
    pub answers: PromptAnswers,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_logit_lens(model: &Model, a: &LogitLensArgs) -> Result<()> {
    let l = finite(logit_lens(model, &a.answers.prompt(model)?, &LogitLensOptions { top_k: a.top_k })?)?;
    write_plot(&a.plot, &l)?;
    if a.json {
        return print_json(&l);
    }
    print_lens(&l);
    Ok(())
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

/// `glassbox token-attribution`.
#[derive(Args)]
pub struct TokenAttributionArgs {
    #[command(flatten)]
    pub answers: PromptAnswers,
    #[arg(long, value_enum, default_value = "gradient_x_input")]
    pub method: TokenMethodArg,
    #[arg(long, default_value_t = 20)]
    pub n_steps: usize,
    /// Integrated-gradients baseline: zero, bos, or a token id.
    #[arg(long, default_value = "bos")]
    pub baseline: String,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

fn parse_baseline(model: &Model, s: &str) -> Result<Baseline> {
    Ok(match s {
        "zero" => Baseline::Zero,
        "bos" => Baseline::Token(model.tokenizer.bos_token().context("this model has no BOS token; use zero or a token id")?),
        id => Baseline::Token(id.parse().with_context(|| format!("baseline `{id}`: use zero, bos or a token id"))?),
    })
}

pub fn run_token_attribution(model: &Model, a: &TokenAttributionArgs) -> Result<()> {
    let method = match a.method {
        TokenMethodArg::GradientXInput => TokenMethod::GradientXInput,
        TokenMethodArg::IntegratedGradients => TokenMethod::IntegratedGradients { n_steps: a.n_steps, baseline: parse_baseline(model, &a.baseline)? },
    };
    let t = finite(token_attribution(model, &a.answers.prompt(model)?, &TokenAttributionOptions { method })?)?;
    write_plot(&a.plot, &t)?;
    if a.json {
        return print_json(&t);
    }
    print_tokens(&t);
    Ok(())
}

/// `glassbox attention`.
#[derive(Args)]
pub struct AttentionArgs {
    #[arg(long)]
    pub prompt: String,
    /// Heads to show (L9H6 or 9.6; repeatable); by default the most focused.
    #[arg(long = "head")]
    pub heads: Vec<String>,
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_attention(model: &Model, a: &AttentionArgs) -> Result<()> {
    let tokens = model.tokenize(&a.prompt)?;
    let chosen = parse_heads(&a.heads)?;
    let opts = AttentionOptions { heads: (!chosen.is_empty()).then_some(chosen), top_k: a.top_k, seed: 0 };
    let view = finite(attention_patterns(model, &tokens, &opts)?)?;
    write_plot(&a.plot, &view)?;
    if a.json {
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

/// `glassbox edges`.
#[derive(Args)]
pub struct EdgesArgs {
    #[command(flatten)]
    pub contrast: ContrastArgs,
    #[arg(long, value_enum, default_value = "eap")]
    pub method: EdgeMethodArg,
    #[arg(long, default_value_t = 20)]
    pub n_steps: usize,
    /// How many edges to list.
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    #[arg(long, value_enum, default_value = "logit_diff")]
    pub metric: MetricArg,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_edges(model: &Model, a: &EdgesArgs) -> Result<()> {
    let contrast = a.contrast.build(model)?;
    let method = match a.method {
        EdgeMethodArg::Eap => Method::Taylor,
        EdgeMethodArg::EapIg => Method::IntegratedGradients { n_steps: a.n_steps },
    };
    let r = finite(edge_attribution(model, &contrast, &EdgeOptions { method, top_k: a.top_k, metric: a.metric.metric() })?)?;
    write_plot(&a.plot, &r)?;
    if a.json {
        return print_json(&r);
    }
    print_contrast(&contrast);
    println!("{} {:.4} (clean)   {:.4} (corrupted)   {} edges scored", r.metric, r.clean_ld, r.corrupted_ld, r.n_edges);
    println!("{:<10}    {:<14} {:>10}", "sender", "receiver", "score");
    for e in &r.top_edges {
        println!("{:<10} →  {:<14} {:>10.4}", e.sender, e.receiver, e.score);
    }
    Ok(())
}

/// `glassbox analyze`.
#[derive(Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub input: PromptOrTask,
    /// Prompts in the task set.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Task corruption.
    #[arg(long, value_enum, default_value = "name_swap")]
    pub corruption: CorruptionArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bootstrap resamples for the task's confidence intervals.
    #[arg(long, default_value_t = 1000)]
    pub n_boot: usize,
    /// Attribution used to rank heads.
    #[arg(long, value_enum, default_value = "taylor")]
    pub method: MethodArg,
    #[arg(long, default_value_t = 20)]
    pub n_steps: usize,
    /// Target exact sufficiency of the circuit.
    #[arg(long, default_value_t = 0.85)]
    pub target: f32,
    /// Most heads in the circuit.
    #[arg(long, default_value_t = 40)]
    pub max_heads: usize,
    /// Ablation of heads outside (or inside) the circuit.
    #[arg(long, value_enum, default_value = "resample")]
    pub ablation: AblationArg,
    #[arg(long, value_enum, default_value = "logit_diff")]
    pub metric: MetricArg,
    /// Include the logit lens in the result.
    #[arg(long)]
    pub logit_lens: bool,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

impl AnalyzeArgs {
    fn options(&self) -> AnalyzeOptions {
        AnalyzeOptions {
            method: self.method.method(self.n_steps),
            target: self.target,
            max_heads: self.max_heads,
            ablation: match self.ablation {
                AblationArg::Resample => Ablation::Resample,
                AblationArg::Mean => Ablation::Mean,
                AblationArg::Zero => Ablation::Zero,
            },
            include_mlps: false,
            logit_lens: self.logit_lens,
            metric: self.metric.metric(),
        }
    }
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

pub fn run_analyze(model: &Model, a: &AnalyzeArgs) -> Result<()> {
    if a.input.task()?.is_some() {
        return run_analyze_task(model, a);
    }
    let contrast = a.input.contrast(model)?;
    let r = finite(analyze(model, &contrast, &a.options())?)?;
    if let Some(path) = &a.plot {
        // The circuit's heads coloured by their attention type on this prompt.
        let view = attention_patterns(model, &contrast.clean, &AttentionOptions { heads: Some(r.circuit.clone()), ..Default::default() })?;
        crate::plot::write(path, &glassbox::plot::analysis_with_types(&r, &view.head_types))?;
    }
    if a.json {
        return print_json(&r);
    }
    print_contrast(&contrast);
    println!("{} {:.4} (clean)   {:.4} (corrupted)", r.metric, r.clean_ld, r.corrupted_ld);
    println!();
    print_faithfulness(&r.faithfulness, &r.circuit, r.target_reached);
    println!();
    println!("  {:<12} {:>12}", "Head", "Attribution");
    println!("  {:<12} {:>12}", "-".repeat(12), "-".repeat(12));
    for s in r.top_heads.iter().take(10) {
        println!("  {:<12} {:>12.4}", s.name, s.score);
    }
    if let Some(l) = &r.logit_lens {
        println!();
        print_lens(l);
    }
    Ok(())
}

fn run_analyze_task(model: &Model, a: &AnalyzeArgs) -> Result<()> {
    if a.plot.is_some() {
        bail!("--plot draws the analysis of one prompt; leave it out with --task (or analyze one of the prompts)");
    }
    let corruption = match a.corruption {
        CorruptionArg::NameSwap => glassbox::tasks::ioi::Corruption::NameSwap,
        CorruptionArg::Abc => glassbox::tasks::ioi::Corruption::Abc,
    };
    let prompts = glassbox::tasks::ioi::generate(model, a.n, a.seed, corruption)?;
    let contrasts = glassbox::tasks::ioi::contrasts(model, &prompts)?;
    let bar = progress_bar(a.json);
    bar.set_length(contrasts.len() as u64);
    bar.set_message("attribution");
    let mut progress = |done: usize, total: usize, stage: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(stage.to_string());
    };
    let opts = SetOptions { analyze: a.options(), n_boot: a.n_boot, seed: a.seed };
    let r = finite(analyze_set(model, &contrasts, &opts, &mut progress)?)?;
    bar.finish_and_clear();
    if a.json {
        return print_json(&r);
    }
    println!("task ioi: {} prompts ({} corruption, seed {})", r.n, match a.corruption { CorruptionArg::NameSwap => "name_swap", CorruptionArg::Abc => "abc" }, a.seed);
    println!("mean clean {} {:.4}   mean corrupted {:.4}", r.metric, r.mean_clean_ld, r.mean_corrupted_ld);
    println!();
    print_faithfulness(&r.faithfulness, &r.circuit, r.target_reached);
    let b = &r.bootstrap;
    println!("  95% CI ({} resamples): sufficiency [{:.3}, {:.3}]  comprehensiveness [{:.3}, {:.3}]  F1 [{:.3}, {:.3}]",
        b.n_boot, b.sufficiency.ci_lo, b.sufficiency.ci_hi, b.comprehensiveness.ci_lo, b.comprehensiveness.ci_hi, b.f1.ci_lo, b.f1.ci_hi);
    println!();
    println!("  {:<12} {:>12}", "Head", "Mean attr.");
    for s in r.top_heads.iter().take(10) {
        println!("  {:<12} {:>12.4}", s.name, s.score);
    }
    Ok(())
}

/// `glassbox patch`.
#[derive(Args)]
pub struct PatchArgs {
    #[command(flatten)]
    pub contrast: ContrastArgs,
    /// into_clean (corrupted activation into the clean run) or into_corrupted.
    #[arg(long, value_enum, default_value = "into_clean")]
    pub direction: DirectionArg,
    #[arg(long, value_enum, default_value = "logit_diff")]
    pub metric: MetricArg,
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_patch(model: &Model, a: &PatchArgs) -> Result<()> {
    let contrast = a.contrast.build(model)?;
    let direction = match a.direction {
        DirectionArg::IntoClean => Direction::IntoClean,
        DirectionArg::IntoCorrupted => Direction::IntoCorrupted,
    };
    let p = finite(exact_patching(model, &contrast, &PatchingOptions { direction, metric: a.metric.metric() })?)?;
    write_plot(&a.plot, &p)?;
    if a.json {
        return print_json(&p);
    }
    print_contrast(&contrast);
    println!("base {} {:.4}   source {:.4}", p.metric, p.base_ld, p.source_ld);
    let mut all: Vec<(String, f32, f32)> = Vec::new();
    for (l, row) in p.heads.iter().enumerate() {
        for (h, &ld) in row.iter().enumerate() {
            all.push((Head { layer: l, head: h }.to_string(), ld, p.head_effects[l][h]));
        }
        all.push((format!("MLP{l:02}"), p.mlps[l], p.mlp_effects[l]));
    }
    all.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()));
    println!("{:<10} {:>12} {:>10}", "component", "patched", "effect");
    for (n, ld, e) in all.iter().take(a.top) {
        println!("{:<10} {:>12.4} {:>10.4}", n, ld, e);
    }
    Ok(())
}

/// `glassbox stability`.
#[derive(Args)]
pub struct StabilityArgs {
    #[command(flatten)]
    pub answers: PromptAnswers,
    #[arg(long, default_value_t = 25)]
    pub n_corruptions: usize,
    /// Probability that each non-BOS token is replaced.
    #[arg(long, default_value_t = 0.3)]
    pub p: f32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_stability(model: &Model, a: &StabilityArgs) -> Result<()> {
    let prompt = a.answers.prompt(model)?;
    let bar = progress_bar(a.json);
    bar.set_length(a.n_corruptions as u64);
    bar.set_message("corruptions");
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let opts = StabilityOptions { n_corruptions: a.n_corruptions, p: a.p, seed: a.seed };
    let s = finite(attribution_stability_with_progress(model, &prompt, &opts, &mut progress)?)?;
    write_plot(&a.plot, &s)?;
    bar.finish_and_clear();
    if a.json {
        return print_json(&s);
    }
    println!("{} corruptions (p = {}, seed {}): rank consistency (mean Kendall τ-b) {:.3}", s.n_corruptions, s.p, s.seed, s.rank_consistency);
    println!("{:<8} {:>10} {:>10} {:>10}", "head", "mean", "std", "stability");
    for h in s.top_stable_heads.iter().take(10) {
        println!("{:<8} {:>10.4} {:>10.4} {:>10.3}", h.name, h.mean, h.std, h.stability);
    }
    Ok(())
}

pub(crate) fn parse_receiver(s: &str) -> Result<PathReceiver> {
    if s == "logits" {
        return Ok(PathReceiver::Logits);
    }
    let (node, kind) = s.rsplit_once('.').with_context(|| format!("receiver `{s}`: write logits, L10H7.q, L10KV1.k or L10KV1.v"))?;
    let head: Head = node.to_ascii_uppercase().replace("KV", "H").parse()?;
    Ok(match kind {
        "q" => PathReceiver::Q(head),
        "k" => PathReceiver::K(head),
        "v" => PathReceiver::V(head),
        o => bail!("receiver input `{o}`: use q, k or v"),
    })
}

/// `glassbox path-patch`.
#[derive(Args)]
pub struct PathPatchArgs {
    #[command(flatten)]
    pub contrast: ContrastArgs,
    /// `logits`, or a head's input: `L10H7.q`, `L10KV1.k`, `L10KV1.v` (key/value head index).
    #[arg(long, default_value = "logits")]
    pub receiver: String,
    #[arg(long, value_enum, default_value = "logit_diff")]
    pub metric: MetricArg,
    #[arg(long, default_value_t = 15)]
    pub top: usize,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_path_patch(model: &Model, a: &PathPatchArgs) -> Result<()> {
    let contrast = a.contrast.build(model)?;
    let opts = PathPatchingOptions { receiver: parse_receiver(&a.receiver)?, senders: None, metric: a.metric.metric() };
    let r = finite(path_patching(model, &contrast, &opts)?)?;
    write_plot(&a.plot, &r)?;
    if a.json {
        return print_json(&r);
    }
    print_contrast(&contrast);
    println!("clean {} {:.4}   corrupted {:.4}   receiver {}", r.metric, r.clean_ld, r.corrupted_ld, a.receiver);
    let mut paths = r.paths.clone();
    paths.sort_by(|a, b| b.effect.abs().total_cmp(&a.effect.abs()));
    println!("{:<8} {:>12} {:>10}", "sender", "patched", "effect");
    for p in paths.iter().take(a.top) {
        println!("{:<8} {:>12.4} {:>10.4}", p.name, p.patched_ld, p.effect);
    }
    Ok(())
}

/// `glassbox scrub`.
#[derive(Args)]
pub struct ScrubArgs {
    /// Head=feature pairs, e.g. `L23H3=io,L29H1=io` (features: io, subject, template, order).
    #[arg(long, default_value = "")]
    pub hypothesis: String,
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// A scrubbing hypothesis written `L23H3=io,L29H1=io`.
pub(crate) fn parse_hypothesis(s: &str) -> Result<Vec<(Head, String)>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|pair| {
            let (h, f) = pair.split_once('=').with_context(|| format!("`{pair}`: write HEAD=feature, e.g. L23H3=io"))?;
            Ok((h.trim().parse::<Head>()?, f.trim().to_string()))
        })
        .collect()
}

pub fn run_scrub(model: &Model, a: &ScrubArgs) -> Result<()> {
    let hypothesis = parse_hypothesis(&a.hypothesis)?;
    let prompts = glassbox::tasks::ioi::generate(model, a.n, a.seed, glassbox::tasks::ioi::Corruption::NameSwap)?;
    let set = glassbox::tasks::ioi::scrub_prompts(model, &prompts)?;
    let none = hypothesis.is_empty();
    let r = finite(causal_scrubbing(model, &set, &ScrubOptions { hypothesis, seed: a.seed })?)?;
    if a.json {
        return print_json(&r);
    }
    println!("{} IOI prompts; hypothesis: {}", r.n, if none { "(no head matters)" } else { &a.hypothesis });
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

/// `glassbox composition`.
#[derive(Args)]
pub struct CompositionArgs {
    /// Heads of the circuit (L9H6 or 9.6; repeatable).
    #[arg(long = "head", required = true)]
    pub heads: Vec<String>,
    /// Show only pairs whose best score exceeds the random-heads baseline by at least this
    /// (default: every pair).
    #[arg(long, allow_hyphen_values = true)]
    pub min_score: Option<f32>,
    /// Write the result's picture to this file (.svg, or .png rendered at twice the size).
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run_composition(model: &Model, a: &CompositionArgs) -> Result<()> {
    let circuit = parse_heads(&a.heads)?;
    let c = finite(all_composition_scores(model, &circuit, &CompositionOptions { min_score: a.min_score })?)?;
    write_plot(&a.plot, &c)?;
    if a.json {
        return print_json(&c);
    }
    let b = &c.baseline;
    println!("random heads of these shapes ({} pairs): Q {:.4} ± {:.4}, K {:.4} ± {:.4}, V {:.4} ± {:.4}", b.n_samples, b.q, b.q_std, b.k, b.k_std, b.v, b.v_std);
    println!("{:<8}    {:<8} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}", "sender", "receiver", "Q", "K", "V", "Q−base", "K−base", "V−base");
    for e in &c.combined_edges {
        println!("{:<8} →  {:<8} {:>8.4} {:>8.4} {:>8.4}   {:>+8.4} {:>+8.4} {:>+8.4}", e.sender, e.receiver, e.q, e.k, e.v, e.q_excess, e.k_excess, e.v_excess);
    }
    Ok(())
}
