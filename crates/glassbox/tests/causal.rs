//! Exact patching and faithfulness: batched runs against independent full runs, and the
//! identities at the ends (everything patched, nothing ablated, the full and empty circuits).

mod common;

use common::load_tiny;
use glassbox::methods::faithfulness::{faithfulness, Ablation, Circuit, CircuitEvaluator};
use glassbox::methods::patching::{exact_patching, Direction};
use glassbox::methods::{Contrast, Head};
use glassbox::{Action, Batch, HookPoint, Hooks, Intervention, Model};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

fn ld(model: &Model, tokens: &[u32], c: &Contrast, hooks: Hooks) -> f32 {
    common::last_ld(model, tokens, c.correct_id, c.incorrect_id, hooks) as f32
}

#[test]
fn batched_exact_patching_equals_independent_runs() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        for direction in [Direction::IntoClean, Direction::IntoCorrupted] {
            let p = exact_patching(&model, &c, &glassbox::methods::patching::PatchingOptions { direction, metric: Default::default() }).unwrap();
            let (base, source) = match direction {
                Direction::IntoClean => (&c.clean, &c.corrupted),
                Direction::IntoCorrupted => (&c.corrupted, &c.clean),
            };
            let points: Vec<HookPoint> = (0..2).flat_map(|l| [HookPoint::Z(l), HookPoint::MlpOut(l)]).collect();
            let src = model.forward(&Batch::new(std::slice::from_ref(source)).unwrap(), &Hooks::new().cache(points)).unwrap();
            for l in 0..2 {
                for h in 0..model.config().n_heads {
                    let z = src.cache.get(HookPoint::Z(l)).unwrap().clone();
                    let full = ld(&model, base, &c, Hooks::new().intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z)).heads(vec![h])));
                    assert!((full - p.heads[l][h]).abs() <= 1e-5, "{name} {direction:?} L{l}H{h}: {full} vs {}", p.heads[l][h]);
                }
                let m = src.cache.get(HookPoint::MlpOut(l)).unwrap().clone();
                let full = ld(&model, base, &c, Hooks::new().intervene(Intervention::new(HookPoint::MlpOut(l), Action::Replace(m))));
                assert!((full - p.mlps[l]).abs() <= 1e-5, "{name} MLP{l}");
            }
        }
    }
}

#[test]
fn patching_everything_reproduces_the_corrupted_run() {
    let model = load_tiny("tiny-llama");
    let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let mut points = vec![HookPoint::Embed];
    points.extend((0..2).flat_map(|l| [HookPoint::Z(l), HookPoint::MlpOut(l)]));
    let corr = model.forward(&Batch::new(std::slice::from_ref(&c.corrupted)).unwrap(), &Hooks::new().cache(points.iter().copied())).unwrap();
    let mut hooks = Hooks::new();
    for p in &points {
        hooks = hooks.intervene(Intervention::new(*p, Action::Replace(corr.cache.get(*p).unwrap().clone())));
    }
    let all = ld(&model, &c.clean, &c, hooks);
    let corrupted = ld(&model, &c.corrupted, &c, Hooks::new());
    assert!((all - corrupted).abs() <= 1e-5, "{all} vs {corrupted}");
    // Caching every point runs the chains of ops in place of the fused ones (their inner
    // points are hooked): the same figure up to f32 rounding, which differs by product
    // kernel (a few ulps per op over two layers: 3e-6 relative on the portable path). The
    // fused and chained forms agree to 1e-9 in f64 (tests/gradients.rs).
    let (plain, cached) = (ld(&model, &c.clean, &c, Hooks::new()), ld(&model, &c.clean, &c, Hooks::new().cache_all()));
    assert!((plain - cached).abs() <= 1e-5 * plain.abs().max(1.0), "{plain} vs {cached}");
}

#[test]
fn full_and_empty_circuits() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        let all_heads: Vec<Head> = (0..2).flat_map(|layer| (0..model.config().n_heads).map(move |head| Head { layer, head })).collect();
        for ablation in [Ablation::Resample, Ablation::Zero, Ablation::Mean] {
            for include_mlps in [false, true] {
                let ev = CircuitEvaluator::new(&model, &c, &glassbox::methods::faithfulness::EvaluatorOptions { ablation, include_mlps, mean_set: None, metric: Default::default() }).unwrap();
                let full = Circuit { heads: all_heads.clone(), mlps: if include_mlps { vec![0, 1] } else { vec![] } };
                let r = ev.evaluate(&[full, Circuit::default()]).unwrap();
                assert!((r[0].sufficiency - 1.0).abs() < 1e-5, "{name} {ablation:?}: full sufficiency {}", r[0].sufficiency);
                assert!((r[0].comprehensiveness - 1.0).abs() < 1e-5);
                assert!(r[1].comprehensiveness.abs() < 1e-5, "empty comprehensiveness {}", r[1].comprehensiveness);
                assert!(r[1].sufficiency.abs() < 1e-5);
            }
        }
        // Circuits' figures against hand-made ablation runs from the tokens (the evaluator
        // starts each run at the circuit's first layer: layer 0 for the first, 1 for the second).
        let corr = model.forward(&Batch::new(std::slice::from_ref(&c.corrupted)).unwrap(), &Hooks::new().cache([HookPoint::Z(0), HookPoint::Z(1)])).unwrap();
        let z = |l| corr.cache.get(HookPoint::Z(l)).unwrap().clone();
        let ablating = |pick: &dyn Fn(usize, usize) -> bool| {
            let mut hooks = Hooks::new();
            for l in 0..2 {
                let heads: Vec<usize> = (0..model.config().n_heads).filter(|&h| pick(l, h)).collect();
                if !heads.is_empty() {
                    hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z(l))).heads(heads));
                }
            }
            hooks
        };
        for heads in [vec![Head { layer: 1, head: 0 }, Head { layer: 0, head: 2 }], vec![Head { layer: 1, head: 2 }]] {
            let circuit = Circuit { heads: heads.clone(), mlps: vec![] };
            let f = faithfulness(&model, &c, &circuit, &glassbox::methods::faithfulness::EvaluatorOptions { ablation: Ablation::Resample, include_mlps: false, mean_set: None, metric: Default::default() }, None).unwrap();
            let inside = |l: usize, h: usize| heads.contains(&Head { layer: l, head: h });
            let only = ld(&model, &c.clean, &c, ablating(&|l, h| !inside(l, h)));
            assert!((only - f.ld_circuit_only).abs() < 1e-5, "{name} {heads:?}: {only} vs {}", f.ld_circuit_only);
            let without = ld(&model, &c.clean, &c, ablating(&|l, h| inside(l, h)));
            assert!((without - f.ld_circuit_ablated).abs() < 1e-5, "{name} {heads:?}: {without} vs {}", f.ld_circuit_ablated);
            let (s, k) = (f.sufficiency.max(0.0), f.comprehensiveness.max(0.0));
            let expected = if s + k > 0.0 { 2.0 * s * k / (s + k) } else { 0.0 };
            assert!((f.f1 - expected).abs() < 1e-6, "{name}: f1 {} for {} and {}", f.f1, f.sufficiency, f.comprehensiveness);
        }
    }
}

mod paths {
    use super::*;
    use glassbox::methods::path_patching::{path_patching, PathReceiver};

    /// From a last-layer head to the logits there is nothing left to freeze: path patching
    /// equals exact activation patching of that head.
    #[test]
    fn last_layer_paths_to_logits_equal_exact_patching() {
        for name in ["tiny-gpt2", "tiny-llama"] {
            let model = load_tiny(name);
            let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
            let exact = exact_patching(&model, &c, &glassbox::methods::patching::PatchingOptions { direction: Direction::IntoClean, metric: Default::default() }).unwrap();
            let senders: Vec<Head> = (0..model.config().n_heads).map(|head| Head { layer: 1, head }).collect();
            let pp = path_patching(&model, &c, &glassbox::methods::path_patching::PathPatchingOptions { receiver: PathReceiver::Logits, senders: Some(senders.to_vec()), metric: Default::default() }).unwrap();
            for p in &pp.paths {
                let e = exact.heads[1][p.sender.head];
                assert!((p.patched_ld - e).abs() < 1e-5, "{name} {}: {} vs {e}", p.name, p.patched_ld);
            }
        }
    }

    /// Senders in several chunks (a long prompt: 3 senders per chunk), which run as two
    /// streams: each path, in the senders' order, equals its run written out by hand.
    #[test]
    fn chunked_paths_to_logits_match_manual_runs_in_order() {
        let model = load_tiny("tiny-llama");
        let prompt = [IOI; 3].join(" ");
        let c = Contrast::new(&model, &prompt, " Mary", " John", None).unwrap();
        assert!(c.n_pos() > 32, "the prompt must make chunks of fewer than 4 senders");
        let senders: Vec<Head> = (0..2).flat_map(|layer| (0..model.config().n_heads).map(move |head| Head { layer, head })).collect();
        let pp = path_patching(&model, &c, &glassbox::methods::path_patching::PathPatchingOptions { receiver: PathReceiver::Logits, senders: Some(senders.to_vec()), metric: Default::default() }).unwrap();
        assert_eq!(pp.paths.iter().map(|p| p.sender).collect::<Vec<_>>(), senders);
        let both = model.forward(&c.batch().unwrap(), &Hooks::new().cache([HookPoint::Z(0), HookPoint::Z(1)])).unwrap();
        let z = |l: usize, r: usize| both.cache.get(HookPoint::Z(l)).unwrap().narrow(0, r, 1).unwrap();
        for p in &pp.paths {
            let s = p.sender;
            let mut hooks = Hooks::new();
            for l in s.layer..2 {
                hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z(l, 0))));
            }
            hooks = hooks.intervene(Intervention::new(HookPoint::Z(s.layer), Action::Replace(z(s.layer, 1))).heads(vec![s.head]));
            let manual = ld(&model, &c.clean, &c, hooks);
            assert!((manual - p.patched_ld).abs() < 1e-5, "{}: {manual} vs {}", p.name, p.patched_ld);
        }
    }

    /// Sender → a later head's query, against the two runs written out one sender at a time.
    #[test]
    fn path_to_a_query_input_matches_two_manual_runs() {
        let model = load_tiny("tiny-llama");
        let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        let receiver = Head { layer: 1, head: 3 };
        let pp = path_patching(&model, &c, &glassbox::methods::path_patching::PathPatchingOptions { receiver: PathReceiver::Q(receiver), senders: None, metric: Default::default() }).unwrap();
        assert_eq!(pp.paths.len(), model.config().n_heads);
        let both = model.forward(&c.batch().unwrap(), &Hooks::new().cache([HookPoint::Z(0), HookPoint::Z(1)])).unwrap();
        let z = |l: usize, r: usize| both.cache.get(HookPoint::Z(l)).unwrap().narrow(0, r, 1).unwrap();
        for p in &pp.paths {
            let s = p.sender;
            let run1 = Hooks::new()
                .intervene(Intervention::new(HookPoint::Z(0), Action::Replace(z(0, 0))))
                .intervene(Intervention::new(HookPoint::Z(1), Action::Replace(z(1, 0))))
                .intervene(Intervention::new(HookPoint::Z(s.layer), Action::Replace(z(s.layer, 1))).heads(vec![s.head]))
                .cache([HookPoint::Q(1)]);
            let out = model.forward(&Batch::new(std::slice::from_ref(&c.clean)).unwrap(), &run1).unwrap();
            let q = out.cache.get(HookPoint::Q(1)).unwrap().clone();
            let run2 = Hooks::new().intervene(Intervention::new(HookPoint::Q(1), Action::Replace(q)).heads(vec![receiver.head]));
            let manual = ld(&model, &c.clean, &c, run2);
            assert!((manual - p.patched_ld).abs() < 1e-5, "{}: {manual} vs {}", p.name, p.patched_ld);
        }
    }
}

mod scrub {
    use super::*;
    use glassbox::methods::scrubbing::{causal_scrubbing, Claim, ScrubPrompt};
    use glassbox::tasks::ioi::{generate, scrub_prompts, Corruption};

    /// A hypothesis whose feature no other prompt shares leaves every claimed head as it is:
    /// claiming every head preserves the LD exactly. Claiming none resamples every head.
    #[test]
    fn scrubbing_identities() {
        let model = load_tiny("tiny-gpt2");
        let prompts = generate(&model, 12, 3, Corruption::NameSwap).unwrap();
        let mut set: Vec<ScrubPrompt> = scrub_prompts(&model, &prompts).unwrap();
        for (i, p) in set.iter_mut().enumerate() {
            p.features.insert("id".into(), i.to_string());
        }
        let all: Vec<Claim> = (0..2)
            .flat_map(|layer| (0..model.config().n_heads).map(move |head| Claim { head: Head { layer, head }, feature: "id".to_string() }))
            .collect();
        let r = causal_scrubbing(&model, &set, &glassbox::methods::scrubbing::ScrubOptions { hypothesis: all.to_vec(), seed: 0 }).unwrap();
        assert!((r.preserved - 1.0).abs() < 1e-5, "{}", r.preserved);
        assert_eq!(r.unmatched, 12 * 2 * model.config().n_heads);
        let none = causal_scrubbing(&model, &set, &glassbox::methods::scrubbing::ScrubOptions { hypothesis: [].to_vec(), seed: 0 }).unwrap();
        assert!((none.preserved - 1.0).abs() > 1e-3, "resampling every head changed nothing");
        let e = causal_scrubbing(&model, &set, &glassbox::methods::scrubbing::ScrubOptions { hypothesis: vec![Claim { head: Head { layer: 0, head: 0 }, feature: "colour".into() }], seed: 0 }).unwrap_err();
        assert!(e.to_string().contains("colour"));
    }
}

/// `analyze` builds its evaluator from the attribution's runs: its exact figures equal a fresh
/// evaluator's for the circuit it found.
#[test]
fn analyze_figures_equal_a_fresh_evaluation() {
    use glassbox::methods::analyze::{analyze, AnalyzeOptions};
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        let a = analyze(&model, &c, &AnalyzeOptions { target: 0.99, ..AnalyzeOptions::default() }).unwrap();
        let circuit = Circuit { heads: a.circuit.clone(), mlps: vec![] };
        let f = faithfulness(&model, &c, &circuit, &glassbox::methods::faithfulness::EvaluatorOptions { ablation: Ablation::Resample, include_mlps: false, mean_set: None, metric: Default::default() }, None).unwrap();
        for (x, y) in [
            (a.faithfulness.sufficiency, f.sufficiency),
            (a.faithfulness.comprehensiveness, f.comprehensiveness),
            (a.faithfulness.ld_all_ablated, f.ld_all_ablated),
            (a.faithfulness.clean_ld, f.clean_ld),
        ] {
            assert!((x - y).abs() < 1e-5, "{name}: {x} vs {y}");
        }
    }
}

/// Mean ablation over a given prompt set that does not hold the clean prompt (the evaluator
/// then runs the clean prompt itself): the clean LD is the model's, the full circuit has
/// sufficiency 1 and the empty one comprehensiveness 0, and the all-ablated LD equals a run
/// with every head set to the set's mean.
#[test]
fn mean_ablation_over_a_given_set() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        let mut other = c.corrupted.clone();
        other[3] = (other[3] + 5) % model.config().d_vocab as u32;
        let set = vec![c.corrupted.clone(), other];
        let ev = CircuitEvaluator::new(&model, &c, &glassbox::methods::faithfulness::EvaluatorOptions { ablation: Ablation::Mean, include_mlps: false, mean_set: Some(set.to_vec()), metric: Default::default() }).unwrap();
        let all_heads: Vec<Head> = (0..2).flat_map(|layer| (0..model.config().n_heads).map(move |head| Head { layer, head })).collect();
        let r = ev.evaluate(&[Circuit { heads: all_heads, mlps: vec![] }, Circuit::default()]).unwrap();
        assert!((r[0].clean_ld - ld(&model, &c.clean, &c, Hooks::new())).abs() < 1e-5, "{name}: clean LD");
        assert!((r[0].sufficiency - 1.0).abs() < 1e-5, "{name}: {}", r[0].sufficiency);
        assert!(r[1].comprehensiveness.abs() < 1e-5, "{name}: {}", r[1].comprehensiveness);
        let runs = model.forward(&Batch::new(&set).unwrap(), &Hooks::new().cache([HookPoint::Z(0), HookPoint::Z(1)])).unwrap();
        let mut hooks = Hooks::new();
        for l in 0..2 {
            let mean = runs.cache.get(HookPoint::Z(l)).unwrap().mean_keepdim(0).unwrap();
            hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(mean)));
        }
        assert!((ld(&model, &c.clean, &c, hooks) - r[0].ld_all_ablated).abs() < 1e-5, "{name}: all-ablated LD");
    }
}
