//! Cross-model circuit alignment (FCAS, the reference tool's `functional_circuit_alignment`):
//! are two models' top heads at the same relative depths?
//!
//! The top `k` heads of each model, ranked by attribution, are matched rank by rank; each head
//! sits at relative depth `layer / (n_layers − 1)` (0 in the first layer, 1 in the last) and
//! `FCAS = 1 − mean_i |depth_a(i) − depth_b(i)|` (1: the same depths rank for rank). Its null
//! distribution comes from random head sets of the two real models (`k` distinct heads drawn
//! uniformly from each model's `n_layers × n_heads`, in random order), by Monte Carlo:
//! `z_score = (fcas − null_mean) / null_std` and the empirical p-value
//! `(1 + #{null ≥ fcas}) / (1 + n_null)`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inputs::Contrast;
use crate::methods::Head;
use crate::model::Model;
use crate::rng::Rng;

/// A model's shape, for the null distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Layers.
    pub n_layers: usize,
    /// Attention heads per layer.
    pub n_heads: usize,
}

crate::options! {
    /// Options of `functional_circuit_alignment`.
    pub struct AlignmentOptions {
        /// Heads compared from each model (the top `top_k` of each ranking).
        pub top_k: usize = 5,
        /// Random head-set pairs in the null distribution.
        pub n_null: usize = 10_000,
        /// Seed of the null's draws.
        pub seed: u64 = 0,
    }
}


/// One rank's pair of heads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlignedPair {
    /// Rank, from 0.
    pub rank: usize,
    /// Model A's head at this rank.
    pub head_a: Head,
    /// Model B's head at this rank.
    pub head_b: Head,
    /// Relative depth of A's head.
    pub depth_a: f32,
    /// Relative depth of B's head.
    pub depth_b: f32,
}

/// Result of `functional_circuit_alignment`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alignment {
    /// `1 − mean |depth_a − depth_b|` over the rank-matched heads.
    pub fcas: f32,
    /// Heads compared per model.
    pub top_k: usize,
    /// The rank-matched pairs.
    pub pairs: Vec<AlignedPair>,
    /// Mean FCAS of random head sets of the two models.
    pub null_mean: f32,
    /// Its standard deviation.
    pub null_std: f32,
    /// `(fcas − null_mean) / null_std`.
    pub z_score: f32,
    /// `(1 + #{null ≥ fcas}) / (1 + n_null)`.
    pub p_value: f32,
    /// Draws in the null.
    pub n_null: usize,
    /// The models' shapes.
    pub shape_a: ModelShape,
    /// Model B's shape.
    pub shape_b: ModelShape,
    /// Model A's name.
    #[serde(default)]
    pub model_a: String,
    /// Model B's name.
    #[serde(default)]
    pub model_b: String,
}

fn depth(layer: usize, n_layers: usize) -> f64 {
    if n_layers <= 1 {
        0.0
    } else {
        layer as f64 / (n_layers - 1) as f64
    }
}

fn score(a: &[usize], b: &[usize], la: usize, lb: usize) -> f64 {
    let n = a.len().min(b.len()).max(1);
    1.0 - a.iter().zip(b).map(|(&x, &y)| (depth(x, la) - depth(y, lb)).abs()).sum::<f64>() / n as f64
}

/// The layers of `k` distinct heads drawn uniformly (in random order) from `shape`.
fn draw(rng: &mut Rng, shape: ModelShape, k: usize, pool: &mut Vec<usize>) -> Vec<usize> {
    let n = shape.n_layers * shape.n_heads;
    pool.clear();
    pool.extend(0..n);
    // Partial Fisher–Yates: the first k of a random permutation.
    for i in 0..k {
        let j = i + rng.below(n - i);
        pool.swap(i, j);
    }
    pool[..k].iter().map(|&h| h / shape.n_heads).collect()
}

/// FCAS between two rankings of heads (best first) of models of shapes `a` and `b`.
pub fn functional_circuit_alignment(heads_a: &[Head], shape_a: ModelShape, heads_b: &[Head], shape_b: ModelShape, opts: &AlignmentOptions) -> Result<Alignment> {
    for (s, name) in [(shape_a, "A"), (shape_b, "B")] {
        if s.n_layers == 0 || s.n_heads == 0 {
            return Err(Error::Invalid(format!("model {name} has no heads")));
        }
    }
    super::check_count("n_null", opts.n_null, 10..=1_000_000)?;
    let k = opts.top_k;
    let max_k = heads_a.len().min(heads_b.len());
    if k == 0 || k > max_k {
        return Err(Error::Invalid(format!("top_k {k}: give 1 to {max_k} (the shorter ranking has {max_k} heads)")));
    }
    for (heads, s, name) in [(heads_a, shape_a, "A"), (heads_b, shape_b, "B")] {
        if let Some(h) = heads.iter().find(|h| h.layer >= s.n_layers || h.head >= s.n_heads) {
            return Err(Error::Invalid(format!("{h} is not a head of model {name} ({} layers × {} heads)", s.n_layers, s.n_heads)));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(h) = heads[..k].iter().find(|h| !seen.insert(**h)) {
            return Err(Error::Invalid(format!("{h} is listed twice in model {name}'s ranking")));
        }
    }
    let la: Vec<usize> = heads_a[..k].iter().map(|h| h.layer).collect();
    let lb: Vec<usize> = heads_b[..k].iter().map(|h| h.layer).collect();
    let fcas = score(&la, &lb, shape_a.n_layers, shape_b.n_layers);
    let mut rng = Rng::new(opts.seed ^ 0x5EED_FCA5);
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    let (mut sum, mut sum2, mut at_least) = (0.0f64, 0.0f64, 0usize);
    for _ in 0..opts.n_null {
        let a = draw(&mut rng, shape_a, k, &mut pa);
        let b = draw(&mut rng, shape_b, k, &mut pb);
        let s = score(&a, &b, shape_a.n_layers, shape_b.n_layers);
        sum += s;
        sum2 += s * s;
        if s >= fcas - 1e-12 {
            at_least += 1;
        }
    }
    let n = opts.n_null as f64;
    let mean = sum / n;
    let std = ((sum2 / n - mean * mean).max(0.0) * n / (n - 1.0)).sqrt();
    let pairs = (0..k)
        .map(|i| AlignedPair {
            rank: i,
            head_a: heads_a[i],
            head_b: heads_b[i],
            depth_a: depth(la[i], shape_a.n_layers) as f32,
            depth_b: depth(lb[i], shape_b.n_layers) as f32,
        })
        .collect();
    Ok(Alignment {
        fcas: fcas as f32,
        top_k: k,
        pairs,
        null_mean: mean as f32,
        null_std: std as f32,
        z_score: if std > 0.0 { ((fcas - mean) / std) as f32 } else { 0.0 },
        p_value: ((1 + at_least) as f64 / (1.0 + n)) as f32,
        n_null: opts.n_null,
        shape_a,
        shape_b,
        model_a: String::new(),
        model_b: String::new(),
    })
}

/// Heads of `model` by decreasing |attribution| (Taylor, logit difference), averaged over the
/// contrasts; ties by head order.
pub fn head_ranking(model: &Model, contrasts: &[Contrast]) -> Result<Vec<Head>> {
    let cfg = &model.config();
    let mut sum = vec![vec![0f64; cfg.n_heads]; cfg.n_layers];
    for c in contrasts {
        let a = crate::methods::attribution::attribute(model, c, &Default::default())?;
        for (l, row) in a.scores.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                sum[l][h] += v as f64;
            }
        }
    }
    let mut heads: Vec<(Head, f64)> = sum.iter().enumerate().flat_map(|(l, r)| r.iter().enumerate().map(move |(h, &v)| (Head { layer: l, head: h }, v))).collect();
    heads.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    Ok(heads.into_iter().map(|(h, _)| h).collect())
}

/// FCAS of two models' head rankings on the same inputs (each model's own tokenization).
pub fn align_models(a: (&Model, &[Contrast]), b: (&Model, &[Contrast]), opts: &AlignmentOptions) -> Result<Alignment> {
    let shape = |m: &Model| ModelShape { n_layers: m.config().n_layers, n_heads: m.config().n_heads };
    let (ra, rb) = (head_ranking(a.0, a.1)?, head_ranking(b.0, b.1)?);
    let mut r = functional_circuit_alignment(&ra, shape(a.0), &rb, shape(b.0), opts)?;
    r.model_a = a.0.name().to_string();
    r.model_b = b.0.name().to_string();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(layer: usize, head: usize) -> Head {
        Head { layer, head }
    }

    #[test]
    fn identical_depths_score_one_and_the_null_is_below() {
        let s = ModelShape { n_layers: 12, n_heads: 12 };
        let heads = [h(9, 9), h(9, 6), h(10, 0), h(8, 6), h(7, 3)];
        let r = functional_circuit_alignment(&heads, s, &heads, s, &AlignmentOptions { n_null: 20_000, ..Default::default() }).unwrap();
        assert!((r.fcas - 1.0).abs() < 1e-6);
        // The null of two uniform head sets: E|U − V| for independent layer depths on a grid of
        // 12 is (n² − 1) / (3n(n − 1)) = 143 / 396; FCAS null mean = 1 − that.
        let expected = 1.0 - 143.0 / 396.0;
        assert!((r.null_mean - expected).abs() < 0.005, "{} against {expected}", r.null_mean);
        assert!(r.z_score > 3.0 && r.p_value < 0.01, "{r:?}");
        // Different depth scales: layer 22 of 24 matches layer 10 of 12 within 1/23 − 1/11·…
        let b = ModelShape { n_layers: 24, n_heads: 16 };
        let heads_b = [h(20, 1), h(19, 3), h(22, 0), h(17, 2), h(15, 5)];
        let r2 = functional_circuit_alignment(&heads, s, &heads_b, b, &AlignmentOptions::default()).unwrap();
        let want = 1.0 - [(9.0 / 11.0 - 20.0 / 23.0f64).abs(), (9.0 / 11.0 - 19.0 / 23.0f64).abs(), (10.0 / 11.0 - 22.0 / 23.0f64).abs(), (8.0 / 11.0 - 17.0 / 23.0f64).abs(), (7.0 / 11.0 - 15.0 / 23.0f64).abs()].iter().sum::<f64>() / 5.0;
        assert!((r2.fcas as f64 - want).abs() < 1e-6);
        // Same seed, same null.
        let r3 = functional_circuit_alignment(&heads, s, &heads_b, b, &AlignmentOptions::default()).unwrap();
        assert_eq!((r2.null_mean, r2.null_std), (r3.null_mean, r3.null_std));
    }

    #[test]
    fn bad_arguments_are_errors() {
        let s = ModelShape { n_layers: 2, n_heads: 4 };
        let heads = [h(0, 1), h(1, 2)];
        let e = |a: &[Head], o: AlignmentOptions| functional_circuit_alignment(a, s, &heads, s, &o).unwrap_err().to_string();
        assert!(e(&heads, AlignmentOptions { top_k: 3, ..Default::default() }).contains("top_k 3"));
        assert!(e(&heads, AlignmentOptions { top_k: 0, ..Default::default() }).contains("top_k 0"));
        assert!(e(&[h(2, 0), h(0, 0)], AlignmentOptions { top_k: 2, ..Default::default() }).contains("not a head"));
        assert!(e(&[h(0, 0), h(0, 0)], AlignmentOptions { top_k: 2, ..Default::default() }).contains("twice"));
        assert!(e(&heads, AlignmentOptions { top_k: 2, n_null: 5, seed: 0 }).contains("n_null"));
    }
}
