//! Circuits known to be true: three tracr-compiled programs (reverse, sort_unique, sort_freq)
//! saved as TransformerLens checkpoints by scripts/fixtures/tracr_fixtures.py, each with its
//! ground-truth edges and an independent numpy implementation of MIB's edge patching. glassbox
//! loads them, gives TransformerLens' logits, gives the numpy exact edge scores, and its exact
//! scores rank the true edges above all others (AUROC 1.0). EAP's and EAP-IG's AUROC are printed
//! (BENCHMARKS.md reports them; they are not asserted).

mod common;

use common::fixtures;
use glassbox::methods::evaluate::{evaluate, EvaluateOptions, ScoreMethod};
use glassbox::methods::Contrast;
use glassbox::{Batch, Hooks, Model};

const PROGRAMS: &[&str] = &["reverse", "sort_unique", "sort_freq"];

fn json(path: std::path::PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn contrasts(model: &Model, dir: &std::path::Path) -> Vec<Contrast> {
    std::fs::read_to_string(dir.join("prompts.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let p: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| p[k].as_str().unwrap().to_string();
            Contrast::new(model, &s("prompt"), &s("correct"), &s("incorrect"), Some(&s("corrupted"))).unwrap()
        })
        .collect()
}

fn last_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    model.forward(&Batch::new(&[ids.to_vec()]).unwrap(), &Hooks::default()).unwrap().last_logits().unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn tracr_programs_give_transformer_lens_logits() {
    for name in PROGRAMS {
        let dir = fixtures().join("tracr").join(name);
        let model = Model::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(model.config().variants.bidirectional, "{name}: tracr compiles bidirectional attention");
        let r = json(dir.join("reference.json"));
        let cs = contrasts(&model, &dir);
        let pairs = r["pairs"].as_array().unwrap();
        assert_eq!(cs.len(), pairs.len());
        let mut worst = 0f32;
        for (c, p) in cs.iter().zip(pairs) {
            assert_eq!(c.clean, ids(&p["clean_ids"]), "{name}: clean tokens");
            assert_eq!(c.corrupted, ids(&p["corrupted_ids"]), "{name}: corrupted tokens");
            assert_eq!(c.correct_id as u64, p["correct_id"].as_u64().unwrap());
            for (tokens, key) in [(&c.clean, "clean_logits"), (&c.corrupted, "corrupted_logits")] {
                for (a, b) in last_logits(&model, tokens).iter().zip(p[key].as_array().unwrap()) {
                    worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
                }
            }
        }
        eprintln!("{name}: max |logit − TransformerLens| = {worst:e}");
        assert!(worst < 1e-4, "{name}: {worst}");
    }
}

#[test]
fn exact_edge_scores_equal_numpy_and_recover_every_ground_truth() {
    for name in PROGRAMS {
        let dir = fixtures().join("tracr").join(name);
        let model = Model::load(&dir).unwrap();
        let r = json(dir.join("reference.json"));
        let cs = contrasts(&model, &dir);
        let truth = glassbox::files::FilePath(dir.join("ground_truth.json"));
        let mut aurocs = Vec::new();
        for method in [ScoreMethod::Exact, ScoreMethod::Eap, ScoreMethod::EapIg] {
            let compare_exact = method != ScoreMethod::Exact;
            let opts = EvaluateOptions { method, ground_truth: Some(truth.clone()), top_k: 100_000, n_boot: 50, compare_exact, ..Default::default() };
            let e = evaluate(&model, &cs, &opts).unwrap_or_else(|e| panic!("{name} {method:?}: {e}"));
            let g = e.ground_truth.as_ref().unwrap();
            assert_eq!(g.true_edges, r["ground_truth_edges"].as_array().unwrap().len(), "{name}");
            let rho = e.agreement_with_exact.as_ref().map_or(String::new(), |a| format!(" ρ {:?} ρ|| {:?}", a.spearman, a.spearman_abs));
            aurocs.push(format!("{method:?} edge {:.3} node {}{rho}", g.edge_auroc, g.node_auroc.map_or("n/a".into(), |a| format!("{a:.3}"))));
            if method != ScoreMethod::Exact {
                continue;
            }
            // glassbox's exact scores are the numpy reference's, edge by edge.
            let reference = r["mean_edge_scores"].as_object().unwrap();
            assert_eq!(e.top_edges.len(), reference.len(), "{name}: every edge listed");
            for edge in &e.top_edges {
                let key = format!("{}->{}", edge.sender, edge.receiver);
                let want = reference.get(&key).unwrap_or_else(|| panic!("{name}: {key} not in the reference")).as_f64().unwrap() as f32;
                assert!((edge.score - want).abs() < 1e-4, "{name} {key}: glassbox {} vs numpy {want}", edge.score);
            }
            assert_eq!(g.edge_auroc, 1.0, "{name}: exact scores rank every true edge first");
            assert_eq!(g.worst_true_rank, g.true_edges, "{name}");
            // The identities of the curve hold on a bidirectional, norm-free model too.
            assert_eq!(*e.signed.faithfulness.last().unwrap(), 1.0, "{name}: f(all) = 1");
        }
        eprintln!("{name}: {}", aurocs.join("; "));
    }
}

#[test]
fn a_ground_truth_file_must_fit_the_model() {
    let dir = fixtures().join("tracr").join("sort_unique");
    let model = Model::load(&dir).unwrap();
    let cs = contrasts(&model, &dir);
    let scratch = common::scratch("tracr-truth");
    for (body, expect) in [
        (r#"["embed->L07H00.q"]"#, "not an edge of this model"),
        (r#"[]"#, "0 of the 23 edges"),
        (r#"{"edges": {"input->a0.h0<q>": {"score": 1.0}}}"#, "in_graph"),
        (r#"42"#, "MIB's circuit JSON or a list"),
    ] {
        let f = scratch.join("truth.json");
        std::fs::write(&f, body).unwrap();
        let opts = EvaluateOptions { method: ScoreMethod::Eap, ground_truth: Some(glassbox::files::FilePath(f.clone())), n_boot: 10, ..Default::default() };
        let e = evaluate(&model, &cs, &opts).unwrap_err().to_string();
        assert!(e.contains(expect), "{body}: {e}");
    }
    // Glassbox's names and MIB's name the same edges.
    let f = scratch.join("names.json");
    std::fs::write(&f, r#"["embed->L00H00.q", "input->a0.h0<k>", "a1.h0->logits"]"#).unwrap();
    let opts = EvaluateOptions { method: ScoreMethod::Eap, ground_truth: Some(glassbox::files::FilePath(f.clone())), n_boot: 10, ..Default::default() };
    assert_eq!(evaluate(&model, &cs, &opts).unwrap().ground_truth.unwrap().true_edges, 3);
}

#[test]
fn a_counterfactual_that_changes_nothing_is_an_error_not_a_nan() {
    // sort_unique's last output is the largest token: "1 3" and "2 3" both give 3, and the
    // answers' logits do not move, so f would be 0/0.
    let dir = fixtures().join("tracr").join("sort_unique");
    let model = Model::load(&dir).unwrap();
    let c = Contrast::new(&model, "1 3", "3", "2", Some("2 3")).unwrap();
    let e = evaluate(&model, &[c], &EvaluateOptions { method: ScoreMethod::Eap, n_boot: 10, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("same mean") && e.contains("counterfactual"), "{e}");
}

#[test]
fn a_prompts_file_is_read_strictly() {
    use glassbox::methods::catalog::{resolve_input, Input, InputKind, InputSpec};
    let dir = fixtures().join("tracr").join("sort_unique");
    let model = Model::load(&dir).unwrap();
    let scratch = common::scratch("tracr-prompts-file");
    let resolve = |body: &str, task: Option<&str>| -> Result<Input, String> {
        let f = scratch.join("p.jsonl");
        std::fs::write(&f, body).unwrap();
        let spec = InputSpec { prompts: Some(f.to_string_lossy().into_owned()), task: task.map(Into::into), ..Default::default() };
        resolve_input(&model, InputKind::ContrastOrTask, &spec, "evaluate").map_err(|e| e.to_string())
    };
    let good = std::fs::read_to_string(dir.join("prompts.jsonl")).unwrap();
    match resolve(&good, None).unwrap() {
        Input::Set(t, p) => assert_eq!((t.task.as_str(), p.len()), ("given", 24)),
        other => panic!("{other:?}"),
    }
    for (body, task, expect) in [
        ("", None, "holds no prompts"),
        ("{\"prompt\": \"1 3\", \"incorrect\": \"2\"}\n", None, "line 1"),
        ("not json\n", None, "line 1"),
        ("{\"prompt\": \"1 3\", \"correct\": \"3\", \"incorrect\": \"2\", \"corrupted\": \"1 2 3\"}\n", None, "line 1"),
        ("{\"prompt\": \"1 3\", \"correct\": \"3\", \"incorrect\": \"9\", \"corrupted\": \"2 3\"}\n", None, "line 1"),
        (good.as_str(), Some("ioi"), "not both"),
    ] {
        let e = resolve(body, task).unwrap_err();
        assert!(e.contains(expect), "{body:?}: {e}");
    }
}
