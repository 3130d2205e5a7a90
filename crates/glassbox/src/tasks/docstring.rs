//! Docstring argument completion (Heimersheim & Janiak 2023): a function's `def` line, then a
//! docstring that documents its arguments in order; after the first two `:param` lines the next
//! `:param` should name the third argument. The counterfactual gives the `def` line other
//! argument names (the paper's "random def" corruption), so the docstring no longer names them
//! and the circuit that copies from the `def` line points at the new third name (the incorrect
//! answer).

use crate::error::{Error, Result};
use crate::inputs::TaskPrompt;
use crate::model::Model;
use crate::tasks::{sample_pairs, single_token, Rng};

/// Argument names (those that are single tokens with a leading space are used).
pub const NAMES: &[&str] = &[
    "load", "size", "files", "last", "data", "name", "path", "value", "count", "mode", "key", "text", "index", "user", "model", "items", "port", "host", "token", "config",
    "image", "state", "score", "level", "label", "order", "limit", "width", "height", "color", "shape", "group", "field", "query", "source", "target",
];
/// Function names.
const FUNCTIONS: &[&str] = &["run", "load", "update", "check", "build", "parse", "send", "draw"];
/// Words for the descriptions after each `:param name:`.
const WORDS: &[&str] = &["the", "new", "old", "first", "main", "local", "input", "output", "final", "base"];

fn prompt(function: &str, args: &[&str; 4], docs: &[&str; 2], described: &[&str; 2]) -> String {
    format!(
        "def {function}(self, {}, {}, {}, {}):\n    \"\"\"Do the work.\n\n    :param {}: {}\n    :param {}: {}\n    :param",
        args[0], args[1], args[2], args[3], described[0], docs[0], described[1], docs[1]
    )
}

/// `n` docstring prompts, seeded.
pub fn generate(model: &Model, n: usize, seed: u64) -> Result<Vec<TaskPrompt>> {
    let names: Vec<&str> = NAMES.iter().copied().filter(|w| single_token(model, &format!(" {w}"))).collect();
    if names.len() < 8 {
        return Err(Error::Invalid(format!("only {} of the docstring argument names are single tokens in this model's vocabulary; 8 are needed", names.len())));
    }
    let mut rng = Rng::new(seed);
    sample_pairs(model, n, "docstring", |_| {
        // Eight different names: the def's four, and the counterfactual def's four.
        let picks = rng.distinct(&names, 8);
        let args = [picks[0], picks[1], picks[2], picks[3]];
        let other = [picks[4], picks[5], picks[6], picks[7]];
        let function = FUNCTIONS[rng.below(FUNCTIONS.len())];
        let docs = [WORDS[rng.below(WORDS.len())], WORDS[rng.below(WORDS.len())]];
        let described = [args[0], args[1]];
        let features = [("function", function.to_string()), ("answer", args[2].to_string())];
        (
            prompt(function, &args, &docs, &described),
            prompt(function, &other, &docs, &described),
            format!(" {}", args[2]),
            format!(" {}", other[2]),
            features.map(|(k, v)| (k.to_string(), v)).into(),
            function.to_string(),
        )
    })
}
