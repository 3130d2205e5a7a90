//! The methods on the real default model (SmolLM2-135M, GQA + RoPE + RMSNorm + SwiGLU).

mod common;

use std::sync::OnceLock;

use glassbox::methods::attribution::{attribute, Component};
use glassbox::methods::logit_lens::logit_lens;
use glassbox::methods::Contrast;
use glassbox::{registry, Model};

fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}")).unwrap();
        Model::load(&path).unwrap()
    })
}

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

#[test]
fn integrated_gradients_complete_on_ioi() {
    let model = smollm2();
    let contrast = Contrast::new(model, IOI, " Mary", " John", None).unwrap();
    let ig = attribute(model, &contrast, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 50, metric: Default::default() }).unwrap();
    let r = ig.completeness_residual.unwrap();
    eprintln!("IG(50) completeness residual {r:.2e}; LD clean {} corrupted {}", ig.clean_ld, ig.corrupted_ld);
    assert!(r < 0.01, "completeness residual {r}");
    assert!(ig.clean_ld > 4.0 && ig.corrupted_ld < 0.0, "{} {}", ig.clean_ld, ig.corrupted_ld);
    assert_eq!(ig.scores.len(), 30);
    assert_eq!(ig.scores[0].len(), 9);
}

#[test]
fn logit_lens_decomposition_on_ioi() {
    let model = smollm2();
    let tokens = model.tokenize(IOI).unwrap();
    let (c, i) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
    let lens = logit_lens(model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::logit_lens::LogitLensOptions { top_k: 5 }).unwrap();
    assert!(lens.decomposition_residual <= 1e-4, "{}", lens.decomposition_residual);
    assert!((lens.final_ld - 5.2873).abs() < 1e-3, "{}", lens.final_ld);
    assert_eq!(lens.top_tokens[30][0].token, " Mary");
}

/// `analyze` on the IOI prompt: a circuit whose exact sufficiency reaches the target, with the
/// name-mover head L23H03 in it, and the Taylor estimate reported beside the exact figure.
#[test]
fn analyze_finds_a_faithful_circuit() {
    use glassbox::methods::analyze::{analyze, AnalyzeOptions};
    let model = smollm2();
    let contrast = Contrast::new(model, IOI, " Mary", " John", None).unwrap();
    let a = analyze(model, &contrast, &AnalyzeOptions::default()).unwrap();
    assert!(a.target_reached);
    assert!(a.faithfulness.sufficiency >= 0.85, "{:?}", a.faithfulness);
    assert!(!a.faithfulness.suff_is_approx);
    assert!(a.faithfulness.taylor_sufficiency.is_some());
    assert!(a.circuit.iter().any(|h| h.to_string() == "L23H03"), "{:?}", a.circuit);
    assert!(a.circuit.len() <= 40);
}
