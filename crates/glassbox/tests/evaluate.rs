//! Circuit evaluation: edge-level patching against runs written out by hand with ordinary
//! interventions, the faithfulness identities, and MIB's areas against numpy.

mod common;

use candle_core::Tensor;
use common::{fixtures, last_ld as ld, load_tiny};
use glassbox::methods::edges::{EdgeGraph, Receiver, Sender};
use glassbox::methods::evaluate::{self, circuit_metrics, EvaluateOptions, ScoreMethod};
use glassbox::methods::{Contrast, Head, Metric, Scorer};
use glassbox::{Action, HookPoint, Hooks, Intervention, Model};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

fn setup(name: &str) -> (Model, Contrast, Scorer, EdgeGraph) {
    let model = load_tiny(name);
    let contrast = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let scorer = Scorer::new(&model, &contrast, &Metric::default()).unwrap();
    let graph = EdgeGraph::of(&model);
    (model, contrast, scorer, graph)
}

/// The circuit that keeps every edge but those `drop` selects.
fn without(graph: &EdgeGraph, drop: impl Fn(Sender, Receiver) -> bool) -> Vec<bool> {
    graph.edges.iter().map(|&(i, j)| !drop(graph.senders[i], graph.receivers[j])).collect()
}

/// The corrupted run's value at `point`.
fn corrupted_at(model: &Model, contrast: &Contrast, point: HookPoint) -> Tensor {
    let out = model.forward(&glassbox::Batch::new(std::slice::from_ref(&contrast.corrupted)).unwrap(), &Hooks::new().cache([point])).unwrap();
    out.cache.get(point).unwrap().clone()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}: {a} vs {b}");
}

/// The full circuit gives the clean run's metric, the empty one the corrupted run's; removing
/// edges gives what the same change written as ordinary interventions gives: every out-edge
/// of a head = that head's `hook_z` from the corrupted run; every in-edge of an MLP = its
/// `hook_mlp_in` from the corrupted run; every in-edge of a query = that head's `hook_q` from
/// the corrupted run; the single edge embed → logits = the last residual minus the
/// embeddings' change; a node circuit's out-edges = its nodes alone, the rest patched.
#[test]
fn edge_patching_equals_runs_written_by_hand() {
    for name in ["tiny-llama", "tiny-gpt2", "tiny-gemma3", "tiny-neox"] {
        let (model, contrast, scorer, graph) = setup(name);
        let (c, i) = (contrast.correct_id, contrast.incorrect_id);
        let clean = ld(&model, &contrast.clean, c, i, Hooks::new());
        let corrupted = ld(&model, &contrast.corrupted, c, i, Hooks::new());
        let n = graph.edges.len();
        let post_norm = name == "tiny-gemma3";
        let last = model.config().n_layers - 1;
        let head = Head { layer: 0, head: 1 };

        let mut circuits = vec![vec![true; n], vec![false; n]];
        circuits.push(without(&graph, |s, _| s == Sender::Head(head)));
        circuits.push(without(&graph, |_, r| r == Receiver::Mlp(last)));
        circuits.push(without(&graph, |_, r| r == Receiver::Q(Head { layer: last, head: 2 })));
        circuits.push(without(&graph, |s, r| s == Sender::Embed && r == Receiver::Logits));
        // A node circuit: heads L0H0, L1H3 and MLP 0 (with the embeddings); its edges are every
        // edge out of those nodes.
        let nodes = [Sender::Embed, Sender::Head(Head { layer: 0, head: 0 }), Sender::Head(Head { layer: 1, head: 3 }), Sender::Mlp(0)];
        circuits.push(without(&graph, |s, _| !nodes.contains(&s)));
        let refs: Vec<&[bool]> = circuits.iter().map(|c| c.as_slice()).collect();
        let m: Vec<f64> = circuit_metrics(&model, &contrast, &scorer, &graph, &refs, &mut |_| {}).unwrap().into_iter().map(f64::from).collect();

        close(m[0], clean, &format!("{name}: full circuit"));
        close(m[1], corrupted, &format!("{name}: empty circuit"));

        let mlp_in = corrupted_at(&model, &contrast, HookPoint::MlpIn(last));
        close(m[3], ld(&model, &contrast.clean, c, i, Hooks::new().intervene(Intervention::new(HookPoint::MlpIn(last), Action::Replace(mlp_in)))), &format!("{name}: MLP in-edges"));
        let q = corrupted_at(&model, &contrast, HookPoint::Q(last));
        close(m[4], ld(&model, &contrast.clean, c, i, Hooks::new().intervene(Intervention::new(HookPoint::Q(last), Action::Replace(q)).heads(vec![2]))), &format!("{name}: query in-edges"));
        let embed_change = (corrupted_at(&model, &contrast, HookPoint::ResidPre(0)) - model.forward(&contrast.batch().unwrap(), &Hooks::new().cache([HookPoint::ResidPre(0)])).unwrap().cache.get(HookPoint::ResidPre(0)).unwrap().narrow(0, 0, 1).unwrap()).unwrap();
        close(m[5], ld(&model, &contrast.clean, c, i, Hooks::new().intervene(Intervention::new(HookPoint::ResidPost(last), Action::Add(embed_change)))), &format!("{name}: embed → logits"));
        // (The corrupted prompt differs from the clean one only before the last position, so
        // embed → logits carries no change there; the MLP's in-edges do.)
        assert!((m[3] - clean).abs() > 1e-4, "{name}: removing the MLP's in-edges changed nothing");

        if !post_norm {
            // With a post-norm a head's output depends on the other heads' (one scale for all),
            // so patching its z is not the same as patching its output alone.
            let z0 = corrupted_at(&model, &contrast, HookPoint::Z(0));
            close(m[2], ld(&model, &contrast.clean, c, i, Hooks::new().intervene(Intervention::new(HookPoint::Z(0), Action::Replace(z0.clone())).heads(vec![1]))), &format!("{name}: head out-edges"));
            let mut hooks = Hooks::new().intervene(Intervention::new(HookPoint::Z(0), Action::Replace(z0)).heads((1..model.config().n_heads).collect()));
            let z1 = corrupted_at(&model, &contrast, HookPoint::Z(1));
            hooks = hooks.intervene(Intervention::new(HookPoint::Z(1), Action::Replace(z1)).heads((0..model.config().n_heads).filter(|&h| h != 3).collect()));
            for l in 1..model.config().n_layers {
                hooks = hooks.intervene(Intervention::new(HookPoint::MlpOut(l), Action::Replace(corrupted_at(&model, &contrast, HookPoint::MlpOut(l)))));
            }
            for l in 2..model.config().n_layers {
                hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(corrupted_at(&model, &contrast, HookPoint::Z(l)))));
            }
            close(m[6], ld(&model, &contrast.clean, c, i, hooks), &format!("{name}: node circuit"));
        }
    }
}

/// `evaluate` gives f = 1 for the whole graph, its clean and corrupted means are the plain
/// runs' metrics, exact single-edge scores are `m(N) − m(N − e)` written by hand, and a
/// post-LN model is refused with the reason.
#[test]
fn evaluate_identities_and_exact_scores() {
    let (model, contrast, _, graph) = setup("tiny-llama");
    let opts = EvaluateOptions { method: ScoreMethod::Exact, fractions: vec![0.1, 0.5, 1.0], n_boot: 20, top_k: usize::MAX, ..Default::default() };
    let r = evaluate::evaluate(&model, std::slice::from_ref(&contrast), &opts).unwrap();
    let (c, i) = (contrast.correct_id, contrast.incorrect_id);
    close(r.clean_metric as f64, ld(&model, &contrast.clean, c, i, Hooks::new()), "clean");
    close(r.corrupted_metric as f64, ld(&model, &contrast.corrupted, c, i, Hooks::new()), "corrupted");
    assert_eq!(r.signed.faithfulness[2], 1.0);
    assert_eq!(r.absolute.faithfulness[2], 1.0);
    assert_eq!(r.top_edges.len(), graph.edges.len());
    assert_eq!(r.signed.n_edges, vec![graph.edges.len() / 10, graph.edges.len() / 2, graph.edges.len()]);
    // The exact score of MLP00 → logits, by hand: the last residual minus the MLP's change.
    let last = model.config().n_layers - 1;
    let clean_mlp = model.forward(&contrast.batch().unwrap(), &Hooks::new().cache([HookPoint::MlpOut(0)])).unwrap().cache.get(HookPoint::MlpOut(0)).unwrap().narrow(0, 0, 1).unwrap();
    let change = (corrupted_at(&model, &contrast, HookPoint::MlpOut(0)) - clean_mlp).unwrap();
    let by_hand = ld(&model, &contrast.clean, c, i, Hooks::new()) - ld(&model, &contrast.clean, c, i, Hooks::new().intervene(Intervention::new(HookPoint::ResidPost(last), Action::Add(change))));
    assert!(by_hand.abs() > 1e-4, "MLP00 → logits carries nothing: {by_hand}");
    let e = r.top_edges.iter().find(|e| e.sender == "MLP00" && e.receiver == "logits").unwrap();
    close(e.score as f64, by_hand, "exact score of MLP00 → logits");
    // CPR and CMD follow from the curves by MIB's rule.
    let (cpr, cmd) = evaluate::cpr_cmd(&r.fractions, &r.signed.faithfulness, &r.absolute.faithfulness);
    close(r.cpr.mean as f64, cpr, "cpr");
    close(r.cmd.mean as f64, cmd, "cmd");

    let post_ln = load_tiny("tiny-opt-postln");
    let contrast = Contrast::new(&post_ln, IOI, " Mary", " John", None).unwrap();
    let err = evaluate::evaluate(&post_ln, &[contrast], &EvaluateOptions::default()).unwrap_err().to_string();
    assert!(err.contains("post-LN"), "{err}");
}

/// Bad options are refused with what to change.
#[test]
fn evaluate_refuses_bad_options() {
    let (model, contrast, _, _) = setup("tiny-llama");
    let run = |o: EvaluateOptions| evaluate::evaluate(&model, std::slice::from_ref(&contrast), &o).unwrap_err().to_string();
    assert!(run(EvaluateOptions { fractions: vec![0.5, 0.1], ..Default::default() }).contains("increase"));
    assert!(run(EvaluateOptions { fractions: vec![0.0, 1.0], ..Default::default() }).contains("(0, 1]"));
    assert!(run(EvaluateOptions { fractions: vec![f64::NAN], ..Default::default() }).contains("(0, 1]"));
    assert!(run(EvaluateOptions { method: ScoreMethod::File, ..Default::default() }).contains("--scores-file"));
    assert!(run(EvaluateOptions { alpha: 1.5, ..Default::default() }).contains("alpha"));
    let dir = common::scratch("evaluate-scores");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"[{"sender": "L09H09", "receiver": "logits", "score": 1.0}]"#).unwrap();
    let err = run(EvaluateOptions { method: ScoreMethod::File, scores_file: Some(glassbox::files::FilePath(bad.clone())), ..Default::default() });
    assert!(err.contains("not an edge of this model"), "{err}");
    std::fs::write(&bad, "not json").unwrap();
    assert!(run(EvaluateOptions { method: ScoreMethod::File, scores_file: Some(glassbox::files::FilePath(bad.clone())), ..Default::default() }).contains("scored edges"));
}

/// Scores from a file give the same circuits as the same scores computed in the run.
#[test]
fn scores_from_a_file_give_the_same_curves() {
    let (model, contrast, _, _) = setup("tiny-llama");
    let opts = EvaluateOptions { method: ScoreMethod::Eap, fractions: vec![0.05, 0.2, 1.0], n_boot: 10, top_k: usize::MAX, ..Default::default() };
    let a = evaluate::evaluate(&model, std::slice::from_ref(&contrast), &opts).unwrap();
    let path = common::scratch("evaluate-file").join("scores.json");
    std::fs::write(&path, serde_json::to_string(&serde_json::json!({ "edges": a.top_edges })).unwrap()).unwrap();
    let b = evaluate::evaluate(&model, std::slice::from_ref(&contrast), &EvaluateOptions { method: ScoreMethod::File, scores_file: Some(glassbox::files::FilePath(path.clone())), ..opts.clone() }).unwrap();
    assert_eq!(a.signed.faithfulness, b.signed.faithfulness);
    assert_eq!(a.absolute.faithfulness, b.absolute.faithfulness);

    // MIB's JSON: every query head has its own key and value edges (MIB ungroups GQA), and
    // reading it back gives the same circuits.
    let mib = common::scratch("evaluate-mib").join("mib.json");
    let opts = EvaluateOptions { mib_out: Some(glassbox::files::FilePath(mib.clone())), ..opts };
    let c = evaluate::evaluate(&model, std::slice::from_ref(&contrast), &opts).unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&mib).unwrap()).unwrap();
    let cfg = model.config();
    let (l, h) = (cfg.n_layers, cfg.n_heads);
    // MIB's edge count: every source before each destination (3 per head, 1 per MLP, logits).
    let mut expected = 0;
    for layer in 0..l {
        let before_heads = 1 + layer * (h + 1);
        expected += 3 * h * before_heads + (before_heads + h);
    }
    expected += 1 + l * (h + 1);
    assert_eq!(json["edges"].as_object().unwrap().len(), expected);
    assert!(json["edges"]["input->a0.h1<q>"]["score"].is_number());
    assert!(json["edges"]["a0.h1->m0"]["score"].is_number());
    assert_eq!(json["cfg"]["n_layers"], l);
    let d = evaluate::evaluate(&model, std::slice::from_ref(&contrast), &EvaluateOptions { method: ScoreMethod::File, scores_file: Some(glassbox::files::FilePath(mib.clone())), mib_out: None, ..opts }).unwrap();
    assert_eq!(c.signed.faithfulness, d.signed.faithfulness);
    assert_eq!(d.edges_missing_from_file, Some(0));
}

/// CPR and CMD of hand-made curves equal a plain numpy implementation of MIB's formulas
/// (`scripts/fixtures/mib_areas.py` wrote the fixture).
#[test]
fn areas_match_numpy() {
    let text = std::fs::read_to_string(fixtures().join("evaluate").join("areas.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let xs: Vec<f64> = serde_json::from_value(case["fractions"].clone()).unwrap();
        let s: Vec<f32> = serde_json::from_value(case["signed"].clone()).unwrap();
        let a: Vec<f32> = serde_json::from_value(case["absolute"].clone()).unwrap();
        let (cpr, cmd) = evaluate::cpr_cmd(&xs, &s, &a);
        close(cpr, case["cpr"].as_f64().unwrap(), "cpr");
        close(cmd, case["cmd"].as_f64().unwrap(), "cmd");
    }
}

#[test]
fn spearman_equals_scipy() {
    // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) (its documentation's example).
    let r = evaluate::spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
    assert!((r - 0.8207826816681233).abs() < 1e-12, "{r}");
    assert!((evaluate::spearman(&[1.0, 2.0, 3.0], &[9.0, 4.0, 1.0]) + 1.0).abs() < 1e-12);
    assert!(evaluate::spearman(&[1.0, 1.0], &[2.0, 3.0]).is_nan());
}

/// An attention-only model (a TransformerLens checkpoint) has MIB's edge graph without MLP
/// nodes: embeddings and heads send, queries, keys, values and logits receive. Its full and
/// empty circuits give the clean and corrupted metrics, and removing a head's out-edges is
/// patching its `hook_z`.
#[test]
fn attention_only_models_have_no_mlp_edges() {
    let model = Model::load(&fixtures().join("tl").join("attn_only_ln")).unwrap();
    let c = model.config().clone();
    let graph = EdgeGraph::of(&model);
    assert!(graph.edges.iter().all(|&(i, j)| !matches!(graph.senders[i], Sender::Mlp(_)) && !matches!(graph.receivers[j], Receiver::Mlp(_))));
    // The embeddings reach every receiver; layer l's heads the receivers of later layers and the logits.
    let per_layer = c.n_heads + 2 * c.n_kv_heads;
    let expected = c.n_layers * per_layer + 1 + (0..c.n_layers).map(|l| c.n_heads * ((c.n_layers - l - 1) * per_layer + 1)).sum::<usize>();
    assert_eq!(graph.edges.len(), expected);

    let contrast = Contrast::new(&model, "t3 t7 t1 t9 t4", " t5", " t6", Some("t3 t8 t1 t9 t4")).unwrap();
    let scorer = Scorer::new(&model, &contrast, &Metric::default()).unwrap();
    let (ci, ii) = (contrast.correct_id, contrast.incorrect_id);
    let head = Head { layer: 0, head: 1 };
    let n = graph.edges.len();
    let circuits = [vec![true; n], vec![false; n], without(&graph, |s, _| s == Sender::Head(head))];
    let refs: Vec<&[bool]> = circuits.iter().map(|c| c.as_slice()).collect();
    let m: Vec<f64> = circuit_metrics(&model, &contrast, &scorer, &graph, &refs, &mut |_| {}).unwrap().into_iter().map(f64::from).collect();
    close(m[0], ld(&model, &contrast.clean, ci, ii, Hooks::new()), "full circuit");
    close(m[1], ld(&model, &contrast.corrupted, ci, ii, Hooks::new()), "empty circuit");
    let z0 = corrupted_at(&model, &contrast, HookPoint::Z(0));
    let by_hand = ld(&model, &contrast.clean, ci, ii, Hooks::new().intervene(Intervention::new(HookPoint::Z(0), Action::Replace(z0)).heads(vec![1])));
    close(m[2], by_hand, "head out-edges");
    assert!((m[2] - m[0]).abs() > 1e-5, "removing L0H1's out-edges changed nothing");

    let opts = EvaluateOptions { method: ScoreMethod::Exact, fractions: vec![0.5, 1.0], n_boot: 10, ..Default::default() };
    let r = evaluate::evaluate(&model, std::slice::from_ref(&contrast), &opts).unwrap();
    assert_eq!(r.signed.faithfulness[1], 1.0);
    assert!(r.top_edges.iter().all(|e| !e.sender.starts_with("MLP") && !e.receiver.starts_with("MLP")));
}
