//! Percentile bootstrap confidence intervals of the exact faithfulness figures over a prompt set:
//! prompts are resampled with replacement `n_boot` times (seeded) and the ratio-of-sums figures
//! recomputed on each resample.

use serde::{Deserialize, Serialize};

use crate::methods::faithfulness::{figures, Ablation, PromptLds};
use crate::tasks::Rng;

/// One figure on the whole set and its percentile bootstrap interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Interval {
    /// The figure on the whole prompt set.
    pub mean: f32,
    /// Standard deviation of the bootstrap distribution (the standard error).
    pub std: f32,
    /// Lower end of the `1 − alpha` interval (the `alpha / 2` quantile of the resamples).
    pub ci_lo: f32,
    /// Upper end of the `1 − alpha` interval (the `1 − alpha / 2` quantile of the resamples).
    pub ci_hi: f32,
    /// Number of prompts.
    pub n: usize,
}

/// Bootstrap intervals of the exact faithfulness figures over a prompt set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Interval of the sufficiency.
    pub sufficiency: Interval,
    /// Interval of the comprehensiveness.
    pub comprehensiveness: Interval,
    /// Interval of the F1 of sufficiency and comprehensiveness.
    pub f1: Interval,
    /// Bootstrap resamples drawn.
    pub n_boot: usize,
    /// The intervals are `1 − alpha` intervals.
    pub alpha: f32,
    /// Seed of the resampling.
    pub seed: u64,
}

/// The `q`-quantile of sorted values (linear interpolation).
pub fn quantile(sorted: &[f32], q: f32) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f32)
}

pub(crate) fn interval(point: f32, mut samples: Vec<f32>, alpha: f32, n: usize) -> Interval {
    samples.sort_by(f32::total_cmp);
    let m = samples.iter().sum::<f32>() / samples.len().max(1) as f32;
    let var = samples.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / (samples.len().max(2) - 1) as f32;
    Interval {
        mean: point,
        std: var.sqrt(),
        ci_lo: quantile(&samples, alpha / 2.0),
        ci_hi: quantile(&samples, 1.0 - alpha / 2.0),
        n,
    }
}

crate::options! {
    /// Options of `bootstrap`.
    pub struct BootstrapOptions {
        /// Resamples.
        pub n_boot: usize = 1000,
        /// One minus the confidence level (0.05: a 95 % interval).
        pub alpha: f32 = 0.05,
        /// Seed of the resampling.
        pub seed: u64 = 0,
    }
}


/// Percentile bootstrap of the faithfulness figures over the prompts (at least one).
pub fn bootstrap(lds: &[PromptLds], opts: &BootstrapOptions) -> crate::error::Result<Bootstrap> {
    let (n_boot, alpha, seed) = (opts.n_boot, opts.alpha, opts.seed);
    super::check_count("the number of bootstrap resamples", n_boot, super::limits::N_BOOT)?;
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(crate::error::Error::Invalid(format!("alpha is {alpha}; a confidence level needs 0 < alpha < 1")));
    }
    if lds.is_empty() {
        return Err(crate::error::Error::Invalid("the bootstrap needs at least one prompt".into()));
    }
    let n = lds.len();
    let point = figures(lds, Ablation::Resample, false);
    let mut rng = Rng::new(seed);
    let (mut s, mut c, mut f) = (Vec::with_capacity(n_boot), Vec::with_capacity(n_boot), Vec::with_capacity(n_boot));
    for _ in 0..n_boot {
        let sample: Vec<PromptLds> = (0..n).map(|_| lds[rng.below(n)]).collect();
        let fig = figures(&sample, Ablation::Resample, false);
        s.push(fig.sufficiency);
        c.push(fig.comprehensiveness);
        f.push(fig.f1);
    }
    Ok(Bootstrap {
        sufficiency: interval(point.sufficiency, s, alpha, n),
        comprehensiveness: interval(point.comprehensiveness, c, alpha, n),
        f1: interval(point.f1, f, alpha, n),
        n_boot,
        alpha,
        seed,
    })
}
