//! What the methods take as input: a `Prompt` (tokens and the two answers a logit difference
//! compares) and a `Contrast` (a clean prompt, a corrupted one of the same length, and the
//! answers). Below both the methods and the tasks that generate inputs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Batch, Hooks, Model};

/// What position-aligned methods compare: the clean and corrupted token sequences (same
/// length) and the correct and incorrect answer tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contrast {
    /// The clean prompt's text.
    pub clean_prompt: String,
    /// The corrupted prompt's text (given, or the clean one with the answers' words swapped).
    pub corrupted_prompt: String,
    /// `"given"` or `"name_swap"`.
    pub corruption: String,
    /// The correct answer's text (one token, e.g. `" Mary"`).
    pub correct: String,
    /// The incorrect answer's text (one token).
    pub incorrect: String,
    /// Token ids of the clean prompt.
    pub clean: Vec<u32>,
    /// Token ids of the corrupted prompt, as many as `clean`.
    pub corrupted: Vec<u32>,
    /// Token id of `correct`.
    pub correct_id: u32,
    /// Token id of `incorrect`.
    pub incorrect_id: u32,
}

/// A prompt of a generated set: its contrast, its features (for causal scrubbing: `io`,
/// `subject`, `template`, `order` for IOI) and the group it belongs to (for summaries).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskPrompt {
    /// The prompt's clean and corrupted versions and its answers.
    pub contrast: Contrast,
    /// Feature values by name.
    pub features: std::collections::BTreeMap<String, String>,
    /// The group (e.g. the template) it is summarised under.
    #[serde(default)]
    pub group: String,
}

/// A prompt and the two answers whose logit difference (or another metric) is measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prompt {
    /// Token ids of the prompt (with BOS where the model wants it).
    pub tokens: Vec<u32>,
    /// Token id of the correct answer.
    pub correct: u32,
    /// Token id of the incorrect answer.
    pub incorrect: u32,
}

impl Prompt {
    /// Tokenizes `prompt` and the two answers (one token each, different).
    pub fn new(model: &Model, prompt: &str, correct: &str, incorrect: &str) -> Result<Prompt> {
        let (correct, incorrect) = answer_pair(model, correct, incorrect)?;
        Ok(Prompt { tokens: model.tokenize(prompt)?, correct, incorrect })
    }

    /// Error unless the prompt is one the methods can run on this model.
    pub fn check(&self, model: &Model) -> Result<()> {
        check_answers(model, &self.tokens, self.correct, self.incorrect)?;
        if self.tokens.len() > model.config().n_ctx {
            return Err(Error::PromptTooLong { n_tokens: self.tokens.len(), max: model.config().n_ctx });
        }
        Ok(())
    }
}

/// Error unless `correct` and `incorrect` are two different tokens of the model's vocabulary
/// and `tokens` a prompt of it.
pub(crate) fn check_answers(model: &Model, tokens: &[u32], correct: u32, incorrect: u32) -> Result<()> {
    let v = model.config().d_vocab;
    if let Some(&t) = tokens.iter().chain([&correct, &incorrect]).find(|&&t| t as usize >= v) {
        return Err(Error::Invalid(format!("token id {t} is outside the vocabulary of {v} tokens")));
    }
    if tokens.is_empty() {
        return Err(Error::EmptyPrompt);
    }
    if correct == incorrect {
        return Err(Error::Invalid(format!(
            "the correct and incorrect answers are the same token ({correct}); give two different answers"
        )));
    }
    Ok(())
}

/// Swaps the whole-word occurrences of `a` and `b` in `text`. An empty word matches nothing.
pub fn swap_words(text: &str, a: &str, b: &str) -> String {
    if a.is_empty() || b.is_empty() {
        return text.to_string();
    }
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

/// The token ids of two answers, each one token, and different: the logit difference of an
/// answer with itself is 0 and every figure normalised by it would be meaningless.
pub fn answer_pair(model: &Model, correct: &str, incorrect: &str) -> Result<(u32, u32)> {
    let (c, i) = (model.answer_token(correct)?, model.answer_token(incorrect)?);
    if c == i {
        return Err(Error::Invalid(format!(
            "the correct answer {correct:?} and the incorrect answer {incorrect:?} are the same token ({c}); give two different answers"
        )));
    }
    Ok((c, i))
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
        let (correct_id, incorrect_id) = answer_pair(model, correct, incorrect)?;
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let (corrupted_prompt, corruption) = match corrupted {
            Some(c) => (c.to_string(), "given"),
            None => {
                let (a, b) = (correct.trim(), incorrect.trim());
                if a.is_empty() || b.is_empty() {
                    return Err(Error::Invalid(format!(
                        "cannot build a corrupted prompt by swapping the answers' words: {:?} is only whitespace; give the corrupted prompt yourself (`--corrupted`, or the `corrupted` key in Python and the dashboard)",
                        if a.is_empty() { correct } else { incorrect }
                    )));
                }
                let swapped = swap_words(prompt, a, b);
                if swapped == prompt {
                    return Err(Error::Invalid(format!(
                        "cannot build a corrupted prompt by name swap: {a:?} and {b:?} do not occur as words in the prompt; give the corrupted prompt yourself (`--corrupted`, or the `corrupted` key in Python and the dashboard)"
                    )));
                }
                (swapped, "name_swap")
            }
        };
        let clean = model.tokenize(prompt)?;
        let corrupted = model.tokenize(&corrupted_prompt)?;
        if clean == corrupted {
            return Err(Error::Invalid(format!(
                "the corrupted prompt {corrupted_prompt:?} gives the same tokens as the clean prompt, so there is nothing to attribute; give a corrupted prompt that differs"
            )));
        }
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

    /// Error unless the contrast is one the methods can run: two prompts of the same length
    /// in the model's vocabulary that differ, and two different answers (the fields are public,
    /// so a contrast may not come from `new`).
    pub fn check(&self, model: &Model) -> Result<()> {
        check_answers(model, &self.clean, self.correct_id, self.incorrect_id)?;
        check_answers(model, &self.corrupted, self.correct_id, self.incorrect_id)?;
        if self.clean.len() != self.corrupted.len() {
            return Err(Error::Invalid(format!(
                "the clean prompt is {} tokens and the corrupted one {}; position-aligned methods need equal lengths",
                self.clean.len(),
                self.corrupted.len()
            )));
        }
        if self.clean.len() > model.config().n_ctx {
            return Err(Error::PromptTooLong { n_tokens: self.clean.len(), max: model.config().n_ctx });
        }
        if self.clean == self.corrupted {
            return Err(Error::Invalid("the corrupted prompt gives the same tokens as the clean one; there is nothing to attribute".into()));
        }
        Ok(())
    }

    /// The batch `[clean, corrupted]`.
    pub fn batch(&self) -> Result<Batch> {
        Batch::new(&[self.clean.clone(), self.corrupted.clone()])
    }

    /// Token count of each prompt (clean and corrupted have the same).
    pub fn n_pos(&self) -> usize {
        self.clean.len()
    }
}
