//! The same attribution graph as circuit-tracer 0.5.0: `scripts/graph_reference.py` ran
//! circuit-tracer's own `attribute`, `prune_graph`, `compute_graph_scores` and
//! `create_graph_files` (TransformerLens backend, CPU) on a tiny LLaMA-like model with a random
//! JumpReLU skip-transcoder set, and saved the model, the set and its results in
//! tests/fixtures/graph/tiny-llama-ct. glassbox loads the same files and must give the same
//! nodes in the same order, the same adjacency, scores, pruning and frontend nodes.

mod common;

use glassbox::methods::graph::{full_graph, graph, prune, GraphOptions, GraphTarget};
use glassbox::methods::Prompt;
use glassbox::sae::set::TranscoderSet;
use glassbox::Model;
use serde_json::Value;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn the_graph_is_circuit_tracers() {
    let dir = common::fixtures().join("graph/tiny-llama-ct");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let model = Model::load(&dir).unwrap();
    let set = TranscoderSet::load(&dir.join("transcoders")).unwrap();
    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let tokens = ids(&r["tokens"]);
    let targets = ids(&r["logit_targets"]);
    let prompt = Prompt { tokens, correct: targets[0], incorrect: targets[1] };
    let o = GraphOptions { target: GraphTarget::Salient, max_n_logits: 10, desired_logit_prob: 0.95, max_feature_nodes: 0, ..Default::default() };
    let g = full_graph(&model, &set, &prompt, &o).unwrap();

    // Targets: the same tokens in the same order, the same probabilities.
    assert_eq!(g.targets.iter().map(|t| t.id).collect::<Vec<_>>(), targets, "logit targets");
    for (t, p) in g.targets.iter().zip(r["logit_probabilities"].as_array().unwrap()) {
        assert!(close(f64::from(t.probability), p.as_f64().unwrap(), 1e-4), "probability of {}: {} against {p}", t.id, t.probability);
    }
    // Features: the same (layer, position, feature) in the same order, the same activations.
    let want: Vec<(usize, usize, usize)> = r["active_features"].as_array().unwrap().iter().map(|f| {
        let f = f.as_array().unwrap();
        (f[0].as_u64().unwrap() as usize, f[1].as_u64().unwrap() as usize, f[2].as_u64().unwrap() as usize)
    }).collect();
    let got: Vec<(usize, usize, usize)> = g.features.iter().map(|&(l, p, f, _)| (l, p, f)).collect();
    assert_eq!(got, want, "active features");
    for (f, a) in g.features.iter().zip(r["activation_values"].as_array().unwrap()) {
        assert!(close(f64::from(f.3), a.as_f64().unwrap(), 1e-4), "activation of {f:?}: against {a}");
    }
    // The adjacency, entry by entry.
    let a = r["adjacency"].as_array().unwrap();
    assert_eq!(a.len(), g.adjacency.n, "nodes");
    let mut worst = 0f64;
    for (t, row) in a.iter().enumerate() {
        let mut dense = vec![0f64; g.adjacency.n];
        for &(c, w) in &g.adjacency.rows[t] {
            dense[c as usize] = f64::from(w);
        }
        for (s, want) in row.as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            worst = worst.max((dense[s] - want).abs() / (1.0 + want.abs()));
            assert!(close(dense[s], want, 1e-4), "A[{t}, {s}]: glassbox {} against circuit-tracer {want}", dense[s]);
        }
    }
    eprintln!("largest relative difference of the adjacency: {worst:.2e}");
    // Scores and pruning.
    let weights: Vec<f64> = g.targets.iter().map(|t| f64::from(t.weight)).collect();
    let (replacement, completeness) = prune::scores(&g.adjacency, g.layout, &weights);
    assert!(close(replacement, r["replacement_score"].as_f64().unwrap(), 1e-4), "replacement {replacement} against {}", r["replacement_score"]);
    assert!(close(completeness, r["completeness_score"].as_f64().unwrap(), 1e-4), "completeness {completeness} against {}", r["completeness_score"]);
    let p = prune::prune(&g.adjacency, g.layout, &weights, 0.8, 0.98);
    let mask: Vec<bool> = r["node_mask"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect();
    assert_eq!(p.node_mask, mask, "pruning's node mask");
    for (i, (c, w)) in p.cumulative.iter().zip(r["cumulative_scores"].as_array().unwrap()).enumerate() {
        assert!(close(*c, w.as_f64().unwrap(), 1e-4), "cumulative score of node {i}: {c} against {w}");
    }
    assert_eq!(p.edges.len() as u64, r["n_links"].as_u64().unwrap(), "pruning's kept edges");
    // The frontend's nodes.
    let fg = graph(&model, &set, &prompt, &o).unwrap();
    let want_ids: Vec<&str> = r["frontend_node_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let got_ids: Vec<&str> = fg.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(got_ids, want_ids, "the frontend's nodes");
    assert_eq!(fg.links.len(), r["frontend_links"].as_array().unwrap().len(), "the frontend's links");
}
