//! Warnings for figures that may mislead (issue 27 item 1), through the catalog as every front
//! end runs it: first-order scores of KL, integrated gradients that do not add up, an answer
//! without its leading space, bootstrap intervals from few prompts, scores that are all zero.

mod common;

use common::load_tiny;
use glassbox::methods::catalog::{run_named, Context, Envelope, InputSpec};
use serde_json::{json, Value};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

fn run(method: &str, input: &InputSpec, options: Value) -> Envelope {
    let model = load_tiny("tiny-llama");
    run_named(method, &Context::new(&model), input, &options).unwrap_or_else(|e| panic!("{method} {options}: {e}"))
}

fn contrast(correct: &str) -> InputSpec {
    InputSpec::contrast(IOI, correct, " John", None)
}

fn warned(e: &Envelope, needle: &str) -> bool {
    e.warnings.iter().any(|w| w.contains(needle))
}

#[test]
fn first_order_scores_of_kl_warn_and_integrated_gradients_do_not() {
    for method in ["attribution", "analyze", "edges"] {
        let taylor = run(method, &contrast(" Mary"), json!({"metric": "kl"}));
        assert!(warned(&taylor, "zero gradient at the clean run"), "{method}: {:?}", taylor.warnings);
        let ig_name = if method == "edges" { "eap-ig" } else { "integrated_gradients" };
        let ig = run(method, &contrast(" Mary"), json!({"metric": "kl", "method": ig_name}));
        assert!(!warned(&ig, "zero gradient"), "{method} with IG: {:?}", ig.warnings);
        let ld = run(method, &contrast(" Mary"), json!({}));
        assert!(!warned(&ld, "zero gradient"), "{method} on the logit difference: {:?}", ld.warnings);
    }
    // Why: every first-order score of KL is (float noise around) zero.
    let taylor = run("attribution", &contrast(" Mary"), json!({"metric": "kl"}));
    let largest = taylor.result["scores"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|v| v.as_f64().unwrap().abs()).fold(0.0, f64::max);
    assert!(largest < 1e-4, "{largest}");
    let eval = run("evaluate", &InputSpec::task("ioi", 4, 0), json!({"metric": "kl"}));
    assert!(warned(&eval, "EAP-IG"), "{:?}", eval.warnings);
}

#[test]
fn integrated_gradients_that_do_not_add_up_warn() {
    let mut fired = 0;
    for n_steps in [1, 2, 50] {
        for (method, input) in [("attribution", contrast(" Mary")), ("token-attribution", contrast(" Mary"))] {
            let e = run(method, &input, json!({"method": "integrated_gradients", "n_steps": n_steps}));
            let residual = e.result["completeness_residual"].as_f64().unwrap();
            let w = warned(&e, "completeness residual");
            assert_eq!(w, residual > 0.05, "{method} n_steps {n_steps}: residual {residual}, warnings {:?}", e.warnings);
            fired += usize::from(w);
        }
    }
    assert!(fired > 0, "no step count left a residual above 5 %");
}

#[test]
fn an_answer_without_its_leading_space_warns() {
    let bare = run("attribution", &contrast("Mary"), json!({}));
    assert!(warned(&bare, "no leading space") && warned(&bare, "\" Mary\""), "{:?}", bare.warnings);
    let spaced = run("attribution", &contrast(" Mary"), json!({}));
    assert!(!warned(&spaced, "leading space"), "{:?}", spaced.warnings);
}

#[test]
fn intervals_from_few_prompts_warn() {
    let few = run("analyze", &InputSpec::task("ioi", 4, 0), json!({"n_boot": 50}));
    assert!(warned(&few, "come from 4 prompt(s)"), "{:?}", few.warnings);
    let enough = run("analyze", &InputSpec::task("ioi", 24, 0), json!({"n_boot": 50}));
    assert!(!warned(&enough, "prompt(s)"), "{:?}", enough.warnings);
}

#[test]
fn scores_that_are_all_near_zero_warn() {
    use glassbox::methods::warnings::near_zero_scores;
    assert!(near_zero_scores([0.0, 1e-9, -2e-9], 5.0, "head").is_some_and(|w| w.contains("near zero")));
    assert!(near_zero_scores([0.0, 0.3], 5.0, "head").is_none());
    assert!(near_zero_scores([1e-7], 0.0, "head").is_none(), "against no change, any score counts");
}
