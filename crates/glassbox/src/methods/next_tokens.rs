//! The model's next-token distribution after a prompt: its tokens and the most likely next
//! tokens with their logits and probabilities (`glassbox run`).

use candle_core::{DType, D};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Batch, Hooks, Model};

crate::options! {
    /// Options of `next_tokens`.
    pub struct NextTokenOptions {
        /// How many next tokens to list.
        pub top_k: usize = 10,
    }
}

/// A token of the prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptToken {
    /// Its id.
    pub id: u32,
    /// Its text.
    pub text: String,
}

/// A possible next token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    /// Its id.
    pub token_id: u32,
    /// Its text.
    pub token: String,
    /// Its logit.
    pub logit: f32,
    /// Its probability.
    pub prob: f32,
}

/// Result of `next_tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextTokens {
    /// Whether the BOS token was put first.
    pub bos_added: bool,
    /// The prompt's tokens.
    pub tokens: Vec<PromptToken>,
    /// The most likely next tokens, by decreasing probability.
    pub top: Vec<Prediction>,
}

/// The prompt's tokens and the model's `top_k` most likely next tokens.
pub fn next_tokens(model: &Model, tokens: &[u32], opts: &NextTokenOptions) -> Result<NextTokens> {
    crate::limits::check_count("top_k", opts.top_k, 1..=model.config().d_vocab.max(1))?;
    let out = model.forward(&Batch::new(&[tokens.to_vec()])?, &Hooks::new().last_logits_only())?;
    let last = out.last_logits()?.squeeze(0)?.to_dtype(DType::F32)?;
    let max = last.max_keepdim(D::Minus1)?;
    let e = last.broadcast_sub(&max)?.exp()?;
    let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_vec1::<f32>()?;
    let logits = last.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top = order
        .into_iter()
        .take(opts.top_k)
        .map(|i| Prediction { token_id: i as u32, token: model.tokenizer().token_str(i as u32), logit: logits[i], prob: probs[i] })
        .collect();
    Ok(NextTokens {
        bos_added: model.tokenizer().bos().is_some_and(|b| tokens.first() == Some(&b)),
        tokens: tokens.iter().map(|&id| PromptToken { id, text: model.tokenizer().token_str(id) }).collect(),
        top,
    })
}
