//! Edge attribution patching (Syed et al. 2024) and EAP-IG (Hanna et al. 2024) on the real
//! edge graph of a transformer.
//!
//! Senders: the embeddings, every head's output (`z_h · W_O,hᵀ`), every MLP's output.
//! Receivers: every query head's query input, every key/value head's key and value inputs
//! (with GQA a key/value input belongs to its group), every MLP's input, and the logits.
//! `score(u → v) = Σ_pos (∂LD/∂input_v) · (out_u,clean − out_u,corr)`, where `input_v` is the
//! residual stream as receiver `v` alone reads it (before its norm). The receiver gradients
//! come from one backward pass: taps at `hook_q`/`hook_k`/`hook_v` carried back through the
//! projection and the norm of that head alone, taps at `hook_mlp_in`, and at the last
//! `hook_resid_post` for the logits. EAP-IG averages the receiver gradients over the
//! straight-line path of the input embeddings from the corrupted to the clean prompt.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::attribution::Method;
use crate::methods::{order_by_magnitude, sum_in_order, Contrast, Head, Metric, Scorer};
use crate::model::{Action, Batch, HookPoint, Intervention, Model};
use crate::model::compute;

/// One scored edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Edge {
    /// The sending node (`embed`, `L09H09`, `MLP03`).
    pub sender: String,
    /// The receiving input (`L09H09.q`, `L09KV02.k`, `L09KV02.v`, `MLP03`, `logits`).
    pub receiver: String,
    /// `Σ_pos ∂metric/∂input_v · (out_u,clean − out_u,corr)`: the edge's estimated share of
    /// `clean_ld − corrupted_ld`.
    pub score: f32,
}

/// Result of `edge_attribution`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeAttribution {
    /// Taylor (EAP) or integrated gradients (EAP-IG).
    pub method: Method,
    /// Integration steps, for EAP-IG.
    pub n_steps: Option<usize>,
    /// The metric's name.
    pub metric: String,
    /// The metric of the clean run.
    pub clean_ld: f32,
    /// The metric of the corrupted run.
    pub corrupted_ld: f32,
    /// Number of edges in the model's graph (every one is scored).
    pub n_edges: usize,
    /// The `top_k` edges by decreasing |score|.
    pub top_edges: Vec<Edge>,
}

/// A node that sends into the residual stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sender {
    /// The token (and position) embeddings.
    Embed,
    /// A head's output as it joins the residual stream (`z · W_O` of that head).
    Head(Head),
    /// A layer's MLP output.
    Mlp(usize),
}

/// A node that reads the residual stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Receiver {
    /// Query input of a head.
    Q(Head),
    /// Key input of key/value head `head` of `layer`.
    K(Head),
    /// Value input of key/value head `head` of `layer`.
    V(Head),
    /// A layer's MLP input.
    Mlp(usize),
    /// The logits, reading the last layer's `hook_resid_post`.
    Logits,
}

impl Sender {
    /// `embed`, `L09H09` or `MLP03`.
    pub fn name(&self) -> String {
        match self {
            Sender::Embed => "embed".into(),
            Sender::Head(h) => h.to_string(),
            Sender::Mlp(l) => format!("MLP{l:02}"),
        }
    }
}

impl Receiver {
    /// `L09H09.q`, `L09KV02.k`, `L09KV02.v`, `MLP03` or `logits`.
    pub fn name(&self) -> String {
        match self {
            Receiver::Q(h) => format!("{h}.q"),
            Receiver::K(h) => format!("L{:02}KV{:02}.k", h.layer, h.head),
            Receiver::V(h) => format!("L{:02}KV{:02}.v", h.layer, h.head),
            Receiver::Mlp(l) => format!("MLP{l:02}"),
            Receiver::Logits => "logits".into(),
        }
    }

    fn layer(&self, n_layers: usize) -> usize {
        match self {
            Receiver::Q(h) | Receiver::K(h) | Receiver::V(h) => h.layer,
            Receiver::Mlp(l) => *l,
            Receiver::Logits => n_layers,
        }
    }
}

/// Whether `u`'s output reaches `v`'s input in a model of config `c`. An attention-only
/// model's MLPs (zero, kept for the layout) neither send nor receive.
pub fn is_edge(u: Sender, v: Receiver, c: &crate::model::config::ModelConfig) -> bool {
    let (n_layers, parallel_block) = (c.n_layers, c.parallel_block);
    if c.variants.attn_only && (matches!(u, Sender::Mlp(_)) || matches!(v, Receiver::Mlp(_))) {
        return false;
    }
    let lv = v.layer(n_layers);
    match u {
        Sender::Embed => true,
        Sender::Head(h) => h.layer < lv || (h.layer == lv && matches!(v, Receiver::Mlp(_)) && !parallel_block),
        Sender::Mlp(l) => l < lv,
    }
}

pub(crate) fn receivers(model: &Model) -> Vec<Receiver> {
    let c = &model.config();
    let mut v = Vec::new();
    for layer in 0..c.n_layers {
        v.extend((0..c.n_heads).map(|head| Receiver::Q(Head { layer, head })));
        v.extend((0..c.n_kv_heads).map(|head| Receiver::K(Head { layer, head })));
        v.extend((0..c.n_kv_heads).map(|head| Receiver::V(Head { layer, head })));
        v.push(Receiver::Mlp(layer));
    }
    v.push(Receiver::Logits);
    v
}

pub(crate) fn senders(model: &Model) -> Vec<Sender> {
    let c = &model.config();
    let mut v = vec![Sender::Embed];
    for layer in 0..c.n_layers {
        v.extend((0..c.n_heads).map(|head| Sender::Head(Head { layer, head })));
        v.push(Sender::Mlp(layer));
    }
    v
}

/// The taps whose gradients give every receiver's input gradient.
fn receiver_taps(n_layers: usize) -> Vec<HookPoint> {
    let mut t: Vec<HookPoint> = (0..n_layers)
        .flat_map(|l| [HookPoint::Q(l), HookPoint::K(l), HookPoint::V(l), HookPoint::MlpIn(l)])
        .collect();
    t.push(HookPoint::ResidPost(n_layers - 1));
    t
}

/// Input gradients `[b, p, d]` of every receiver (in `receivers` order), from a run with the
/// receiver taps and `ln1` caches.
fn receiver_grads(model: &Model, out: &crate::model::ForwardOutput, grads: &crate::model::Gradients) -> Result<Vec<Tensor>> {
    let c = &model.config();
    let (h, kv, dh) = (c.n_heads, c.n_kv_heads, c.d_head);
    let mut res = Vec::new();
    for l in 0..c.n_layers {
        let a = &model.weights().layers[l].attn;
        // The norm attention reads its input through (none: the raw residual).
        let norm = match model.attn_input_norm(l)? {
            Some(_) => Some((out.cache.get(HookPoint::Ln1Normalized(l))?.unsqueeze(0)?, out.cache.get(HookPoint::Ln1Scale(l))?.unsqueeze(0)?)),
            None => None,
        };
        // All heads of a projection at once: [heads, b·p, dh] × [heads, dh, d], then the
        // norm's backward broadcast over the heads.
        let mut per_head = |g: &Tensor, w: &Tensor, heads: usize| -> Result<()> {
            let (b, p) = (g.dim(0)?, g.dim(1)?);
            let gh = g.reshape((b * p, heads, dh))?.transpose(0, 1)?.contiguous()?; // [heads, b·p, dh]
            let g_in = gh.matmul(&w.reshape((heads, dh, c.d_model))?)?.reshape((heads, b, p, c.d_model))?;
            let g_in = match &norm {
                Some((n, s)) => model.attn_input_backward(l, &g_in, n, s)?,
                None => g_in,
            };
            for i in 0..heads {
                res.push(g_in.get(i)?);
            }
            Ok(())
        };
        per_head(grads.get(HookPoint::Q(l))?, &a.w_q.tensor()?, h)?;
        per_head(grads.get(HookPoint::K(l))?, &a.w_k.tensor()?, kv)?;
        per_head(grads.get(HookPoint::V(l))?, &a.w_v.tensor()?, kv)?;
        res.push(grads.get(HookPoint::MlpIn(l))?.clone());
    }
    res.push(grads.get(HookPoint::ResidPost(c.n_layers - 1))?.clone());
    Ok(res)
}

/// Every sender's clean-minus-corrupted output, flattened to `[p·d]` (in `senders` order),
/// from the two runs (each a batch of one, with `Embed`, `PosEmbed`, `Z` and `MlpOut`
/// cached). A head's output is linear in its `z` where the attention output has no
/// post-norm, so its difference is the readout of the `z` difference (one product per layer);
/// with a post-norm each run's output goes through its own frozen scale.
fn sender_deltas(model: &Model, clean: &crate::model::ForwardOutput, corr: &crate::model::ForwardOutput) -> Result<Vec<Tensor>> {
    let c = &model.config();
    let diff = |p: HookPoint| -> Result<Tensor> { Ok((clean.cache.get(p)? - corr.cache.get(p)?)?) };
    let mut embed = diff(HookPoint::Embed)?;
    if HookPoint::PosEmbed.present_in(c) {
        embed = (embed + diff(HookPoint::PosEmbed)?)?;
    }
    let mut res = vec![embed.flatten_all()?];
    for l in 0..c.n_layers {
        let heads = if model.weights().layers[l].extra.ln1_post.is_some() {
            let result = |run: &crate::model::ForwardOutput| -> Result<Tensor> {
                let z = run.cache.get(HookPoint::Z(l))?;
                model.head_results(l, z, model.attn_post_scale(l, z)?.as_ref())
            };
            (result(clean)? - result(corr)?)?
        } else {
            model.head_results(l, &diff(HookPoint::Z(l))?, None)?
        }; // [1, p, h, d]
        let heads = heads.squeeze(0)?.transpose(0, 1)?.contiguous()?; // [h, p, d]
        for i in 0..c.n_heads {
            res.push(heads.get(i)?.flatten_all()?);
        }
        res.push(diff(HookPoint::MlpOut(l))?.flatten_all()?);
    }
    Ok(res)
}

/// `scores[i][j] = deltas[i] · rgrads[j]` for every sender `i` and receiver `j` that can form
/// an edge: each layer's receivers against the senders before them only (about half of the
/// full product), as products of a few receiver rows against the sender rows (the kernels'
/// skinny shape) where the kernels run. Pairs that are not edges are left at zero.
fn edge_scores(model: &Model, deltas: &[Tensor], rgrads: &[Tensor]) -> Result<Vec<Vec<f32>>> {
    let c = &model.config();
    let s_mat = Tensor::stack(deltas, 0)?.to_dtype(DType::F32)?;
    let r_mat = Tensor::stack(rgrads, 0)?.to_dtype(DType::F32)?;
    let (n_s, k) = s_mat.dims2()?;
    let n_r = rgrads.len();
    let (s, r) = (s_mat.flatten_all()?.to_vec1::<f32>()?, r_mat.flatten_all()?.to_vec1::<f32>()?);
    let per_layer_r = c.n_heads + 2 * c.n_kv_heads + 1;
    let mut scores = vec![vec![0f32; n_r]; n_s];
    for l in 0..=c.n_layers {
        // Receivers of layer l (the logits after the last layer), and the senders that reach
        // them: the embeddings, every node of the layers before, this layer's heads (for its MLP).
        let (start, count) = if l < c.n_layers { (l * per_layer_r, per_layer_r) } else { (c.n_layers * per_layer_r, 1) };
        let senders = (1 + l * (c.n_heads + 1) + c.n_heads).min(n_s);
        let rows = &r[start * k..(start + count) * k];
        let y = compute::rows_times(rows, &s[..senders * k], count, k, senders)?;
        for j in 0..count {
            for i in 0..senders {
                scores[i][start + j] = y[j * senders + i];
            }
        }
    }
    Ok(scores)
}

crate::options! {
    /// Options of `edge_attribution`.
    pub struct EdgeOptions {
        /// `taylor` (EAP) or `integrated_gradients` (EAP-IG).
        pub method: Method = Method::Taylor,
        /// Integration steps of EAP-IG.
        pub n_steps: usize = crate::methods::attribution::DEFAULT_N_STEPS,
        /// How many edges `top_edges` lists.
        pub top_k: usize = 50,
        /// The metric attributed.
        pub metric: Metric = Metric::default(),
    }
}

/// Every edge of a model's graph: its senders and receivers (in `senders`/`receivers`
/// order) and the (sender, receiver) index pairs that are edges.
#[derive(Debug, Clone)]
pub struct EdgeGraph {
    /// The sending nodes.
    pub senders: Vec<Sender>,
    /// The receiving inputs.
    pub receivers: Vec<Receiver>,
    /// `(sender index, receiver index)` of every edge, senders outer, receivers inner.
    pub edges: Vec<(usize, usize)>,
}

impl EdgeGraph {
    /// The edge graph of `model`.
    pub fn of(model: &Model) -> EdgeGraph {
        let c = model.config();
        let (senders, receivers) = (senders(model), receivers(model));
        let mut edges = Vec::new();
        for (i, u) in senders.iter().enumerate() {
            for (j, v) in receivers.iter().enumerate() {
                if is_edge(*u, *v, c) {
                    edges.push((i, j));
                }
            }
        }
        EdgeGraph { senders, receivers, edges }
    }

    /// The `k` edges of largest |score| (`scores` in the graph's edge order).
    pub fn top_edges(&self, scores: &[f32], k: usize) -> Vec<Edge> {
        order_by_magnitude(scores)
            .into_iter()
            .take(k)
            .map(|e| {
                let (i, j) = self.edges[e];
                Edge { sender: self.senders[i].name(), receiver: self.receivers[j].name(), score: scores[e] }
            })
            .collect()
    }

    /// Edge `e` as `sender->receiver`.
    pub fn name(&self, e: usize) -> String {
        let (i, j) = self.edges[e];
        format!("{}->{}", self.senders[i].name(), self.receivers[j].name())
    }
}

/// EAP or EAP-IG scores of every edge of `EdgeGraph::of(model)`, in its order, with the
/// clean and corrupted metrics.
pub fn all_edge_scores(model: &Model, contrast: &Contrast, opts: &EdgeOptions) -> Result<(Vec<f32>, f32, f32)> {
    contrast.check(model)?;
    crate::methods::attribution::check_steps(opts.method, opts.n_steps)?;
    let (method, n_steps) = (opts.method, opts.n_steps);
    let scorer = Scorer::new(model, contrast, &opts.metric)?;
    let c = &model.config();
    let layers = c.n_layers;
    let mut cache = vec![HookPoint::Embed];
    if HookPoint::PosEmbed.present_in(c) {
        cache.push(HookPoint::PosEmbed);
    }
    for l in 0..layers {
        cache.extend([HookPoint::Z(l), HookPoint::MlpOut(l)]);
        if model.attn_input_norm(l)?.is_some() {
            cache.extend([HookPoint::Ln1Normalized(l), HookPoint::Ln1Scale(l)]);
        }
    }
    let taps = receiver_taps(layers);
    let taylor = matches!(method, Method::Taylor);
    // As in Taylor attribution: the corrupted run needs no gradient, so it runs apart, at the
    // same time as the clean forward (and, for EAP, its backward) on the other core.
    let corr_hooks = scorer.hooks().cache(cache.iter().copied());
    let clean_hooks = if taylor { corr_hooks.clone().grad_tap(taps.iter().copied()) } else { corr_hooks.clone() };
    let (corr, clean) = compute::concurrently(
        || model.forward(&Batch::new(std::slice::from_ref(&contrast.corrupted))?, &corr_hooks),
        || -> Result<_> {
            let clean = model.forward(&Batch::new(std::slice::from_ref(&contrast.clean))?, &clean_hooks)?;
            let ld = scorer.eval(&clean)?;
            let grads = if taylor { Some(clean.backward(&ld.sum_all()?)?) } else { None };
            Ok((clean, ld, grads))
        },
    );
    let (corr, (clean, ld_clean, grads)) = (corr?, clean?);
    let lds = Tensor::cat(&[ld_clean, scorer.eval(&corr)?], 0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;

    let deltas = sender_deltas(model, &clean, &corr)?;

    let rgrads: Vec<Tensor> = match (method, grads) {
        (Method::Taylor, Some(grads)) => receiver_grads(model, &clean, &grads)?
            .into_iter()
            .map(|g| Ok(g.get(0)?.flatten_all()?))
            .collect::<Result<_>>()?,
        (Method::IntegratedGradients, _) => {
            let (clean_emb, corr_emb) = (clean.cache.get(HookPoint::Embed)?.get(0)?, corr.cache.get(HookPoint::Embed)?.get(0)?);
            let delta = (clean_emb - &corr_emb)?;
            let (corr, emb) = (&corr_emb, &corr_emb);
            let p = contrast.n_pos();
            let chunk = (64 / p.max(1)).clamp(1, n_steps);
            // Each chunk of steps: the receivers' gradients summed over the chunk's steps.
            let chunk_grads = |&(k, n): &(usize, usize)| -> Result<Vec<Tensor>> {
                let alphas: Vec<f32> = (k..k + n).map(|i| (i as f32 + 0.5) / n_steps as f32).collect();
                let a = Tensor::from_vec(alphas, (n, 1, 1), emb.device())?.to_dtype(emb.dtype())?;
                let value = corr.unsqueeze(0)?.broadcast_add(&a.broadcast_mul(&delta.unsqueeze(0)?)?)?;
                let hooks = scorer
                    .hooks()
                    .intervene(Intervention::new(HookPoint::Embed, Action::Replace(value)))
                    .cache(cache.iter().copied())
                    .grad_tap(taps.iter().copied());
                let run = model.forward(&Batch::new(&vec![contrast.clean.clone(); n])?, &hooks)?;
                let metric = scorer.eval(&run)?.sum_all()?;
                let grads = run.backward(&metric)?;
                receiver_grads(model, &run, &grads)?.into_iter().map(|g| Ok(g.sum(0)?.flatten_all()?)).collect()
            };
            let chunks: Vec<(usize, usize)> = (0..n_steps).step_by(chunk).map(|k| (k, chunk.min(n_steps - k))).collect();
            // The chunks run as two streams; their sums are added in the chunks' order.
            let sums = sum_in_order(compute::map_in_two_streams(&chunks, "integration steps", chunk_grads, || Err(Error::Cancelled)))?;
            sums.unwrap_or_default()
                .into_iter()
                .map(|s| Ok((s / n_steps as f64)?))
                .collect::<Result<_>>()?
        }
        (Method::Taylor, None) => return Err(Error::Invalid("EAP's clean run lost its gradients".into())),
    };

    let scores = edge_scores(model, &deltas, &rgrads)?;
    let graph = EdgeGraph::of(model);
    Ok((graph.edges.iter().map(|&(i, j)| scores[i][j]).collect(), lds[0], lds[1]))
}

/// Edge attribution patching of every edge (EAP, or EAP-IG).
pub fn edge_attribution(model: &Model, contrast: &Contrast, opts: &EdgeOptions) -> Result<EdgeAttribution> {
    let (values, clean_ld, corrupted_ld) = all_edge_scores(model, contrast, opts)?;
    let top_edges = EdgeGraph::of(model).top_edges(&values, opts.top_k);
    Ok(EdgeAttribution {
        method: opts.method,
        n_steps: (opts.method == Method::IntegratedGradients).then_some(opts.n_steps),
        metric: opts.metric.name().to_string(),
        clean_ld,
        corrupted_ld,
        n_edges: values.len(),
        top_edges,
    })
}
