//! Attribution graphs checked against the real forward pass of glassbox's engine, made linear
//! by hooks: every attention pattern and norm scale replaced by the prompt's own, every MLP
//! output replaced by the replacement model's (features + b_dec + error). In that model
//!   - adding a source's vector once more changes each target by exactly its edge `A[t, s]`;
//!   - each target equals the sum of its incoming edges plus what the constants give (the run
//!     with every source removed);
//!   - the replacement model reproduces the real logits.
//!
//! On a LLaMA-like (RMSNorm, GQA, rotary) and a GPT-2-like (LayerNorm with biases, learned
//! positions) and a Gemma-3-like (attention post-norms, whose scale closures freeze here; query
//! and key norms, a sliding window) tiny model, with a random JumpReLU transcoder set written in circuit-tracer's
//! layout and read back through the loader.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use glassbox::methods::graph::{full_graph, graph, GraphOptions, GraphTarget};
use glassbox::model::{Action, Batch, HookPoint, Hooks, Intervention, Model};
use glassbox::sae::set::TranscoderSet;
use glassbox::methods::Prompt;

/// A deterministic uniform in [-1, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| self.next() * scale).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
    }
}

/// A fresh folder under the system's temporary folder.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("glassbox-graph-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random JumpReLU transcoder set for `model` (reading `ln2.hook_normalized`, writing `hook_mlp_out`).
fn random_set(model: &Model, dir: &Path, d_sae: usize, seed: u64) -> TranscoderSet {
    let d = model.config().d_model;
    let mut rng = Lcg(seed);
    let mut files = Vec::new();
    for l in 0..model.config().n_layers {
        let mut t = HashMap::new();
        t.insert("W_enc".to_string(), rng.tensor(&[d_sae, d], 0.5));
        t.insert("b_enc".to_string(), rng.tensor(&[d_sae], 0.5));
        t.insert("W_dec".to_string(), rng.tensor(&[d_sae, d], 0.3));
        t.insert("b_dec".to_string(), rng.tensor(&[d], 0.1));
        t.insert("activation_function.threshold".to_string(), (rng.tensor(&[d_sae], 0.5).abs().unwrap() * 0.5).unwrap());
        let f = format!("layer_{l}.safetensors");
        candle_core::safetensors::save(&t, dir.join(&f)).unwrap();
        files.push(f);
    }
    let text = TranscoderSet::config_text(model.name(), "ln2.hook_normalized", "hook_mlp_out", &files, &serde_json::json!({}));
    std::fs::write(dir.join("config.yaml"), text).unwrap();
    TranscoderSet::load(dir).unwrap()
}

/// The clean run's frozen quantities.
struct Clean {
    cache: HashMap<HookPoint, Tensor>,
    /// Each layer's attention post-norm scale, where the model has one.
    post_scales: Vec<Option<Tensor>>,
}

fn clean(model: &Model, tokens: &[u32]) -> Clean {
    let mut points = vec![HookPoint::LnFinalScale, HookPoint::Embed];
    for l in 0..model.config().n_layers {
        points.extend([HookPoint::Pattern(l), HookPoint::Ln1Scale(l), HookPoint::Ln2Scale(l), HookPoint::MlpOut(l), HookPoint::Ln2Normalized(l), HookPoint::Z(l)]);
    }
    let out = model.forward(&Batch::new(&[tokens.to_vec()]).unwrap(), &Hooks::new().cache(points.clone())).unwrap();
    let post_scales = (0..model.config().n_layers).map(|l| model.attn_post_scale(l, out.cache.get(HookPoint::Z(l)).unwrap()).unwrap()).collect();
    Clean { cache: points.iter().map(|&p| (p, out.cache.get(p).unwrap().clone())).collect(), post_scales }
}

/// What the linearised model computes with its MLP outputs and embeddings changed:
/// per layer the `[n, d]` transcoder inputs, and the last position's logits.
fn linear_run(model: &Arc<Model>, tokens: &[u32], c: &Clean, mlp_out: &[Tensor], embed: &Tensor) -> (Vec<Vec<Vec<f32>>>, Vec<f32>) {
    let mut hooks = Hooks::new().intervene(Intervention::new(HookPoint::LnFinalScale, Action::Replace(c.cache[&HookPoint::LnFinalScale].clone())));
    hooks = hooks.intervene(Intervention::new(HookPoint::Embed, Action::Replace(embed.clone())));
    let n_layers = model.config().n_layers;
    for (l, out) in mlp_out.iter().enumerate() {
        for p in [HookPoint::Pattern(l), HookPoint::Ln1Scale(l), HookPoint::Ln2Scale(l)] {
            hooks = hooks.intervene(Intervention::new(p, Action::Replace(c.cache[&p].clone())));
        }
        hooks = hooks.intervene(Intervention::new(HookPoint::MlpOut(l), Action::Replace(out.clone())));
        if let Some(scale) = c.post_scales[l].clone() {
            // The attention post-norm with its scale frozen: the heads' results (z · W_O through
            // the frozen post-norm, the model's readout) replace the hook's value.
            let z: Arc<Mutex<Option<Tensor>>> = Arc::default();
            let keep = z.clone();
            hooks = hooks.hook(HookPoint::Z(l), move |t, _| {
                *keep.lock().unwrap() = Some(t.clone());
                Ok(t.clone())
            });
            let m = model.clone();
            hooks = hooks.hook(HookPoint::AttnOut(l), move |t, _| {
                let z = z.lock().unwrap().clone().expect("hook_z runs before hook_attn_out");
                let (b, p, _) = t.dims3()?;
                let heads = m.head_results(l, &z, Some(&scale))?.sum(2)?;
                Ok((heads + m.attn_bias_result(l, (b, p), Some(&scale))?)?)
            });
        }
    }
    let hooks = hooks.cache((0..n_layers).map(HookPoint::Ln2Normalized));
    let out = model.forward(&Batch::new(&[tokens.to_vec()]).unwrap(), &hooks).unwrap();
    let x = (0..n_layers).map(|l| out.cache.get(HookPoint::Ln2Normalized(l)).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap()).collect();
    (x, out.last_logits().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

/// Each target's value in a linear run: features' pre-activations (bias excluded), then the
/// targets' logit readings.
fn target_values(set: &TranscoderSet, g: &glassbox::methods::graph::FullGraph, run: &(Vec<Vec<Vec<f32>>>, Vec<f32>), logit_reads: &[Vec<f32>]) -> Vec<f64> {
    let mut v: Vec<f64> = g
        .features
        .iter()
        .map(|&(l, p, f, _)| {
            let w = set.transcoders[l].w_enc.narrow(1, f, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            dot(&w, &run.0[l][p])
        })
        .collect();
    v.extend(logit_reads.iter().map(|r| dot(r, &run.1)));
    v
}

fn check_family(name: &str, target: GraphTarget) {
    let model = Arc::new(common::load_tiny(name));
    let dir = scratch(&format!("{name}-{target}"));
    let set = random_set(&model, &dir, 48, 7);
    let prompt = Prompt::new(&model, "When Mary and John went to the store, John gave a drink to", " Mary", " John").unwrap();
    let o = GraphOptions { target, max_feature_nodes: 0, ..Default::default() };
    let g = full_graph(&model, &set, &prompt, &o).unwrap();
    let ly = g.layout;
    assert!(ly.features > 20, "{name}: only {} active features", ly.features);
    let tokens = &prompt.tokens;
    let n = tokens.len();
    let c = clean(&model, tokens);
    let d = model.config().d_model;

    // The replacement model's MLP outputs: features + b_dec + error = the real output.
    let real_mlp: Vec<Tensor> = (0..model.config().n_layers).map(|l| c.cache[&HookPoint::MlpOut(l)].clone()).collect();
    let embed = c.cache[&HookPoint::Embed].clone();
    let base = linear_run(&model, tokens, &c, &real_mlp, &embed);
    let real = model.forward(&Batch::new(std::slice::from_ref(tokens)).unwrap(), &Hooks::new().last_logits_only()).unwrap().last_logits().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let worst = real.iter().zip(&base.1).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-4, "{name}: the frozen replacement model's logits differ from the real ones by {worst}");

    // What each logit target reads from the logits.
    let v = model.config().d_vocab;
    let logit_reads: Vec<Vec<f32>> = g
        .targets
        .iter()
        .map(|t| {
            let mut r = vec![0f32; v];
            match target {
                GraphTarget::LogitDiff => {
                    r[prompt.correct as usize] = 1.0;
                    r[prompt.incorrect as usize] = -1.0;
                }
                GraphTarget::Salient => {
                    r.iter_mut().for_each(|x| *x = -1.0 / v as f32);
                    r[t.id as usize] += 1.0;
                }
            }
            r
        })
        .collect();
    let base_values = target_values(&set, &g, &base, &logit_reads);
    let rows: Vec<usize> = (0..ly.features).chain(g.adjacency.n - ly.logits..g.adjacency.n).collect();
    let weight = |t: usize, s: usize| g.adjacency.rows[t].iter().find(|e| e.0 as usize == s).map_or(0.0, |e| f64::from(e.1));

    // Sources: a few features, errors and tokens; each added once more.
    let mut sources: Vec<(usize, Tensor, Tensor)> = Vec::new(); // (node, mlp_out, embed)
    let zero = Tensor::zeros((1, n, d), DType::F32, &Device::Cpu).unwrap();
    let at = |p: usize, vec: &[f32]| -> Tensor {
        let mut data = vec![0f32; n * d];
        data[p * d..(p + 1) * d].copy_from_slice(vec);
        Tensor::from_vec(data, (1, n, d), &Device::Cpu).unwrap()
    };
    for k in (0..ly.features).step_by((ly.features / 6).max(1)) {
        let (l, p, f, a) = g.features[k];
        let dec = set.transcoders[l].w_dec.narrow(0, f, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scaled: Vec<f32> = dec.iter().map(|x| x * a).collect();
        let mut mlp = real_mlp.clone();
        mlp[l] = (&mlp[l] + at(p, &scaled)).unwrap();
        sources.push((k, Tensor::stack(&mlp, 0).unwrap(), embed.clone()));
    }
    // errors: the real output minus the transcoder's, at layer 0 position 3 and the last layer's last position
    for (l, p) in [(0usize, 3usize), (model.config().n_layers - 1, n - 1)] {
        let t = &set.transcoders[l];
        let x = c.cache[&HookPoint::Ln2Normalized(l)].squeeze(0).unwrap();
        let recon = t.output(&x, &t.encode(&x).unwrap()).unwrap();
        let err = (real_mlp[l].squeeze(0).unwrap() - recon).unwrap().narrow(0, p, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut mlp = real_mlp.clone();
        mlp[l] = (&mlp[l] + at(p, &err)).unwrap();
        sources.push((ly.features + l * n + p, Tensor::stack(&mlp, 0).unwrap(), embed.clone()));
    }
    for p in [0usize, 2, n - 1] {
        let e = embed.squeeze(0).unwrap().narrow(0, p, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        sources.push((ly.features + ly.errors + p, Tensor::stack(&real_mlp, 0).unwrap(), (&embed + at(p, &e)).unwrap()));
    }
    let _ = zero;
    for (s, mlp, emb) in &sources {
        let mlp: Vec<Tensor> = (0..model.config().n_layers).map(|l| mlp.get(l).unwrap()).collect();
        let run = linear_run(&model, tokens, &c, &mlp, emb);
        let values = target_values(&set, &g, &run, &logit_reads);
        for (k, &t) in rows.iter().enumerate() {
            let effect = values[k] - base_values[k];
            let w = weight(t, *s);
            assert!((effect - w).abs() <= 1e-4 * (1.0 + effect.abs()), "{name}: edge {s} → {t}: graph {w}, linearised model {effect}");
        }
    }

    // Completeness: every target = its incoming edges + the constants (the run without sources).
    let mut no_sources = Vec::new();
    for (l, mlp) in real_mlp.iter().enumerate() {
        let t = &set.transcoders[l];
        // keep position 0's output (a constant) and b_dec elsewhere
        let b = t.b_dec.to_vec1::<f32>().unwrap();
        let first = mlp.squeeze(0).unwrap().narrow(0, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut data = Vec::with_capacity(n * d);
        data.extend_from_slice(&first);
        for _ in 1..n {
            data.extend_from_slice(&b);
        }
        no_sources.push(Tensor::from_vec(data, (1, n, d), &Device::Cpu).unwrap());
    }
    let constants = target_values(&set, &g, &linear_run(&model, tokens, &c, &no_sources, &embed.zeros_like().unwrap()), &logit_reads);
    for (k, &t) in rows.iter().enumerate() {
        let sum: f64 = g.adjacency.rows[t].iter().map(|e| f64::from(e.1)).sum();
        let want = base_values[k];
        assert!((sum + constants[k] - want).abs() <= 1e-4 * (1.0 + want.abs()), "{name}: target {t}: edges {sum} + constants {} ≠ {want}", constants[k]);
    }
}

#[test]
fn edges_are_the_direct_effects_of_the_linearised_llama() {
    check_family("tiny-llama", GraphTarget::LogitDiff);
    check_family("tiny-llama", GraphTarget::Salient);
}

#[test]
fn edges_are_the_direct_effects_of_the_linearised_gpt2() {
    check_family("tiny-gpt2", GraphTarget::LogitDiff);
}

#[test]
fn edges_are_the_direct_effects_of_the_linearised_gemma3() {
    check_family("tiny-gemma3", GraphTarget::LogitDiff);
}

#[test]
fn the_pruned_graph_is_in_the_frontend_layout() {
    let model = common::load_tiny("tiny-llama");
    let dir = scratch("frontend");
    let set = random_set(&model, &dir, 48, 11);
    let prompt = Prompt::new(&model, "When Mary and John went to the store, John gave a drink to", " Mary", " John").unwrap();
    let g = graph(&model, &set, &prompt, &GraphOptions::default()).unwrap();
    let s = &g.glassbox;
    assert!(s.replacement_score > 0.0 && s.replacement_score <= 1.0, "replacement {}", s.replacement_score);
    assert!(s.completeness_score > 0.0 && s.completeness_score <= 1.0, "completeness {}", s.completeness_score);
    let ids: std::collections::HashSet<&str> = g.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert!(g.links.iter().all(|l| ids.contains(l.source.as_str()) && ids.contains(l.target.as_str())));
    let n = prompt.tokens.len();
    assert_eq!(g.nodes.iter().filter(|n| n.feature_type == "embedding").count(), n, "every token is a node");
    assert_eq!(g.nodes.iter().filter(|n| n.feature_type == "logit").count(), 1);
    let v = serde_json::to_value(&g).unwrap();
    for k in ["metadata", "qParams", "nodes", "links"] {
        assert!(v.get(k).is_some(), "{k}");
    }
    assert_eq!(v["metadata"]["schema_version"], 1);
}

#[test]
fn a_frozen_intervention_moves_the_logit_difference_by_the_graphs_edge() {
    use glassbox::methods::graph::intervene::{feature_intervention, InterventionOptions};
    let model = common::load_tiny("tiny-llama");
    let set = TranscoderSet::load(&common::fixtures().join("transcoders/tiny-llama")).unwrap();
    let prompt = Prompt::new(&model, "When Mary and John went to the store, John gave a drink to", " Mary", " John").unwrap();
    let g = graph(&model, &set, &prompt, &GraphOptions { max_feature_nodes: 0, ..Default::default() }).unwrap();
    let full = full_graph(&model, &set, &prompt, &GraphOptions { max_feature_nodes: 0, ..Default::default() }).unwrap();
    let mut checked = 0;
    for (k, &(l, p, f, _)) in full.features.iter().enumerate().filter(|(_, x)| x.1 + 1 == prompt.tokens.len()) {
        let edge = full.adjacency.rows[full.adjacency.n - 1].iter().find(|e| e.0 as usize == k).map_or(0.0, |e| e.1);
        for scale in [0.0f32, 3.0] {
            let o = InterventionOptions { layer: l, feature: f, position: Some(p), scale, frozen: true };
            let r = feature_intervention(&model, &set, &prompt, &o).unwrap();
            let want = (scale - 1.0) * edge;
            assert!((r.effect - want).abs() <= 1e-4 * (1.0 + want.abs()), "{}: frozen effect {} against the graph's {want}", r.node_id, r.effect);
            assert!((r.predicted_by_graph - want).abs() <= 1e-4 * (1.0 + want.abs()));
            checked += 1;
        }
        let free = feature_intervention(&model, &set, &prompt, &InterventionOptions { layer: l, feature: f, position: Some(p), scale: 0.0, frozen: false }).unwrap();
        assert!(free.effect.is_finite());
    }
    assert!(checked >= 4, "only {checked} interventions at the last position");
    let _ = g;
    let err = feature_intervention(&model, &set, &prompt, &InterventionOptions { layer: 0, feature: 0, position: Some(0), ..Default::default() }).unwrap_err().to_string();
    assert!(err.contains("position 0"), "{err}");
}
