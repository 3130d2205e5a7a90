//! Induction on repeated random tokens (Olsson et al. 2022): a sequence of random tokens, then
//! its first `k` tokens again → token `k`. The counterfactual changes token `k` in the first
//! copy, so an induction circuit predicts the changed token (the incorrect answer).

use crate::error::{Error, Result};
use crate::inputs::{Contrast, TaskPrompt};
use crate::model::Model;
use crate::tasks::Rng;

/// Random tokens in the first copy.
const LENGTH: usize = 12;

/// Token ids that are ordinary text: each decodes to a string that encodes back to the same
/// single id (so the prompts' texts describe their tokens), drawn from past the first 256 ids
/// (bytes and control tokens).
fn ordinary_tokens(model: &Model, rng: &mut Rng, want: usize) -> Vec<u32> {
    let vocab = model.config().d_vocab;
    let mut out = Vec::new();
    if vocab <= 256 {
        return out;
    }
    for _ in 0..want * 50 {
        let id = (256 + rng.below(vocab - 256)) as u32;
        let text = model.to_string(&[id]);
        if !out.contains(&id) && text.starts_with(' ') && text.trim().chars().all(|c| c.is_alphabetic()) && model.tokenizer().encode_plain(&text).is_ok_and(|ids| ids == [id]) {
            out.push(id);
            if out.len() == want {
                break;
            }
        }
    }
    out
}

/// `n` induction prompts, seeded.
pub fn generate(model: &Model, n: usize, seed: u64) -> Result<Vec<TaskPrompt>> {
    crate::limits::check_count("the number of prompts", n, crate::limits::N_PROMPTS)?;
    let mut rng = Rng::new(seed);
    let pool = ordinary_tokens(model, &mut rng, 400);
    if pool.len() < LENGTH + 1 {
        return Err(Error::Invalid(format!("induction needs {} ordinary word tokens in the vocabulary; this model has {} that round-trip", LENGTH + 1, pool.len())));
    }
    let bos: Vec<u32> = model.tokenize(" x")?.into_iter().take_while(|&t| Some(t) == model.tokenizer().bos_token()).collect();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let seq = rng.distinct(&pool, LENGTH);
        let k = 2 + rng.below(LENGTH - 3);
        let mut other = seq[0];
        while seq.contains(&other) {
            other = pool[rng.below(pool.len())];
        }
        let build = |first: &[u32]| -> Vec<u32> { bos.iter().chain(first).chain(&seq[..k]).copied().collect() };
        let clean = build(&seq);
        let mut changed = seq.clone();
        changed[k] = other;
        let corrupted = build(&changed);
        let text = |ids: &[u32]| model.to_string(&ids[bos.len()..]);
        let contrast = Contrast {
            clean_prompt: text(&clean),
            corrupted_prompt: text(&corrupted),
            corruption: "first copy's next token changed".into(),
            correct: model.to_string(&[seq[k]]),
            incorrect: model.to_string(&[other]),
            clean,
            corrupted,
            correct_id: seq[k],
            incorrect_id: other,
        };
        contrast.check(model)?;
        let features = [("position", k.to_string())].map(|(a, b)| (a.to_string(), b)).into();
        out.push(TaskPrompt { contrast, features, group: "induction".into() });
    }
    Ok(out)
}
