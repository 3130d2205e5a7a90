//! Bounds on the arguments that set how much work a method does, so that no single argument
//! can ask for unbounded time or memory (the README's "Limits" section lists them), and the
//! checks every method and task uses. Below methods and tasks.

use crate::error::{Error, Result};
use std::ops::RangeInclusive;

/// Integration steps of integrated gradients (attribution, token attribution, EAP-IG).
pub const N_STEPS: RangeInclusive<usize> = 1..=1000;
/// Random corruptions of attribution stability.
pub const N_CORRUPTIONS: RangeInclusive<usize> = 2..=1000;
/// Bootstrap resamples.
pub const N_BOOT: RangeInclusive<usize> = 1..=100_000;
/// Prompts in a generated task set (analyze, scrubbing).
pub const N_PROMPTS: RangeInclusive<usize> = 1..=10_000;
/// Heads in a circuit search.
pub const MAX_HEADS: RangeInclusive<usize> = 1..=100_000;

/// Error unless `value` of the argument `what` is in `range`.
pub(crate) fn check_count(what: &str, value: usize, range: RangeInclusive<usize>) -> Result<()> {
    if !range.contains(&value) {
        return Err(Error::Invalid(format!("{what} is {value}; it must be from {} to {}", range.start(), range.end())));
    }
    Ok(())
}

/// Error unless `value` of the argument `what` is a number from `lo` to `hi`.
pub(crate) fn check_number(what: &str, value: f32, lo: f32, hi: f32) -> Result<()> {
    if !(value.is_finite() && value >= lo && value <= hi) {
        return Err(Error::Invalid(format!("{what} is {value}; it must be a number from {lo} to {hi}")));
    }
    Ok(())
}
