//! Token saliency: which input tokens drive `LD = logit[correct] − logit[incorrect]`.
//!
//! `gradient_x_input`: `Σ_d ∂LD/∂e[pos, d] · e[pos, d]` over the token embedding (plus the
//! learned position embedding where the model has one), one forward and backward pass.
//! `integrated_gradients`: the token embeddings move from a baseline (zeros, or one token's
//! embedding at every position) to the prompt's; attributions sum to `LD − LD(baseline)`
//! (`completeness_residual` says how closely). Position embeddings stay as they are.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::attribution::integrated_gradients;
use crate::methods::{order_by_magnitude, Metric, Prompt, Scorer};
use crate::model::config::Positions;
use crate::model::{Action, Batch, HookPoint, Hooks, Intervention, Model};

/// The embeddings integrated gradients start from: written `"zero"`, `"bos"` (the model's BOS
/// token) or a token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Zero embeddings.
    Zero,
    /// The model's BOS token's embedding at every position (an error for a model without one).
    Bos,
    /// This token's embedding at every position (e.g. a pad or EOS token).
    Token(u32),
}

impl std::str::FromStr for Baseline {
    type Err = Error;
    fn from_str(s: &str) -> Result<Baseline> {
        match s.trim() {
            "zero" => Ok(Baseline::Zero),
            "bos" => Ok(Baseline::Bos),
            t => t.parse().map(Baseline::Token).map_err(|_| Error::Invalid(format!("baseline `{}`: use zero, bos or a token id", crate::error::printable(&t)))),
        }
    }
}

impl Serialize for Baseline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Baseline::Zero => s.serialize_str("zero"),
            Baseline::Bos => s.serialize_str("bos"),
            Baseline::Token(t) => s.serialize_u32(*t),
        }
    }
}

impl<'de> Deserialize<'de> for Baseline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Id(u32),
            Name(String),
            /// The form glassbox wrote before 0.2: `{"token": id}`.
            Tagged { token: u32 },
        }
        match Form::deserialize(d)? {
            Form::Id(t) | Form::Tagged { token: t } => Ok(Baseline::Token(t)),
            Form::Name(n) => n.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl crate::schema::FieldType for Baseline {
    fn kind() -> crate::schema::Kind {
        crate::schema::Kind::Text { format: Some("zero, bos or a token id") }
    }
}

/// One token's attribution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenAttr {
    /// Its position in the prompt, from 0.
    pub position: usize,
    /// The token's id.
    pub token_id: u32,
    /// The token as a string.
    pub token_str: String,
    /// Its attribution to the logit difference.
    pub attribution: f32,
}

crate::choices! {
    /// How token saliency is computed.
    pub enum TokenMethod {
        /// Gradient × input at the embeddings (one forward and backward).
        GradientXInput = "gradient_x_input" | "taylor",
        /// Integrated gradients from `baseline` embeddings in `n_steps` steps.
        IntegratedGradients = "integrated_gradients" | "ig",
    }
}

crate::options! {
    /// Options of `token_attribution`.
    pub struct TokenAttributionOptions {
        /// Gradient × input or integrated gradients.
        pub method: TokenMethod = TokenMethod::GradientXInput,
        /// Integration steps of integrated gradients.
        pub n_steps: usize = crate::methods::attribution::DEFAULT_N_STEPS,
        /// Where integrated gradients start: zero embeddings, the BOS token's, or a token id's.
        pub baseline: Baseline = Baseline::Bos,
    }
}

/// Result of `token_attribution`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenAttribution {
    /// `"gradient_x_input"` or `"integrated_gradients"`.
    pub method: String,
    /// In prompt order.
    pub tokens: Vec<TokenAttr>,
    /// By decreasing |attribution|.
    pub top_tokens: Vec<TokenAttr>,
    /// The prompt's logit difference `logit[correct] − logit[incorrect]` at the last position.
    pub ld: f32,
    /// Integrated gradients only: the baseline.
    pub baseline: Option<Baseline>,
    /// Integrated gradients only: the logit difference with the baseline embeddings.
    pub baseline_ld: Option<f32>,
    /// Integrated gradients only: the integration steps.
    pub n_steps: Option<usize>,
    /// Integrated gradients only: `|Σ attribution − (ld − baseline_ld)| / |ld − baseline_ld|`.
    pub completeness_residual: Option<f32>,
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Token attributions of one prompt.
pub fn token_attribution(model: &Model, prompt: &Prompt, opts: &TokenAttributionOptions) -> Result<TokenAttribution> {
    prompt.check(model)?;
    let (tokens, correct, incorrect) = (&prompt.tokens[..], prompt.correct, prompt.incorrect);
    let ig = match opts.method {
        TokenMethod::GradientXInput => None,
        TokenMethod::IntegratedGradients => Some((opts.n_steps, opts.baseline)),
    };
    if let Some((n_steps, baseline)) = &ig {
        super::check_count("the number of integration steps", *n_steps, super::limits::N_STEPS)?;
        if let Baseline::Token(t) = baseline {
            super::check_answers(model, &[*t], correct, incorrect)?;
        }
    }
    let batch = Batch::new(&[tokens.to_vec()])?;
    let learned_pos = matches!(model.config().positions, Positions::Learned { .. });
    let mut taps = vec![HookPoint::Embed];
    if learned_pos {
        taps.push(HookPoint::PosEmbed);
    }
    let hooks = Hooks::new().cache(taps.iter().copied()).grad_tap(taps.iter().copied()).logits_for(&[correct, incorrect]);
    let out = model.forward(&batch, &hooks)?;
    let ld_t = out.logit_diff(&[correct], &[incorrect])?;
    let ld = to_vec(&ld_t)?[0];

    let (values, method, baseline_ld, completeness, n_steps, baseline) = match ig {
        None => {
            let grads = out.backward(&ld_t.sum_all()?)?;
            let mut per_token = Tensor::zeros(tokens.len(), DType::F64, &candle_core::Device::Cpu)?;
            for p in &taps {
                let gx = (grads.get(*p)?.get(0)? * out.cache.get(*p)?.get(0)?)?.sum(1)?;
                per_token = (per_token + gx.to_dtype(DType::F64)?)?;
            }
            (to_vec(&per_token)?, "gradient_x_input", None, None, None, None)
        }
        Some((n_steps, baseline)) => {
            if n_steps == 0 {
                return Err(Error::Invalid("integrated gradients need at least one step".into()));
            }
            let emb = out.cache.get(HookPoint::Embed)?.get(0)?;
            let base = match baseline {
                Baseline::Zero => emb.zeros_like()?,
                Baseline::Bos | Baseline::Token(_) => {
                    let id = match baseline {
                        Baseline::Token(id) => id,
                        _ => model.tokenizer().bos_token().ok_or_else(|| Error::Invalid("this model has no BOS token; use the baseline zero or a token id".into()))?,
                    };
                    if id as usize >= model.config().d_vocab {
                        return Err(Error::Invalid(format!("baseline token {id} is outside the vocabulary")));
                    }
                    let mut row = model.weights().embed.row(id as usize)?;
                    if let Some(s) = model.config().embed_scale {
                        row = (row * s)?;
                    }
                    row.unsqueeze(0)?.broadcast_as(emb.shape())?.contiguous()?
                }
            };
            let delta = (&emb - &base)?;
            let replace = Hooks::new()
                .intervene(Intervention::new(HookPoint::Embed, Action::Replace(base.unsqueeze(0)?)))
                .logits_for(&[correct, incorrect]);
            let baseline_ld = to_vec(&model.forward(&batch, &replace)?.logit_diff(&[correct], &[incorrect])?)?[0];
            let scorer = Scorer::for_answers(model, tokens, correct, incorrect, &Metric::default())?;
            let g = integrated_gradients(model, tokens, &[HookPoint::Embed], &[(base, delta.clone())], &scorer, n_steps, false)?;
            let values = to_vec(&(&g[0] * &delta)?.sum(1)?)?;
            let total: f32 = values.iter().sum();
            let change = ld - baseline_ld;
            let residual = (total - change).abs() / change.abs().max(1e-12);
            (values, "integrated_gradients", Some(baseline_ld), Some(residual), Some(n_steps), Some(baseline))
        }
    };
    let attrs: Vec<TokenAttr> = values
        .iter()
        .enumerate()
        .map(|(i, &a)| TokenAttr {
            position: i,
            token_id: tokens[i],
            token_str: model.tokenizer().token_str(tokens[i]),
            attribution: a,
        })
        .collect();
    let top_tokens = order_by_magnitude(&values).into_iter().map(|i| attrs[i].clone()).collect();
    Ok(TokenAttribution {
        method: method.to_string(),
        tokens: attrs,
        top_tokens,
        ld,
        baseline,
        baseline_ld,
        n_steps,
        completeness_residual: completeness,
    })
}
