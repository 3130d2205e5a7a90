//! Indirect object identification (Wang et al. 2022): "When Mary and John went to the store,
//! John gave a drink to" → " Mary". The indirect object (IO) is the correct answer, the
//! repeated subject (S) the incorrect one. Templates in both orders (ABBA: IO first; BABA: S
//! first); names, places and objects filtered to single tokens of the loaded model.
//! Corruptions: `name_swap` (IO and S exchanged everywhere) and `abc` (the repeated subject
//! replaced by a third name, so no name repeats).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::inputs::{Contrast, TaskPrompt};
use crate::model::Model;
use crate::tasks::Rng;

/// `{A}` is the indirect object, `{B}` the subject (repeated), in ABBA order; BABA swaps the
/// first two names. No template starts with a name, so every name follows a space.
pub const TEMPLATES: &[&str] = &[
    "When {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {B} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {B} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {B} decided to give it to",
    "Then, {A} and {B} had a long argument, and afterwards {B} said to",
    "Friends {A} and {B} went to the {PLACE}. {B} gave a {OBJECT} to",
    "The {PLACE} {A} and {B} went to had a {OBJECT}. {B} gave it to",
];

/// Names for the IO, the subject and `abc`'s third name (those that are single tokens of the model).
pub const NAMES: &[&str] = &[
    "Mary", "John", "Alice", "Bob", "Tom", "Anna", "Sarah", "Mike", "Emma", "David", "Lisa", "Mark", "Kate", "Paul",
    "Laura", "James", "Daniel", "Rachel", "Michael", "Jessica", "Andrew", "Emily", "Chris", "Amy", "Peter", "Linda",
    "Steven", "Susan", "Kevin", "Karen", "George", "Helen", "Jack", "Anne", "Sam", "Jane",
];

/// Words for `{PLACE}` (those that are single tokens of the model).
pub const PLACES: &[&str] = &["store", "park", "school", "office", "restaurant", "hospital", "station", "garden", "library", "market"];
/// Words for `{OBJECT}` (those that are single tokens of the model).
pub const OBJECTS: &[&str] = &["drink", "ring", "book", "kiss", "letter", "basketball", "computer", "snack", "bone", "necklace"];

crate::choices! {
    /// How an IOI prompt's corrupted version differs from the clean one.
    pub enum Corruption {
        /// IO and subject exchanged everywhere.
        NameSwap = "name_swap" | "swap",
        /// The repeated subject replaced by a third name, so no name repeats.
        Abc = "abc",
    }
}

/// One generated IOI prompt pair and its answers.
#[derive(Debug, Clone, Serialize)]
pub struct IoiPrompt {
    /// The clean prompt.
    pub clean: String,
    /// The corrupted prompt, as the `Corruption` made it.
    pub corrupted: String,
    /// The indirect object with its leading space (`" Mary"`): the correct answer.
    pub io: String,
    /// The subject with its leading space (`" John"`): the incorrect answer.
    pub subject: String,
    /// Index of the template in `TEMPLATES`.
    pub template: usize,
    /// `"ABBA"` or `"BABA"`.
    pub order: String,
}

fn single_tokens<'a>(model: &Model, words: &[&'a str]) -> Vec<&'a str> {
    words
        .iter()
        .copied()
        .filter(|w| model.tokenizer().encode_plain(&format!(" {w}")).is_ok_and(|ids| ids.len() == 1))
        .collect()
}

fn fill(t: &str, a: &str, b: &str, place: &str, object: &str) -> String {
    t.replace("{A}", a).replace("{B}", b).replace("{PLACE}", place).replace("{OBJECT}", object)
}

/// `n` IOI prompts (half ABBA, half BABA), seeded.
pub fn generate(model: &Model, n: usize, seed: u64, corruption: Corruption) -> Result<Vec<IoiPrompt>> {
    crate::limits::check_count("the number of prompts", n, crate::limits::N_PROMPTS)?;
    let names = single_tokens(model, NAMES);
    if names.len() < 3 {
        return Err(Error::Invalid(format!(
            "only {} of the IOI names are single tokens in this model's vocabulary; at least 3 are needed",
            names.len()
        )));
    }
    let places = single_tokens(model, PLACES);
    let objects = single_tokens(model, OBJECTS);
    if places.is_empty() || objects.is_empty() {
        return Err(Error::Invalid("no IOI place or object is a single token in this model's vocabulary".into()));
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let template = rng.below(TEMPLATES.len());
        let io = names[rng.below(names.len())];
        let mut s = io;
        while s == io {
            s = names[rng.below(names.len())];
        }
        let mut c = io;
        while c == io || c == s {
            c = names[rng.below(names.len())];
        }
        let (place, object) = (places[rng.below(places.len())], objects[rng.below(objects.len())]);
        let baba = i % 2 == 1;
        let t = if baba {
            TEMPLATES[template].replacen("{A} and {B}", "{B} and {A}", 1)
        } else {
            TEMPLATES[template].to_string()
        };
        let clean = fill(&t, io, s, place, object);
        let corrupted = match corruption {
            Corruption::NameSwap => fill(&t, s, io, place, object),
            Corruption::Abc => {
                // The repeated subject becomes a third name: no name repeats.
                let first_b = t.find("{B}").unwrap_or(0);
                let (head, tail) = t.split_at(first_b + 3);
                let tail = tail.replace("{B}", c);
                fill(&format!("{head}{tail}"), io, s, place, object)
            }
        };
        out.push(IoiPrompt {
            clean,
            corrupted,
            io: format!(" {io}"),
            subject: format!(" {s}"),
            template,
            order: if baba { "BABA" } else { "ABBA" }.into(),
        });
    }
    Ok(out)
}

/// The prompts as contrasts (correct = IO, incorrect = subject), dropping none: every prompt's
/// corruption keeps the token count because every name is one token.
pub fn contrasts(model: &Model, prompts: &[IoiPrompt]) -> Result<Vec<Contrast>> {
    prompts
        .iter()
        .map(|p| Contrast::new(model, &p.clean, &p.io, &p.subject, Some(&p.corrupted)))
        .collect()
}

/// The prompts with their features for causal scrubbing: `io`, `subject`, `template`, `order`.
pub fn scrub_prompts(model: &Model, prompts: &[IoiPrompt]) -> Result<Vec<TaskPrompt>> {
    prompts
        .iter()
        .zip(contrasts(model, prompts)?)
        .map(|(p, contrast)| {
            let features = [
                ("io", p.io.clone()),
                ("subject", p.subject.clone()),
                ("template", p.template.to_string()),
                ("order", p.order.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            Ok(TaskPrompt { contrast, features, group: format!("{} {}", p.order, p.template) })
        })
        .collect()
}
