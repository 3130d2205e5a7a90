//! Causal scrubbing (Chan et al. 2022), for hypotheses about attention heads.
//!
//! A hypothesis says which feature of the input each head's output depends on (e.g. L9H9
//! depends only on `io`, the indirect object's name). Scrubbing tests it: on each prompt, every
//! head in the hypothesis takes its output from another prompt of the set that agrees on that
//! feature, and every other head takes its output from a random other prompt (the hypothesis
//! claims they do not matter). If the hypothesis is right the logit difference survives:
//! `preserved = Σ (LD_scrubbed − LD_corr) / Σ (LD_clean − LD_corr)` over the set. Replacements
//! come from prompts with the same token count (outputs are position-aligned); a head with no
//! agreeing prompt keeps its own output (reported as `unmatched`).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::Head;
use crate::model::{Action, Batch, HookPoint, Intervention, Model};
use crate::tasks::Rng;

/// A prompt of the set with its features (`io`, `subject`, `template`, ...).
pub type ScrubPrompt = crate::inputs::TaskPrompt;

crate::options! {
    /// Options of `causal_scrubbing`.
    pub struct ScrubOptions {
        /// The hypothesis: each claimed head's output depends only on this feature of the
        /// prompt (`L23H3=io`; repeatable or comma-separated; features of IOI: io, subject,
        /// template, order).
        pub hypothesis: Vec<Claim> = Vec::new(),
        /// Seed of the random choice of replacement prompts.
        pub seed: u64 = 0,
    }
}

/// One claim of a scrubbing hypothesis: `head`'s output depends only on `feature`; written
/// `L23H3=io`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The head.
    pub head: Head,
    /// The feature of the prompt it reads (`io`, `subject`, `template`, `order` for IOI).
    pub feature: String,
}

impl std::str::FromStr for Claim {
    type Err = Error;
    fn from_str(s: &str) -> Result<Claim> {
        let (h, f) = s.split_once('=').ok_or_else(|| Error::Invalid(format!("`{}`: write HEAD=feature, e.g. L23H3=io", crate::error::printable(&s))))?;
        if f.trim().is_empty() {
            return Err(Error::Invalid(format!("`{}` names no feature; write e.g. L23H3=io", crate::error::printable(&s))));
        }
        Ok(Claim { head: h.trim().parse()?, feature: f.trim().to_string() })
    }
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "L{}H{}={}", self.head.layer, self.head.head, self.feature)
    }
}

impl Serialize for Claim {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Claim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Pair(Head, String),
        }
        match Form::deserialize(d)? {
            Form::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Form::Pair(head, feature) => Ok(Claim { head, feature }),
        }
    }
}

impl crate::schema::FieldType for Claim {
    fn kind() -> crate::schema::Kind {
        crate::schema::Kind::Text { format: Some("a claim: L23H3=io") }
    }
}

/// Result of `causal_scrubbing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scrubbing {
    /// Fraction of the clean − corrupted LD the hypothesis preserves.
    pub preserved: f32,
    /// Mean clean logit difference over the prompts.
    pub mean_clean_ld: f32,
    /// Mean corrupted logit difference over the prompts.
    pub mean_corrupted_ld: f32,
    /// Mean logit difference of the scrubbed runs.
    pub mean_scrubbed_ld: f32,
    /// (prompt, head) pairs for which no other prompt agreed on the feature.
    pub unmatched: usize,
    /// Number of prompts.
    pub n: usize,
}

/// Causal scrubbing of a head → feature hypothesis on a prompt set.
pub fn causal_scrubbing(model: &Model, prompts: &[ScrubPrompt], opts: &ScrubOptions) -> Result<Scrubbing> {
    let (hypothesis, seed) = (&opts.hypothesis[..], opts.seed);
    let cfg = &model.config();
    if prompts.len() < 2 {
        return Err(Error::Invalid("causal scrubbing needs a prompt set of at least 2 prompts".into()));
    }
    for Claim { head: h, feature: f } in hypothesis {
        h.check(cfg)?;
        if prompts.iter().any(|p| !p.features.contains_key(f)) {
            return Err(Error::Invalid(format!("feature `{f}` (for {h}) is missing from some prompts")));
        }
    }
    let points: Vec<HookPoint> = (0..cfg.n_layers).map(HookPoint::Z).collect();
    // Every prompt's clean head outputs, and its clean and corrupted LD.
    let mut zs: Vec<Vec<Tensor>> = Vec::with_capacity(prompts.len());
    let (mut clean, mut corr) = (Vec::new(), Vec::new());
    for p in prompts {
        let c = &p.contrast;
        let out = model.forward(&c.batch()?, &c.ld_hooks().cache(points.iter().copied()))?;
        let ld = out.logit_diff(&[c.correct_id; 2], &[c.incorrect_id; 2])?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        clean.push(ld[0]);
        corr.push(ld[1]);
        zs.push(points.iter().map(|&pt| Ok(out.cache.get(pt)?.narrow(0, 0, 1)?)).collect::<Result<_>>()?);
    }
    let claimed: BTreeMap<Head, &str> = hypothesis.iter().map(|c| (c.head, c.feature.as_str())).collect();
    let mut rng = Rng::new(seed);
    let mut scrubbed = Vec::with_capacity(prompts.len());
    let mut unmatched = 0;
    for (i, p) in prompts.iter().enumerate() {
        let n_pos = p.contrast.n_pos();
        let same_len: Vec<usize> = (0..prompts.len()).filter(|&j| j != i && prompts[j].contrast.n_pos() == n_pos).collect();
        let mut hooks = p.contrast.ld_hooks();
        for (l, _) in zs[i].iter().enumerate() {
            for h in 0..cfg.n_heads {
                let head = Head { layer: l, head: h };
                let pool: Vec<usize> = match claimed.get(&head) {
                    Some(f) => same_len.iter().copied().filter(|&j| prompts[j].features[*f] == p.features[*f]).collect(),
                    None => same_len.clone(),
                };
                if pool.is_empty() {
                    unmatched += usize::from(claimed.contains_key(&head));
                    continue;
                }
                let j = pool[rng.below(pool.len())];
                hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(zs[j][l].clone())).heads(vec![h]));
            }
        }
        let c = &p.contrast;
        let out = model.forward(&Batch::new(std::slice::from_ref(&c.clean))?, &hooks)?;
        scrubbed.push(out.logit_diff(&[c.correct_id], &[c.incorrect_id])?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0]);
    }
    let n = prompts.len() as f32;
    let num: f32 = scrubbed.iter().zip(&corr).map(|(s, c)| s - c).sum();
    let den: f32 = clean.iter().zip(&corr).map(|(a, c)| a - c).sum();
    Ok(Scrubbing {
        preserved: if den.abs() > 1e-12 { num / den } else { 0.0 },
        mean_clean_ld: clean.iter().sum::<f32>() / n,
        mean_corrupted_ld: corr.iter().sum::<f32>() / n,
        mean_scrubbed_ld: scrubbed.iter().sum::<f32>() / n,
        unmatched,
        n: prompts.len(),
    })
}
