//! Influence, pruning and the graph's scores, as circuit-tracer 0.5.0 defines them
//! (`graph.py`: `normalize_matrix`, `compute_influence`, `find_threshold`, `prune_graph`,
//! `compute_graph_scores`; `attribute.py`: `compute_partial_influences`), on an adjacency kept
//! as sparse rows: `rows[t]` holds the non-zero `(source, weight)` entries of target `t`
//! (`A[t, s]`: rows are targets, columns sources). Only features and logits have rows.

/// A sparse adjacency over `n` nodes: one row of `(column, weight)` per node.
#[derive(Debug, Clone, Default)]
pub struct Sparse {
    /// The number of nodes (rows and columns).
    pub n: usize,
    /// Each node's incoming edges, by increasing column.
    pub rows: Vec<Vec<(u32, f32)>>,
}

impl Sparse {
    /// Each row's absolute values divided by their sum (at least 1e-10): `normalize_matrix`.
    pub fn normalized(&self) -> Sparse {
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let sum: f64 = r.iter().map(|&(_, w)| f64::from(w.abs())).sum::<f64>().max(1e-10);
                r.iter().map(|&(c, w)| (c, (f64::from(w.abs()) / sum) as f32)).collect()
            })
            .collect();
        Sparse { n: self.n, rows }
    }

    /// `v · A`.
    fn left_times(&self, v: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.n];
        for (t, row) in self.rows.iter().enumerate() {
            if v[t] != 0.0 {
                for &(c, w) in row {
                    out[c as usize] += v[t] * f64::from(w);
                }
            }
        }
        out
    }

    /// `w · (A + A² + …)`, summed until the product is exactly zero (the graph has no cycles:
    /// edges run from lower layers and earlier positions). `compute_influence`.
    pub fn influence(&self, w: &[f64]) -> Vec<f64> {
        let mut cur = self.left_times(w);
        let mut total = cur.clone();
        for _ in 0..1000 {
            if cur.iter().all(|&x| x == 0.0) {
                break;
            }
            cur = self.left_times(&cur);
            total.iter_mut().zip(&cur).for_each(|(t, c)| *t += c);
        }
        total
    }
}

/// The score at which the largest scores reach `threshold` of the total: `find_threshold`
/// (the first index where the cumulative share reaches it, at most the last).
pub fn find_threshold(scores: &[f64], threshold: f64) -> f64 {
    let mut s: Vec<f64> = scores.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    if s.is_empty() {
        return 0.0;
    }
    let total: f64 = s.iter().sum();
    let mut cum = 0.0;
    for (i, &x) in s.iter().enumerate() {
        cum += x;
        if total > 0.0 && cum / total >= threshold {
            return s[i];
        }
    }
    *s.last().unwrap_or(&0.0)
}

/// What pruning keeps.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// Kept nodes.
    pub node_mask: Vec<bool>,
    /// Kept edges `(target, source)`, by target then source.
    pub edges: Vec<(u32, u32)>,
    /// Each node's cumulative share of influence in order of influence (smaller = more
    /// influential): circuit-tracer's `cumulative_scores`.
    pub cumulative: Vec<f64>,
}

/// The layout of the nodes: `[features | errors | tokens | logits]`.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Feature nodes.
    pub features: usize,
    /// Error nodes (layers × positions).
    pub errors: usize,
    /// Token nodes.
    pub tokens: usize,
    /// Logit nodes.
    pub logits: usize,
}

impl Layout {
    fn n(&self) -> usize {
        self.features + self.errors + self.tokens + self.logits
    }

    /// The logit weights over all nodes.
    fn logit_weights(&self, weights: &[f64]) -> Vec<f64> {
        let mut w = vec![0.0; self.n()];
        w[self.n() - self.logits..].copy_from_slice(weights);
        w
    }
}

/// `prune_graph(graph, node_threshold, edge_threshold)`.
pub fn prune(a: &Sparse, layout: Layout, logit_weights: &[f64], node_threshold: f64, edge_threshold: f64) -> Pruned {
    let n = layout.n();
    let lw = layout.logit_weights(logit_weights);
    let node_influence = a.normalized().influence(&lw);
    let thr = find_threshold(&node_influence, node_threshold);
    let mut node_mask: Vec<bool> = node_influence.iter().map(|&x| x >= thr).collect();
    let always = n - layout.logits - layout.tokens;
    node_mask[always..].iter_mut().for_each(|m| *m = true);

    // The adjacency with pruned nodes' rows and columns removed.
    let pruned = Sparse {
        n,
        rows: a.rows.iter().enumerate().map(|(t, r)| if node_mask[t] { r.iter().copied().filter(|&(c, _)| node_mask[c as usize]).collect() } else { Vec::new() }).collect(),
    };
    let norm = pruned.normalized();
    let mut infl = norm.influence(&lw);
    infl.iter_mut().zip(&lw).for_each(|(i, w)| *i += w);
    let infl = &infl;
    let scores: Vec<f64> = norm.rows.iter().enumerate().flat_map(|(t, r)| r.iter().map(move |&(_, w)| f64::from(w) * infl[t])).collect();
    let ethr = find_threshold(&scores, edge_threshold);
    let mut edges: Vec<Vec<(u32, bool)>> = norm.rows.iter().enumerate().map(|(t, r)| r.iter().map(|&(c, w)| (c, f64::from(w) * infl[t] >= ethr)).collect()).collect();

    loop {
        let mut has_out = vec![false; n];
        let mut has_in = vec![false; n];
        for (t, r) in edges.iter().enumerate() {
            for &(c, keep) in r {
                if keep {
                    has_out[c as usize] = true;
                    has_in[t] = true;
                }
            }
        }
        let before = node_mask.clone();
        for i in 0..always {
            node_mask[i] &= has_out[i];
        }
        for i in 0..layout.features {
            node_mask[i] &= has_in[i];
        }
        for (t, r) in edges.iter_mut().enumerate() {
            for e in r.iter_mut() {
                e.1 &= node_mask[t] && node_mask[e.0 as usize];
            }
        }
        if node_mask == before {
            break;
        }
    }
    let kept = edges.iter().enumerate().flat_map(|(t, r)| r.iter().filter(|e| e.1).map(move |e| (t as u32, e.0))).collect();

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| node_influence[j].total_cmp(&node_influence[i]));
    let total: f64 = node_influence.iter().sum();
    let mut cumulative = vec![0.0; n];
    let mut cum = 0.0;
    for &i in &order {
        cum += node_influence[i];
        cumulative[i] = if total > 0.0 { cum / total } else { 0.0 };
    }
    Pruned { node_mask, edges: kept, cumulative }
}

/// `compute_graph_scores`: the replacement score (the share of the tokens' influence in the
/// influence of tokens and errors) and the completeness score (the share of each node's
/// input that does not come from errors, weighted by the node's influence plus its logit
/// weight), both on the unpruned graph.
pub fn scores(a: &Sparse, layout: Layout, logit_weights: &[f64]) -> (f64, f64) {
    let lw = layout.logit_weights(logit_weights);
    let w = a.normalized();
    let infl = w.influence(&lw);
    let (e0, e1) = (layout.features, layout.features + layout.errors);
    let t1 = e1 + layout.tokens;
    let token: f64 = infl[e1..t1].iter().sum();
    let error: f64 = infl[e0..e1].iter().sum();
    let replacement = if token + error > 0.0 { token / (token + error) } else { 0.0 };
    let (mut num, mut den) = (0.0, 0.0);
    for (t, row) in w.rows.iter().enumerate() {
        let from_errors: f64 = row.iter().filter(|&&(c, _)| (c as usize) >= e0 && (c as usize) < e1).map(|&(_, x)| f64::from(x)).sum();
        let out = infl[t] + lw[t];
        num += (1.0 - from_errors) * out;
        den += out;
    }
    (replacement, if den > 0.0 { num / den } else { 0.0 })
}

/// `compute_partial_influences`: the influence on the logits of every node, through the rows
/// computed so far (`normed[i]`, already normalised as `Sparse::normalized` does, is node
/// `row_nodes[i]`'s), at most 128 steps.
pub fn partial_influence(normed: &[Vec<(u32, f32)>], row_nodes: &[usize], n: usize, logit_start: usize, logit_weights: &[f64]) -> Vec<f64> {
    let mut prod = vec![0.0; n];
    prod[logit_start..logit_start + logit_weights.len()].copy_from_slice(logit_weights);
    let mut infl = vec![0.0; n];
    for _ in 0..128 {
        let mut next = vec![0.0; n];
        for (i, row) in normed.iter().enumerate() {
            let p = prod[row_nodes[i]];
            if p != 0.0 {
                for &(c, w) in row {
                    next[c as usize] += p * f64::from(w);
                }
            }
        }
        if next.iter().all(|&x| x == 0.0) {
            break;
        }
        infl.iter_mut().zip(&next).for_each(|(a, b)| *a += b);
        prod = next;
    }
    infl
}

/// One row normalised as `Sparse::normalized` normalises each.
pub fn normalized_row(r: &[(u32, f32)]) -> Vec<(u32, f32)> {
    Sparse { n: 0, rows: vec![r.to_vec()] }.normalized().rows.pop().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_where_the_cumulative_share_reaches_it() {
        assert_eq!(find_threshold(&[1.0, 5.0, 4.0], 0.5), 5.0);
        assert_eq!(find_threshold(&[1.0, 5.0, 4.0], 0.9), 4.0);
        assert_eq!(find_threshold(&[1.0, 5.0, 4.0], 1.0), 1.0);
    }

    #[test]
    fn influence_sums_the_powers_of_a_nilpotent_matrix() {
        // 0 ← 1 ← 2 (weights 0.5 and 2): influence of w = e0 is [0, 0.5, 1.0].
        let a = Sparse { n: 3, rows: vec![vec![(1, 0.5)], vec![(2, 2.0)], vec![]] };
        let i = a.influence(&[1.0, 0.0, 0.0]);
        assert!((i[1] - 0.5).abs() < 1e-12 && (i[2] - 1.0).abs() < 1e-12 && i[0] == 0.0);
    }
}
