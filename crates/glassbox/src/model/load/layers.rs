//! Which layers attend through a sliding window, and with which rotary base: one derivation
//! for every form a checkpoint may use, shared by the Hugging Face and GGUF loaders.
//!
//! The forms, as `transformers` 4.57 reads them (its config classes fill `layer_types` from
//! the older keys when a file lacks it):
//! - `layer_types` listing `"sliding_attention"` / `"full_attention"` per layer;
//! - Gemma 2 without `layer_types`: even layers (0, 2, ...) sliding, odd layers global;
//! - Gemma 3 with `sliding_window_pattern = n` (default 6): layer `i` is global when
//!   `(i + 1) % n == 0`, sliding otherwise — also what its GGUF files leave out;
//! - Qwen2 with `use_sliding_window` and `max_window_layers = m`: layers `m..` sliding;
//! - Mistral and the rest: `sliding_window` (null for none) in every layer.
//!
//! Sliding layers take the local rotary base where the family has one (Gemma 3's
//! `rope_local_base_freq`, 10 000 when absent); global layers the model's `rope_theta`.

use crate::error::{Error, Result};
use crate::model::config::LayerAttention;

/// Which layers are sliding-window layers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pattern {
    /// Every layer the same: sliding when the model has a window.
    Uniform,
    /// One entry per layer: `true` for a sliding layer.
    Listed(Vec<bool>),
    /// Layer `i` global when `(i + 1) % n == 0` (Gemma 2: n = 2; Gemma 3: n = 6).
    EveryNthGlobal(usize),
    /// Layers from this index on sliding, those before global (Qwen2's `max_window_layers`).
    SlidingFrom(usize),
}

/// What a checkpoint says about its attention layers, in whichever form it uses.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub pattern: Pattern,
    /// The window of the sliding layers (`None`: no layer slides).
    pub window: Option<usize>,
    /// Rotary base of global layers (and of every layer without a local base).
    pub rope_base: f64,
    /// Rotary base of sliding layers, where the family has its own.
    pub local_rope_base: Option<f64>,
}

impl Layout {
    /// Per-layer settings for `n_layers` layers.
    pub fn layers(&self, n_layers: usize) -> Result<Vec<LayerAttention>> {
        let sliding: Vec<bool> = match &self.pattern {
            Pattern::Uniform => vec![true; n_layers],
            Pattern::Listed(v) => {
                if v.len() != n_layers {
                    return Err(Error::Invalid(format!("model config: {} layer types for {n_layers} layers", v.len())));
                }
                v.clone()
            }
            Pattern::EveryNthGlobal(0) => return Err(Error::Invalid("model config: a sliding window pattern of 0".into())),
            Pattern::EveryNthGlobal(n) => (0..n_layers).map(|i| (i + 1) % n != 0).collect(),
            Pattern::SlidingFrom(first) => (0..n_layers).map(|i| i >= *first).collect(),
        };
        Ok(sliding
            .into_iter()
            .map(|s| {
                let window = if s { self.window } else { None };
                let rope_base = match (window, self.local_rope_base) {
                    (Some(_), Some(local)) => local,
                    _ => self.rope_base,
                };
                LayerAttention { sliding_window: window, rope_base }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(l: &Layout, n: usize) -> Vec<Option<usize>> {
        l.layers(n).unwrap().iter().map(|a| a.sliding_window).collect()
    }

    #[test]
    fn each_published_form() {
        let base = Layout { pattern: Pattern::Uniform, window: Some(4), rope_base: 1e6, local_rope_base: Some(1e4) };
        assert_eq!(kinds(&base, 3), vec![Some(4); 3]);
        let none = Layout { window: None, ..base.clone() };
        assert_eq!(kinds(&none, 2), vec![None, None]);
        let gemma2 = Layout { pattern: Pattern::EveryNthGlobal(2), ..base.clone() };
        assert_eq!(kinds(&gemma2, 4), vec![Some(4), None, Some(4), None]);
        let gemma3 = Layout { pattern: Pattern::EveryNthGlobal(6), ..base.clone() };
        let l = gemma3.layers(12).unwrap();
        assert_eq!(l.iter().enumerate().filter(|(_, a)| a.sliding_window.is_none()).map(|(i, _)| i).collect::<Vec<_>>(), vec![5, 11]);
        assert_eq!((l[0].rope_base, l[5].rope_base), (1e4, 1e6));
        let qwen2 = Layout { pattern: Pattern::SlidingFrom(2), local_rope_base: None, ..base.clone() };
        let l = qwen2.layers(4).unwrap();
        assert_eq!(l.iter().map(|a| a.sliding_window).collect::<Vec<_>>(), vec![None, None, Some(4), Some(4)]);
        assert!(l.iter().all(|a| a.rope_base == 1e6));
        let listed = Layout { pattern: Pattern::Listed(vec![true, false]), ..base.clone() };
        assert_eq!(kinds(&listed, 2), vec![Some(4), None]);
        assert!(listed.layers(3).is_err());
        assert!(Layout { pattern: Pattern::EveryNthGlobal(0), ..base }.layers(2).is_err());
    }
}
