//! Attribution stability: how stable are head attributions across random corruptions?
//!
//! `K` corrupted prompts, each non-BOS token replaced with probability `p` by a random
//! vocabulary token (seeded; at least one token always changes). For each, Taylor attribution
//! patching of every head (one clean forward and backward serves them all: the gradient is
//! the clean run's; the corrupted prompts run batched). Per head `stability = max(0, 1 − std/|mean|)` over the corruptions;
//! `rank_consistency` is the mean Kendall τ-b between the corruptions' attribution vectors over
//! all pairs (1: every corruption ranks the heads alike).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::attribution::{taylor_many, Component};
use crate::methods::{Head, Metric, Prompt, Scorer};
use crate::model::Model;
use crate::tasks::Rng;

/// One head's Taylor attribution across the corruptions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadStability {
    /// The head.
    pub head: Head,
    /// The head's name (`L09H09`).
    pub name: String,
    /// Mean attribution over the corruptions (logit difference).
    pub mean: f32,
    /// Sample standard deviation of the attribution over the corruptions.
    pub std: f32,
    /// `max(0, 1 − std / |mean|)`; 0 when the mean is 0.
    pub stability: f32,
}

crate::options! {
    /// Options of `attribution_stability`.
    pub struct StabilityOptions {
        /// Random corruptions of the prompt (the reference tool's default is 10).
        pub n_corruptions: usize = 25,
        /// Probability that each token (but a leading BOS) is replaced.
        pub p: f32 = 0.3,
        /// Seed of the corruptions.
        pub seed: u64 = 42,
    }
}


/// Result of `attribution_stability`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stability {
    /// Random corruptions used.
    pub n_corruptions: usize,
    /// Probability with which each token (but a leading BOS) was replaced.
    pub p: f32,
    /// Seed of the corruptions.
    pub seed: u64,
    /// Mean Kendall τ-b between the corruptions' head attributions over all pairs where it is
    /// defined (1: every corruption ranks the heads alike).
    pub rank_consistency: f32,
    /// `stability[layer][head]`
    pub stability: Vec<Vec<f32>>,
    /// `mean[layer][head]`: each head's mean attribution over the corruptions.
    #[serde(default)]
    pub mean: Vec<Vec<f32>>,
    /// `std[layer][head]`: its sample standard deviation.
    #[serde(default)]
    pub std: Vec<Vec<f32>>,
    /// Heads with the largest |mean attribution| × stability, first.
    pub top_stable_heads: Vec<HeadStability>,
}

/// Kendall's τ-b between two equally long samples (ties counted as in scipy's default).
pub fn kendall_tau_b(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (mut c, mut d, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let a = (x[i] - x[j]).partial_cmp(&0.0).map_or(0, |o| o as i8);
            let b = (y[i] - y[j]).partial_cmp(&0.0).map_or(0, |o| o as i8);
            match (a, b) {
                (0, 0) => {
                    tx += 1;
                    ty += 1
                }
                (0, _) => tx += 1,
                (_, 0) => ty += 1,
                _ if a == b => c += 1,
                _ => d += 1,
            }
        }
    }
    let n0 = (n * n.saturating_sub(1) / 2) as f64;
    let denom = ((n0 - tx as f64) * (n0 - ty as f64)).sqrt();
    if denom == 0.0 {
        f32::NAN
    } else {
        ((c - d) as f64 / denom) as f32
    }
}

/// Attribution stability across random corruptions.
pub fn attribution_stability(model: &Model, prompt: &Prompt, opts: &StabilityOptions) -> Result<Stability> {
    attribution_stability_with_progress(model, prompt, opts, &mut |_, _| {})
}

/// `attribution_stability`, calling `progress(done, total)` per batch of corruptions.
pub fn attribution_stability_with_progress(model: &Model, prompt: &Prompt, opts: &StabilityOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Stability> {
    prompt.check(model)?;
    let (tokens, n_corruptions, p, seed) = (&prompt.tokens[..], opts.n_corruptions, opts.p, opts.seed);
    super::check_count("the number of corruptions", n_corruptions, super::limits::N_CORRUPTIONS)?;
    super::check_number("the corruption probability p", p, 0.0, 1.0)?;
    let cfg = &model.config();
    let first = usize::from(model.tokenizer().bos().is_some_and(|b| tokens.first() == Some(&b)));
    if tokens.len() <= first {
        return Err(Error::Invalid("the prompt has no token to corrupt".into()));
    }
    let mut rng = Rng::new(seed);
    let mut prompts = Vec::with_capacity(n_corruptions);
    for _ in 0..n_corruptions {
        let mut corrupted = tokens.to_vec();
        for t in corrupted.iter_mut().skip(first) {
            if rng.unit() < p as f64 {
                *t = rng.below(cfg.d_vocab) as u32;
            }
        }
        if corrupted == tokens {
            let i = first + rng.below(tokens.len() - first);
            corrupted[i] = ((tokens[i] as usize + 1 + rng.below(cfg.d_vocab - 1)) % cfg.d_vocab) as u32;
        }
        prompts.push(corrupted);
    }
    // One clean forward and backward serves every corruption (the gradient is the clean
    // run's); the corrupted prompts run batched.
    let scorer = Scorer::for_answers(model, tokens, prompt.correct, prompt.incorrect, &Metric::default())?;
    let runs: Vec<Vec<f32>> = taylor_many(model, tokens, &prompts, &scorer, Component::Heads, progress)?
        .into_iter()
        .map(|s| s.into_iter().flatten().collect())
        .collect();
    let n_heads = runs[0].len();
    let k = runs.len() as f32;
    let mut per_head = Vec::with_capacity(n_heads);
    for i in 0..n_heads {
        let mean = runs.iter().map(|r| r[i]).sum::<f32>() / k;
        let var = runs.iter().map(|r| (r[i] - mean).powi(2)).sum::<f32>() / (k - 1.0);
        let std = var.sqrt();
        let stability = if mean.abs() > 0.0 { (1.0 - std / mean.abs()).max(0.0) } else { 0.0 };
        let head = Head { layer: i / cfg.n_heads, head: i % cfg.n_heads };
        per_head.push(HeadStability { head, name: head.to_string(), mean, std, stability });
    }
    let mut taus = Vec::new();
    for a in 0..runs.len() {
        for b in a + 1..runs.len() {
            let t = kendall_tau_b(&runs[a], &runs[b]);
            if t.is_finite() {
                taus.push(t);
            }
        }
    }
    if taus.is_empty() {
        return Err(Error::Invalid(
            "the attributions rank no head above another under any corruption (all ties), so their rank consistency is undefined; try a larger p or other answers".into(),
        ));
    }
    let rank_consistency = taus.iter().sum::<f32>() / taus.len() as f32;
    let grid = |f: fn(&HeadStability) -> f32| -> Vec<Vec<f32>> { per_head.chunks(cfg.n_heads).map(|c| c.iter().map(f).collect()).collect() };
    let (stability, mean, std) = (grid(|h| h.stability), grid(|h| h.mean), grid(|h| h.std));
    let mut top = per_head;
    top.sort_by(|a, b| (b.mean.abs() * b.stability).total_cmp(&(a.mean.abs() * a.stability)));
    top.truncate(20);
    Ok(Stability {
        n_corruptions,
        p,
        seed,
        rank_consistency,
        stability,
        mean,
        std,
        top_stable_heads: top,
    })
}
