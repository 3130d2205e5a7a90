//! Interpretability methods: each is a function of the model and its inputs that returns a
//! plain serialisable result, with the key names of the Glassbox reference tool.

pub mod alignment;
pub mod analyze;
pub mod attention;
pub mod attribution;
pub mod bootstrap;
pub mod circuit;
pub mod composition;
pub mod metric;
pub mod edges;
pub mod faithfulness;
pub mod logit_lens;
pub mod path_patching;
pub mod sae_attribution;
pub mod patching;
pub mod scrubbing;
pub mod stability;
pub mod steering;
pub mod token_attribution;

use std::fmt;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

pub use crate::inputs as contrast;
pub use crate::inputs::{Contrast, Prompt};
pub use metric::{Metric, Position, Scorer};

/// An attention head: prints as `L09H09`, serialises as `[layer, head]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "[usize; 2]", into = "[usize; 2]")]
pub struct Head {
    /// Layer index, from 0.
    pub layer: usize,
    /// Head index within its layer, from 0.
    pub head: usize,
}

impl From<[usize; 2]> for Head {
    fn from([layer, head]: [usize; 2]) -> Self {
        Head { layer, head }
    }
}

impl From<Head> for [usize; 2] {
    fn from(h: Head) -> Self {
        [h.layer, h.head]
    }
}

impl Head {
    /// Error unless this head exists in a model of config `cfg`.
    pub fn check(&self, cfg: &crate::model::ModelConfig) -> crate::error::Result<()> {
        cfg.check_layer(self.layer)?;
        if self.head >= cfg.n_heads {
            return Err(crate::error::Error::HeadOutOfRange { head: self.head, n_heads: cfg.n_heads, point: self.to_string() });
        }
        Ok(())
    }
}

impl std::str::FromStr for Head {
    type Err = crate::error::Error;
    /// `L9H6`, `L09H06` or `9.6`.
    fn from_str(s: &str) -> crate::error::Result<Head> {
        let bad = || crate::error::Error::Invalid(format!("`{s}` is not a head; write L9H6 or 9.6"));
        let t = s.trim().to_ascii_uppercase();
        let (l, h) = match t.strip_prefix('L') {
            Some(rest) => rest.split_once('H').ok_or_else(bad)?,
            None => t.split_once('.').ok_or_else(bad)?,
        };
        Ok(Head { layer: l.parse().map_err(|_| bad())?, head: h.parse().map_err(|_| bad())? })
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{:02}H{:02}", self.layer, self.head)
    }
}

/// The elementwise sum of vectors of tensors (one vector per chunk of a batched method),
/// added in the given order; `None` for no chunks.
pub(crate) fn sum_in_order(chunks: impl IntoIterator<Item = Result<Vec<Tensor>>>) -> Result<Option<Vec<Tensor>>> {
    let mut sums: Option<Vec<Tensor>> = None;
    for chunk in chunks {
        let chunk = chunk?;
        sums = Some(match sums {
            None => chunk,
            Some(s) => s.iter().zip(&chunk).map(|(a, b)| Ok((a + b)?)).collect::<Result<_>>()?,
        });
    }
    Ok(sums)
}

/// Bounds on the arguments that set how much work a method does, so that no single argument
/// can ask for unbounded time or memory. The README's "Limits" section lists them.
pub mod limits {
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
}

/// Error unless `value` of the argument `what` is in `range`.
pub(crate) fn check_count(what: &str, value: usize, range: std::ops::RangeInclusive<usize>) -> Result<()> {
    if !range.contains(&value) {
        return Err(crate::error::Error::Invalid(format!(
            "{what} is {value}; it must be from {} to {}",
            range.start(),
            range.end()
        )));
    }
    Ok(())
}

/// Error unless `value` of the argument `what` is a number from `lo` to `hi`.
pub(crate) fn check_number(what: &str, value: f32, lo: f32, hi: f32) -> Result<()> {
    if !(value.is_finite() && value >= lo && value <= hi) {
        return Err(crate::error::Error::Invalid(format!("{what} is {value}; it must be a number from {lo} to {hi}")));
    }
    Ok(())
}

pub(crate) use crate::inputs::check_answers;

/// Indices of `values` by decreasing absolute value.
pub(crate) fn order_by_magnitude(values: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    idx
}
