//! `glassbox align`: cross-model circuit alignment (FCAS) between two models' top heads,
//! ranked by attribution on one prompt or averaged over generated IOI prompts.

use anyhow::Result;
use clap::Args;
use glassbox::methods::alignment::{functional_circuit_alignment, Alignment, AlignmentOptions, ModelShape};
use glassbox::methods::attribution::{attribute, AttributionOptions};
use glassbox::methods::{Contrast, Head};
use glassbox::Model;

use crate::methods::{finite, print_json, PromptOrTask};

/// `glassbox align`.
#[derive(Args)]
pub struct AlignArgs {
    /// The first model (registry name, GGUF file or model folder).
    #[arg(long)]
    pub model_a: String,
    /// The second model.
    #[arg(long)]
    pub model_b: String,
    #[command(flatten)]
    pub input: PromptOrTask,
    /// Prompts in the task set (each model gets the same templates and seed).
    #[arg(long, default_value_t = 32)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Heads compared from each model.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Random head-set pairs in the null distribution.
    #[arg(long, default_value_t = 10_000)]
    pub n_null: usize,
    #[arg(long)]
    pub json: bool,
}

/// Heads of `model` by decreasing |attribution| (Taylor), on the contrasts (mean over them).
fn ranking(model: &Model, contrasts: &[Contrast]) -> Result<Vec<Head>> {
    let cfg = &model.config;
    let mut sum = vec![vec![0f64; cfg.n_heads]; cfg.n_layers];
    for c in contrasts {
        let a = attribute(model, c, &AttributionOptions::default())?;
        for (l, row) in a.scores.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                sum[l][h] += v as f64;
            }
        }
    }
    let mut heads: Vec<(Head, f64)> = sum.iter().enumerate().flat_map(|(l, r)| r.iter().enumerate().map(move |(h, &v)| (Head { layer: l, head: h }, v))).collect();
    heads.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    Ok(heads.into_iter().map(|(h, _)| h).collect())
}

fn contrasts(model: &Model, a: &AlignArgs) -> Result<Vec<Contrast>> {
    match a.input.task()? {
        Some(_) => {
            let prompts = glassbox::tasks::ioi::generate(model, a.n, a.seed, glassbox::tasks::ioi::Corruption::NameSwap)?;
            Ok(glassbox::tasks::ioi::contrasts(model, &prompts)?)
        }
        None => Ok(vec![a.input.contrast(model)?]),
    }
}

pub fn run_align(a: &AlignArgs, load: &dyn Fn(&str) -> Result<Model>) -> Result<()> {
    let mut ranked = Vec::new();
    for name in [&a.model_a, &a.model_b] {
        let model = load(name)?;
        let heads = ranking(&model, &contrasts(&model, a)?)?;
        ranked.push((model.name.clone(), ModelShape { n_layers: model.config.n_layers, n_heads: model.config.n_heads }, heads));
    }
    let (ref name_a, shape_a, ref heads_a) = ranked[0];
    let (ref name_b, shape_b, ref heads_b) = ranked[1];
    let r: Alignment = finite(functional_circuit_alignment(heads_a, shape_a, heads_b, shape_b, &AlignmentOptions { top_k: a.top_k, n_null: a.n_null, seed: a.seed })?)?;
    if a.json {
        return print_json(&r);
    }
    println!("FCAS {name_a} ↔ {name_b}: {:.3}  (z = {:.2}, p = {:.4}; null {:.3} ± {:.3} over {} random head sets)", r.fcas, r.z_score, r.p_value, r.null_mean, r.null_std, r.n_null);
    println!("\n  {:>4}  {:<8} {:>6}   {:<8} {:>6}", "rank", "head A", "depth", "head B", "depth");
    for p in &r.pairs {
        println!("  {:>4}  {:<8} {:>6.3}   {:<8} {:>6.3}", p.rank + 1, p.head_a.to_string(), p.depth_a, p.head_b.to_string(), p.depth_b);
    }
    Ok(())
}
