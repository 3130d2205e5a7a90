//! Exact activation patching of every head and MLP, batched.
//!
//! `IntoClean`: the clean run with one component's activation taken from the corrupted run
//! (how much the prediction needs that component: what attribution patching estimates).
//! `IntoCorrupted`: the corrupted run with one component's clean activation (how much the
//! component alone restores; Heimersheim & Nanda call this direction "denoising").
//!
//! Both runs are computed once; every patched run starts at the layer it patches from the
//! receiving run's cached `hook_resid_pre`, and all patched runs of one layer (each head, and
//! the MLP) form one batch, one head per row. The result equals independent full runs.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::{Contrast, Metric, Scorer};
use crate::model::{Action, HookPoint, Intervention, Model, Start};
use crate::model::compute;
use crate::error::Error;

crate::choices! {
    /// Which run receives the patches.
    pub enum Direction {
        /// Corrupted activations patched into the clean run (noising).
        IntoClean = "into_clean",
        /// Clean activations patched into the corrupted run (denoising).
        IntoCorrupted = "into_corrupted",
    }
}

crate::options! {
    /// Options of `exact_patching`.
    pub struct PatchingOptions {
        /// Which run receives the patches.
        pub direction: Direction = Direction::IntoClean,
        /// The metric the patched runs are scored by.
        pub metric: Metric = Metric::default(),
    }
}


/// Result of `exact_patching`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Patching {
    /// Which run received the patches.
    pub direction: Direction,
    /// The metric's name.
    pub metric: String,
    /// LD of the run that receives the patches, and of the run they come from.
    pub base_ld: f32,
    /// The metric of the run the patches come from.
    pub source_ld: f32,
    /// Patched LD per head: `heads[layer][head]`.
    pub heads: Vec<Vec<f32>>,
    /// Patched LD per layer's MLP.
    pub mlps: Vec<f32>,
    /// `(patched − base) / (source − base)` per head: 1 means the patch alone moves the LD all
    /// the way to the source run's.
    pub head_effects: Vec<Vec<f32>>,
    /// `(patched − base) / (source − base)` per layer's MLP.
    pub mlp_effects: Vec<f32>,
}

/// Exact patching of every head (and every MLP) in `direction`.
pub fn exact_patching(model: &Model, contrast: &Contrast, opts: &PatchingOptions) -> Result<Patching> {
    contrast.check(model)?;
    let direction = opts.direction;
    let scorer = Scorer::new(model, contrast, &opts.metric)?;
    let cfg = &model.config();
    let (layers, heads) = (cfg.n_layers, cfg.n_heads);
    let (base_row, source_row) = match direction {
        Direction::IntoClean => (0, 1),
        Direction::IntoCorrupted => (1, 0),
    };
    let mut cache = Vec::new();
    for l in 0..layers {
        cache.extend([HookPoint::ResidPre(l), HookPoint::Z(l), HookPoint::MlpOut(l)]);
    }
    let batch = contrast.batch()?;
    let out = model.forward(&batch, &scorer.hooks().cache(cache))?;
    let lds = scorer.values(&out)?;
    let (base_ld, source_ld) = (lds[base_row], lds[source_row]);
    let row = |p: HookPoint, r: usize| -> Result<Tensor> { Ok(out.cache.get(p)?.narrow(0, r, 1)?) };

    // Rows of one layer: each head, then the MLP, in one batch (up to 160 token rows: a
    // 15-token prompt's 9 heads and MLP run together).
    let per_chunk = (160 / contrast.n_pos().max(1)).max(1);
    // Every layer's patched LDs: its heads', then its MLP's.
    let layer_lds = |l: usize| -> Result<Vec<f32>> {
        let z = row(HookPoint::Z(l), source_row)?;
        let mlp = row(HookPoint::MlpOut(l), source_row)?;
        let resid_row = row(HookPoint::ResidPre(l), base_row)?;
        let components: Vec<usize> = (0..=heads).collect(); // `heads` stands for the MLP
        let mut lds = Vec::with_capacity(heads + 1);
        for chunk in components.chunks(per_chunk) {
            let rows = chunk.len();
            let resid = resid_row.broadcast_as((rows, contrast.n_pos(), cfg.d_model))?.contiguous()?;
            let mut hooks = scorer.hooks();
            for (r, &c) in chunk.iter().enumerate() {
                hooks = if c < heads {
                    hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z.clone())).heads(vec![c]).batch(vec![r]))
                } else {
                    hooks.intervene(Intervention::new(HookPoint::MlpOut(l), Action::Replace(mlp.clone())).batch(vec![r]))
                };
            }
            let lengths = vec![contrast.n_pos(); rows];
            let run = model.forward_from(Start::Residual { layer: l, resid: &resid, lengths: &lengths }, &hooks)?;
            lds.extend(scorer.values(&run)?);
        }
        Ok(lds)
    };
    // Two streams, even and odd layers (about the same work each: a run starts at its layer).
    let layer_indices: Vec<usize> = (0..layers).collect();
    let all = compute::map_in_two_streams(&layer_indices, "layers patched", |&l| layer_lds(l), || Err(Error::Cancelled)).into_iter().collect::<Result<Vec<_>>>()?;
    let mut head_lds = Vec::with_capacity(layers);
    let mut mlp_lds = Vec::with_capacity(layers);
    for mut lds in all {
        mlp_lds.push(lds[heads]);
        lds.truncate(heads);
        head_lds.push(lds);
    }
    let span = source_ld - base_ld;
    let norm = |x: f32| if span.abs() > 1e-12 { (x - base_ld) / span } else { 0.0 };
    Ok(Patching {
        direction,
        metric: opts.metric.name().to_string(),
        base_ld,
        source_ld,
        head_effects: head_lds.iter().map(|r| r.iter().map(|&x| norm(x)).collect()).collect(),
        mlp_effects: mlp_lds.iter().map(|&x| norm(x)).collect(),
        heads: head_lds,
        mlps: mlp_lds,
    })
}
