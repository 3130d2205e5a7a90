//! Exact edge-level counterfactual patching: the metric of the clean prompt when every edge
//! outside a circuit carries its sender's output from the corrupted run (MIB's "patching"
//! intervention), for many circuits at once (one batch row per circuit).
//!
//! A receiver's input is the sum of its senders' outputs where each sender outside the
//! circuit contributes its output from the corrupted run: `input_r = resid − Σ_{s ∉ C(r)}
//! (out_s − out_s,corr)`, or equally `input_r = resid_corr + Σ_{s ∈ C(r)} (out_s − out_s,corr)`
//! (the residual stream is the sum of its senders' outputs plus terms equal in both runs);
//! each receiver of each row takes whichever form lists fewer senders. Senders inside the
//! circuit keep the output they compute in this very run (from their own, possibly patched,
//! inputs). The senders' outputs are read as the run goes (the embeddings at
//! `hook_resid_pre` of layer 0, each head's result from `hook_z`, each MLP's `hook_mlp_out`),
//! and each receiver's input is rewritten where it reads the stream: the per-head inputs
//! `hook_q_input`/`hook_k_input`/`hook_v_input`, `hook_mlp_in`, and the last
//! `hook_resid_post` for the logits.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::methods::edges::{EdgeGraph, Receiver, Sender};
use crate::methods::{Contrast, Scorer};
use crate::model::{Action, Batch, HookPoint, Intervention, Model};

/// The group of receivers that read the stream at one hook point (`4l` queries, `4l + 1` keys,
/// `4l + 2` values, `4l + 3` the MLP of layer `l`, `4 · n_layers` the logits) and the
/// receiver's index in it.
fn receiver_group(r: Receiver, n_layers: usize) -> (usize, usize) {
    match r {
        Receiver::Q(h) => (4 * h.layer, h.head),
        Receiver::K(h) => (4 * h.layer + 1, h.head),
        Receiver::V(h) => (4 * h.layer + 2, h.head),
        Receiver::Mlp(l) => (4 * l + 3, 0),
        Receiver::Logits => (4 * n_layers, 0),
    }
}

/// The block of senders a sender's output belongs to, and its index there: block 0 the
/// embeddings, `1 + 2l` layer `l`'s heads, `2 + 2l` its MLP.
fn sender_block(s: Sender) -> (usize, usize) {
    match s {
        Sender::Embed => (0, 0),
        Sender::Head(h) => (1 + 2 * h.layer, h.head),
        Sender::Mlp(l) => (2 + 2 * l, 0),
    }
}

fn group_point(g: usize, n_layers: usize) -> HookPoint {
    if g == 4 * n_layers {
        return HookPoint::ResidPost(n_layers - 1);
    }
    let l = g / 4;
    match g % 4 {
        0 => HookPoint::QInput(l),
        1 => HookPoint::KInput(l),
        2 => HookPoint::VInput(l),
        _ => HookPoint::MlpIn(l),
    }
}

/// Sizes of everything the patched runs hold: the senders' blocks and the receivers' groups.
struct Layout {
    n_layers: usize,
    block_size: Vec<usize>,
    group_size: Vec<usize>,
}

impl Layout {
    fn of(model: &Model) -> Layout {
        let c = model.config();
        let mut block_size = vec![1];
        for _ in 0..c.n_layers {
            block_size.extend([c.n_heads, 1]);
        }
        let mut group_size = Vec::new();
        for _ in 0..c.n_layers {
            group_size.extend([c.n_heads, c.n_kv_heads, c.n_kv_heads, 1]);
        }
        group_size.push(1);
        Layout { n_layers: c.n_layers, block_size, group_size }
    }
}

/// Error unless edge-level patching is exact for this model: the residual stream must be the
/// sum of its senders' outputs (no norm after each residual addition).
pub fn check_model(model: &Model) -> Result<()> {
    if model.config().variants.post_ln {
        return Err(Error::Invalid(
            "edge-level patching needs a residual stream that is the sum of its senders' outputs; this model normalises after each residual addition (post-LN)".into(),
        ));
    }
    Ok(())
}

/// What the corrupted run gives: each sender block's outputs `[n, p·d]` (flattened, f32)
/// and, for each receiver group, the residual stream where it reads it `[p·d]`.
struct Corrupted {
    blocks: Vec<Vec<f32>>,
    reads: Vec<Vec<f32>>,
}

fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn corrupted_run(model: &Model, contrast: &Contrast, scorer: &Scorer) -> Result<Corrupted> {
    let c = model.config();
    let mut points = vec![];
    for l in 0..c.n_layers {
        points.extend([HookPoint::ResidPre(l), HookPoint::Z(l), HookPoint::MlpIn(l), HookPoint::MlpOut(l)]);
    }
    points.push(HookPoint::ResidPost(c.n_layers - 1));
    let run = model.forward(&Batch::new(std::slice::from_ref(&contrast.corrupted))?, &scorer.hooks().cache(points))?;
    let get = |p: HookPoint| run.cache.get(p);
    let mut blocks = vec![f32s(&flat_block(get(HookPoint::ResidPre(0))?.unsqueeze(2)?)?)?];
    let mut reads = Vec::new();
    for l in 0..c.n_layers {
        blocks.push(f32s(&flat_block(head_outputs(model, l, get(HookPoint::Z(l))?)?)?)?);
        blocks.push(f32s(&flat_block(get(HookPoint::MlpOut(l))?.unsqueeze(2)?)?)?);
        let pre = f32s(get(HookPoint::ResidPre(l))?)?;
        reads.extend([pre.clone(), pre.clone(), pre, f32s(get(HookPoint::MlpIn(l))?)?]);
    }
    reads.push(f32s(get(HookPoint::ResidPost(c.n_layers - 1))?)?);
    Ok(Corrupted { blocks, reads })
}

/// Each head's output as it joins the residual stream, `[b, p, heads, d]`.
fn head_outputs(model: &Model, layer: usize, z: &Tensor) -> Result<Tensor> {
    model.head_results(layer, z, model.attn_post_scale(layer, z)?.as_ref())
}

/// `[b, p, n, d]` → `[b, n, p·d]`.
fn flat_block(x: Tensor) -> Result<Tensor> {
    let (b, p, n, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, n, p * d))?)
}

/// How one receiver of one row gets its input: from the corrupted residual plus the changes
/// of the senders whose edges are in the circuit (`Kept`), or from the current residual minus
/// the changes of those outside it (`Removed`), whichever lists fewer senders.
enum Plan {
    Kept(Vec<(usize, usize)>),
    Removed(Vec<(usize, usize)>),
}

/// The plans of one batch of circuits: `plans[g][row · group size + i]`.
fn plans(graph: &EdgeGraph, layout: &Layout, circuits: &[&[bool]]) -> Vec<Vec<Plan>> {
    let b = circuits.len();
    let groups = layout.group_size.len();
    let mut kept: Vec<Vec<Vec<(usize, usize)>>> = (0..groups).map(|g| vec![Vec::new(); b * layout.group_size[g]]).collect();
    let mut removed = kept.clone();
    for (row, circuit) in circuits.iter().enumerate() {
        for (e, &(i, j)) in graph.edges.iter().enumerate() {
            let (g, gi) = receiver_group(graph.receivers[j], layout.n_layers);
            let list = if circuit[e] { &mut kept } else { &mut removed };
            list[g][row * layout.group_size[g] + gi].push(sender_block(graph.senders[i]));
        }
    }
    kept.into_iter()
        .zip(removed)
        .map(|(k, r)| k.into_iter().zip(r).map(|(k, r)| if k.len() <= r.len() { Plan::Kept(k) } else { Plan::Removed(r) }).collect())
        .collect()
}

/// The metric of the clean prompt under each circuit (`circuits[k][e]`: edge `e` of `graph` is
/// in circuit `k`), one batch row per circuit.
fn run_circuits(model: &Arc<Model>, contrast: &Contrast, scorer: &Scorer, graph: &EdgeGraph, corrupted: &Arc<Corrupted>, circuits: &[&[bool]]) -> Result<Vec<f32>> {
    let layout = Layout::of(model);
    let n_layers = layout.n_layers;
    let b = circuits.len();
    let (p, d) = (contrast.n_pos(), model.config().d_model);
    let plans = Arc::new(plans(graph, &layout, circuits));
    // The current run's output minus the corrupted one, per sender block, `[b, n, p·d]`.
    let deltas: Arc<Mutex<Vec<Vec<f32>>>> = Arc::new(Mutex::new(vec![Vec::new(); layout.block_size.len()]));
    let store = {
        let (deltas, corrupted) = (deltas.clone(), corrupted.clone());
        move |block: usize, current: Tensor| -> Result<()> {
            let mut v = f32s(&current)?;
            let corr = &corrupted.blocks[block];
            for row in v.chunks_exact_mut(corr.len()) {
                for (x, c) in row.iter_mut().zip(corr) {
                    *x -= c;
                }
            }
            let mut slot = deltas.lock().map_err(|_| Error::Invalid("edge patching: a hook panicked".into()))?;
            slot[block] = v;
            Ok(())
        }
    };
    let mut hooks = scorer.hooks();
    {
        let store = store.clone();
        hooks = hooks.hook(HookPoint::ResidPre(0), move |x, _| {
            store(0, flat_block(x.unsqueeze(2)?)?)?;
            Ok(x.clone())
        });
    }
    for l in 0..n_layers {
        let (store_z, store_m, m) = (store.clone(), store.clone(), model.clone());
        hooks = hooks.hook(HookPoint::Z(l), move |z, _| {
            store_z(1 + 2 * l, flat_block(head_outputs(&m, l, z)?)?)?;
            Ok(z.clone())
        });
        hooks = hooks.hook(HookPoint::MlpOut(l), move |x, _| {
            store_m(2 + 2 * l, flat_block(x.unsqueeze(2)?)?)?;
            Ok(x.clone())
        });
    }
    let block_size = Arc::new(layout.block_size.clone());
    for g in 0..layout.group_size.len() {
        let (plans, deltas, corrupted, block_size) = (plans.clone(), deltas.clone(), corrupted.clone(), block_size.clone());
        let gs = layout.group_size[g];
        let point = group_point(g, n_layers);
        hooks = hooks.intervene(Intervention::new(
            point,
            Action::closure(move |x, _| {
                let slot = deltas.lock().map_err(|_| Error::Invalid("edge patching: a hook panicked".into()))?;
                let mut v = f32s(x)?; // [b, p, gs, d] (or [b, p, d] for a group of one)
                let base = &corrupted.reads[g];
                let mut acc = vec![0f32; d];
                for row in 0..b {
                    for gi in 0..gs {
                        let plan = &plans[g][row * gs + gi];
                        for pos in 0..p {
                            let at = ((row * p + pos) * gs + gi) * d;
                            let (list, sign) = match plan {
                                Plan::Kept(list) => {
                                    acc.copy_from_slice(&base[pos * d..(pos + 1) * d]);
                                    (list, 1f32)
                                }
                                Plan::Removed(list) => {
                                    acc.copy_from_slice(&v[at..at + d]);
                                    (list, -1f32)
                                }
                            };
                            for &(blk, si) in list {
                                let delta = &slot[blk];
                                if delta.is_empty() {
                                    return Err(Error::Invalid(format!("edge patching: sender block {blk} not computed before {point}")));
                                }
                                let off = ((row * block_size[blk] + si) * p + pos) * d;
                                for (a, x) in acc.iter_mut().zip(&delta[off..off + d]) {
                                    *a += sign * x;
                                }
                            }
                            v[at..at + d].copy_from_slice(&acc);
                        }
                    }
                }
                Ok(Tensor::from_vec(v, x.dims(), x.device())?.to_dtype(x.dtype())?)
            }),
        ));
    }
    let batch = Batch::new(&vec![contrast.clean.clone(); b])?;
    let out = model.forward(&batch, &hooks)?;
    scorer.values(&out)
}

/// How many circuits one batch holds: the sender outputs of a batch take
/// `rows × senders × positions × d_model` floats; keep them near 256 MB.
fn rows_per_batch(model: &Model, n_pos: usize) -> usize {
    let c = model.config();
    let senders = 1 + c.n_layers * (c.n_heads + 1);
    let per_row = senders.saturating_mul(n_pos).saturating_mul(c.d_model).saturating_mul(4).max(1);
    ((256usize << 20) / per_row).clamp(1, 64)
}

/// The metric of the clean prompt of `contrast` under each circuit, exactly (edges outside a
/// circuit patched from the corrupted run), in batches of circuits; `progress(n)` after each
/// batch of `n` circuits.
pub fn circuit_metrics(model: &Model, contrast: &Contrast, scorer: &Scorer, graph: &EdgeGraph, circuits: &[&[bool]], progress: &mut dyn FnMut(usize)) -> Result<Vec<f32>> {
    check_model(model)?;
    if let Some(c) = circuits.iter().find(|c| c.len() != graph.edges.len()) {
        return Err(Error::Invalid(format!("a circuit of {} edges for a graph of {}", c.len(), graph.edges.len())));
    }
    let model = Arc::new(model.clone());
    let corrupted = Arc::new(corrupted_run(&model, contrast, scorer)?);
    let per = rows_per_batch(&model, contrast.n_pos());
    let mut out = Vec::with_capacity(circuits.len());
    for chunk in circuits.chunks(per) {
        crate::controls::check()?;
        out.extend(run_circuits(&model, contrast, scorer, graph, &corrupted, chunk)?);
        progress(chunk.len());
    }
    Ok(out)
}
