//! A clean prompt, a corrupted one, and the two answers whose logit difference is measured.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Batch, Hooks, Model};

/// What position-aligned methods compare: the clean and corrupted token sequences (same
/// length) and the correct and incorrect answer tokens.
#[derive(Debug, Clone, Serialize)]
pub struct Contrast {
    pub clean_prompt: String,
    pub corrupted_prompt: String,
    /// `"given"` or `"name_swap"`.
    pub corruption: String,
    pub correct: String,
    pub incorrect: String,
    pub clean: Vec<u32>,
    pub corrupted: Vec<u32>,
    pub correct_id: u32,
    pub incorrect_id: u32,
}

/// Swaps the whole-word occurrences of `a` and `b` in `text`.
pub fn swap_words(text: &str, a: &str, b: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let before_ok = text[..i].chars().next_back().is_none_or(|c| !is_word(c));
        let matched = [(a, b), (b, a)].into_iter().find(|(from, _)| {
            text[i..].starts_with(from)
                && before_ok
                && text[i + from.len()..].chars().next().is_none_or(|c| !is_word(c))
        });
        match matched {
            Some((from, to)) => {
                out.push_str(to);
                i += from.len();
            }
            None => {
                let c = text[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8().max(1);
            }
        }
    }
    out
}

impl Contrast {
    /// Hooks for a run that only reads this contrast's logit difference: the unembedding of the
    /// two answer tokens at the last position, not the whole vocabulary.
    pub fn ld_hooks(&self) -> Hooks {
        Hooks::new().logits_for(&[self.correct_id, self.incorrect_id])
    }

    /// Builds the contrast. Without `corrupted`, the corrupted prompt swaps the two answers'
    /// words in the prompt (both must occur in it). Errors when an answer is not one token or
    /// the two prompts tokenize to different lengths.
    pub fn new(model: &Model, prompt: &str, correct: &str, incorrect: &str, corrupted: Option<&str>) -> Result<Self> {
        let correct_id = model.answer_token(correct)?;
        let incorrect_id = model.answer_token(incorrect)?;
        let (corrupted_prompt, corruption) = match corrupted {
            Some(c) => (c.to_string(), "given"),
            None => {
                let (a, b) = (correct.trim(), incorrect.trim());
                let swapped = swap_words(prompt, a, b);
                if a.is_empty() || b.is_empty() || swapped == prompt {
                    return Err(Error::Invalid(format!(
                        "cannot build a corrupted prompt by name swap: {a:?} and {b:?} do not occur as words in the prompt; pass --corrupted"
                    )));
                }
                (swapped, "name_swap")
            }
        };
        let clean = model.tokenize(prompt)?;
        let corrupted = model.tokenize(&corrupted_prompt)?;
        if clean.len() != corrupted.len() {
            return Err(Error::Invalid(format!(
                "the clean prompt is {} tokens and the corrupted prompt {:?} is {}; position-aligned methods need equal lengths (choose a corruption that keeps the token count)",
                clean.len(),
                corrupted_prompt,
                corrupted.len()
            )));
        }
        Ok(Contrast {
            clean_prompt: prompt.to_string(),
            corrupted_prompt,
            corruption: corruption.to_string(),
            correct: correct.to_string(),
            incorrect: incorrect.to_string(),
            clean,
            corrupted,
            correct_id,
            incorrect_id,
        })
    }

    /// The batch `[clean, corrupted]`.
    pub fn batch(&self) -> Result<Batch> {
        Batch::new(&[self.clean.clone(), self.corrupted.clone()])
    }

    pub fn n_pos(&self) -> usize {
        self.clean.len()
    }
}
