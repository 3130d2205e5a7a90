//! Rotary frequencies: the inverse frequencies of each rotating pair of dimensions and the
//! cos/sin tables, with every scaling type as `transformers` computes it (in f32 where it
//! does, so figures match to rounding), and the per-frequency divisors a GGUF file may carry
//! (`rope_freqs.weight`, llama.cpp's form of Llama 3.1 scaling).

use std::sync::Arc;

use crate::model::config::RopeScaling;
use crate::model::ops::RopeTables;

/// The inverse frequency of each of the `dim / 2` pairs for a run of `n_pos` positions, and
/// the factor cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
/// `freq_factors` (from a GGUF file) divide the frequencies, as llama.cpp applies them.
pub(crate) fn inv_freq(dim: usize, base: f64, scaling: RopeScaling, n_pos: usize, freq_factors: Option<&[f32]>) -> (Vec<f32>, f64) {
    let half = dim / 2;
    let exponent = |i: usize| (2 * i) as f32 / dim as f32;
    let plain = |base: f64| -> Vec<f32> { (0..half).map(|i| 1.0 / (base as f32).powf(exponent(i))).collect() };
    let (mut f, attention) = match scaling {
        RopeScaling::None => (plain(base), 1.0),
        RopeScaling::Linear { factor } => (plain(base).into_iter().map(|x| x / factor as f32).collect(), 1.0),
        RopeScaling::Dynamic { factor, max_positions } => {
            let len = n_pos.max(max_positions) as f64;
            let scaled = base * ((factor * len / max_positions as f64) - (factor - 1.0)).powf(dim as f64 / (dim as f64 - 2.0));
            (plain(scaled), 1.0)
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
            let old = original_max as f32;
            let (low_wavelen, high_wavelen) = (old / low_freq_factor as f32, old / high_freq_factor as f32);
            let f = plain(base)
                .into_iter()
                .map(|x| {
                    let wavelen = 2.0 * std::f32::consts::PI / x;
                    let scaled = if wavelen > low_wavelen { x / factor as f32 } else { x };
                    let outside = wavelen < high_wavelen || wavelen > low_wavelen;
                    let medium = !outside;
                    if medium {
                        let smooth = (old / wavelen - low_freq_factor as f32) / (high_freq_factor as f32 - low_freq_factor as f32);
                        (1.0 - smooth) * scaled / factor as f32 + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect();
            (f, 1.0)
        }
        RopeScaling::Yarn { factor, original_max, beta_fast, beta_slow, attention_factor, truncate } => {
            let correction_dim = |rotations: f64| (dim as f64 * (original_max as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
            let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
            if truncate {
                low = low.floor();
                high = high.ceil();
            }
            let (low, mut high) = (low.max(0.0) as f32, high.min(dim as f64 - 1.0) as f32);
            if low == high {
                high += 0.001;
            }
            let f = (0..half)
                .map(|i| {
                    let pos_freq = (base as f32).powf(exponent(i));
                    let (extrapolation, interpolation) = (1.0 / pos_freq, 1.0 / (factor as f32 * pos_freq));
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
                })
                .collect();
            (f, attention_factor)
        }
    };
    if let Some(div) = freq_factors {
        for (x, d) in f.iter_mut().zip(div) {
            *x /= *d;
        }
    }
    (f, attention)
}

/// cos and sin tables `[n_pos, dim / 2]` (as f64 from the f32 frequencies, as the forward has
/// always used them), multiplied by the attention factor.
pub(crate) fn tables(n_pos: usize, dim: usize, base: f64, scaling: RopeScaling, freq_factors: Option<&[f32]>) -> Arc<RopeTables> {
    let (inv, attention) = inv_freq(dim, base, scaling, n_pos, freq_factors);
    let half = dim / 2;
    let mut cos = Vec::with_capacity(n_pos * half);
    let mut sin = Vec::with_capacity(n_pos * half);
    for pos in 0..n_pos {
        for f in &inv {
            let angle = pos as f64 * *f as f64;
            cos.push(angle.cos() * attention);
            sin.push(angle.sin() * attention);
        }
    }
    Arc::new(RopeTables { cos, sin, positions: n_pos, half })
}

/// The GGUF `rope_freqs` divisors llama.cpp's converter writes for Llama 3.1 scaling: 1 for
/// high frequencies, `factor` for low ones, `1 / ((1 − s) / factor + s)` between.
pub fn llama3_freq_factors(dim: usize, base: f64, factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: usize) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (original_max as f64 / low_freq_factor, original_max as f64 / high_freq_factor);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let s = (original_max as f64 / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 / ((1.0 - s) / factor + s)) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1's scaling by formula equals the same scaling by llama.cpp's divisors (to f32
    /// rounding): the two forms a checkpoint may carry.
    #[test]
    fn llama3_formula_and_divisors_agree() {
        let (dim, base) = (64, 500_000.0);
        let s = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 8192 };
        let (a, _) = inv_freq(dim, base, s, 10, None);
        let div = llama3_freq_factors(dim, base, 8.0, 1.0, 4.0, 8192);
        let (b, _) = inv_freq(dim, base, RopeScaling::None, 10, Some(&div));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * x.abs(), "{x} vs {y}");
        }
        assert!(div.contains(&1.0) && div.contains(&8.0) && div.iter().any(|&d| d > 1.0 && d < 8.0));
    }

    #[test]
    fn dynamic_scaling_starts_beyond_the_trained_length() {
        let s = RopeScaling::Dynamic { factor: 4.0, max_positions: 8 };
        assert_eq!(inv_freq(16, 1e4, s, 8, None), inv_freq(16, 1e4, RopeScaling::None, 8, None));
        let (long, _) = inv_freq(16, 1e4, s, 20, None);
        let (plain, _) = inv_freq(16, 1e4, RopeScaling::None, 20, None);
        assert_eq!(long[0], plain[0]);
        assert!(long[7] < plain[7]);
    }

    #[test]
    fn linear_and_yarn() {
        let (plain, _) = inv_freq(16, 1e4, RopeScaling::None, 4, None);
        let (lin, a) = inv_freq(16, 1e4, RopeScaling::Linear { factor: 2.0 }, 4, None);
        assert_eq!(a, 1.0);
        assert!(plain.iter().zip(&lin).all(|(p, l)| (p / 2.0 - l).abs() < 1e-9));
        let y = RopeScaling::Yarn { factor: 4.0, original_max: 32, beta_fast: 32.0, beta_slow: 1.0, attention_factor: 1.2, truncate: true };
        let (yarn, a) = inv_freq(16, 1e4, y, 4, None);
        assert_eq!(a, 1.2);
        // The fastest pair keeps its frequency, the slowest is interpolated by the factor.
        assert_eq!(yarn[0], plain[0]);
        assert!((yarn[7] - plain[7] / 4.0).abs() < 1e-9);
    }
}
