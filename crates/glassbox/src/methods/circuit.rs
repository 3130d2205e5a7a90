//! The minimum faithful circuit: heads added greedily in order of attribution until the exact
//! sufficiency reaches the target (or the cap), then each head removed whose removal keeps the
//! target, least attributed first. Every step is judged by exact ablation runs
//! (`faithfulness::CircuitEvaluator`), four candidates per batched forward.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::faithfulness::{Circuit, CircuitEvaluator, Faithfulness};
use crate::methods::Head;

/// One step of the circuit search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// `"add"` or `"remove"`.
    pub action: String,
    /// The head added or removed.
    pub head: Head,
    /// The circuit's size after the step.
    pub size: usize,
    /// Exact sufficiency of the circuit after the step.
    pub sufficiency: f32,
    /// Exact comprehensiveness of the circuit after the step.
    pub comprehensiveness: f32,
}

/// Result of `minimum_faithful_circuit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CircuitSearch {
    /// The circuit's heads by decreasing attribution; when the target is not reached, the prefix
    /// of highest sufficiency.
    pub circuit: Vec<Head>,
    /// Exact faithfulness of `circuit`.
    pub faithfulness: Faithfulness,
    /// The target sufficiency.
    pub target: f32,
    /// Whether the target sufficiency was reached within the cap.
    pub reached: bool,
    /// Every add and remove step, in order.
    pub trajectory: Vec<Step>,
}

/// Heads by decreasing attribution (the heads that push towards the correct answer first).
pub fn heads_by_attribution(attributions: &[Vec<f32>]) -> Vec<Head> {
    let mut heads: Vec<(Head, f32)> = attributions
        .iter()
        .enumerate()
        .flat_map(|(layer, row)| row.iter().enumerate().map(move |(head, &a)| (Head { layer, head }, a)))
        .collect();
    heads.sort_by(|a, b| b.1.total_cmp(&a.1));
    heads.into_iter().map(|(h, _)| h).collect()
}

const BATCH: usize = 4;

crate::options! {
    /// Options of `minimum_faithful_circuit`.
    pub struct CircuitOptions {
        /// The exact sufficiency to reach.
        pub target: f32 = 0.85,
        /// The most heads the circuit may grow to.
        pub max_heads: usize = 40,
    }
}


/// The smallest circuit (greedy) whose exact sufficiency reaches the target, judged by the
/// evaluator's ablation runs (its metric); the heads are tried in order of `attributions`.
pub fn minimum_faithful_circuit(ev: &CircuitEvaluator, attributions: &[Vec<f32>], opts: &CircuitOptions) -> Result<CircuitSearch> {
    super::check_number("the target sufficiency", opts.target, 0.0, 1.0)?;
    super::check_count("the most heads of the circuit", opts.max_heads, super::limits::MAX_HEADS)?;
    let (target, cap) = (opts.target, opts.max_heads);
    let order = heads_by_attribution(attributions);
    let cap = cap.min(order.len()).max(1);
    let mut trajectory = Vec::new();
    let circuit_of = |heads: &[Head]| Circuit { heads: heads.to_vec(), mlps: vec![] };

    // Growth by prefixes of the attribution order.
    let mut chosen: Option<(usize, Faithfulness)> = None;
    let mut best: Option<(usize, Faithfulness)> = None;
    let mut k = 1;
    while k <= cap && chosen.is_none() {
        let sizes: Vec<usize> = (k..(k + BATCH).min(cap + 1)).collect();
        let circuits: Vec<Circuit> = sizes.iter().map(|&s| circuit_of(&order[..s])).collect();
        for (s, f) in sizes.iter().zip(ev.evaluate(&circuits)?) {
            if chosen.is_some() {
                break;
            }
            trajectory.push(Step {
                action: "add".into(),
                head: order[s - 1],
                size: *s,
                sufficiency: f.sufficiency,
                comprehensiveness: f.comprehensiveness,
            });
            if best.as_ref().is_none_or(|(_, b)| f.sufficiency > b.sufficiency) {
                best = Some((*s, f.clone()));
            }
            if f.sufficiency >= target {
                chosen = Some((*s, f));
            }
        }
        k += sizes.len();
    }
    let reached = chosen.is_some();
    let (size, mut faith) = match chosen.or(best) {
        Some(x) => x,
        None => return Err(crate::error::Error::Invalid("the model has no heads".into())),
    };
    let mut circuit: Vec<Head> = order[..size].to_vec();

    // Pruning, least attributed first, only when the target was reached.
    if reached {
        let mut candidates: Vec<Head> = circuit.iter().rev().copied().collect();
        while !candidates.is_empty() && circuit.len() > 1 {
            let batch: Vec<Head> = candidates.iter().take(BATCH).copied().collect();
            let trials: Vec<Circuit> = batch
                .iter()
                .map(|h| circuit_of(&circuit.iter().filter(|c| *c != h).copied().collect::<Vec<_>>()))
                .collect();
            let mut results = ev.evaluate(&trials)?;
            let accepted = results.iter().position(|f| f.sufficiency >= target);
            match accepted {
                Some(i) => {
                    let h = batch[i];
                    circuit.retain(|c| *c != h);
                    // The trial without `h` is the new circuit: its figures are already there.
                    faith = results.swap_remove(i);
                    trajectory.push(Step {
                        action: "remove".into(),
                        head: h,
                        size: circuit.len(),
                        sufficiency: faith.sufficiency,
                        comprehensiveness: faith.comprehensiveness,
                    });
                    candidates.drain(..=i);
                }
                None => {
                    candidates.drain(..batch.len());
                }
            }
        }
    }
    Ok(CircuitSearch {
        circuit,
        faithfulness: faith,
        target,
        reached,
        trajectory,
    })
}
