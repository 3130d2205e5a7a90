//! Edge scores in MIB's circuit-track JSON (`Graph.to_json` of MIB's EAP-IG code): `cfg`
//! (`n_layers`, `n_heads`, `parallel_attn_mlp`, `d_model`), `nodes` (`input`, `a{l}.h{h}`,
//! `m{l}`, `logits`, each `{"in_graph": true}`) and `edges` (`input->a0.h1<q>`, `a0.h1->m0`,
//! `m3->logits`, ... each `{"score": s, "in_graph": true}`), so a user can hand glassbox's scores
//! to MIB's evaluation (which takes the top edges itself).
//!
//! MIB ungroups grouped-query attention: every query head has its own key and value inputs.
//! glassbox scores a key/value head's input once for its group, so writing gives each query
//! head of the group that score, and reading averages the group's scores.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::methods::edges::{EdgeGraph, Receiver, Sender};
use crate::model::Model;

fn sender_name(s: Sender) -> String {
    match s {
        Sender::Embed => "input".into(),
        Sender::Head(h) => format!("a{}.h{}", h.layer, h.head),
        Sender::Mlp(l) => format!("m{l}"),
    }
}

/// MIB's names of a receiver (one per query head of a key/value group).
fn receiver_names(r: Receiver, group: usize) -> Vec<String> {
    match r {
        Receiver::Q(h) => vec![format!("a{}.h{}<q>", h.layer, h.head)],
        Receiver::K(h) => (h.head * group..(h.head + 1) * group).map(|q| format!("a{}.h{q}<k>", h.layer)).collect(),
        Receiver::V(h) => (h.head * group..(h.head + 1) * group).map(|q| format!("a{}.h{q}<v>", h.layer)).collect(),
        Receiver::Mlp(l) => vec![format!("m{l}")],
        Receiver::Logits => vec!["logits".into()],
    }
}

/// The scores of `graph`'s edges as MIB's JSON.
pub fn to_json(model: &Model, graph: &EdgeGraph, scores: &[f32]) -> Value {
    let c = model.config();
    let mut nodes = BTreeMap::new();
    nodes.insert("input".to_string(), json!({"in_graph": true}));
    for l in 0..c.n_layers {
        for h in 0..c.n_heads {
            nodes.insert(format!("a{l}.h{h}"), json!({"in_graph": true}));
        }
        nodes.insert(format!("m{l}"), json!({"in_graph": true}));
    }
    nodes.insert("logits".to_string(), json!({"in_graph": true}));
    let edges: BTreeMap<String, Value> = edge_index(model, graph).into_iter().map(|(name, e)| (name, json!({"score": scores[e], "in_graph": true}))).collect();
    json!({
        "cfg": {"n_layers": c.n_layers, "n_heads": c.n_heads, "parallel_attn_mlp": c.parallel_block, "d_model": c.d_model},
        "nodes": nodes,
        "edges": edges,
    })
}

/// Scores in `graph`'s order from MIB's JSON (`edges` with `score`), and how many of the
/// graph's edges it did not give.
pub fn from_json(model: &Model, graph: &EdgeGraph, value: &Value, path: &str) -> Result<(Vec<f32>, usize)> {
    let c = model.config();
    if let Some(cfg) = value.get("cfg") {
        let (l, h) = (cfg.get("n_layers").and_then(Value::as_u64), cfg.get("n_heads").and_then(Value::as_u64));
        if l != Some(c.n_layers as u64) || h != Some(c.n_heads as u64) {
            return Err(Error::Invalid(format!(
                "{path}: MIB graph of {l:?} layers and {h:?} heads; this model has {} and {}",
                c.n_layers, c.n_heads
            )));
        }
    }
    let edges = value.get("edges").and_then(Value::as_object).ok_or_else(|| Error::Invalid(format!("{path}: no `edges` object")))?;
    let group = c.group_size();
    let mut scores = vec![0f32; graph.edges.len()];
    let mut missing = 0;
    for (e, &(i, j)) in graph.edges.iter().enumerate() {
        let s = sender_name(graph.senders[i]);
        let (mut sum, mut n) = (0f64, 0usize);
        for r in receiver_names(graph.receivers[j], group) {
            if let Some(x) = edges.get(&format!("{s}->{r}")).and_then(|v| v.get("score")).and_then(Value::as_f64) {
                if !x.is_finite() {
                    return Err(Error::Invalid(format!("{path}: edge {s}->{r} has a score that is not a finite number")));
                }
                sum += x;
                n += 1;
            }
        }
        if n == 0 {
            missing += 1;
        } else {
            scores[e] = (sum / n as f64) as f32;
        }
    }
    if missing == graph.edges.len() {
        return Err(Error::Invalid(format!("{path}: none of its edges is an edge of this model (MIB names: input->a0.h1<q>, a0.h1->m0, m3->logits)")));
    }
    Ok((scores, missing))
}

/// Each MIB edge name of `graph` (a key/value input once per query head of its group) with the
/// index of its glassbox edge.
pub fn edge_index(model: &Model, graph: &EdgeGraph) -> std::collections::HashMap<String, usize> {
    let group = model.config().group_size();
    let mut index = std::collections::HashMap::new();
    for (e, &(i, j)) in graph.edges.iter().enumerate() {
        let s = sender_name(graph.senders[i]);
        for r in receiver_names(graph.receivers[j], group) {
            index.insert(format!("{s}->{r}"), e);
        }
    }
    index
}

/// The edges of `graph` that a circuit file puts in the circuit: MIB's JSON (`edges` with
/// `in_graph`, as MIB writes InterpBench's and tracr's ground truths), or a JSON list of edge
/// names (glassbox's `embed->L00H00.q` or MIB's `input->a0.h0<q>`). A glassbox edge is in the
/// circuit when any of its MIB names is.
pub fn circuit_edges(model: &Model, graph: &EdgeGraph, value: &Value, path: &str) -> Result<Vec<bool>> {
    let mut index = edge_index(model, graph);
    for e in 0..graph.edges.len() {
        index.insert(graph.name(e), e);
    }
    let unknown = |name: &str| Error::Invalid(format!("{path}: `{}` is not an edge of this model (MIB names: input->a0.h1<q>, a0.h1->m0, m3->logits; glassbox names: embed->L00H01.q, L00H01->MLP00)", crate::error::printable(&name)));
    let mut inside = vec![false; graph.edges.len()];
    match value {
        Value::Object(o) => {
            let edges = o.get("edges").and_then(Value::as_object).ok_or_else(|| Error::Invalid(format!("{path}: no `edges` object (MIB's circuit JSON) and not a list of edge names")))?;
            for (name, v) in edges {
                let &e = index.get(name).ok_or_else(|| unknown(name))?;
                let flag = v.get("in_graph").and_then(Value::as_bool).ok_or_else(|| Error::Invalid(format!("{path}: edge {} has no boolean `in_graph`", crate::error::printable(name))))?;
                inside[e] |= flag;
            }
        }
        Value::Array(names) => {
            for n in names {
                let name = n.as_str().ok_or_else(|| Error::Invalid(format!("{path}: a list of edge names holds {n}, not a string")))?;
                inside[*index.get(name).ok_or_else(|| unknown(name))?] = true;
            }
        }
        _ => return Err(Error::Invalid(format!("{path}: give MIB's circuit JSON or a list of edge names"))),
    }
    Ok(inside)
}
