//! The chart types: a heatmap with labelled axes and a legend, a line chart with reference
//! lines, an attention pattern over tokens, a layered graph, and coloured text. Every mark
//! carries its figure (`data-value`) and its coordinates (`data-layer`, `data-head`, ...).

use std::collections::{BTreeMap, HashSet};

use super::svg::{esc, legend, short, val, Anchor, Scale, Svg};

/// A heatmap: `values[row][col]`, rows top to bottom. `cell_attrs(row, col)` gives each cell's
/// data attributes; `marked` cells get a black outline (e.g. the circuit's heads).
pub struct Heatmap<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Axis label of the rows (left).
    pub row_label: &'a str,
    /// Axis label of the columns (bottom).
    pub col_label: &'a str,
    /// Row names, top to bottom.
    pub rows: Vec<String>,
    /// Column names, left to right.
    pub cols: Vec<String>,
    /// The figures, `[row][col]`.
    pub values: &'a [Vec<f32>],
    /// The colour scale.
    pub scale: Scale,
    /// What the colour means (the legend's label).
    pub legend: &'a str,
    /// Cells outlined in black.
    pub marked: HashSet<(usize, usize)>,
    /// Data attributes of a cell.
    pub cell_attrs: &'a dyn Fn(usize, usize) -> String,
}

/// Draws a heatmap (`data-kind="heatmap"`; cells are `rect.cell` with `data-value`).
pub fn heatmap(h: &Heatmap) -> Svg {
    let n_rows = h.values.len();
    let n_cols = h.values.iter().map(Vec::len).max().unwrap_or(0);
    let cell = (360.0 / n_cols.max(1) as f64).clamp(8.0, 28.0).min((520.0 / n_rows.max(1) as f64).clamp(6.0, 28.0));
    let left = 62.0;
    let top = 34.0;
    let grid_w = cell * n_cols as f64;
    let grid_h = cell * n_rows as f64;
    let width = left + grid_w + 20.0 + 70.0;
    let height = top + grid_h + 46.0;
    let mut svg = Svg::new("heatmap", width.max(260.0), height.max(140.0));
    svg.title(h.title);
    let label_every = (12.0 / cell).ceil().max(1.0) as usize;
    for (r, row) in h.values.iter().enumerate() {
        let y = top + cell * r as f64;
        if r % label_every == 0 {
            svg.text(left - 4.0, y + cell * 0.5 + 3.5, h.rows.get(r).map_or("", String::as_str), Anchor::End, 10.0, "class=\"row-label\"");
        }
        for (c, &v) in row.iter().enumerate() {
            let x = left + cell * c as f64;
            let name = format!("{} {}: {}", h.rows.get(r).map_or("", String::as_str), h.cols.get(c).map_or("", String::as_str), short(v));
            let attrs = format!("class=\"cell\" data-row=\"{r}\" data-col=\"{c}\" data-value=\"{}\" {}", val(v), (h.cell_attrs)(r, c));
            svg.rect((x, y, cell, cell), &h.scale.colour(v), Some(("#dddddd", 0.5)), &attrs, Some(&name));
        }
    }
    let mut marked: Vec<&(usize, usize)> = h.marked.iter().collect();
    marked.sort_unstable(); // the same bytes every time
    for &&(r, c) in &marked {
        if r < n_rows && c < n_cols {
            svg.rect((left + cell * c as f64 + 1.0, top + cell * r as f64 + 1.0, cell - 2.0, cell - 2.0), "none", Some(("#000000", 2.0)), &format!("class=\"mark\" data-row=\"{r}\" data-col=\"{c}\""), None);
        }
    }
    let col_every = (14.0 / cell).ceil().max(1.0) as usize;
    for c in (0..n_cols).step_by(col_every) {
        svg.text(left + cell * (c as f64 + 0.5), top + grid_h + 12.0, h.cols.get(c).map_or("", String::as_str), Anchor::Middle, 9.0, "class=\"col-label\"");
    }
    svg.text(left + grid_w / 2.0, top + grid_h + 32.0, h.col_label, Anchor::Middle, 11.0, "class=\"axis-label\"");
    svg.text_rotated(14.0, top + grid_h / 2.0, h.row_label, Anchor::Middle, 11.0, -90.0);
    svg.place(&legend(h.scale, grid_h.clamp(60.0, 300.0), h.legend), left + grid_w + 14.0, top - 8.0);
    svg
}

/// Layer × head names: rows `L0`…, columns `H0`….
pub fn layer_head_axes(n_layers: usize, n_heads: usize) -> (Vec<String>, Vec<String>) {
    ((0..n_layers).map(|l| format!("L{l}")).collect(), (0..n_heads).map(|h| format!("H{h}")).collect())
}

/// A series of a line chart.
pub struct Series<'a> {
    /// Its name (legend).
    pub name: &'a str,
    /// One figure per x position.
    pub values: &'a [f32],
    /// Its colour.
    pub colour: &'a str,
}

/// A line chart over named x positions with horizontal reference lines (`data-kind="line"`;
/// points are `circle.point` with `data-series`, `data-index`, `data-value`).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, xs: &[String], series: &[Series], refs: &[(&str, f32)]) -> Svg {
    let (left, top, plot_w, plot_h) = (64.0, 34.0, (xs.len() as f64 * 16.0).clamp(300.0, 720.0), 240.0);
    let mut svg = Svg::new("line", left + plot_w + 150.0, top + plot_h + 56.0);
    svg.title(title);
    let all: Vec<f32> = series.iter().flat_map(|s| s.values.iter().copied()).chain(refs.iter().map(|r| r.1)).filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = all.iter().fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
    if hi - lo < 1e-6 {
        hi += 1.0;
        lo -= 1.0;
    }
    let pad = (hi - lo) * 0.08;
    let (lo, hi) = (lo - pad, hi + pad);
    let n = xs.len().max(2);
    let x_at = |i: usize| left + plot_w * i as f64 / (n - 1) as f64;
    let y_at = |v: f32| top + plot_h * ((hi - v) / (hi - lo)) as f64;
    svg.line((left, top), (left, top + plot_h), "#444444", 1.0, "class=\"axis\"");
    svg.line((left, top + plot_h), (left + plot_w, top + plot_h), "#444444", 1.0, "class=\"axis\"");
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f32 / 4.0;
        svg.text(left - 6.0, y_at(v) + 3.5, &short(v), Anchor::End, 9.0, "class=\"y-tick\"");
        svg.line((left, y_at(v)), (left + plot_w, y_at(v)), "#eeeeee", 1.0, "class=\"grid\"");
    }
    let every = (xs.len() / 16).max(1);
    for (i, x) in xs.iter().enumerate().step_by(every) {
        svg.text(x_at(i), top + plot_h + 14.0, x, Anchor::Middle, 9.0, "class=\"x-tick\"");
    }
    for (k, (name, v)) in refs.iter().enumerate() {
        let y = y_at(*v);
        svg.line((left, y), (left + plot_w, y), "#888888", 1.0, &format!("stroke-dasharray=\"4 3\" class=\"reference\" data-value=\"{}\"", val(*v)));
        svg.text(left + plot_w + 6.0, y + 3.5 + 10.0 * (k % 2) as f64, &format!("{name} {}", short(*v)), Anchor::Start, 9.0, "class=\"reference-label\"");
    }
    for (s_idx, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s.values.iter().enumerate().map(|(i, &v)| (x_at(i), y_at(v))).collect();
        svg.polyline(&pts, s.colour, 2.0, &format!("class=\"series\" data-series=\"{}\"", esc(s.name)));
        for (i, &v) in s.values.iter().enumerate() {
            let title = format!("{} {}: {}", s.name, xs.get(i).map_or("", String::as_str), short(v));
            svg.circle((x_at(i), y_at(v), 3.0), s.colour, "#ffffff", &format!("class=\"point\" data-series=\"{}\" data-index=\"{i}\" data-value=\"{}\"", esc(s.name), val(v)), Some(&title));
        }
        svg.line((left + plot_w + 6.0, top + 12.0 + 14.0 * s_idx as f64), (left + plot_w + 20.0, top + 12.0 + 14.0 * s_idx as f64), s.colour, 2.0, "class=\"legend-line\"");
        svg.text(left + plot_w + 24.0, top + 15.5 + 14.0 * s_idx as f64, s.name, Anchor::Start, 10.0, "class=\"legend-label\"");
    }
    svg.text(left + plot_w / 2.0, top + plot_h + 36.0, x_label, Anchor::Middle, 11.0, "class=\"axis-label\"");
    svg.text_rotated(14.0, top + plot_h / 2.0, y_label, Anchor::Middle, 11.0, -90.0);
    svg
}

/// One head's attention pattern `[query][key]` with the tokens on both axes
/// (`data-kind="attention"`, `data-head` on the root group's cells; cells are `rect.cell` with
/// `data-query`, `data-key`, `data-value`).
pub fn attention(title: &str, head: &str, tokens: &[String], pattern: &[Vec<f32>]) -> Svg {
    let n = pattern.len();
    let cell = (300.0 / n.max(1) as f64).clamp(6.0, 24.0);
    let label_w = 8.0 + 6.0 * tokens.iter().map(|t| t.chars().count()).max().unwrap_or(1).min(14) as f64;
    let (left, top) = (label_w + 10.0, 30.0);
    let grid = cell * n as f64;
    let mut svg = Svg::new("attention", left + grid + 16.0, top + grid + label_w + 10.0);
    svg.title(title);
    let scale = Scale::Sequential { max: 1.0 };
    let trunc = |t: &String| -> String {
        let s: String = t.chars().take(14).collect();
        s.replace('\n', "⏎")
    };
    for (q, row) in pattern.iter().enumerate() {
        let y = top + cell * q as f64;
        svg.text(left - 4.0, y + cell * 0.5 + 3.5, &trunc(tokens.get(q).unwrap_or(&String::new())), Anchor::End, 9.0, "class=\"query-label\"");
        for (k, &v) in row.iter().enumerate() {
            let title = format!("{:?} → {:?}: {}", tokens.get(q).map_or("", String::as_str), tokens.get(k).map_or("", String::as_str), short(v));
            let attrs = format!("class=\"cell\" data-head=\"{}\" data-query=\"{q}\" data-key=\"{k}\" data-value=\"{}\"", esc(head), val(v));
            svg.rect((left + cell * k as f64, y, cell, cell), &scale.colour(v), None, &attrs, Some(&title));
        }
    }
    for (k, t) in tokens.iter().enumerate().take(n) {
        let x = left + cell * (k as f64 + 0.5);
        svg.text_rotated(x + 3.0, top + grid + 6.0, &trunc(t), Anchor::End, 9.0, -60.0);
    }
    svg
}

/// A node of a layered graph.
pub struct Node {
    /// Identifier (and label).
    pub id: String,
    /// Its row: 0 at the bottom (embeddings), growing upwards (logits on top).
    pub row: f64,
    /// Fill colour.
    pub colour: String,
    /// A category shown in its tooltip and written as `data-type` (e.g. a head type).
    pub kind: String,
}

/// A layered graph (`data-kind="graph"`): nodes in rows from the bottom up, edges as lines
/// whose width grows with |score| (red positive, blue negative). Nodes are `g.node` with
/// `data-id`; edges `line.edge` with `data-from`, `data-to`, `data-score`.
pub fn graph(title: &str, nodes: &[Node], edges: &[(String, String, f32)]) -> Svg {
    let mut rows: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        rows.entry((n.row * 100.0).round() as i64).or_default().push(i);
    }
    let widest = rows.values().map(Vec::len).max().unwrap_or(1);
    let width = (widest as f64 * 92.0 + 80.0).max(320.0);
    let row_h = 62.0;
    let height = 50.0 + row_h * rows.len().max(1) as f64 + 20.0;
    let mut svg = Svg::new("graph", width, height);
    svg.title(title);
    let mut pos: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (r, (_, members)) in rows.iter().rev().enumerate() {
        let y = 50.0 + row_h * r as f64 + row_h / 2.0;
        for (k, &i) in members.iter().enumerate() {
            let x = width * (k as f64 + 1.0) / (members.len() as f64 + 1.0);
            pos.insert(nodes[i].id.as_str(), (x, y));
        }
    }
    let max = edges.iter().fold(0.0f32, |m, e| m.max(e.2.abs())).max(1e-12);
    let scale = Scale::Diverging { max };
    for (from, to, score) in edges {
        if let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(from.as_str()), pos.get(to.as_str())) {
            let w = 0.8 + 5.0 * (score.abs() / max) as f64;
            let colour = if *score >= 0.0 { scale.colour(max) } else { scale.colour(-max) };
            let attrs = format!("class=\"edge\" data-from=\"{}\" data-to=\"{}\" data-score=\"{}\" stroke-opacity=\"0.75\"", esc(from), esc(to), val(*score));
            svg.line((x1, y1), (x2, y2), &colour, w, &attrs);
        }
    }
    for n in nodes {
        let Some(&(x, y)) = pos.get(n.id.as_str()) else { continue };
        let title = if n.kind.is_empty() { n.id.clone() } else { format!("{} ({})", n.id, n.kind) };
        let body = format!("<g class=\"node\" data-id=\"{}\" data-type=\"{}\">", esc(&n.id), esc(&n.kind));
        svg.raw(&body);
        svg.rect((x - 38.0, y - 11.0, 76.0, 22.0), &n.colour, Some(("#333333", 1.0)), "rx=\"6\"", Some(&title));
        svg.text(x, y + 4.0, &n.id, Anchor::Middle, 10.0, "");
        svg.raw("</g>");
    }
    svg
}

/// Tokens as coloured boxes in reading order (`data-kind="tokens"`; boxes are `rect.token`
/// with `data-position`, `data-value`), wrapped at 640 pixels.
pub fn token_text(title: &str, tokens: &[String], scores: &[f32], legend_label: &str) -> Svg {
    let scale = Scale::diverging(scores);
    let (mut x, mut y) = (10.0, 44.0);
    let mut boxes = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let shown: String = t.replace('\n', "⏎").chars().take(24).collect();
        let w = 8.0 + 7.0 * shown.chars().count().max(1) as f64;
        if x + w > 650.0 {
            x = 10.0;
            y += 30.0;
        }
        boxes.push((x, y, w, shown, i));
        x += w + 4.0;
    }
    let mut svg = Svg::new("tokens", 740.0, y + 40.0);
    svg.title(title);
    for (x, y, w, shown, i) in boxes {
        let v = scores.get(i).copied().unwrap_or(0.0);
        let attrs = format!("class=\"token\" data-position=\"{i}\" data-value=\"{}\" rx=\"3\"", val(v));
        svg.rect((x, y - 16.0, w, 22.0), &scale.colour(v), Some(("#cccccc", 0.5)), &attrs, Some(&format!("{shown:?}: {}", short(v))));
        svg.text(x + w / 2.0, y, &shown, Anchor::Middle, 11.0, "xml:space=\"preserve\"");
    }
    svg.place(&legend(scale, 60.0, legend_label), 665.0, 24.0);
    svg
}

/// Horizontal bars with their labels (`data-kind="bars"`; bars are `rect.bar` with
/// `data-label`, `data-value`), on a diverging scale.
pub fn bars(title: &str, items: &[(String, f32)], max: Option<f32>) -> Svg {
    let label_w = 8.0 + 7.0 * items.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(4) as f64;
    let (left, top, bar_w) = (label_w + 8.0, 34.0, 260.0);
    let mut svg = Svg::new("bars", left + bar_w * 2.0 + 60.0, top + 22.0 * items.len() as f64 + 20.0);
    svg.title(title);
    let max = max.unwrap_or_else(|| items.iter().fold(0.0f32, |m, (_, v)| m.max(v.abs()))).max(1e-12);
    let scale = Scale::Diverging { max };
    let zero = left + bar_w;
    svg.line((zero, top - 4.0), (zero, top + 22.0 * items.len() as f64), "#444444", 1.0, "class=\"axis\"");
    for (i, (label, v)) in items.iter().enumerate() {
        let y = top + 22.0 * i as f64;
        let len = bar_w * (v.abs() / max).min(1.0) as f64;
        let x = if *v >= 0.0 { zero } else { zero - len };
        let attrs = format!("class=\"bar\" data-label=\"{}\" data-value=\"{}\"", esc(label), val(*v));
        svg.rect((x, y, len, 16.0), &scale.colour(if *v >= 0.0 { max } else { -max }), None, &attrs, Some(&format!("{label}: {}", short(*v))));
        svg.text(left - 6.0, y + 12.0, label, Anchor::End, 10.0, "class=\"bar-label\"");
        // A negative figure is written right of the axis, clear of the labels.
        let tx = if *v >= 0.0 { x + len + 4.0 } else { zero + 4.0 };
        svg.text(tx, y + 12.0, &short(*v), Anchor::Start, 9.0, "class=\"bar-value\"");
    }
    svg
}
