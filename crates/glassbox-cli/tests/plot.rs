//! `--plot` on every method: a valid SVG (parsed) whose marks carry the `--json` figures (one
//! cell per head, colour sign = figure sign), and a PNG that decodes.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

use common::{cli_json, fixtures};
use serde_json::Value;

const PROMPT: &str = "When Mary and John went to the store, John gave a drink to";

/// Runs `glassbox CMD --model tiny-llama ... --json --plot OUT` and gives the JSON and the SVG.
fn plotted(cmd: &[&str], answers: bool, name: &str) -> (Value, String) {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("plot-{name}.svg"));
    let _ = std::fs::remove_file(&out);
    let model = fixtures().join("tiny-llama");
    let mut args: Vec<&str> = cmd.to_vec();
    args.extend(["--model", model.to_str().unwrap()]);
    if answers {
        args.extend(["--prompt", PROMPT, "--correct", " Mary", "--incorrect", " John"]);
    }
    args.extend(["--json", "--plot", out.to_str().unwrap()]);
    (cli_json(&args)["result"].clone(), std::fs::read_to_string(&out).unwrap())
}

fn rgb(fill: &str) -> (u8, u8, u8) {
    let h = |i: usize| u8::from_str_radix(&fill[i..i + 2], 16).unwrap();
    assert!(fill.starts_with('#') && fill.len() == 7, "fill {fill}");
    (h(1), h(3), h(5))
}

/// Checks a diverging colour against the figure's sign: red above zero, blue below, white at it.
fn check_sign(fill: &str, v: f64, max: f64, what: &str) {
    let (r, _, b) = rgb(fill);
    if v.abs() < 0.02 * max {
        return;
    }
    if v > 0.0 {
        assert!(r > b, "{what}: {v} is positive but its colour {fill} is not red");
    } else {
        assert!(b > r, "{what}: {v} is negative but its colour {fill} is not blue");
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * (1.0 + b.abs())
}

fn attr_f64(n: &roxmltree::Node, a: &str) -> f64 {
    n.attribute(a).unwrap_or_else(|| panic!("no {a} on {n:?}")).parse().unwrap()
}

fn attr_usize(n: &roxmltree::Node, a: &str) -> usize {
    n.attribute(a).unwrap().parse().unwrap()
}

fn marks<'a>(doc: &'a roxmltree::Document, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants().filter(|n| n.attribute("class") == Some(class)).collect()
}

/// The head cells of the first layer × head heatmap in `doc` match `grid[layer][head]` in value
/// and in colour sign; gives how many there were.
fn check_head_grid(doc: &roxmltree::Document, grid: &[Vec<f64>], what: &str) -> usize {
    let cells: Vec<_> = marks(doc, "cell").into_iter().filter(|c| c.attribute("data-head").is_some() && c.attribute("data-layer").is_some()).collect();
    let n: usize = grid.iter().map(Vec::len).sum();
    let cells = &cells[..n.min(cells.len())];
    assert_eq!(cells.len(), n, "{what}: one cell per head");
    let max = grid.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut seen = HashSet::new();
    for c in cells {
        let (l, h) = (attr_usize(c, "data-layer"), attr_usize(c, "data-head"));
        assert!(seen.insert((l, h)), "{what}: L{l}H{h} twice");
        let v = attr_f64(c, "data-value");
        assert!(close(v, grid[l][h]), "{what} L{l}H{h}: {v} against {}", grid[l][h]);
        check_sign(c.attribute("fill").unwrap(), v, max, &format!("{what} L{l}H{h}"));
    }
    n
}

fn grid(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

#[test]
fn attribution_patch_and_stability_heatmaps() {
    let (j, svg) = plotted(&["attribution"], true, "attribution");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.root_element().attribute("data-kind"), Some("heatmap"));
    assert_eq!(check_head_grid(&doc, &grid(&j["scores"]), "attribution"), 8);
    assert!(svg.contains("layer") && svg.contains("head"), "axis labels");
    assert!(!marks(&doc, "legend-step").is_empty(), "a legend");

    let (j, svg) = plotted(&["attribution", "--component", "mlp"], true, "attribution-mlp");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let cells = marks(&doc, "cell");
    assert_eq!(cells.len(), 2, "one cell per MLP");
    for c in cells {
        let l = attr_usize(&c, "data-layer");
        assert!(close(attr_f64(&c, "data-value"), j["scores"][l][0].as_f64().unwrap()));
    }

    let (j, svg) = plotted(&["patch"], true, "patch");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    check_head_grid(&doc, &grid(&j["head_effects"]), "patch heads");
    let mlp_cells: Vec<_> = marks(&doc, "cell").into_iter().filter(|c| c.attribute("data-head").is_none()).collect();
    assert_eq!(mlp_cells.len(), 2);
    for c in mlp_cells {
        let l = attr_usize(&c, "data-layer");
        assert!(close(attr_f64(&c, "data-value"), j["mlp_effects"][l].as_f64().unwrap()));
    }

    let (j, svg) = plotted(&["stability", "--n-corruptions", "6"], true, "stability");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let cells = marks(&doc, "cell");
    assert_eq!(cells.len(), 8);
    for c in cells {
        let (l, h) = (attr_usize(&c, "data-layer"), attr_usize(&c, "data-head"));
        assert!(close(attr_f64(&c, "data-value"), j["stability"][l][h].as_f64().unwrap()));
    }

    let (j, svg) = plotted(&["path-patch", "--receiver", "L1H2.q"], true, "path-patch");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let cells: Vec<_> = marks(&doc, "cell").into_iter().filter(|c| c.attribute("data-absent").is_none()).collect();
    let paths = j["paths"].as_array().unwrap();
    assert_eq!(cells.len(), paths.len(), "one cell per sender");
    for p in paths {
        let (l, h) = (p["sender"][0].as_u64().unwrap() as usize, p["sender"][1].as_u64().unwrap() as usize);
        let c = cells.iter().find(|c| attr_usize(c, "data-layer") == l && attr_usize(c, "data-head") == h).unwrap();
        assert!(close(attr_f64(c, "data-value"), p["effect"].as_f64().unwrap()));
    }
}

#[test]
fn analyze_draws_heatmap_circuit_and_faithfulness() {
    let (j, svg) = plotted(&["analyze"], true, "analyze");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let attributions = j["attributions"].as_object().unwrap();
    let mut g = vec![vec![0.0; 4]; 2];
    for (k, v) in attributions {
        let (l, h) = glassbox::plot::parse_head(k).unwrap();
        g[l][h] = v.as_f64().unwrap();
    }
    assert_eq!(check_head_grid(&doc, &g, "analyze"), 8);
    let circuit: Vec<String> = j["circuit"].as_array().unwrap().iter().map(|h| format!("L{:02}H{:02}", h[0].as_u64().unwrap(), h[1].as_u64().unwrap())).collect();
    assert_eq!(marks(&doc, "mark").len(), circuit.len(), "the circuit outlined");
    let nodes: Vec<&str> = marks(&doc, "node").iter().map(|n| n.attribute("data-id").unwrap()).collect();
    for h in &circuit {
        assert!(nodes.contains(&h.as_str()), "{h} in the graph");
        assert!(doc.descendants().any(|n| n.attribute("data-id") == Some(h.as_str()) && n.attribute("data-type").is_some_and(|t| !t.is_empty())), "{h} typed");
    }
    assert_eq!(marks(&doc, "edge").len(), circuit.len());
    let bars: Vec<_> = marks(&doc, "bar");
    let f = &j["faithfulness"];
    for (label, key) in [("sufficiency", "sufficiency"), ("comprehensiveness", "comprehensiveness"), ("F1", "f1")] {
        let b = bars.iter().find(|b| b.attribute("data-label") == Some(label)).unwrap();
        assert!(close(attr_f64(b, "data-value"), f[key].as_f64().unwrap()), "{label}");
    }
}

#[test]
fn logit_lens_curve_and_direct_effects() {
    let (j, svg) = plotted(&["logit-lens"], true, "logit-lens");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let points = marks(&doc, "point");
    let lds = j["logit_diffs"].as_array().unwrap();
    assert_eq!(points.len(), lds.len(), "a point per layer and the embeddings");
    for p in &points {
        let i = attr_usize(p, "data-index");
        assert!(close(attr_f64(p, "data-value"), lds[i].as_f64().unwrap()));
    }
    let refs: Vec<f64> = marks(&doc, "reference").iter().map(|r| attr_f64(r, "data-value")).collect();
    assert!(refs.iter().any(|&r| close(r, j["final_ld"].as_f64().unwrap())), "the final LD reference line");
    check_head_grid(&doc, &grid(&j["head_direct_effects"]), "direct effects");
}

#[test]
fn attention_edges_tokens_and_composition() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plot-attention.svg");
    let j = cli_json(&["attention", "--model", m, "--prompt", PROMPT, "--head", "L1H2", "--head", "L0H0", "--json", "--plot", out.to_str().unwrap()])["result"].clone();
    let svg = std::fs::read_to_string(&out).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let n = j["tokens"].as_array().unwrap().len();
    for h in j["heads"].as_array().unwrap() {
        let name = h["name"].as_str().unwrap();
        let cells: Vec<_> = marks(&doc, "cell").into_iter().filter(|c| c.attribute("data-head") == Some(name)).collect();
        assert_eq!(cells.len(), n * n, "{name}: one cell per query × key");
        for c in cells {
            let (q, k) = (attr_usize(&c, "data-query"), attr_usize(&c, "data-key"));
            assert!(close(attr_f64(&c, "data-value"), h["pattern"][q][k].as_f64().unwrap()));
        }
    }
    for t in j["tokens"].as_array().unwrap() {
        let t = t.as_str().unwrap().trim();
        assert!(t.is_empty() || svg.contains(t), "token label {t}");
    }

    let (j, svg) = plotted(&["edges", "--top-k", "12"], true, "edges");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let edges = marks(&doc, "edge");
    let top = j["top_edges"].as_array().unwrap();
    assert_eq!(edges.len(), top.len());
    for e in top {
        let line = edges.iter().find(|l| l.attribute("data-from") == e["sender"].as_str() && l.attribute("data-to") == e["receiver"].as_str()).unwrap();
        assert!(close(attr_f64(line, "data-score"), e["score"].as_f64().unwrap()));
    }

    let (j, svg) = plotted(&["token-attribution"], true, "token-attribution");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let toks = marks(&doc, "token");
    let want = j["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), want.len());
    let max = want.iter().fold(0.0f64, |m, t| m.max(t["attribution"].as_f64().unwrap().abs()));
    for t in toks {
        let i = attr_usize(&t, "data-position");
        let v = attr_f64(&t, "data-value");
        assert!(close(v, want[i]["attribution"].as_f64().unwrap()));
        check_sign(t.attribute("fill").unwrap(), v, max, "token");
    }

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plot-composition.svg");
    let j = cli_json(&["composition", "--model", m, "--head", "L0H1", "--head", "L0H3", "--head", "L1H2", "--json", "--plot", out.to_str().unwrap()])["result"].clone();
    let doc_text = std::fs::read_to_string(&out).unwrap();
    let doc = roxmltree::Document::parse(&doc_text).unwrap();
    let cells = marks(&doc, "cell");
    for e in j["combined_edges"].as_array().unwrap() {
        let found: Vec<f64> = cells
            .iter()
            .filter(|c| c.attribute("data-sender") == e["sender"].as_str() && c.attribute("data-receiver") == e["receiver"].as_str())
            .map(|c| attr_f64(c, "data-value"))
            .collect();
        assert_eq!(found.len(), 3, "Q, K and V panels");
        for (v, k) in found.iter().zip(["q", "k", "v"]) {
            assert!(close(*v, e[k].as_f64().unwrap()), "{k}");
        }
    }
}

#[test]
fn png_output_and_bad_plot_paths() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let png = dir.join("plot-analyze.png");
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["analyze", "--model", m, "--prompt", PROMPT, "--correct", " Mary", "--incorrect", " John", "--plot", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()));
    assert!(w > 400 && h > 200, "{w} × {h}");
    // Rendered: not one flat colour (text and cells drew).
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());

    std::fs::create_dir_all(dir.join("folder.svg")).unwrap();
    for (path, needle) in [(dir.join("plot.pdf"), "must end in .svg or .png"), (dir.join("folder.svg"), "not a regular file")] {
        let o = Command::new(env!("CARGO_BIN_EXE_glassbox"))
            .args(["logit-lens", "--model", m, "--prompt", PROMPT, "--correct", " Mary", "--incorrect", " John", "--plot", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle) && !err.contains("panicked"), "{}: {err}", path.display());
    }
    // A path that cannot be written fails before the method runs (no minutes lost).
    let started = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox")).args(["analyze", "--model", m, "--task", "ioi", "--n", "64", "--plot", "/no/such/dir/x.svg"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("does not exist"), "{err}");
    assert!(started.elapsed().as_secs_f64() < 5.0, "the bad path was found only after the run");
    // A prompt set's analysis draws too: its mean attributions, circuit and faithfulness.
    let set = dir.join("plot-analyze-set.svg");
    let o = Command::new(env!("CARGO_BIN_EXE_glassbox")).args(["analyze", "--model", m, "--task", "ioi", "--n", "4", "--plot", set.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(roxmltree::Document::parse(&std::fs::read_to_string(&set).unwrap()).is_ok());
}
