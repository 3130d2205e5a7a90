//! IOI generation, Kendall τ-b, bootstrap, stability and the prompt-set analysis.

mod common;

use common::load_tiny;
use glassbox::methods::bootstrap::{bootstrap, quantile};
use glassbox::methods::faithfulness::PromptLds;
use glassbox::methods::stability::{attribution_stability, kendall_tau_b};
use glassbox::tasks::ioi::{contrasts, generate, Corruption};

#[test]
fn kendall_tau_b_with_ties_matches_hand_computation() {
    // Pairs: 3 concordant, 1 discordant, one tied in x only, one tied in y only:
    // τ_b = (3 − 1) / sqrt((6 − 1)(6 − 1)) = 0.4 (scipy.stats.kendalltau gives 0.4).
    let t = kendall_tau_b(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 2.0]);
    assert!((t - 0.4).abs() < 1e-6, "{t}");
    assert!((kendall_tau_b(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-6);
    assert!((kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-6);
    assert!(kendall_tau_b(&[1.0, 1.0], &[2.0, 3.0]).is_nan());
}

#[test]
fn ioi_prompts_are_well_formed() {
    let model = load_tiny("tiny-gpt2");
    for corruption in [Corruption::NameSwap, Corruption::Abc] {
        let prompts = generate(&model, 12, 7, corruption).unwrap();
        assert_eq!(prompts.len(), 12);
        assert_eq!(prompts.iter().filter(|p| p.order == "BABA").count(), 6);
        let cs = contrasts(&model, &prompts).unwrap();
        for (p, c) in prompts.iter().zip(&cs) {
            assert_eq!(c.clean.len(), c.corrupted.len(), "{p:?}");
            let io = p.io.trim();
            let s = p.subject.trim();
            assert_eq!(p.clean.matches(io).count(), 1, "{}", p.clean);
            assert_eq!(p.clean.matches(s).count(), 2, "{}", p.clean);
            match corruption {
                Corruption::NameSwap => assert_eq!(p.corrupted.matches(io).count(), 2),
                Corruption::Abc => {
                    assert_eq!(p.corrupted.matches(s).count(), 1, "{}", p.corrupted);
                    assert_eq!(p.corrupted.matches(io).count(), 1, "{}", p.corrupted);
                }
            }
        }
        assert_eq!(prompts[0].clean, generate(&model, 12, 7, corruption).unwrap()[0].clean, "seeded");
    }
}

#[test]
fn bootstrap_intervals() {
    assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
    assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
    let lds: Vec<PromptLds> = (0..20)
        .map(|i| PromptLds {
            clean_ld: 4.0 + (i % 3) as f32,
            ld_circuit_only: 3.0 + (i % 5) as f32 * 0.3,
            ld_circuit_ablated: 1.0 - (i % 4) as f32 * 0.2,
            ld_all_ablated: -2.0,
        })
        .collect();
    let b = bootstrap(&lds, &glassbox::methods::bootstrap::BootstrapOptions { n_boot: 500, alpha: 0.05, seed: 3 }).unwrap();
    for i in [b.sufficiency, b.comprehensiveness, b.f1] {
        assert!(i.ci_lo <= i.mean && i.mean <= i.ci_hi, "{i:?}");
        assert!(i.std > 0.0 && i.n == 20);
    }
    let again = bootstrap(&lds, &glassbox::methods::bootstrap::BootstrapOptions { n_boot: 500, alpha: 0.05, seed: 3 }).unwrap();
    assert_eq!(b.sufficiency.ci_lo, again.sufficiency.ci_lo);
    let same: Vec<PromptLds> = vec![lds[0]; 10];
    let flat = bootstrap(&same, &glassbox::methods::bootstrap::BootstrapOptions { n_boot: 100, alpha: 0.05, seed: 1 }).unwrap();
    assert_eq!(flat.sufficiency.ci_lo, flat.sufficiency.ci_hi);
}

#[test]
fn stability_of_attributions() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let tokens = model.tokenize("When Mary and John went to the store, John gave a drink to").unwrap();
        let (c, i) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
        let s = attribution_stability(&model, &glassbox::methods::Prompt { tokens: tokens.clone(), correct: c, incorrect: i }, &glassbox::methods::stability::StabilityOptions { n_corruptions: 6, p: 0.3, seed: 42 }).unwrap();
        assert!(s.rank_consistency.is_finite() && s.rank_consistency <= 1.0 && s.rank_consistency >= -1.0);
        assert_eq!(s.stability.len(), 2);
        assert!(s.stability.iter().flatten().all(|&x| (0.0..=1.0).contains(&x)));
        let again = attribution_stability(&model, &glassbox::methods::Prompt { tokens: tokens.clone(), correct: c, incorrect: i }, &glassbox::methods::stability::StabilityOptions { n_corruptions: 6, p: 0.3, seed: 42 }).unwrap();
        assert_eq!(s.rank_consistency, again.rank_consistency, "seeded");
    }
}

/// Every generated task on a tiny model (docstring needs more word tokens than the tiny
/// vocabulary has: tests/smollm2.rs checks it on SmolLM2): the answers are single tokens of the vocabulary, clean
/// and counterfactual prompts have the same length and differ, the answers differ, seeded.
#[test]
fn standard_tasks_are_well_formed() {
    use glassbox::tasks::{generate as task, TaskSpec};
    let model = load_tiny("tiny-gpt2");
    for name in ["arithmetic", "greater-than", "induction", "mcqa"] {
        let spec = TaskSpec { task: name.into(), n: 16, seed: 3, corruption: None };
        let set = task(&model, &spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(set.len(), 16, "{name}");
        for p in &set {
            let c = &p.contrast;
            c.check(&model).unwrap();
            assert_eq!(c.clean.len(), c.corrupted.len(), "{name}");
            assert_ne!(c.correct_id, c.incorrect_id, "{name}");
            assert_eq!(model.tokenizer().encode_plain(&c.correct).unwrap(), vec![c.correct_id], "{name}: {:?} is one token", c.correct);
            assert_eq!(model.tokenizer().encode_plain(&c.incorrect).unwrap(), vec![c.incorrect_id], "{name}");
        }
        assert_eq!(set[0].contrast.clean, task(&model, &spec).unwrap()[0].contrast.clean, "{name}: seeded");
        let with_corruption = TaskSpec { corruption: Some("abc".into()), ..spec };
        assert!(task(&model, &with_corruption).unwrap_err().to_string().contains("corruption"), "{name}");
    }
    // The arithmetic answers are the operations' results, and the counterfactual's differ.
    let set = task(&model, &TaskSpec { task: "arithmetic".into(), n: 8, seed: 1, corruption: None }).unwrap();
    for p in &set {
        let (a, b) = (p.features["a"].parse::<i64>().unwrap(), p.features["b"].parse::<i64>().unwrap());
        let r = if p.features["operator"] == "+" { a + b } else { a - b };
        assert_eq!(p.contrast.correct, r.to_string());
        assert_eq!(p.contrast.clean_prompt, format!("{a}{}{b}=", p.features["operator"]));
    }
}
