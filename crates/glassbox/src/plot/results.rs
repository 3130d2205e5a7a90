//! The pictures of each method's result.

use std::collections::{BTreeMap, HashSet};

use super::charts::{attention, bars, graph, heatmap, layer_head_axes, line_chart, token_text, Heatmap, Node, Series};
use super::svg::{hstack, vstack, Scale, Svg};
use crate::methods::analyze::Analysis;
use crate::methods::attention::AttentionPatterns;
use crate::methods::attribution::{Attribution, Component};
use crate::methods::composition::Composition;
use crate::methods::edges::EdgeAttribution;
use crate::methods::logit_lens::LogitLens;
use crate::methods::patching::Patching;
use crate::methods::path_patching::PathPatching;
use crate::methods::stability::Stability;
use crate::methods::token_attribution::TokenAttribution;

fn head_attrs(l: usize, h: usize) -> String {
    format!("data-layer=\"{l}\" data-head=\"{h}\"")
}

fn layer_attrs(l: usize, _: usize) -> String {
    format!("data-layer=\"{l}\"")
}

/// A layer × head heatmap of `values[layer][head]` on a diverging scale.
fn head_heatmap(title: &str, values: &[Vec<f32>], legend: &str, marked: HashSet<(usize, usize)>) -> Svg {
    let (rows, cols) = layer_head_axes(values.len(), values.iter().map(Vec::len).max().unwrap_or(0));
    heatmap(&Heatmap {
        title,
        row_label: "layer",
        col_label: "head",
        rows,
        cols,
        values,
        scale: Scale::diverging(values.iter().flatten()),
        legend,
        marked,
        cell_attrs: &head_attrs,
    })
}

/// A one-column heatmap of a figure per layer.
fn layer_column(title: &str, column: &str, values: &[f32], legend: &str) -> Svg {
    let grid: Vec<Vec<f32>> = values.iter().map(|&v| vec![v]).collect();
    heatmap(&Heatmap {
        title,
        row_label: "layer",
        col_label: "",
        rows: (0..values.len()).map(|l| format!("L{l}")).collect(),
        cols: vec![column.to_string()],
        values: &grid,
        scale: Scale::diverging(values),
        legend,
        marked: HashSet::new(),
        cell_attrs: &layer_attrs,
    })
}

/// `(layer, head)` of a name such as `L09H06`, `L9H6` (the library's one head parser,
/// `methods::Head`'s `FromStr`).
pub fn parse_head(name: &str) -> Option<(usize, usize)> {
    name.parse::<crate::methods::Head>().ok().map(|h| (h.layer, h.head))
}

/// The layer a graph node name belongs to: `LxxHyy`, `LxxHyy.q`, `LxxKVyy.k`, `MLPxx`.
fn node_layer(name: &str) -> Option<usize> {
    if let Some(rest) = name.strip_prefix("MLP") {
        return rest.parse().ok();
    }
    let rest = name.strip_prefix('L')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Head-type colours (attention head typing), and a default.
fn type_colour(kind: &str) -> &'static str {
    match kind {
        "previous_token" => "#fdb863",
        "induction" => "#b2abd2",
        "duplicate_token" => "#80cdc1",
        "bos_sink" => "#dddddd",
        "self" | "self_attention" => "#f6e8c3",
        "focused" => "#a6dba0",
        "diffuse" | "uniform" => "#e0e0e0",
        _ => "#c6dbef",
    }
}

/// The result of `attribute`.
pub fn attribution(a: &Attribution) -> Svg {
    let title = format!("{} attribution of {} per {}", a.method.name(), a.metric, component_name(a.component));
    match a.component {
        Component::Heads => head_heatmap(&title, &a.scores, "attribution", HashSet::new()),
        Component::Mlp | Component::AttnOut => {
            let col: Vec<f32> = a.scores.iter().map(|r| r.first().copied().unwrap_or(0.0)).collect();
            layer_column(&title, if a.component == Component::Mlp { "MLP" } else { "attn" }, &col, "attribution")
        }
    }
}

fn component_name(c: Component) -> &'static str {
    match c {
        Component::Heads => "head",
        Component::Mlp => "MLP",
        Component::AttnOut => "attention output",
    }
}

/// The result of `analyze`: the attribution heatmap with the circuit outlined, the circuit as
/// a graph (heads coloured by `head_types` when given, else by the sign of their attribution),
/// and the faithfulness figures.
pub fn analysis(a: &Analysis, head_types: Option<&BTreeMap<String, String>>) -> Svg {
    circuit_picture(a.method.name(), &a.metric, &a.attributions, &a.circuit, &a.faithfulness, head_types)
}

/// The analysis of a prompt set: the mean attributions, the circuit and its faithfulness.
pub fn set_analysis(a: &crate::methods::analyze::SetAnalysis) -> Svg {
    circuit_picture(a.method.name(), &a.metric, &a.attributions, &a.circuit, &a.faithfulness, None)
}

fn circuit_picture(method: &str, metric: &str, attributions: &BTreeMap<String, f32>, circuit: &[crate::methods::Head], f: &crate::methods::faithfulness::Faithfulness, head_types: Option<&BTreeMap<String, String>>) -> Svg {
    let parsed: Vec<((usize, usize), f32)> = attributions.iter().filter_map(|(k, &v)| parse_head(k).map(|lh| (lh, v))).collect();
    let n_layers = parsed.iter().map(|((l, _), _)| l + 1).max().unwrap_or(0);
    let n_heads = parsed.iter().map(|((_, h), _)| h + 1).max().unwrap_or(0);
    let mut grid = vec![vec![0.0f32; n_heads]; n_layers];
    for ((l, h), v) in &parsed {
        grid[*l][*h] = *v;
    }
    let marked: HashSet<(usize, usize)> = circuit.iter().map(|h| (h.layer, h.head)).collect();
    let heat = head_heatmap(&format!("Attribution ({}) — circuit outlined", method), &grid, metric, marked);

    let scale = Scale::diverging(parsed.iter().map(|(_, v)| v));
    let mut nodes: Vec<Node> = circuit
        .iter()
        .map(|h| {
            let name = h.to_string();
            let v = attributions.get(&name).copied().unwrap_or(0.0);
            let (colour, kind) = match head_types.and_then(|t| t.get(&name)) {
                Some(t) => (type_colour(t).to_string(), t.clone()),
                None => (scale.colour(v), String::new()),
            };
            Node { id: name, row: h.layer as f64 + 1.0, colour, kind }
        })
        .collect();
    nodes.push(Node { id: "logits".into(), row: n_layers as f64 + 1.0, colour: "#ffffff".into(), kind: String::new() });
    let edges: Vec<(String, String, f32)> = circuit.iter().map(|h| {
        let name = h.to_string();
        let v = attributions.get(&name).copied().unwrap_or(0.0);
        (name, "logits".to_string(), v)
    }).collect();
    let g = graph(&format!("Circuit: {} heads", circuit.len()), &nodes, &edges);

    let mut items = vec![
        ("sufficiency".to_string(), f.sufficiency),
        ("comprehensiveness".to_string(), f.comprehensiveness),
        ("F1".to_string(), f.f1),
    ];
    if let Some(t) = f.taylor_sufficiency {
        items.push(("Taylor sufficiency (approx.)".to_string(), t));
    }
    let b = bars(&format!("Faithfulness: {}", f.category), &items, Some(1.0));
    hstack("analyze", &[heat, vstack("circuit", &[g, b], 10.0)], 16.0)
}

/// The result of exact patching: the normalised effect of each head and each MLP.
pub fn patching(p: &Patching) -> Svg {
    let heads = head_heatmap(&format!("Exact patching ({}): effect per head", direction(p)), &p.head_effects, "effect", HashSet::new());
    let mlps = layer_column("per MLP", "MLP", &p.mlp_effects, "effect");
    hstack("patch", &[heads, mlps], 12.0)
}

fn direction(p: &Patching) -> &'static str {
    match p.direction {
        crate::methods::patching::Direction::IntoClean => "corrupted into clean",
        crate::methods::patching::Direction::IntoCorrupted => "clean into corrupted",
    }
}

/// The result of path patching: each sender head's effect on the receiver.
pub fn path_patching(p: &PathPatching) -> Svg {
    let n_layers = p.paths.iter().map(|e| e.sender.layer + 1).max().unwrap_or(0);
    let n_heads = p.paths.iter().map(|e| e.sender.head + 1).max().unwrap_or(0);
    let mut grid = vec![vec![0.0f32; n_heads]; n_layers];
    let mut present = HashSet::new();
    for e in &p.paths {
        grid[e.sender.layer][e.sender.head] = e.effect;
        present.insert((e.sender.layer, e.sender.head));
    }
    let attrs = move |l: usize, h: usize| -> String {
        if present.contains(&(l, h)) {
            head_attrs(l, h)
        } else {
            format!("data-layer=\"{l}\" data-head=\"{h}\" data-absent=\"1\"")
        }
    };
    let receiver = serde_json::to_string(&p.receiver).unwrap_or_default().replace('"', "");
    let (rows, cols) = layer_head_axes(n_layers, n_heads);
    heatmap(&Heatmap {
        title: &format!("Path patching to {receiver}: effect per sender"),
        row_label: "layer",
        col_label: "head",
        rows,
        cols,
        values: &grid,
        scale: Scale::diverging(grid.iter().flatten()),
        legend: "effect",
        marked: HashSet::new(),
        cell_attrs: &attrs,
    })
}

/// `evaluate`: faithfulness against circuit size (signed and absolute scores), 1 and 0 marked.
pub fn circuit_evaluation(r: &crate::methods::evaluate::CircuitEvaluation) -> Svg {
    let xs: Vec<String> = r.fractions.iter().map(|f| format!("{}%", f * 100.0)).collect();
    let title = format!("Faithfulness of {} circuits (CPR {:.3}, CMD {:.3})", r.method, r.cpr.mean, r.cmd.mean);
    line_chart(
        &title,
        "circuit size (share of edges)",
        "faithfulness f",
        &xs,
        &[
            Series { name: "signed scores (CPR)", values: &r.signed.faithfulness, colour: "#b2182b" },
            Series { name: "absolute scores (CMD)", values: &r.absolute.faithfulness, colour: "#2166ac" },
        ],
        &[("full model", 1.0), ("every edge patched", 0.0)],
    )
}

/// The logit lens: the logit difference after each layer, and each head's direct effect.
pub fn logit_lens(l: &LogitLens) -> Svg {
    let xs: Vec<String> = std::iter::once("embed".to_string()).chain((0..l.logit_diffs.len().saturating_sub(1)).map(|i| format!("L{i}"))).collect();
    let line = line_chart(
        "Logit lens: logit difference after each layer",
        "residual stream after",
        "logit difference",
        &xs,
        &[Series { name: "logit lens", values: &l.logit_diffs, colour: "#b2182b" }],
        &[("final", l.final_ld), ("zero", 0.0)],
    );
    let heads = head_heatmap("Direct effect of each head", &l.head_direct_effects, "direct effect", HashSet::new());
    let mlps = layer_column("of each MLP", "MLP", &l.mlp_direct_effects, "direct effect");
    vstack("logit_lens", &[line, hstack("direct_effects", &[heads, mlps], 12.0)], 10.0)
}

/// Attention patterns, three heads to a row.
pub fn attention_patterns(a: &AttentionPatterns) -> Svg {
    let panels: Vec<Svg> = a
        .heads
        .iter()
        .map(|h| attention(&format!("{} ({})", h.name, h.head_type), &h.name, &a.tokens, &h.pattern))
        .collect();
    let rows: Vec<Svg> = panels.chunks(3).map(|c| hstack("attention_row", c, 12.0)).collect();
    vstack("attention_patterns", &rows, 12.0)
}

/// Edge attribution: the top edges as a graph from the embeddings (bottom) to the logits (top).
pub fn edges(e: &EdgeAttribution) -> Svg {
    let top: Vec<&crate::methods::edges::Edge> = e.top_edges.iter().take(30).collect();
    let n_layers = top.iter().flat_map(|x| [node_layer(&x.sender), node_layer(&x.receiver)]).flatten().max().map_or(0, |l| l + 1);
    let row = |name: &str| -> f64 {
        match name {
            "embed" => 0.0,
            "logits" => 2.0 * n_layers as f64 + 1.0,
            n if n.starts_with("MLP") => node_layer(n).map_or(0.0, |l| 2.0 * l as f64 + 2.0),
            n => node_layer(n).map_or(0.0, |l| 2.0 * l as f64 + 1.0),
        }
    };
    let mut names: Vec<&str> = top.iter().flat_map(|x| [x.sender.as_str(), x.receiver.as_str()]).collect();
    names.sort_unstable();
    names.dedup();
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| {
            let colour = if n.starts_with("MLP") { "#fee090" } else if *n == "embed" || *n == "logits" { "#ffffff" } else { "#c6dbef" };
            Node { id: n.to_string(), row: row(n), colour: colour.into(), kind: String::new() }
        })
        .collect();
    let edges: Vec<(String, String, f32)> = top.iter().map(|x| (x.sender.clone(), x.receiver.clone(), x.score)).collect();
    graph(&format!("Top {} of {} edges ({}, {})", top.len(), e.n_edges, e.method.name(), e.metric), &nodes, &edges)
}

/// Token saliency as coloured text.
pub fn token_attribution(t: &TokenAttribution) -> Svg {
    let tokens: Vec<String> = t.tokens.iter().map(|x| x.token_str.clone()).collect();
    let scores: Vec<f32> = t.tokens.iter().map(|x| x.attribution).collect();
    token_text(&format!("Token attribution ({})", t.method), &tokens, &scores, "attribution")
}

/// Attribution stability per head.
pub fn stability(s: &Stability) -> Svg {
    let (rows, cols) = layer_head_axes(s.stability.len(), s.stability.iter().map(Vec::len).max().unwrap_or(0));
    heatmap(&Heatmap {
        title: &format!("Attribution stability over {} corruptions (τ-b {:.3})", s.n_corruptions, s.rank_consistency),
        row_label: "layer",
        col_label: "head",
        rows,
        cols,
        values: &s.stability,
        scale: Scale::sequential(s.stability.iter().flatten()),
        legend: "stability",
        marked: HashSet::new(),
        cell_attrs: &head_attrs,
    })
}

/// Composition scores: one sender × receiver heatmap for each of Q, K and V.
pub fn composition(c: &Composition) -> Svg {
    let mut senders: Vec<&str> = c.combined_edges.iter().map(|e| e.sender.as_str()).collect();
    let mut receivers: Vec<&str> = c.combined_edges.iter().map(|e| e.receiver.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    receivers.sort_unstable();
    receivers.dedup();
    let panel = |kind: &str, pick: &dyn Fn(&crate::methods::composition::CompositionEdge) -> f32| -> Svg {
        let mut grid = vec![vec![0.0f32; receivers.len()]; senders.len()];
        for e in &c.combined_edges {
            if let (Some(r), Some(k)) = (senders.iter().position(|s| *s == e.sender), receivers.iter().position(|s| *s == e.receiver)) {
                grid[r][k] = pick(e);
            }
        }
        let (s, r) = (senders.clone(), receivers.clone());
        let attrs = move |row: usize, col: usize| format!("data-sender=\"{}\" data-receiver=\"{}\"", s[row], r[col]);
        heatmap(&Heatmap {
            title: &format!("{kind}-composition"),
            row_label: "sender",
            col_label: "receiver",
            rows: senders.iter().map(|s| s.to_string()).collect(),
            cols: receivers.iter().map(|s| s.to_string()).collect(),
            values: &grid,
            scale: Scale::Sequential { max: 1.0 },
            legend: "score",
            marked: HashSet::new(),
            cell_attrs: &attrs,
        })
    };
    hstack("composition", &[panel("Q", &|e| e.q), panel("K", &|e| e.k), panel("V", &|e| e.v)], 12.0)
}

/// SAE feature attribution: the top features' gradient × activation (and exact effects) as bars.
pub fn sae_attribution(r: &crate::methods::sae_attribution::SaeAttribution) -> Svg {
    let items: Vec<(String, f32)> = r.top_features.iter().take(25).map(|f| (format!("L{} #{}", f.layer, f.feature_id), f.ld_contribution)).collect();
    bars(&format!("SAE features at {}: gradient × activation of {}", r.hook, r.metric), &items, None)
}

/// An attribution graph (`data-kind="attribution-graph"`): the kept nodes on a grid of
/// positions (columns, the prompt's tokens below) and layers (rows: embeddings at the bottom,
/// the target logits on top), circles sized by influence (features blue, errors grey, tokens
/// green, logits orange), links as lines whose width grows with |weight| (red positive, blue
/// negative). Nodes are `circle.node` with `data-id`, `data-layer`, `data-pos`,
/// `data-activation`, `data-influence` and a tooltip; links `line.edge` with `data-from`,
/// `data-to`, `data-score`.
pub fn attribution_graph(g: &crate::methods::graph::AttributionGraph) -> Svg {
    use super::svg::{esc, val, Anchor};
    let n_pos = g.metadata.prompt_tokens.len().max(1);
    let n_layers = g.glassbox.n_layers;
    let row_of = |layer: &str| -> usize {
        match layer {
            "E" => 0,
            l => l.parse::<usize>().map_or(0, |l| (l + 1).min(n_layers + 1)),
        }
    };
    let (col_w, row_h, left, top) = (64.0, 34.0, 60.0, 46.0);
    let width = left + col_w * n_pos as f64 + 20.0;
    let height = top + row_h * (n_layers + 2) as f64 + 90.0;
    let mut svg = Svg::new("attribution-graph", width, height);
    let s = &g.glassbox;
    let target = s.targets.first().map_or(String::new(), |t| t.token.clone());
    svg.title(&format!("Attribution graph of {target}: replacement {:.3}, completeness {:.3}", s.replacement_score, s.completeness_score));
    // Each cell's nodes side by side.
    let mut per_cell: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        per_cell.entry((row_of(&n.layer), n.ctx_idx)).or_default().push(i);
    }
    let mut at: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for ((row, pos), members) in &per_cell {
        let y = top + row_h * (n_layers + 1 - row) as f64 + row_h / 2.0;
        for (k, &i) in members.iter().enumerate() {
            let x = left + col_w * *pos as f64 + col_w * (k as f64 + 1.0) / (members.len() as f64 + 1.0);
            at.insert(g.nodes[i].node_id.as_str(), (x, y));
        }
    }
    for r in 0..n_layers + 2 {
        let y = top + row_h * (n_layers + 1 - r) as f64 + row_h / 2.0;
        let label = match r {
            0 => "emb".to_string(),
            r if r == n_layers + 1 => "logit".to_string(),
            r => format!("L{}", r - 1),
        };
        svg.text(left - 8.0, y + 3.0, &label, Anchor::End, 9.0, "");
        svg.line((left, y), (width - 20.0, y), "#eeeeee", 0.5, "");
    }
    let max = g.links.iter().fold(0.0f32, |m, l| m.max(l.weight.abs())).max(1e-12);
    let scale = Scale::Diverging { max };
    for l in &g.links {
        if let (Some(&a), Some(&b)) = (at.get(l.source.as_str()), at.get(l.target.as_str())) {
            let w = 0.3 + 3.0 * f64::from(l.weight.abs() / max);
            let colour = scale.colour(if l.weight >= 0.0 { max } else { -max });
            let attrs = format!("class=\"edge\" data-from=\"{}\" data-to=\"{}\" data-score=\"{}\" stroke-opacity=\"0.45\"", esc(&l.source), esc(&l.target), val(l.weight));
            svg.line(a, b, &colour, w, &attrs);
        }
    }
    for n in &g.nodes {
        let Some(&(x, y)) = at.get(n.node_id.as_str()) else { continue };
        let importance = 1.0 - f64::from(n.influence.unwrap_or(0.0)).clamp(0.0, 1.0);
        let r = 2.5 + 6.0 * importance;
        let fill = match n.feature_type.as_str() {
            "embedding" => "#1b9e77",
            "mlp reconstruction error" => "#999999",
            "logit" => "#d95f02",
            _ => "#4a6fd1",
        };
        let tok = g.metadata.prompt_tokens.get(n.ctx_idx).cloned().unwrap_or_default();
        let tip = format!(
            "{} ({}), layer {}, position {} {:?}{}{}",
            n.node_id,
            n.feature_type,
            n.layer,
            n.ctx_idx,
            tok,
            n.activation.map_or(String::new(), |a| format!(", activation {a:.3}")),
            n.influence.map_or(String::new(), |i| format!(", cumulative influence {i:.3}"))
        );
        let attrs = format!(
            "class=\"node\" data-id=\"{}\" data-layer=\"{}\" data-pos=\"{}\" data-activation=\"{}\" data-influence=\"{}\"",
            esc(&n.node_id),
            esc(&n.layer),
            n.ctx_idx,
            n.activation.map_or(String::new(), val),
            n.influence.map_or(String::new(), val)
        );
        svg.circle((x, y, r), fill, "#333333", &attrs, Some(&tip));
    }
    let base = top + row_h * (n_layers + 2) as f64 + 8.0;
    for (p, t) in g.metadata.prompt_tokens.iter().enumerate() {
        let x = left + col_w * (p as f64 + 0.5);
        let t: String = t.chars().take(12).collect();
        svg.text_rotated(x + 3.0, base, &t, Anchor::End, 9.0, -50.0);
    }
    svg
}
