//! `analyze`: one call from a prompt to a circuit with exact faithfulness figures.
//!
//! Attribution (Taylor or integrated gradients) ranks the heads; the minimum faithful circuit
//! grows and prunes by exact sufficiency; the circuit's faithfulness is reported exactly, with
//! the reference tool's Taylor sufficiency beside it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::methods::attribution::{attribute, Component, Method, Scored};
use crate::methods::circuit::{minimum_faithful_circuit, Step};
use crate::methods::faithfulness::{taylor_sufficiency, Ablation, Circuit, CircuitEvaluator, Faithfulness};
use crate::methods::logit_lens::{logit_lens, LogitLens};
use crate::methods::{Contrast, Head};
use crate::model::Model;

#[derive(Debug, Clone)]
pub struct AnalyzeOptions {
    pub method: Method,
    pub n_steps: usize,
    /// Target exact sufficiency of the circuit.
    pub target: f32,
    /// Most heads the circuit may grow to.
    pub max_heads: usize,
    pub ablation: Ablation,
    pub include_mlps: bool,
    pub logit_lens: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            method: Method::Taylor,
            n_steps: 20,
            target: 0.85,
            max_heads: 40,
            ablation: Ablation::Resample,
            include_mlps: false,
            logit_lens: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub model: String,
    pub prompt: String,
    pub correct: String,
    pub incorrect: String,
    pub corrupted_prompt: String,
    /// How the corrupted prompt was made: `given` or `name_swap`.
    pub corruption: String,
    pub method: Method,
    pub circuit: Vec<Head>,
    pub attributions: BTreeMap<String, f32>,
    pub top_heads: Vec<Scored>,
    pub clean_ld: f32,
    pub corrupted_ld: f32,
    pub faithfulness: Faithfulness,
    pub target_reached: bool,
    pub trajectory: Vec<Step>,
    pub logit_lens: Option<LogitLens>,
}

pub fn analyze(model: &Model, contrast: &Contrast, opts: &AnalyzeOptions) -> Result<Analysis> {
    let attr = attribute(model, contrast, Component::Heads, opts.method, opts.n_steps)?;
    let ev = CircuitEvaluator::new(model, contrast, opts.ablation, opts.include_mlps, None)?;
    let search = minimum_faithful_circuit(&ev, &attr.scores, opts.target, opts.max_heads)?;
    let mut faithfulness = search.faithfulness;
    let circuit = Circuit { heads: search.circuit.clone(), mlps: vec![] };
    faithfulness.taylor_sufficiency = Some(taylor_sufficiency(&circuit, &attr.scores, attr.clean_ld));
    let logit_lens = if opts.logit_lens {
        Some(logit_lens(model, &contrast.clean, contrast.correct_id, contrast.incorrect_id, 5)?)
    } else {
        None
    };
    Ok(Analysis {
        model: model.name.clone(),
        prompt: contrast.clean_prompt.clone(),
        correct: contrast.correct.clone(),
        incorrect: contrast.incorrect.clone(),
        corrupted_prompt: contrast.corrupted_prompt.clone(),
        corruption: contrast.corruption.clone(),
        method: opts.method,
        circuit: search.circuit,
        attributions: attr.attributions,
        top_heads: attr.top.into_iter().take(20).collect(),
        clean_ld: attr.clean_ld,
        corrupted_ld: attr.corrupted_ld,
        faithfulness,
        target_reached: search.reached,
        trajectory: search.trajectory,
        logit_lens,
    })
}
