//! Interpretability methods: each is a function of the model and its inputs that returns a
//! plain serialisable result, with the key names of the Glassbox reference tool.

pub mod alignment;
pub mod analyze;
pub mod attention;
pub mod attribution;
pub mod bootstrap;
pub mod catalog;
pub mod circuit;
pub mod composition;
pub mod metric;
pub mod edges;
pub mod evaluate;
pub mod faithfulness;
pub mod graph;
pub mod logit_lens;
pub mod next_tokens;
pub mod path_patching;
pub mod sae_attribution;
pub mod patching;
pub mod scrubbing;
pub mod stability;
pub mod steering;
pub mod token_attribution;
pub mod warnings;

use std::fmt;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;

pub use crate::inputs as contrast;
pub use crate::inputs::{Contrast, Prompt};
pub use metric::{Metric, Position, Scorer};

/// An attention head: prints as `L09H09`, serialises as `[layer, head]`, and is read from
/// either form (`"L9H6"`, `"9.6"` or `[9, 6]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "[usize; 2]")]
pub struct Head {
    /// Layer index, from 0.
    pub layer: usize,
    /// Head index within its layer, from 0.
    pub head: usize,
}

impl<'de> Deserialize<'de> for Head {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Pair([usize; 2]),
            Text(String),
        }
        match Form::deserialize(d)? {
            Form::Pair(p) => Ok(Head::from(p)),
            Form::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl crate::schema::FieldType for Head {
    fn kind() -> crate::schema::Kind {
        crate::schema::Kind::Text { format: Some("a head: L9H6 or 9.6") }
    }
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

pub use crate::limits;
pub(crate) use crate::limits::{check_count, check_number};

pub(crate) use crate::inputs::check_answers;

/// Indices of `values` by decreasing absolute value.
pub(crate) fn order_by_magnitude(values: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    idx
}
