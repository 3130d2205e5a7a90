//! Attention patterns, entropy and head typing.
//!
//! Scores per head (means over query positions `q ≥ 1` of the real prompt):
//! - `previous_token`: attention to `q − 1`; `bos_sink`: to position 0; `self_attention`: to `q`;
//! - `max_attention`: the row's largest weight; `entropy`: the row's entropy divided by
//!   `ln(q + 1)`, its maximum under the causal mask (0 = one key, 1 = uniform);
//! - `induction` and `duplicate_token`, TransformerLens-style, on a sequence of `REPEAT_LEN` (fewer where the context is shorter)
//!   random tokens repeated twice (after BOS where the model uses one): mean attention from each
//!   second-half token to the token after its first occurrence (`induction`) or to its first
//!   occurrence (`duplicate_token`).
//!
//! A head's type is the first that applies, in this order and with these thresholds:
//! `induction` ≥ 0.4, `duplicate_token` ≥ 0.4, `previous_token` ≥ 0.5, `bos_sink` ≥ 0.6,
//! `self` ≥ 0.5, `focused` (max_attention ≥ 0.5), else `diffuse`.

use std::collections::BTreeMap;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::Head;
use crate::model::{Batch, HookPoint, Hooks, Model};

/// Length of the random sequence repeated for the induction and duplicate-token scores.
pub const REPEAT_LEN: usize = 20;
/// Least `induction` score of an `induction` head.
pub const INDUCTION_MIN: f32 = 0.4;
/// Least `duplicate_token` score of a `duplicate_token` head.
pub const DUPLICATE_MIN: f32 = 0.4;
/// Least `previous_token` score of a `previous_token` head.
pub const PREVIOUS_MIN: f32 = 0.5;
/// Least `bos_sink` score of a `bos_sink` head.
pub const BOS_SINK_MIN: f32 = 0.6;
/// Least `self_attention` score of a `self` head.
pub const SELF_MIN: f32 = 0.5;
/// Least `max_attention` of a `focused` head.
pub const FOCUSED_MIN: f32 = 0.5;

/// A head's attention statistics, each from 0 to 1 (see the module docs).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct HeadScores {
    /// Mean attention from each query to the position before it.
    pub previous_token: f32,
    /// Mean attention from each second-half token of the repeated sequence to its first occurrence.
    pub duplicate_token: f32,
    /// Mean attention from each second-half token of the repeated sequence to the token after its
    /// first occurrence.
    pub induction: f32,
    /// Mean attention to position 0.
    pub bos_sink: f32,
    /// Mean attention from each query to itself.
    pub self_attention: f32,
    /// Mean of each query row's largest weight.
    pub max_attention: f32,
    /// Mean row entropy divided by `ln(q + 1)`: 0 = one key, 1 = uniform.
    pub entropy: f32,
}

impl HeadScores {
    /// The head's type: the first of `induction`, `duplicate_token`, `previous_token`, `bos_sink`,
    /// `self`, `focused` whose threshold its scores meet, else `diffuse`.
    pub fn head_type(&self) -> &'static str {
        if self.induction >= INDUCTION_MIN {
            "induction"
        } else if self.duplicate_token >= DUPLICATE_MIN {
            "duplicate_token"
        } else if self.previous_token >= PREVIOUS_MIN {
            "previous_token"
        } else if self.bos_sink >= BOS_SINK_MIN {
            "bos_sink"
        } else if self.self_attention >= SELF_MIN {
            "self"
        } else if self.max_attention >= FOCUSED_MIN {
            "focused"
        } else {
            "diffuse"
        }
    }
}

/// One shown head: its pattern on the prompt, its type and scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadPattern {
    /// The head.
    pub head: Head,
    /// The head's name (`L09H09`).
    pub name: String,
    /// `pattern[q][k]` on the prompt.
    pub pattern: Vec<Vec<f32>>,
    /// The head's type (`HeadScores::head_type`).
    pub head_type: String,
    /// The head's scores.
    pub scores: HeadScores,
}

crate::options! {
    /// Options of `attention_patterns`.
    pub struct AttentionOptions {
        /// The heads to show (repeatable); by default the `top_k` most focused (lowest entropy).
        pub heads: Option<Vec<Head>> = None,
        /// How many heads to show when no heads are given.
        pub top_k: usize = 10,
        /// Seed of the random repeated sequence the induction score is measured on.
        pub seed: u64 = 0,
    }
}


/// Result of `attention_patterns`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttentionPatterns {
    /// The prompt's tokens as strings.
    pub tokens: Vec<String>,
    /// The shown heads: those asked for, in their order, else the `top_k` by increasing entropy.
    pub heads: Vec<HeadPattern>,
    /// Normalised entropy of each shown head, by name.
    pub entropy: BTreeMap<String, f32>,
    /// Type of each shown head, by name.
    pub head_types: BTreeMap<String, String>,
    /// Every head's scores: `all_scores[layer][head]`.
    pub all_scores: Vec<Vec<HeadScores>>,
}

/// Patterns `[layer] -> [h, q, k]` of one sequence.
fn patterns(model: &Model, tokens: &[u32]) -> Result<Patterns> {
    let layers = model.config().n_layers;
    let hooks = Hooks::new().cache((0..layers).map(HookPoint::Pattern)).logits_for(&[]);
    let out = model.forward(&Batch::new(&[tokens.to_vec()])?, &hooks)?;
    (0..layers)
        .map(|l| {
            let p = out.cache.get(HookPoint::Pattern(l))?.get(0)?.to_dtype(DType::F32)?;
            let (h, _, _) = p.dims3()?;
            (0..h).map(|i| Ok(p.get(i)?.to_vec2::<f32>()?)).collect()
        })
        .collect()
}

fn mean(xs: impl Iterator<Item = f32>) -> f32 {
    let (s, n) = xs.fold((0f32, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f32
    }
}

/// The length of each half of the repeated sequence: `REPEAT_LEN`, or what fits twice (after
/// a BOS) in a model of a shorter context (toy and TransformerLens checkpoints).
fn repeat_len(model: &Model) -> usize {
    let bos = usize::from(model.tokenizer().bos().is_some());
    REPEAT_LEN.min(model.config().n_ctx.saturating_sub(bos) / 2).max(1)
}

/// The repeated random sequence for induction scores (seeded, avoiding the lowest ids, where
/// special tokens live): `repeat_len` tokens twice, after BOS where the model uses one.
pub fn repeated_tokens(model: &Model, seed: u64) -> Vec<u32> {
    let vocab = model.config().d_vocab as u64;
    let lo = (vocab / 10).max(1);
    let mut s = seed.wrapping_add(0x9E3779B97F4A7C15);
    let half: Vec<u32> = (0..repeat_len(model))
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (lo + (s >> 33) % (vocab - lo).max(1)) as u32
        })
        .collect();
    let mut seq: Vec<u32> = model.tokenizer().bos().into_iter().collect();
    seq.extend(&half);
    seq.extend(&half);
    seq
}

/// Scores of every head: `[layer][head]`.
pub fn head_scores(model: &Model, tokens: &[u32], seed: u64) -> Result<Vec<Vec<HeadScores>>> {
    scores_from(model, &patterns(model, tokens)?, seed)
}

/// Attention patterns of one sequence: `[layer][head][q][k]`.
type Patterns = Vec<Vec<Vec<Vec<f32>>>>;

/// Head scores from the prompt's patterns (and a run of the repeated random sequence).
fn scores_from(model: &Model, prompt: &Patterns, seed: u64) -> Result<Vec<Vec<HeadScores>>> {
    let rep_tokens = repeated_tokens(model, seed);
    let n = repeat_len(model);
    let offset = rep_tokens.len() - 2 * n;
    let rep = patterns(model, &rep_tokens)?;
    Ok(prompt
        .iter()
        .zip(&rep)
        .map(|(pl, rl)| {
            pl.iter()
                .zip(rl)
                .map(|(a, r)| {
                    let rows = 1..a.len();
                    let second = offset + n..rep_tokens.len();
                    HeadScores {
                        previous_token: mean(rows.clone().map(|q| a[q][q - 1])),
                        bos_sink: mean(rows.clone().map(|q| a[q][0])),
                        self_attention: mean(rows.clone().map(|q| a[q][q])),
                        max_attention: mean(rows.clone().map(|q| a[q][..=q].iter().copied().fold(0.0, f32::max))),
                        entropy: mean(rows.map(|q| {
                            let h: f32 = a[q][..=q].iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum();
                            h / ((q + 1) as f32).ln()
                        })),
                        induction: mean(second.clone().map(|q| r[q][q - n + 1])),
                        duplicate_token: mean(second.map(|q| r[q][q - n])),
                    }
                })
                .collect()
        })
        .collect())
}

/// Patterns, entropy and types for `heads`, or for the `top_k` most focused heads (lowest
/// entropy) when `heads` is `None`.
pub fn attention_patterns(model: &Model, tokens: &[u32], opts: &AttentionOptions) -> Result<AttentionPatterns> {
    let (heads, top_k, seed) = (opts.heads.as_deref(), opts.top_k, opts.seed);
    if tokens.len() < 2 {
        return Err(Error::Invalid("attention patterns need a prompt of at least 2 tokens".into()));
    }
    let cfg = &model.config();
    let prompt = patterns(model, tokens)?;
    let all_scores = scores_from(model, &prompt, seed)?;
    let chosen: Vec<Head> = match heads {
        Some(hs) => {
            for h in hs {
                h.check(cfg)?;
            }
            hs.to_vec()
        }
        None => {
            let mut all: Vec<Head> = (0..cfg.n_layers)
                .flat_map(|layer| (0..cfg.n_heads).map(move |head| Head { layer, head }))
                .collect();
            all.sort_by(|a, b| all_scores[a.layer][a.head].entropy.total_cmp(&all_scores[b.layer][b.head].entropy));
            all.truncate(top_k);
            all
        }
    };
    let mut entropy = BTreeMap::new();
    let mut head_types = BTreeMap::new();
    let heads = chosen
        .iter()
        .map(|&h| {
            let scores = all_scores[h.layer][h.head];
            let name = h.to_string();
            entropy.insert(name.clone(), scores.entropy);
            head_types.insert(name.clone(), scores.head_type().to_string());
            HeadPattern {
                head: h,
                name,
                pattern: prompt[h.layer][h.head].clone(),
                head_type: scores.head_type().to_string(),
                scores,
            }
        })
        .collect();
    Ok(AttentionPatterns {
        tokens: tokens.iter().map(|&t| model.tokenizer().token_str(t)).collect(),
        heads,
        entropy,
        head_types,
        all_scores,
    })
}
