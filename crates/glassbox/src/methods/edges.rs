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

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::attribution::Method;
use crate::methods::{order_by_magnitude, sum_in_order, Contrast, Head, Metric, Scorer};
use crate::model::config::NormKind;
use crate::model::{Action, Batch, HookPoint, Intervention, Model};
use crate::model::kernels;

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

/// Whether `u`'s output reaches `v`'s input in a model with these settings.
pub fn is_edge(u: Sender, v: Receiver, n_layers: usize, parallel_block: bool) -> bool {
    let lv = v.layer(n_layers);
    match u {
        Sender::Embed => true,
        Sender::Head(h) => h.layer < lv || (h.layer == lv && matches!(v, Receiver::Mlp(_)) && !parallel_block),
        Sender::Mlp(l) => l < lv,
    }
}

/// Gradient w.r.t. a norm's input, given the gradient w.r.t. its normalised output
/// (`normalized = centred / scale`): `(g − n·mean(g⊙n) [− mean(g) for LayerNorm]) / scale`.
pub fn normalize_vjp(g: &Tensor, normalized: &Tensor, scale: &Tensor, kind: NormKind) -> Result<Tensor> {
    let gn = (g * normalized)?.mean_keepdim(D::Minus1)?;
    let mut out = (g - normalized.broadcast_mul(&gn)?)?;
    if kind == NormKind::LayerNorm {
        out = out.broadcast_sub(&g.mean_keepdim(D::Minus1)?)?;
    }
    Ok(out.broadcast_div(scale)?)
}

fn receivers(model: &Model) -> Vec<Receiver> {
    let c = &model.config;
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

fn senders(model: &Model) -> Vec<Sender> {
    let c = &model.config;
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
    let c = &model.config;
    let (h, kv, dh) = (c.n_heads, c.n_kv_heads, c.d_head);
    let mut res = Vec::new();
    for l in 0..c.n_layers {
        let a = &model.weights.layers[l].attn;
        // The norm attention reads its input through (none: the raw residual).
        let norm = match model.attn_input_norm(l) {
            Some(w_ln) => Some((w_ln, out.cache.get(HookPoint::Ln1Normalized(l))?, out.cache.get(HookPoint::Ln1Scale(l))?)),
            None => None,
        };
        let mut per_head = |g: &Tensor, w: &Tensor, heads: usize| -> Result<()> {
            for i in 0..heads {
                let gi = g.narrow(2, i, 1)?.squeeze(2)?; // [b, p, dh]
                let wi = w.narrow(0, i * dh, dh)?; // [dh, d]
                let g_in = gi.broadcast_matmul(&wi)?; // [b, p, d]
                res.push(match norm {
                    Some((w_ln, n, s)) => normalize_vjp(&g_in.broadcast_mul(w_ln)?, n, s, c.norm.kind)?,
                    None => g_in,
                });
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

/// Every sender's output `[b, p, d]` (in `senders` order) from a run with `Embed`, `PosEmbed`,
/// `Z` and `MlpOut` cached.
fn sender_outputs(model: &Model, out: &crate::model::ForwardOutput) -> Result<Vec<Tensor>> {
    let c = &model.config;
    let mut embed = out.cache.get(HookPoint::Embed)?.clone();
    if let Ok(p) = out.cache.get(HookPoint::PosEmbed) {
        embed = (embed + p)?;
    }
    let mut res = vec![embed];
    for l in 0..c.n_layers {
        // Each head's output as it joins the stream (the model's readout: through the
        // attention post-norm with the run's scale where there is one).
        let z = out.cache.get(HookPoint::Z(l))?; // [b, p, h, dh]
        let heads = model.head_results(l, z, model.attn_post_scale(l, z)?.as_ref())?; // [b, p, h, d]
        for i in 0..c.n_heads {
            res.push(heads.narrow(2, i, 1)?.squeeze(2)?);
        }
        res.push(out.cache.get(HookPoint::MlpOut(l))?.clone());
    }
    Ok(res)
}

/// Options of `edge_attribution`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EdgeOptions {
    /// `Taylor` (EAP) or `IntegratedGradients` (EAP-IG).
    pub method: Method,
    /// How many edges `top_edges` lists.
    pub top_k: usize,
    /// The metric attributed; the logit difference by default.
    #[serde(default)]
    pub metric: Metric,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        EdgeOptions { method: Method::Taylor, top_k: 50, metric: Metric::default() }
    }
}

/// Edge attribution patching of every edge (EAP, or EAP-IG).
pub fn edge_attribution(model: &Model, contrast: &Contrast, opts: &EdgeOptions) -> Result<EdgeAttribution> {
    contrast.check(model)?;
    opts.method.check()?;
    let (method, top_k) = (opts.method, opts.top_k);
    let scorer = Scorer::new(model, contrast, &opts.metric)?;
    let c = &model.config;
    let layers = c.n_layers;
    let mut cache = vec![HookPoint::Embed];
    if HookPoint::PosEmbed.present_in(c) {
        cache.push(HookPoint::PosEmbed);
    }
    for l in 0..layers {
        cache.extend([HookPoint::Z(l), HookPoint::MlpOut(l)]);
        if model.attn_input_norm(l).is_some() {
            cache.extend([HookPoint::Ln1Normalized(l), HookPoint::Ln1Scale(l)]);
        }
    }
    let taps = receiver_taps(layers);
    let batch = contrast.batch()?;
    let hooks = scorer.hooks().cache(cache.iter().copied()).grad_tap(taps.iter().copied());
    let out = model.forward(&batch, &hooks)?;
    let ld = scorer.eval(&out)?;
    let lds = ld.to_dtype(DType::F32)?.to_vec1::<f32>()?;

    let outs = sender_outputs(model, &out)?;
    let deltas: Vec<Tensor> = outs
        .iter()
        .map(|o| Ok((o.get(0)? - o.get(1)?)?.flatten_all()?))
        .collect::<Result<_>>()?;

    let rgrads: Vec<Tensor> = match method {
        Method::Taylor => {
            let grads = out.backward(&ld.get(0)?)?;
            receiver_grads(model, &out, &grads)?
                .into_iter()
                .map(|g| Ok(g.get(0)?.flatten_all()?))
                .collect::<Result<_>>()?
        }
        Method::IntegratedGradients { n_steps } => {
            let emb = out.cache.get(HookPoint::Embed)?;
            let (corr, delta) = (emb.get(1)?, (emb.get(0)? - emb.get(1)?)?);
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
            let sums = sum_in_order(kernels::map_in_two_streams(&chunks, chunk_grads))?;
            sums.unwrap_or_default()
                .into_iter()
                .map(|s| Ok((s / n_steps as f64)?))
                .collect::<Result<_>>()?
        }
    };

    // All scores at once: [senders, p·d] × [p·d, receivers].
    let s_mat = Tensor::stack(&deltas, 0)?.to_dtype(DType::F32)?;
    let r_mat = Tensor::stack(&rgrads, 0)?.to_dtype(DType::F32)?;
    let scores = s_mat.matmul(&r_mat.t()?)?.to_vec2::<f32>()?;
    let (snd, rcv) = (senders(model), receivers(model));
    let mut edges = Vec::new();
    for (i, u) in snd.iter().enumerate() {
        for (j, v) in rcv.iter().enumerate() {
            if is_edge(*u, *v, layers, c.parallel_block) {
                edges.push((i, j, scores[i][j]));
            }
        }
    }
    let values: Vec<f32> = edges.iter().map(|e| e.2).collect();
    let top_edges = order_by_magnitude(&values)
        .into_iter()
        .take(top_k)
        .map(|k| {
            let (i, j, s) = edges[k];
            Edge {
                sender: snd[i].name(),
                receiver: rcv[j].name(),
                score: s,
            }
        })
        .collect();
    Ok(EdgeAttribution {
        method,
        n_steps: method.n_steps(),
        metric: opts.metric.name().to_string(),
        clean_ld: lds[0],
        corrupted_ld: lds[1],
        n_edges: edges.len(),
        top_edges,
    })
}
