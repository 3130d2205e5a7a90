//! Attribution graphs (Ameisen et al. 2025, "Circuit Tracing"; circuit-tracer 0.5.0) over a
//! transcoder set: which features, at which layers and positions, cause a prediction.
//!
//! The prompt's local replacement model (`linear.rs`: every MLP replaced by its transcoder
//! plus an error node, attention patterns and norm scales frozen) is linear from its sources
//! to its targets. Nodes are, in this order: the active features (by layer, position,
//! feature; position 0 is never a source, as in circuit-tracer), one error node per layer and
//! position, one token node per position, and the target logits. `A[t, s]` is the direct
//! effect of source `s` on target `t`: on a feature, the change of its pre-activation
//! `W_enc[f]·x` (bias excluded); on a logit, the change of `logit − mean(logits)` (or of
//! `logit[correct] − logit[incorrect]` for the logit-difference target). Rows are computed by
//! batched backward passes from the targets (`Replacement::backward`), logits first, then
//! features in order of their influence on the logits so far (`max_feature_nodes`), never as a
//! dense matrix over all features. Pruning and the replacement and completeness scores follow
//! circuit-tracer's `graph.py` (`prune.rs`). The result is the JSON the attribution-graph
//! frontend (Neuronpedia's) reads: `metadata`, `qParams`, `nodes`, `links`, plus glassbox's
//! own summary under `glassbox`.

pub mod intervene;
mod linear;
pub mod prune;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inputs::Prompt;
use crate::model::Model;
use crate::sae::set::TranscoderSet;
use linear::{At, Replacement, Target};
use prune::{Layout, Sparse};

crate::choices! {
    /// What the graph explains.
    pub enum GraphTarget {
        /// `logit[correct] − logit[incorrect]` at the last position: one target node, weight 1.
        LogitDiff = "logit_diff" | "logit-diff",
        /// The most likely next tokens, until their probabilities reach `desired_logit_prob`
        /// (at most `max_n_logits`), each weighted by its probability, as circuit-tracer does.
        Salient = "salient",
    }
}

crate::options! {
    /// Options of `graph`.
    pub struct GraphOptions {
        /// What the graph explains: the logit difference of the two answers, or the salient next tokens.
        pub target: GraphTarget = GraphTarget::LogitDiff,
        /// Salient target: at most this many logits.
        pub max_n_logits: usize = 10,
        /// Salient target: logits are added in order of probability until they cover this much.
        pub desired_logit_prob: f32 = 0.95,
        /// At most this many feature nodes (chosen by their influence on the targets); 0 for all.
        pub max_feature_nodes: usize = 8192,
        /// Pruning keeps the nodes holding this share of the influence on the targets.
        pub node_threshold: f32 = 0.8,
        /// Pruning keeps the edges holding this share of the influence on the targets.
        pub edge_threshold: f32 = 0.98,
        /// Targets carried back together in one batched backward pass.
        pub batch_size: usize = 128,
    }
}

/// The frontend's view settings (`qParams`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct QParams {
    /// Pinned node ids.
    pub pinnedIds: Vec<String>,
    /// Supernodes.
    pub supernodes: Vec<Vec<String>>,
    /// `both`.
    pub linkType: String,
    /// The clicked node.
    pub clickedId: String,
    /// The subgraph's position.
    pub sg_pos: String,
}

/// What the graph is of (`metadata`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    /// The graph's name.
    pub slug: String,
    /// The transcoder set's name.
    pub scan: String,
    /// The transcoders' files (empty for a named set).
    pub transcoder_list: Vec<String>,
    /// Each prompt token as text.
    pub prompt_tokens: Vec<String>,
    /// The prompt.
    pub prompt: String,
    /// Pruning's node threshold.
    pub node_threshold: f32,
    /// The frontend's schema version (1).
    pub schema_version: u32,
}

/// A node as the frontend reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct Node {
    /// `{layer}_{feature}_{pos}`, `0_{layer}_{pos}` (error), `E_{token}_{pos}`, `{L+1}_{token}_{pos}` (logit).
    pub node_id: String,
    /// Features: cantor(layer, feature); errors −1; embeddings the position; logits the token id.
    pub feature: i64,
    /// The layer as text (`E` for embeddings, `L + 1` for logits).
    pub layer: String,
    /// The position.
    pub ctx_idx: usize,
    /// `cross layer transcoder`, `mlp reconstruction error`, `embedding` or `logit`.
    pub feature_type: String,
    /// A logit's probability.
    pub token_prob: f32,
    /// Whether this is the first target logit.
    pub is_target_logit: bool,
    /// Always 0.
    pub run_idx: u32,
    /// Always 0.
    pub reverse_ctx_idx: u32,
    /// The frontend's own id.
    pub jsNodeId: String,
    /// A label.
    pub clerp: String,
    /// The cumulative share of influence up to this node, in order of influence (smaller is
    /// more influential); none for logits.
    pub influence: Option<f32>,
    /// A feature's activation.
    pub activation: Option<f32>,
}

/// A kept edge: `weight` is `A[target, source]`, the direct effect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Link {
    /// The source's `node_id`.
    pub source: String,
    /// The target's `node_id`.
    pub target: String,
    /// The direct effect.
    pub weight: f32,
}

/// One target of the graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetLogit {
    /// The token as text (for the logit difference: `" Mary" − " John"`).
    pub token: String,
    /// The token id (the correct answer's for the logit difference).
    pub id: u32,
    /// Its probability at the last position.
    pub probability: f32,
    /// Its weight in the influence (its probability; 1 for the logit difference).
    pub weight: f32,
}

/// glassbox's summary of the graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The targets.
    pub targets: Vec<TargetLogit>,
    /// Share of the tokens' influence in that of tokens and errors (1: no error reaches the targets).
    pub replacement_score: f32,
    /// Share of the nodes' inputs, weighted by influence, that does not come from error nodes.
    pub completeness_score: f32,
    /// Active features (positions after the first).
    pub n_active_features: usize,
    /// Features whose incoming edges were computed (`max_feature_nodes`).
    pub n_selected_features: usize,
    /// Nodes of the unpruned graph.
    pub n_nodes: usize,
    /// Non-zero edges of the unpruned graph.
    pub n_edges: usize,
    /// Pruning's edge threshold.
    pub edge_threshold: f32,
    /// The layers.
    pub n_layers: usize,
}

/// An attribution graph, in the frontend's layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(non_snake_case)]
pub struct AttributionGraph {
    /// What it is of.
    pub metadata: Metadata,
    /// View settings.
    pub qParams: QParams,
    /// The kept nodes.
    pub nodes: Vec<Node>,
    /// The kept edges.
    pub links: Vec<Link>,
    /// Scores and counts.
    pub glassbox: Summary,
}

/// The full graph before pruning, with its node layout (for the Python adjacency and tests).
#[derive(Debug, Clone)]
pub struct FullGraph {
    /// `A[target, source]` as sparse rows.
    pub adjacency: Sparse,
    /// The node layout.
    pub layout: Layout,
    /// Each selected feature: `(layer, position, feature, activation)`.
    pub features: Vec<(usize, usize, usize, f32)>,
    /// The targets.
    pub targets: Vec<TargetLogit>,
    /// The prompt's tokens.
    pub tokens: Vec<u32>,
    /// Active features, selected or not.
    pub n_active: usize,
}

/// The most non-zero edges a graph keeps before pruning (8 bytes each: 2 GB).
const MAX_EDGES: usize = 250_000_000;

/// One layer's active features, sorted by position then feature.
struct LayerFeatures {
    /// `(position, feature, activation)`.
    active: Vec<(usize, usize, f32)>,
    /// Each active feature's decoder row times its activation, `[k, d]`.
    scaled_decoders: Tensor,
    /// The error vectors `[n, d]` (zero at position 0).
    errors: Tensor,
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = x.iter().map(|&v| f64::from(v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// The mean unembedding row, in chunks of the vocabulary.
fn mean_unembedding(model: &Model) -> Result<Vec<f32>> {
    let v = model.config().d_vocab;
    let mut sum = vec![0f64; model.config().d_model];
    let ids: Vec<u32> = (0..v as u32).collect();
    for chunk in ids.chunks(8192) {
        let rows = model.unembed_rows(chunk)?.to_dtype(DType::F32)?.sum(0)?.to_vec1::<f32>()?;
        sum.iter_mut().zip(rows).for_each(|(s, r)| *s += f64::from(r));
    }
    Ok(sum.iter().map(|s| (s / v as f64) as f32).collect())
}

fn unembedding(model: &Model, id: u32) -> Result<Vec<f32>> {
    Ok(model.unembed_rows(&[id])?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The targets and their vectors at the final norm's output.
fn logit_targets(model: &Model, prompt: &Prompt, logits: &[f32], o: &GraphOptions) -> Result<Vec<(TargetLogit, Vec<f32>)>> {
    let probs = softmax(logits);
    let text = |id: u32| model.to_string(&[id]);
    match o.target {
        GraphTarget::LogitDiff => {
            let (c, i) = (unembedding(model, prompt.correct)?, unembedding(model, prompt.incorrect)?);
            let v = c.iter().zip(&i).map(|(a, b)| a - b).collect();
            let t = TargetLogit { token: format!("{:?} − {:?}", text(prompt.correct), text(prompt.incorrect)), id: prompt.correct, probability: probs[prompt.correct as usize], weight: 1.0 };
            Ok(vec![(t, v)])
        }
        GraphTarget::Salient => {
            if !(o.desired_logit_prob > 0.0 && o.desired_logit_prob <= 1.0) || o.max_n_logits == 0 {
                return Err(Error::Invalid("salient targets need 0 < desired_logit_prob ≤ 1 and max_n_logits ≥ 1".into()));
            }
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            order.truncate(o.max_n_logits);
            let mut cum = 0.0f32;
            let mut cut = order.len();
            for (k, &i) in order.iter().enumerate() {
                cum += probs[i];
                if cum >= o.desired_logit_prob {
                    cut = k + 1;
                    break;
                }
            }
            let mean = mean_unembedding(model)?;
            order[..cut]
                .iter()
                .map(|&i| {
                    let v = unembedding(model, i as u32)?.iter().zip(&mean).map(|(a, m)| a - m).collect();
                    Ok((TargetLogit { token: text(i as u32), id: i as u32, probability: probs[i], weight: probs[i] }, v))
                })
                .collect()
        }
    }
}

/// Each layer's active features and error vectors.
fn features(rep: &Replacement, set: &TranscoderSet) -> Result<Vec<LayerFeatures>> {
    let n = rep.n_pos;
    set.transcoders
        .iter()
        .enumerate()
        .map(|(l, t)| {
            let x = t.rows(&rep.mlp_in[l])?;
            let enc = t.encode(&x)?;
            let acts = enc.acts.to_vec2::<f32>()?;
            let mut active = Vec::new();
            for (p, row) in acts.iter().enumerate().skip(1) {
                active.extend(row.iter().enumerate().filter(|(_, &a)| a != 0.0).map(|(f, &a)| (p, f, a)));
            }
            let ids: Vec<u32> = active.iter().map(|&(_, f, _)| f as u32).collect();
            let values: Vec<f32> = active.iter().map(|&(_, _, a)| a).collect();
            let scaled_decoders = if ids.is_empty() {
                Tensor::zeros((0, rep.d_model), DType::F32, &candle_core::Device::Cpu)?
            } else {
                let ids_t = Tensor::new(ids.as_slice(), &candle_core::Device::Cpu)?;
                let a = Tensor::new(values.as_slice(), &candle_core::Device::Cpu)?.unsqueeze(1)?;
                t.write_directions()?.index_select(&ids_t, 0)?.broadcast_mul(&a)?
            };
            let recon = t.output(&x, &enc)?;
            let mut err = (&rep.mlp_out[l] - recon)?.to_vec2::<f32>()?;
            err[0].iter_mut().for_each(|e| *e = 0.0);
            let errors = Tensor::new(err, &candle_core::Device::Cpu)?.reshape((n, rep.d_model))?;
            Ok(LayerFeatures { active, scaled_decoders, errors })
        })
        .collect()
}

/// Node indices of the all-features layout: features in (layer, position, feature) order.
struct Index {
    /// The first feature index of each layer.
    layer_start: Vec<usize>,
    n_features: usize,
    n_layers: usize,
    n_pos: usize,
}

impl Index {
    fn error(&self, l: usize, p: usize) -> usize {
        self.n_features + l * self.n_pos + p
    }
    fn token(&self, p: usize) -> usize {
        self.n_features + self.n_layers * self.n_pos + p
    }
    fn logit(&self, i: usize) -> usize {
        self.n_features + (self.n_layers + 1) * self.n_pos + i
    }
}

/// The incoming edges of a batch of targets, as sparse rows over the all-features layout.
fn rows_of(rep: &Replacement, layers: &[LayerFeatures], index: &Index, targets: &[Target]) -> Result<Vec<Vec<(u32, f32)>>> {
    let b = targets.len();
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); b];
    let push = |rows: &mut Vec<Vec<(u32, f32)>>, col: usize, values: &[Vec<f32>]| {
        for (t, v) in values.iter().enumerate() {
            for (k, &w) in v.iter().enumerate() {
                if w != 0.0 {
                    rows[t].push(((col + k) as u32, w));
                }
            }
        }
    };
    let mut feat_rows: Vec<(usize, Vec<Vec<f32>>)> = Vec::new();
    let mut embed_rows: Option<Vec<Vec<f32>>> = None;
    rep.backward(
        targets,
        |l, g| {
            let lf = &layers[l];
            let m = g.dim(1)?;
            // errors: g[b, p] · e[p]
            let e = g.broadcast_mul(&lf.errors.narrow(0, 0, m)?.unsqueeze(0)?)?.sum(2)?.to_vec2::<f32>()?;
            feat_rows.push((index.error(l, 0), e));
            // features, one product per position: g[b, p] · (a W_dec)[k]ᵀ
            let mut start = 0;
            while start < lf.active.len() && lf.active[start].0 < m {
                let p = lf.active[start].0;
                let end = start + lf.active[start..].iter().take_while(|x| x.0 == p).count();
                let gp = g.narrow(1, p, 1)?.squeeze(1)?; // [B, d]
                let dec = lf.scaled_decoders.narrow(0, start, end - start)?;
                let e = gp.matmul(&dec.t()?)?.to_vec2::<f32>()?;
                feat_rows.push((index.layer_start[l] + start, e));
                start = end;
            }
            Ok(())
        },
        |g| {
            embed_rows = Some(g.broadcast_mul(&rep.embed.narrow(0, 0, g.dim(1)?)?.unsqueeze(0)?)?.sum(2)?.to_vec2::<f32>()?);
            Ok(())
        },
    )?;
    for (col, v) in &feat_rows {
        push(&mut rows, *col, v);
    }
    if let Some(v) = &embed_rows {
        push(&mut rows, index.token(0), v);
    }
    rows.iter_mut().for_each(|r| r.sort_by_key(|e| e.0));
    Ok(rows)
}

/// The encoder vector of feature `f` of layer `l` (what its pre-activation reads).
fn encoder_vector(set: &TranscoderSet, l: usize, f: usize) -> Result<Vec<f32>> {
    Ok(set.transcoders[l].w_enc.narrow(1, f, 1)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The full graph: every node, and the incoming edges of the targets and of the selected
/// features.
pub fn full_graph(model: &Model, set: &TranscoderSet, prompt: &Prompt, o: &GraphOptions) -> Result<FullGraph> {
    crate::limits::check_count("batch_size", o.batch_size, 1..=4096)?;
    crate::limits::check_count("max_n_logits", o.max_n_logits, 1..=1024)?;
    let rep = Replacement::build(model, set, &prompt.tokens)?;
    let n = rep.n_pos;
    let n_layers = model.config().n_layers;
    let layers = features(&rep, set)?;
    let mut layer_start = Vec::with_capacity(n_layers);
    let mut total = 0usize;
    for lf in &layers {
        layer_start.push(total);
        total += lf.active.len();
    }
    let index = Index { layer_start, n_features: total, n_layers, n_pos: n };
    let all: Vec<(usize, usize, usize, f32)> = layers.iter().enumerate().flat_map(|(l, lf)| lf.active.iter().map(move |&(p, f, a)| (l, p, f, a))).collect();
    let targets = logit_targets(model, prompt, &rep.last_logits, o)?;
    let weights: Vec<f64> = targets.iter().map(|t| f64::from(t.0.weight)).collect();

    // Logit rows first.
    let logit_targets: Vec<Target> = targets.iter().map(|(_, v)| Target { at: At::Logits, pos: n - 1, vector: v.clone() }).collect();
    let mut computed: Vec<Vec<(u32, f32)>> = rows_of(&rep, &layers, &index, &logit_targets)?;
    let mut row_nodes: Vec<usize> = (0..targets.len()).map(|i| index.logit(i)).collect();
    let mut feature_rows: Vec<Option<usize>> = vec![None; total];
    let ranked = o.max_feature_nodes != 0 && o.max_feature_nodes < total;
    // Normalised rows for the influence ranking, kept beside the rows when features are ranked.
    let mut normed: Vec<Vec<(u32, f32)>> = if ranked { computed.iter().map(|r| prune::normalized_row(r)).collect() } else { Vec::new() };

    // Then features: all of them, or the most influential in rounds.
    let budget = if o.max_feature_nodes == 0 { total } else { o.max_feature_nodes.min(total) };
    let n_all = index.logit(targets.len());
    let mut visited = vec![false; total];
    let mut chosen = 0usize;
    let mut edges: usize = computed.iter().map(Vec::len).sum();
    while chosen < budget {
        let round: Vec<usize> = if budget == total {
            let mut r: Vec<usize> = (0..total).collect();
            r.sort_by_key(|&i| std::cmp::Reverse((all[i].0, all[i].1)));
            r
        } else {
            let infl = prune::partial_influence(&normed, &row_nodes, n_all, index.logit(0), &weights);
            let mut r: Vec<usize> = (0..total).filter(|&i| !visited[i]).collect();
            r.sort_by(|&a, &b| infl[b].total_cmp(&infl[a]).then(a.cmp(&b)));
            r.truncate((o.batch_size * 4).min(budget - chosen));
            r.sort_by_key(|&i| std::cmp::Reverse((all[i].0, all[i].1)));
            r
        };
        for chunk in round.chunks(o.batch_size) {
            crate::controls::tick(chosen + chunk.len(), budget, "feature rows")?;
            let ts = chunk.iter().map(|&i| Ok(Target { at: At::Layer(all[i].0), pos: all[i].1, vector: encoder_vector(set, all[i].0, all[i].2)? })).collect::<Result<Vec<_>>>()?;
            let rows = rows_of(&rep, &layers, &index, &ts)?;
            edges += rows.iter().map(Vec::len).sum::<usize>();
            if edges > MAX_EDGES {
                return Err(Error::Invalid(format!(
                    "this graph's edges pass {MAX_EDGES} after {} feature rows (of {budget} asked) on a {n}-token prompt; lower max_feature_nodes, or shorten the prompt",
                    chosen + chunk.len()
                )));
            }
            for (&i, r) in chunk.iter().zip(rows) {
                visited[i] = true;
                if ranked {
                    normed.push(prune::normalized_row(&r));
                }
                feature_rows[i] = Some(computed.len());
                computed.push(r);
                row_nodes.push(i);
            }
        }
        chosen += round.len();
        if round.is_empty() {
            break;
        }
    }

    // The selected features' layout: their columns renumbered, the others' dropped.
    let selected: Vec<usize> = (0..total).filter(|&i| visited[i]).collect();
    let mut new_index = vec![u32::MAX; n_all];
    for (k, &i) in selected.iter().enumerate() {
        new_index[i] = k as u32;
    }
    let shift = total - selected.len();
    for (i, slot) in new_index.iter_mut().enumerate().skip(total) {
        *slot = (i - shift) as u32;
    }
    let remap = |r: &Vec<(u32, f32)>| -> Vec<(u32, f32)> { r.iter().filter(|e| new_index[e.0 as usize] != u32::MAX).map(|&(c, w)| (new_index[c as usize], w)).collect() };
    let layout = Layout { features: selected.len(), errors: n_layers * n, tokens: n, logits: targets.len() };
    let n_nodes = n_all - shift;
    let mut rows: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n_nodes];
    for (k, &i) in selected.iter().enumerate() {
        rows[k] = feature_rows[i].map(|j| remap(&std::mem::take(&mut computed[j]))).unwrap_or_default();
    }
    for (t, r) in computed.iter().take(targets.len()).enumerate() {
        rows[n_nodes - targets.len() + t] = remap(r);
    }
    Ok(FullGraph {
        adjacency: Sparse { n: n_nodes, rows },
        layout,
        features: selected.iter().map(|&i| all[i]).collect(),
        targets: targets.into_iter().map(|t| t.0).collect(),
        tokens: prompt.tokens.clone(),
        n_active: total,
    })
}

/// `(l + f)(l + f + 1) / 2 + f`: the frontend's feature id.
fn cantor(l: usize, f: usize) -> i64 {
    let s = (l + f) as i64;
    s * (s + 1) / 2 + f as i64
}

/// The attribution graph of `prompt` over `set`, pruned, in the frontend's layout.
pub fn graph(model: &Model, set: &TranscoderSet, prompt: &Prompt, o: &GraphOptions) -> Result<AttributionGraph> {
    for (name, v) in [("node_threshold", o.node_threshold), ("edge_threshold", o.edge_threshold)] {
        if !(v > 0.0 && v <= 1.0) {
            return Err(Error::Invalid(format!("{name} must be in (0, 1]; got {v}")));
        }
    }
    let full = full_graph(model, set, prompt, o)?;
    let weights: Vec<f64> = full.targets.iter().map(|t| f64::from(t.weight)).collect();
    let (replacement, completeness) = prune::scores(&full.adjacency, full.layout, &weights);
    let pruned = prune::prune(&full.adjacency, full.layout, &weights, f64::from(o.node_threshold), f64::from(o.edge_threshold));
    Ok(frontend(model, set, &full, &pruned, o, (replacement, completeness)))
}

fn frontend(model: &Model, set: &TranscoderSet, full: &FullGraph, pruned: &prune::Pruned, o: &GraphOptions, (replacement, completeness): (f64, f64)) -> AttributionGraph {
    let ly = full.layout;
    let n = ly.tokens;
    let n_layers = ly.errors / n.max(1);
    let n_nodes = full.adjacency.n;
    let blank = |node_id: String, feature: i64, layer: String, ctx_idx: usize, feature_type: &str, js: String| Node {
        node_id,
        feature,
        layer,
        ctx_idx,
        feature_type: feature_type.into(),
        token_prob: 0.0,
        is_target_logit: false,
        run_idx: 0,
        reverse_ctx_idx: 0,
        jsNodeId: js,
        clerp: String::new(),
        influence: None,
        activation: None,
    };
    let node_of = |i: usize| -> Node {
        let infl = Some(pruned.cumulative[i] as f32);
        if i < ly.features {
            let (l, p, f, a) = full.features[i];
            let mut nd = blank(format!("{l}_{f}_{p}"), cantor(l, f), l.to_string(), p, "cross layer transcoder", format!("{l}_{f}-0"));
            nd.influence = infl;
            nd.activation = Some(a);
            nd
        } else if i < ly.features + ly.errors {
            let (l, p) = ((i - ly.features) / n, (i - ly.features) % n);
            let mut nd = blank(format!("0_{l}_{p}"), -1, l.to_string(), p, "mlp reconstruction error", format!("{l}_{p}-0"));
            nd.influence = infl;
            nd
        } else if i < ly.features + ly.errors + ly.tokens {
            let p = i - ly.features - ly.errors;
            let tok = full.tokens[p];
            let mut nd = blank(format!("E_{tok}_{p}"), p as i64, "E".into(), p, "embedding", format!("E_{tok}-{p}"));
            nd.influence = infl;
            nd
        } else {
            let k = i - (n_nodes - ly.logits);
            let t = &full.targets[k];
            let mut nd = blank(format!("{}_{}_{}", n_layers + 1, t.id, n - 1), i64::from(t.id), (n_layers + 1).to_string(), n - 1, "logit", format!("L_{}-{}", t.id, n - 1));
            nd.token_prob = t.probability;
            nd.is_target_logit = k == 0;
            nd.clerp = format!("Output {} (p={:.3})", if o.target == GraphTarget::LogitDiff { t.token.clone() } else { format!("{:?}", t.token) }, t.probability);
            nd
        }
    };
    let in_link: std::collections::HashSet<usize> = pruned.edges.iter().flat_map(|&(t, s)| [t as usize, s as usize]).collect();
    let always = ly.features + ly.errors;
    let kept: Vec<usize> = (0..n_nodes).filter(|&i| pruned.node_mask[i] && (i >= always || in_link.contains(&i))).collect();
    let kept_set: std::collections::HashSet<usize> = kept.iter().copied().collect();
    let nodes: Vec<Node> = kept.iter().map(|&i| node_of(i)).collect();
    let id_of: std::collections::HashMap<usize, String> = kept.iter().zip(&nodes).map(|(&i, nd)| (i, nd.node_id.clone())).collect();
    let weight = |t: usize, s: usize| full.adjacency.rows[t].binary_search_by_key(&(s as u32), |e| e.0).map(|k| full.adjacency.rows[t][k].1).unwrap_or(0.0);
    let links = pruned
        .edges
        .iter()
        .filter(|&&(t, s)| kept_set.contains(&(t as usize)) && kept_set.contains(&(s as usize)))
        .map(|&(t, s)| Link { source: id_of[&(s as usize)].clone(), target: id_of[&(t as usize)].clone(), weight: weight(t as usize, s as usize) })
        .collect();
    let prompt_tokens = model.to_str_tokens(&full.tokens);
    AttributionGraph {
        metadata: Metadata {
            slug: "glassbox-graph".into(),
            scan: set.model_name.clone().map_or_else(|| format!("{}-transcoders", model.name()), |m| format!("{m}-transcoders")),
            transcoder_list: Vec::new(),
            prompt: model.to_string(&full.tokens),
            prompt_tokens,
            node_threshold: o.node_threshold,
            schema_version: 1,
        },
        qParams: QParams { pinnedIds: Vec::new(), supernodes: Vec::new(), linkType: "both".into(), clickedId: String::new(), sg_pos: String::new() },
        nodes,
        links,
        glassbox: Summary {
            targets: full.targets.clone(),
            replacement_score: replacement as f32,
            completeness_score: completeness as f32,
            n_active_features: full.n_active,
            n_selected_features: full.features.len(),
            n_nodes,
            n_edges: full.adjacency.rows.iter().map(Vec::len).sum(),
            edge_threshold: o.edge_threshold,
            n_layers,
        },
    }
}

/// Warnings about a graph's figures: a low replacement or completeness score (the graph leaves
/// much of the prediction to error nodes), features left out by `max_feature_nodes`.
pub fn warnings(g: &AttributionGraph) -> Vec<String> {
    let s = &g.glassbox;
    let mut w = Vec::new();
    if s.replacement_score < 0.5 {
        w.push(format!(
            "replacement score {:.3}: error nodes carry more of the influence on the targets than the tokens do; the transcoders explain this prediction poorly",
            s.replacement_score
        ));
    }
    if s.completeness_score < 0.5 {
        w.push(format!("completeness score {:.3}: most of the nodes' inputs come from error nodes", s.completeness_score));
    }
    if s.n_selected_features < s.n_active_features {
        w.push(format!(
            "{} of {} active features had their incoming edges computed (max_feature_nodes); the others are not nodes",
            s.n_selected_features, s.n_active_features
        ));
    }
    w
}
