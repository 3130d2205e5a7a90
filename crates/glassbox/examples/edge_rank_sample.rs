//! How well EAP and EAP-IG rank edges against exact single-edge patching on a real model,
//! where exact scores of every edge cost one patched run each (70,651 on SmolLM2): Spearman's
//! ρ over a uniform random sample of edges, signed and absolute, with the time each part took.
//!
//! cargo run --release -p glassbox --example edge_rank_sample -- MODEL [N_EDGES] [SEED]
//! (MODEL: a GGUF file or model folder; the IOI prompt, " Mary" against " John".)

use std::time::Instant;

use glassbox::methods::attribution::Method;
use glassbox::methods::edges::{all_edge_scores, EdgeGraph, EdgeOptions};
use glassbox::methods::evaluate::{circuit_metrics, spearman};
use glassbox::methods::{Contrast, Metric, Scorer};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

fn main() -> glassbox::Result<()> {
    glassbox::threads::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or_else(|| glassbox::Error::Invalid("usage: edge_rank_sample MODEL [N_EDGES] [SEED]".into()))?;
    let n: usize = args.get(2).map_or(Ok(1000), |s| s.parse()).map_err(|_| glassbox::Error::Invalid("N_EDGES is a count".into()))?;
    let seed: u64 = args.get(3).map_or(Ok(0), |s| s.parse()).map_err(|_| glassbox::Error::Invalid("SEED is a number".into()))?;
    let model = glassbox::Model::load(std::path::Path::new(path))?;
    let contrast = Contrast::new(&model, IOI, " Mary", " John", None)?;
    let graph = EdgeGraph::of(&model);
    let total = graph.edges.len();

    let t = Instant::now();
    let (eap, _, _) = all_edge_scores(&model, &contrast, &EdgeOptions::default())?;
    let t_eap = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (eap_ig, _, _) = all_edge_scores(&model, &contrast, &EdgeOptions { method: Method::IntegratedGradients, ..Default::default() })?;
    let t_ig = t.elapsed().as_secs_f64();

    // A uniform sample of edges (partial Fisher–Yates).
    let mut rng = glassbox::rng::Rng::new(seed);
    let mut order: Vec<usize> = (0..total).collect();
    let n = n.min(total);
    for i in 0..n {
        let j = i + rng.below(total - i);
        order.swap(i, j);
    }
    let sample = &order[..n];

    // Exact: m(N) − m(N − e) for each sampled edge, the circuits batched as evaluate does.
    let t = Instant::now();
    let scorer = Scorer::new(&model, &contrast, &Metric::default())?;
    let full = vec![true; total];
    let whole = circuit_metrics(&model, &contrast, &scorer, &graph, &[full.as_slice()], &mut |_| {})?[0] as f64;
    let mut exact = Vec::with_capacity(n);
    for chunk in sample.chunks(64) {
        let circuits: Vec<Vec<bool>> = chunk
            .iter()
            .map(|&e| {
                let mut c = full.clone();
                c[e] = false;
                c
            })
            .collect();
        let refs: Vec<&[bool]> = circuits.iter().map(|c| c.as_slice()).collect();
        exact.extend(circuit_metrics(&model, &contrast, &scorer, &graph, &refs, &mut |_| {})?.into_iter().map(|m| whole - m as f64));
    }
    let t_exact = t.elapsed().as_secs_f64();

    let pick = |s: &[f32]| -> Vec<f64> { sample.iter().map(|&e| s[e] as f64).collect() };
    let abs = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| x.abs()).collect() };
    let (a, b) = (pick(&eap), pick(&eap_ig));
    let nonzero = exact.iter().filter(|x| x.abs() > 1e-6).count();
    println!("{} edges of {total}, seed {seed}; exact |score| > 1e-6 on {nonzero}", n);
    println!("Spearman ρ with exact (signed / absolute): EAP {:.3} / {:.3}; EAP-IG {:.3} / {:.3}", spearman(&a, &exact), spearman(&abs(&a), &abs(&exact)), spearman(&b, &exact), spearman(&abs(&b), &abs(&exact)));
    println!("time: EAP {t_eap:.1} s, EAP-IG {t_ig:.1} s (every edge); exact {t_exact:.1} s ({n} edges, {:.1} ms each)", 1e3 * t_exact / n as f64);
    Ok(())
}
