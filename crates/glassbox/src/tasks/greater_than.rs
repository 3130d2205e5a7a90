//! Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" → a
//! year after 1732. The counterfactual starts the span in the century's first years ("1701",
//! the paper's "01" corruption), where every later year is valid. Hanna et al. measure the
//! probability of all later years against all earlier ones; here the contrast is two tokens, a
//! later and an earlier decade:
//! - where the vocabulary has every two-digit number as a token (GPT-2), the next token is the
//!   year's last two digits: correct `YY + 10`, incorrect `YY − 10` (`YY` in 10..=89);
//! - where numbers are split into digits (SmolLM2, LLaMA), the next token is the decade's digit
//!   `t` of `YY`: correct `t + 1`, incorrect `t − 1` (`t` in 1..=8).
//!
//! In the counterfactual both answers are later than its start, so a greater-than circuit no
//! longer separates them.

use crate::error::{Error, Result};
use crate::inputs::TaskPrompt;
use crate::model::Model;
use crate::tasks::{sample_pairs, single_token, Rng};

/// Nouns for "The {noun} lasted from the year ...".
pub const NOUNS: &[&str] = &["war", "drought", "famine", "trial", "expedition", "reign", "voyage", "project", "strike", "festival", "siege", "journey"];

fn prompt(noun: &str, century: usize, start: usize) -> String {
    format!("The {noun} lasted from the year {century}{start:02} to the year {century}")
}

/// `n` greater-than prompts, seeded.
pub fn generate(model: &Model, n: usize, seed: u64) -> Result<Vec<TaskPrompt>> {
    let two_digit = (0..100).all(|y| single_token(model, &format!("{y:02}")));
    if !two_digit && !(0..10).all(|d| single_token(model, &d.to_string())) {
        return Err(Error::Invalid("greater-than needs the digits 0–9, or every two-digit number, as tokens of this model".into()));
    }
    // The noun is the same in both prompts, so it may take any number of tokens.
    let nouns = NOUNS;
    let mut rng = Rng::new(seed);
    sample_pairs(model, n, "greater-than", |_| {
        let noun = nouns[rng.below(nouns.len())];
        let century = 11 + rng.below(9);
        // A start year whose answers exist: YY in 10..=89 (t in 1..=8), its last digit not 0 or 1
        // so that the counterfactual "01" differs.
        let yy = 12 + rng.below(78);
        let (correct, incorrect) = if two_digit { (format!("{:02}", yy + 10), format!("{:02}", yy - 10)) } else { ((yy / 10 + 1).to_string(), (yy / 10 - 1).to_string()) };
        let features = [("noun", noun.to_string()), ("start", format!("{century}{yy:02}"))];
        (prompt(noun, century, yy), prompt(noun, century, 1), correct, incorrect, features.map(|(k, v)| (k.to_string(), v)).into(), format!("{}0s", yy / 10))
    })
}
