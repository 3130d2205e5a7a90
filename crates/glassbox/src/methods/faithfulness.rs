//! Exact faithfulness of a circuit (a set of heads, optionally MLPs), in the ERASER sense
//! (DeYoung et al. 2020), by ablation runs rather than a Taylor estimate.
//!
//! The universe is every attention head (and every MLP with `include_mlps`); MLPs outside the
//! universe run normally. Three runs of the clean prompt, batched:
//! - `ld_circuit_only`: everything in the universe but the circuit ablated;
//! - `ld_circuit_ablated`: the circuit ablated;
//! - `ld_all_ablated` (`B`): the whole universe ablated.
//!
//! `sufficiency = (ld_circuit_only − B) / (LD_clean − B)`,
//! `comprehensiveness = (LD_clean − ld_circuit_ablated) / (LD_clean − B)`, `f1` their harmonic
//! mean (each clipped at 0). So the full model has sufficiency 1, the empty circuit comprehensiveness 0.
//! Ablation: `resample` (the corrupted run's activation; default), `mean` (mean over a prompt
//! set of the same length) or `zero`.
//!
//! `category` from the exact figures, first match: `faithful` (suff ≥ 0.8 and comp ≥ 0.5),
//! `backup_mechanisms` (suff ≥ 0.6 and comp < 0.5: the circuit suffices, yet removing it
//! hurts less than it should, so other heads take over), `incomplete` (suff < 0.6 and
//! comp ≥ 0.5), `weak` (suff < 0.3 and comp < 0.3), else `moderate`.
//! `taylor_sufficiency` is the reference tool's first-order estimate `Σ_{h∈C} attr(h) / LD_clean`
//! (`suff_is_approx` refers to `sufficiency`, which here is exact).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::{Contrast, Head};
use crate::model::{Action, Batch, HookPoint, Hooks, Intervention, Model};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ablation {
    Resample,
    Mean,
    Zero,
}

impl std::str::FromStr for Ablation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "resample" => Ok(Ablation::Resample),
            "mean" => Ok(Ablation::Mean),
            "zero" => Ok(Ablation::Zero),
            o => Err(Error::Invalid(format!("unknown ablation `{o}`; use resample, mean or zero"))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    pub heads: Vec<Head>,
    #[serde(default)]
    pub mlps: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Faithfulness {
    pub sufficiency: f32,
    pub comprehensiveness: f32,
    pub f1: f32,
    pub category: String,
    /// Whether `sufficiency` is a first-order estimate (never here: it is exact).
    pub suff_is_approx: bool,
    /// The reference tool's Taylor estimate of sufficiency, when attributions were given.
    pub taylor_sufficiency: Option<f32>,
    pub clean_ld: f32,
    pub ld_circuit_only: f32,
    pub ld_circuit_ablated: f32,
    pub ld_all_ablated: f32,
    pub ablation: Ablation,
    pub include_mlps: bool,
}

pub fn category(suff: f32, comp: f32) -> &'static str {
    if suff >= 0.8 && comp >= 0.5 {
        "faithful"
    } else if suff >= 0.6 && comp < 0.5 {
        "backup_mechanisms"
    } else if suff < 0.6 && comp >= 0.5 {
        "incomplete"
    } else if suff < 0.3 && comp < 0.3 {
        "weak"
    } else {
        "moderate"
    }
}

/// Harmonic mean of sufficiency and comprehensiveness, each clipped at 0 (a negative figure
/// counts as none).
pub fn f1(s: f32, c: f32) -> f32 {
    let (s, c) = (s.max(0.0), c.max(0.0));
    if s + c <= 0.0 {
        0.0
    } else {
        2.0 * s * c / (s + c)
    }
}

/// Evaluates many circuits against one contrast, batched: ablation values computed once.
pub struct CircuitEvaluator<'a> {
    model: &'a Model,
    contrast: &'a Contrast,
    include_mlps: bool,
    /// Per layer: the ablation value of `hook_z` and of `hook_mlp_out`, `[1, p, ...]`.
    values: Vec<(Tensor, Tensor)>,
    pub ablation: Ablation,
    pub clean_ld: f32,
    pub all_ablated_ld: f32,
}

impl<'a> CircuitEvaluator<'a> {
    /// `mean_set`: the prompts (same token count as the contrast) whose mean activations
    /// `Ablation::Mean` uses; by default the clean and corrupted prompts.
    pub fn new(model: &'a Model, contrast: &'a Contrast, ablation: Ablation, include_mlps: bool, mean_set: Option<&[Vec<u32>]>) -> Result<Self> {
        let layers = model.config.n_layers;
        let points: Vec<HookPoint> = (0..layers).flat_map(|l| [HookPoint::Z(l), HookPoint::MlpOut(l)]).collect();
        let set: Vec<Vec<u32>> = match (ablation, mean_set) {
            (Ablation::Mean, Some(s)) => {
                if s.iter().any(|t| t.len() != contrast.n_pos()) {
                    return Err(Error::Invalid("mean ablation prompts must have the clean prompt's token count".into()));
                }
                s.to_vec()
            }
            _ => vec![contrast.clean.clone(), contrast.corrupted.clone()],
        };
        let out = model.forward(&Batch::new(&set)?, &Hooks::new().cache(points.iter().copied()).last_logits_only())?;
        let values = (0..layers)
            .map(|l| {
                let pick = |p: HookPoint| -> Result<Tensor> {
                    let a = out.cache.get(p)?;
                    Ok(match ablation {
                        Ablation::Resample => a.narrow(0, 1, 1)?,
                        Ablation::Mean => a.mean_keepdim(0)?,
                        Ablation::Zero => a.narrow(0, 0, 1)?.zeros_like()?,
                    })
                };
                Ok((pick(HookPoint::Z(l))?, pick(HookPoint::MlpOut(l))?))
            })
            .collect::<Result<Vec<_>>>()?;
        let clean_batch = Batch::new(&[contrast.clean.clone()])?;
        let clean = model.forward(&clean_batch, &Hooks::new().last_logits_only())?;
        let clean_ld = clean.logit_diff(&[contrast.correct_id], &[contrast.incorrect_id])?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0];
        let mut ev = CircuitEvaluator {
            model,
            contrast,
            include_mlps,
            values,
            ablation,
            clean_ld,
            all_ablated_ld: 0.0,
        };
        let all = ev.run(&[Ablate::Complement(&Circuit::default())])?;
        ev.all_ablated_ld = all[0];
        Ok(ev)
    }

    /// LDs of the clean prompt with the given ablations, one row each, in chunks of 8 rows.
    fn run(&self, rows: &[Ablate]) -> Result<Vec<f32>> {
        let cfg = &self.model.config;
        let mut lds = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(8) {
            let n = chunk.len();
            let mut hooks = Hooks::new().last_logits_only();
            for l in 0..cfg.n_layers {
                let (z, mlp) = &self.values[l];
                for (r, ab) in chunk.iter().enumerate() {
                    let (circuit, complement) = match ab {
                        Ablate::Complement(c) => (*c, true),
                        Ablate::Circuit(c) => (*c, false),
                    };
                    let in_circuit: Vec<usize> = circuit.heads.iter().filter(|h| h.layer == l).map(|h| h.head).collect();
                    let heads: Vec<usize> = (0..cfg.n_heads).filter(|h| in_circuit.contains(h) != complement).collect();
                    if !heads.is_empty() {
                        hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z.clone())).heads(heads).batch(vec![r]));
                    }
                    if self.include_mlps && (circuit.mlps.contains(&l) != complement) {
                        hooks = hooks.intervene(Intervention::new(HookPoint::MlpOut(l), Action::Replace(mlp.clone())).batch(vec![r]));
                    }
                }
            }
            let batch = Batch::new(&vec![self.contrast.clean.clone(); n])?;
            let out = self.model.forward(&batch, &hooks)?;
            let ld = out.logit_diff(&vec![self.contrast.correct_id; n], &vec![self.contrast.incorrect_id; n])?;
            lds.extend(ld.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        Ok(lds)
    }

    /// Exact faithfulness of each circuit (two ablated runs per circuit, batched).
    pub fn evaluate(&self, circuits: &[Circuit]) -> Result<Vec<Faithfulness>> {
        let cfg = &self.model.config;
        for c in circuits {
            for h in &c.heads {
                cfg.check_layer(h.layer)?;
                if h.head >= cfg.n_heads {
                    return Err(Error::HeadOutOfRange { head: h.head, n_heads: cfg.n_heads, point: h.to_string() });
                }
            }
            if let Some(&l) = c.mlps.iter().find(|&&l| l >= cfg.n_layers) {
                return Err(Error::LayerOutOfRange { layer: l, n_layers: cfg.n_layers });
            }
        }
        let rows: Vec<Ablate> = circuits.iter().flat_map(|c| [Ablate::Complement(c), Ablate::Circuit(c)]).collect();
        let lds = self.run(&rows)?;
        let span = self.clean_ld - self.all_ablated_ld;
        let norm = |x: f32| if span.abs() > 1e-12 { x / span } else { 0.0 };
        Ok(lds
            .chunks(2)
            .map(|p| {
                let s = norm(p[0] - self.all_ablated_ld);
                let c = norm(self.clean_ld - p[1]);
                Faithfulness {
                    sufficiency: s,
                    comprehensiveness: c,
                    f1: f1(s, c),
                    category: category(s, c).to_string(),
                    suff_is_approx: false,
                    taylor_sufficiency: None,
                    clean_ld: self.clean_ld,
                    ld_circuit_only: p[0],
                    ld_circuit_ablated: p[1],
                    ld_all_ablated: self.all_ablated_ld,
                    ablation: self.ablation,
                    include_mlps: self.include_mlps,
                }
            })
            .collect())
    }
}

enum Ablate<'c> {
    /// Ablate everything in the universe except the circuit.
    Complement(&'c Circuit),
    /// Ablate the circuit.
    Circuit(&'c Circuit),
}

/// Faithfulness of one circuit; `attributions[layer][head]` adds the Taylor estimate.
pub fn faithfulness(
    model: &Model,
    contrast: &Contrast,
    circuit: &Circuit,
    ablation: Ablation,
    include_mlps: bool,
    attributions: Option<&[Vec<f32>]>,
) -> Result<Faithfulness> {
    let ev = CircuitEvaluator::new(model, contrast, ablation, include_mlps, None)?;
    let mut f = ev.evaluate(std::slice::from_ref(circuit))?.remove(0);
    f.taylor_sufficiency = attributions.map(|a| taylor_sufficiency(circuit, a, f.clean_ld));
    Ok(f)
}

/// The reference tool's estimate: `Σ_{h∈C} attr(h) / LD_clean`.
pub fn taylor_sufficiency(circuit: &Circuit, attributions: &[Vec<f32>], clean_ld: f32) -> f32 {
    let s: f32 = circuit.heads.iter().map(|h| attributions[h.layer][h.head]).sum();
    s / clean_ld
}
