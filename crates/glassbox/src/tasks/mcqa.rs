//! Multiple-choice questions with letter answers, in MIB's MCQA form (its `copycolors_mcqa`:
//! the context states the colour, the question asks for it among four lettered options):
//! `"The apple is red. What color is the apple?\nA. blue\nB. red\nC. green\nD. white\nAnswer:"`
//! → `" B"`. The counterfactual keeps the question and moves the right colour to another letter
//! (MIB's `symbol_counterfactual`); the incorrect answer is the counterfactual's letter.

use crate::error::Result;
use crate::inputs::TaskPrompt;
use crate::model::Model;
use crate::tasks::{sample_pairs, single_token, Rng};

/// Objects for the questions.
pub const OBJECTS: &[&str] = &["apple", "car", "shirt", "ball", "house", "cup", "hat", "door", "bag", "chair", "pen", "box"];
/// The colours offered.
pub const COLORS: &[&str] = &["red", "blue", "green", "white", "black", "yellow", "brown", "pink"];
/// The option letters.
const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

fn question(object: &str, color: &str, options: &[&str; 4]) -> String {
    let mut q = format!("The {object} is {color}. What color is the {object}?\n");
    for (l, o) in LETTERS.iter().zip(options) {
        q.push_str(&format!("{l}. {o}\n"));
    }
    q.push_str("Answer:");
    q
}

/// `n` MCQA prompts, seeded. The answer is the letter after a space (`" B"`) where the model has
/// such tokens, else the letter alone.
pub fn generate(model: &Model, n: usize, seed: u64) -> Result<Vec<TaskPrompt>> {
    let space = if LETTERS.iter().all(|l| single_token(model, &format!(" {l}"))) { " " } else { "" };
    let mut rng = Rng::new(seed);
    sample_pairs(model, n, "mcqa", |_| {
        let object = OBJECTS[rng.below(OBJECTS.len())];
        // Four different colours, the first the right one.
        let picks = rng.distinct(COLORS, 4);
        let right = picks[0];
        let at = rng.below(4);
        let moved = (at + 1 + rng.below(3)) % 4;
        // The other three colours in their drawn order, the right one put at `slot`.
        let place = |slot: usize| -> [&str; 4] {
            let mut o = [picks[1], picks[2], picks[3], picks[3]];
            o.copy_within(slot..3, slot + 1);
            o[slot] = right;
            o
        };
        let (options, counter) = (place(at), place(moved));
        let features = [("object", object.to_string()), ("color", right.to_string()), ("letter", LETTERS[at].to_string())];
        (
            question(object, right, &options),
            question(object, right, &counter),
            format!("{space}{}", LETTERS[at]),
            format!("{space}{}", LETTERS[moved]),
            features.map(|(k, v)| (k.to_string(), v)).into(),
            LETTERS[at].to_string(),
        )
    })
}
