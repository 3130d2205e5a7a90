//! Text generation with a key/value cache: greedy or sampled (temperature, top-k, top-p, a
//! seed), with hooks applied at every step (steering, ablation, caching while generating).

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::hooks::CacheSpec;
use crate::model::{ActivationCache, Batch, Hooks, KvCache, Model, Start};
use crate::tasks::Rng;

/// Bounds on a generation's arguments.
pub mod limits {
    use std::ops::RangeInclusive;
    /// New tokens in one generation (the model's context also bounds it).
    pub const MAX_NEW_TOKENS: RangeInclusive<usize> = 1..=100_000;
    /// Sampling temperature.
    pub const TEMPERATURE: RangeInclusive<f32> = 1e-3..=100.0;
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// The most likely token (the lowest id on a tie), as `transformers`' `do_sample=False`.
    #[default]
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the `top_k` most likely
    /// tokens and then to the smallest set whose probability reaches `top_p`; the same seed
    /// gives the same tokens.
    Sample {
        /// Divides the logits: below 1 sharpens the distribution, above 1 flattens it.
        temperature: f32,
        /// Keep only this many of the most likely tokens (`None`: all).
        top_k: Option<usize>,
        /// Keep the most likely tokens until their probability reaches this (nucleus
        /// sampling; `None` or 1: all).
        top_p: Option<f32>,
        /// Seed of the draws.
        seed: u64,
    },
}

/// Options of `Model::generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateOptions {
    /// The most tokens to add (generation also stops at a stop token or the model's context).
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// Stop after the model's end-of-sequence tokens (`Tokenizer::eos_tokens`).
    pub stop_at_eos: bool,
    /// Further tokens that end the generation.
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 32, sampling: Sampling::Greedy, stop_at_eos: true, stop_tokens: Vec::new() }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// This stop token was generated (it is the last of `tokens`).
    StopToken(u32),
    /// The sequence filled the model's context.
    ContextFull,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::MaxNewTokens => f.write_str("reached max_new_tokens"),
            StopReason::StopToken(t) => write!(f, "stop token {t}"),
            StopReason::ContextFull => f.write_str("the context is full"),
        }
    }
}

/// A generated continuation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    /// The prompt's tokens (with BOS where the model adds it).
    pub prompt_tokens: Vec<u32>,
    /// The generated tokens.
    pub tokens: Vec<u32>,
    /// The log-probability of each generated token under the model's (hooked) distribution
    /// before temperature and filtering.
    pub logprobs: Vec<f32>,
    /// The generated text (`tokens` decoded, special tokens left out).
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
    /// What the hooks cached at each step (empty unless they cache): the prompt's run first
    /// (positions `0..prompt`), then one run per generated token but the last (one position;
    /// attention patterns span every key so far). Not serialised.
    #[serde(skip)]
    pub caches: Vec<ActivationCache>,
}

impl GenerateOptions {
    fn check(&self) -> Result<()> {
        crate::limits::check_count("max_new_tokens", self.max_new_tokens, limits::MAX_NEW_TOKENS)?;
        if let Sampling::Sample { temperature, top_k, top_p, .. } = self.sampling {
            crate::methods::check_number("temperature", temperature, *limits::TEMPERATURE.start(), *limits::TEMPERATURE.end())?;
            if top_k == Some(0) {
                return Err(Error::Invalid("top_k is 0; it must be at least 1 (or unset to keep every token)".into()));
            }
            if let Some(p) = top_p {
                if !(p.is_finite() && p > 0.0 && p <= 1.0) {
                    return Err(Error::Invalid(format!("top_p is {p}; it must be a number above 0 and at most 1")));
                }
            }
        }
        Ok(())
    }
}

impl Model {
    /// Continues `prompt` (tokenized as `Model::tokenize` does), running `hooks` at every step.
    pub fn generate(&self, prompt: &str, options: &GenerateOptions, hooks: &Hooks) -> Result<Generation> {
        self.generate_from_tokens(&self.tokenize(prompt)?, options, hooks)
    }

    /// Continues the token sequence `prompt`. The prompt runs once, then each new token runs
    /// alone against the cached keys and values. `hooks` act on every run: the prompt's
    /// positions first, then each new position (so an `Action::Add` of a `[d_model]` vector
    /// steers every position); interventions may not select positions, and the hooks may not
    /// choose logit ids. Errors on an empty prompt, a token outside the vocabulary, a prompt
    /// that fills the context, or out-of-range options.
    pub fn generate_from_tokens(&self, prompt: &[u32], options: &GenerateOptions, hooks: &Hooks) -> Result<Generation> {
        options.check()?;
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if self.config.variants.bidirectional {
            return Err(Error::Invalid("this model's attention is bidirectional (every position reads the later ones), so it does not generate text left to right".into()));
        }
        let vocab = self.config.d_vocab;
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::Invalid(format!("token id {id} is outside the vocabulary of {vocab} tokens")));
        }
        if prompt.len() > self.config.n_ctx {
            return Err(Error::PromptTooLong { n_tokens: prompt.len(), max: self.config.n_ctx });
        }
        if hooks.interventions.iter().any(|i| i.positions.is_some()) {
            return Err(Error::Invalid(
                "a generation's hooks act on every position of every step; remove the position selection from the intervention".into(),
            ));
        }
        if hooks.logit_ids.is_some() {
            return Err(Error::Invalid("a generation needs the whole vocabulary's logits; remove logits_for from the hooks".into()));
        }
        let mut step_hooks = hooks.clone();
        step_hooks.last_logits_only = true;

        let mut stops = options.stop_tokens.clone();
        if options.stop_at_eos {
            stops.extend_from_slice(self.tokenizer.eos_tokens());
        }
        let mut rng = match options.sampling {
            Sampling::Sample { seed, .. } => Some(Rng::new(seed)),
            Sampling::Greedy => None,
        };

        let mut cache = KvCache::new();
        let mut next_input = prompt.to_vec();
        let (mut tokens, mut logprobs, mut caches) = (Vec::new(), Vec::new(), Vec::new());
        let caching = !matches!(hooks.cache, CacheSpec::Nothing);
        let stop = loop {
            let batch = Batch::new(&[next_input])?;
            let out = self.forward_from(Start::Continue { batch: &batch, cache: &mut cache }, &step_hooks)?;
            let logits: Vec<f32> = out.last_logits()?.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
            let (token, logprob) = choose(&logits, &options.sampling, rng.as_mut())?;
            if caching {
                caches.push(out.cache);
            }
            tokens.push(token);
            logprobs.push(logprob);
            if stops.contains(&token) {
                break StopReason::StopToken(token);
            }
            if tokens.len() == options.max_new_tokens {
                break StopReason::MaxNewTokens;
            }
            if cache.len() >= self.config.n_ctx {
                break StopReason::ContextFull;
            }
            next_input = vec![token];
        };
        let text = self.tokenizer.decode(&tokens);
        Ok(Generation { prompt_tokens: prompt.to_vec(), tokens, logprobs, text, stop, caches })
    }
}

/// The next token from one row of logits, and its log-probability under `softmax(logits)`.
fn choose(logits: &[f32], sampling: &Sampling, rng: Option<&mut Rng>) -> Result<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max as f64 + logits.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln();
    let logprob = |i: usize| (logits[i] as f64 - log_z) as f32;
    let token = match (sampling, rng) {
        (Sampling::Sample { temperature, top_k, top_p, .. }, Some(rng)) => sample(logits, *temperature, *top_k, *top_p, rng),
        _ => {
            // The first maximum, as torch's argmax.
            let mut best = 0;
            for (i, &x) in logits.iter().enumerate() {
                if x > logits[best] {
                    best = i;
                }
            }
            best
        }
    };
    Ok((token as u32, logprob(token)))
}

/// One draw from the filtered, tempered distribution.
fn sample(logits: &[f32], temperature: f32, top_k: Option<usize>, top_p: Option<f32>, rng: &mut Rng) -> usize {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Most likely first; ties by lower id, so the draw does not depend on sort stability.
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if let Some(k) = top_k {
        order.truncate(k.max(1));
    }
    let t = temperature as f64;
    let top = logits[order[0]] as f64 / t;
    let mut weights: Vec<f64> = order.iter().map(|&i| (logits[i] as f64 / t - top).exp()).collect();
    let total: f64 = weights.iter().sum();
    if let Some(p) = top_p.filter(|&p| p < 1.0) {
        // The smallest prefix whose probability reaches p (at least one token).
        let mut cum = 0.0;
        let mut keep = weights.len();
        for (n, w) in weights.iter().enumerate() {
            cum += w / total;
            if cum >= p as f64 {
                keep = n + 1;
                break;
            }
        }
        weights.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = weights.iter().sum();
    let mut u = rng.unit() * total;
    for (n, w) in weights.iter().enumerate() {
        if u < *w {
            return order[n];
        }
        u -= w;
    }
    order[weights.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_filters() {
        let logits = [0.0f32, 5.0, 4.9, -3.0];
        let mut rng = Rng::new(1);
        // top_k 1 is greedy.
        for _ in 0..20 {
            assert_eq!(sample(&logits, 1.0, Some(1), None, &mut rng), 1);
        }
        // top_p just above the top token's probability keeps two tokens.
        let mut seen = [0usize; 4];
        for _ in 0..2000 {
            seen[sample(&logits, 1.0, None, Some(0.6), &mut rng)] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0, "{seen:?}");
        assert!(seen[1] > 900 && seen[2] > 800, "{seen:?}");
        // A tiny temperature is greedy; a large one reaches every token.
        assert_eq!(sample(&logits, 1e-3, None, None, &mut rng), 1);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[sample(&logits, 100.0, None, None, &mut rng)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let (t, lp) = choose(&[1.0, 3.0, 3.0, 0.0], &Sampling::Greedy, None).unwrap();
        assert_eq!(t, 1);
        let z = (1f64.exp() + 2.0 * 3f64.exp() + 1.0).ln();
        assert!((lp as f64 - (3.0 - z)).abs() < 1e-6);
    }
}
