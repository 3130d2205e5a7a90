//! Warnings for figures that may mislead. Each function returns its warning's text when the
//! condition holds. The catalog's entries call them, the envelope carries them, and every front
//! end prints them.

use crate::inputs::Contrast;
use crate::methods::Metric;
use crate::model::Model;

/// Integrated gradients' completeness residual (a fraction of the metric's change) above which
/// the attributions are said not to add up.
pub const IG_RESIDUAL: f32 = 0.05;

/// Fewer prompts than this give rough bootstrap intervals.
pub const FEW_PROMPTS: usize = 20;

/// Scores whose largest magnitude is below this fraction of the metric's change are noise.
pub const NEAR_ZERO: f32 = 1e-4;

/// First-order (Taylor) attribution of KL: KL(clean ‖ run) is 0 at its minimum, the clean run,
/// so its gradient there is exactly zero and every first-order score is 0 (or float noise).
pub fn first_order_kl(metric: &Metric, first_order: bool, alternative: &str) -> Option<String> {
    (first_order && matches!(metric, Metric::Kl { .. })).then(|| {
        format!(
            "the KL metric has zero gradient at the clean run (it is KL's minimum), so first-order (Taylor) scores of it are 0 up to float noise and say nothing; {alternative}"
        )
    })
}

/// Integrated gradients whose attributions miss the metric's change by more than `IG_RESIDUAL`.
pub fn ig_residual(residual: Option<f32>, n_steps: Option<usize>) -> Option<String> {
    let r = residual?;
    (r > IG_RESIDUAL).then(|| {
        let steps = n_steps.map_or(String::new(), |n| format!(" (now {n})"));
        format!(
            "integrated gradients' attributions miss the metric's change by {:.1} % (completeness residual {r:.3}, warned above {IG_RESIDUAL}); raise n_steps{steps}, or read the scores as rough",
            100.0 * r
        )
    })
}

/// Bootstrap intervals from fewer than `FEW_PROMPTS` prompts.
pub fn few_prompts(n: usize) -> Option<String> {
    (n < FEW_PROMPTS).then(|| format!("the intervals come from {n} prompt(s); with fewer than {FEW_PROMPTS} they are rough (use a larger set, e.g. --n 64)"))
}

/// A ranking or circuit built from scores that are all near zero against the metric's change
/// `span` (clean − corrupted).
pub fn near_zero_scores(scores: impl IntoIterator<Item = f32>, span: f32, what: &str) -> Option<String> {
    let largest = scores.into_iter().fold(0f32, |m, s| m.max(s.abs()));
    (largest <= NEAR_ZERO * span.abs().max(1e-6)).then(|| {
        format!("every {what} score is near zero (largest |score| {largest:.2e} against a metric change of {span:.4}): the ranking is noise and anything built from it is arbitrary")
    })
}

/// An answer given without its leading space where the spaced form is one token too: after a
/// word, running text continues with the spaced token, and the two give different figures.
pub fn answer_spacing(model: &Model, answers: &[&str]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| !a.is_empty() && !a.starts_with(char::is_whitespace))
        .filter(|a| model.tokenizer().single_token(&format!(" {a}")).is_ok())
        .map(|a| {
            format!(
                "the answer {a:?} has no leading space, and {:?} is also one token: after a word the model predicts the spaced form, so {a:?} usually measures something else (give \" {a}\" unless that is meant)",
                format!(" {a}")
            )
        })
        .collect()
}

/// `answer_spacing` for a contrast's two answers.
pub fn contrast_spacing(model: &Model, c: &Contrast) -> Vec<String> {
    answer_spacing(model, &[&c.correct, &c.incorrect])
}
