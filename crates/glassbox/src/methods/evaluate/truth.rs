//! A method's scores against a circuit known to be true (a tracr-compiled program's, an
//! InterpBench model's): the AUROC of the edge scores and of the component scores.
//!
//! The AUROC is computed exactly, as the Mann–Whitney statistic: the chance that a true edge
//! scores above an edge outside the circuit (by |mean score|; a true edge may lower the metric),
//! ties counting one half. 1 means every true edge outranks every other edge, 0.5 is chance.
//! (MIB's own AUROC thresholds the scores at its ten circuit sizes and integrates the resulting
//! ROC points with trapezoids; that is a coarser estimate of the same area.)

use serde::{Deserialize, Serialize};

use super::mib;
use crate::error::{Error, Result};
use crate::methods::edges::{EdgeGraph, Receiver, Sender};
use crate::model::Model;

/// How well the scores pick out the true circuit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroundTruthScore {
    /// The file the true circuit came from.
    pub file: String,
    /// Edges of the graph in the true circuit.
    pub true_edges: usize,
    /// AUROC of |mean edge score| against the true edges.
    pub edge_auroc: f64,
    /// Components (heads and MLPs) at either end of a true edge.
    pub true_nodes: usize,
    /// Components in the graph.
    pub n_nodes: usize,
    /// AUROC of each component's score (the sum of |mean score| over the edges it sends and
    /// receives) against the true components; absent when every component or none is true.
    pub node_auroc: Option<f64>,
    /// The true edges' lowest rank by |mean score| (1 is the best-scored edge): the size of the
    /// smallest top-k circuit that holds the whole true circuit.
    pub worst_true_rank: usize,
}

/// The Mann–Whitney AUROC of `scores` against `labels`, ties counting one half; `None` when
/// either class is empty.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n_pos = labels.iter().filter(|&&l| l).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // U = Σ average ranks of the positives − n_pos (n_pos + 1) / 2.
    let rank_sum: f64 = super::ranks(scores).iter().zip(labels).filter(|(_, &l)| l).map(|(r, _)| r).sum();
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// The components (heads, MLPs) an edge joins: its sender's and its receiver's (a key/value
/// input belongs to every query head of its group), as indices of `components`.
fn ends(model: &Model, graph: &EdgeGraph, e: usize, components: &[Sender]) -> Vec<usize> {
    let (i, j) = graph.edges[e];
    let group = model.config().group_size();
    let pos = |s: Sender| components.iter().position(|&c| c == s);
    let mut out: Vec<usize> = pos(graph.senders[i]).into_iter().collect();
    let heads = |l: usize, hs: std::ops::Range<usize>| hs.filter_map(move |h| pos(Sender::Head(crate::methods::Head { layer: l, head: h })));
    match graph.receivers[j] {
        Receiver::Q(h) => out.extend(heads(h.layer, h.head..h.head + 1)),
        Receiver::K(h) | Receiver::V(h) => out.extend(heads(h.layer, h.head * group..(h.head + 1) * group)),
        Receiver::Mlp(l) => out.extend(pos(Sender::Mlp(l))),
        Receiver::Logits => {}
    }
    out
}

/// Reads the true circuit from `path` (MIB's circuit JSON or a list of edge names).
pub fn read(model: &Model, graph: &EdgeGraph, path: &str) -> Result<Vec<bool>> {
    let text = crate::model::load::read_json_text(std::path::Path::new(path), 1 << 30)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{path}: not JSON ({e})")))?;
    let truth = mib::circuit_edges(model, graph, &value, path)?;
    let n = truth.iter().filter(|&&t| t).count();
    if n == 0 || n == truth.len() {
        return Err(Error::Invalid(format!("{path}: {n} of the {} edges are in the circuit; a ground truth separates some edges from the others", truth.len())));
    }
    Ok(truth)
}

/// `scores` (mean edge scores in `graph`'s order) against the true edges `truth`.
pub fn score(model: &Model, graph: &EdgeGraph, scores: &[f32], truth: &[bool], file: &str) -> GroundTruthScore {
    let abs: Vec<f64> = scores.iter().map(|s| (*s as f64).abs()).collect();
    let edge_auroc = auroc(&abs, truth).unwrap_or(f64::NAN);
    // The heads and MLPs that send along some edge (an attention-only model's MLPs do not).
    let sends: std::collections::HashSet<usize> = graph.edges.iter().map(|&(i, _)| i).collect();
    let components: Vec<Sender> = graph.senders.iter().enumerate().filter(|(i, s)| !matches!(s, Sender::Embed) && sends.contains(i)).map(|(_, s)| *s).collect();
    let (mut node_score, mut node_true) = (vec![0f64; components.len()], vec![false; components.len()]);
    for e in 0..graph.edges.len() {
        for c in ends(model, graph, e, &components) {
            node_score[c] += abs[e];
            node_true[c] |= truth[e];
        }
    }
    let order = super::ranking(scores, true);
    let worst_true_rank = order.iter().rposition(|&e| truth[e]).map_or(0, |r| r + 1);
    GroundTruthScore {
        file: file.to_string(),
        true_edges: truth.iter().filter(|&&t| t).count(),
        edge_auroc,
        true_nodes: node_true.iter().filter(|&&t| t).count(),
        n_nodes: components.len(),
        node_auroc: auroc(&node_score, &node_true),
        worst_true_rank,
    }
}

#[cfg(test)]
mod tests {
    use super::auroc;

    #[test]
    fn auroc_is_the_mann_whitney_statistic() {
        assert_eq!(auroc(&[3.0, 2.0, 1.0, 0.0], &[true, true, false, false]), Some(1.0));
        assert_eq!(auroc(&[0.0, 1.0, 2.0, 3.0], &[true, true, false, false]), Some(0.0));
        // One tie between a positive and a negative counts one half: (1 + 0.5) / 2.
        assert_eq!(auroc(&[2.0, 1.0, 1.0], &[true, true, false]), Some(0.75));
        assert_eq!(auroc(&[1.0, 1.0], &[true, true]), None);
        // By brute force over pairs.
        let s = [0.3, 0.1, 0.7, 0.7, 0.2, 0.9, 0.0, 0.3];
        let l = [true, false, true, false, false, true, false, true];
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in 0..s.len() {
            for j in 0..s.len() {
                if l[i] && !l[j] {
                    pairs += 1.0;
                    wins += if s[i] > s[j] { 1.0 } else if s[i] == s[j] { 0.5 } else { 0.0 };
                }
            }
        }
        assert!((auroc(&s, &l).unwrap() - wins / pairs).abs() < 1e-12);
    }
}
