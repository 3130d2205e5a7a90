//! The gradient and lens methods, each against an independent computation or identity, on
//! GPT-2-family and LLaMA-family models.

mod common;

use candle_core::DType;
use common::{fixtures, load_tiny, Reference};
use glassbox::methods::attribution::{attribute, Component, Method};
use glassbox::methods::logit_lens::logit_lens;
use glassbox::methods::token_attribution::{token_attribution, Baseline};
use glassbox::methods::Contrast;
use glassbox::{Action, Batch, HookPoint, Hooks, Intervention};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

use common::last_ld as ld;

/// With a corrupted run ε-close to the clean one, attribution patching of each head equals
/// exact activation patching (LD_clean − LD with that head patched from the corrupted run)
/// to first order.
#[test]
fn attribution_patching_matches_exact_patching_in_the_linear_regime() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let (model, contrast) = common::eps_close(name, 1e-4);
        let attr = attribute(&model, &contrast, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: Method::Taylor, metric: Default::default(), n_steps: 20 }).unwrap();
        let (c, i) = (contrast.correct_id, contrast.incorrect_id);
        let clean_ld = ld(&model, &contrast.clean, c, i, Hooks::new());
        let corr = model
            .forward(&contrast.batch().unwrap(), &Hooks::new().cache((0..2).map(HookPoint::Z)))
            .unwrap();
        let mut max_err = 0f64;
        let mut max_exact = 0f64;
        for l in 0..2 {
            let z_corr = corr.cache.get(HookPoint::Z(l)).unwrap().get(1).unwrap().unsqueeze(0).unwrap();
            for h in 0..model.config().n_heads {
                let hooks = Hooks::new().intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z_corr.clone())).heads(vec![h]));
                let exact = clean_ld - ld(&model, &contrast.clean, c, i, hooks);
                max_err = max_err.max((exact - attr.scores[l][h] as f64).abs());
                max_exact = max_exact.max(exact.abs());
            }
        }
        assert!(max_exact > 1e-7, "{name}: the corruption has no effect");
        assert!(max_err / max_exact < 1e-2, "{name}: attribution vs exact patching: max error {max_err:e}, max effect {max_exact:e}");
    }
}

/// Integrated gradients over heads, MLPs and attention outputs: completeness within 1 % at 50
/// steps, and the Taylor and IG figures agree in sign on the strongest component.
#[test]
fn integrated_gradients_are_complete() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let contrast = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        assert_eq!(contrast.corruption, "name_swap");
        for component in [Component::Heads, Component::Mlp, Component::AttnOut] {
            let ig = attribute(&model, &contrast, &glassbox::methods::attribution::AttributionOptions { component, method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 50, metric: Default::default() }).unwrap();
            let r = ig.completeness_residual.unwrap();
            assert!(r < 0.01, "{name} {component:?}: completeness residual {r}");
            let clean = ld(&model, &contrast.clean, contrast.correct_id, contrast.incorrect_id, Hooks::new());
            assert!((ig.clean_ld as f64 - clean).abs() < 1e-4);
        }
    }
}

/// Embeddings + heads + MLPs + biases = the final LD (frozen final-norm scale); the lens's last
/// entry is the model's own LD.
#[test]
fn logit_lens_decomposition_identity() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-llama-tied"] {
        let model = load_tiny(name);
        let tokens = model.tokenize(IOI).unwrap();
        let (c, i) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
        let lens = logit_lens(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::logit_lens::LogitLensOptions { top_k: 5 }).unwrap();
        assert!(lens.decomposition_residual <= 1e-4, "{name}: {}", lens.decomposition_residual);
        assert_eq!(lens.logit_diffs.len(), model.config().n_layers + 1);
        assert!((lens.logit_diffs.last().unwrap() - lens.final_ld).abs() <= 1e-4);
        assert!((lens.final_ld as f64 - ld(&model, &tokens, c, i, Hooks::new())).abs() <= 1e-5);
        assert_eq!(lens.top_tokens[0].len(), 5);
        let shifts: f32 = lens.logit_shifts.iter().sum();
        assert!((shifts - (lens.logit_diffs[2] - lens.logit_diffs[0])).abs() < 1e-4);
    }
}

/// Head direct effects are what zero-ablating the head changes when everything downstream is
/// frozen: in the last layer, with its MLP and the final-norm scale held, that is exact.
#[test]
fn last_layer_head_direct_effect_equals_ablation_with_frozen_scale() {
    let model = load_tiny("tiny-llama").to_dtype(DType::F64).unwrap();
    let tokens = model.tokenize(IOI).unwrap();
    let (c, i) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
    let lens = logit_lens(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::logit_lens::LogitLensOptions { top_k: 1 }).unwrap();
    let batch = Batch::new(std::slice::from_ref(&tokens)).unwrap();
    let clean = model.forward(&batch, &Hooks::new().cache([HookPoint::LnFinalScale, HookPoint::MlpOut(1)])).unwrap();
    let scale = clean.cache.get(HookPoint::LnFinalScale).unwrap().clone();
    let mlp = clean.cache.get(HookPoint::MlpOut(1)).unwrap().clone();
    let base = ld(&model, &tokens, c, i, Hooks::new());
    for h in 0..model.config().n_heads {
        // Everything downstream of the head frozen: layer 1's MLP and the final-norm scale.
        let hooks = Hooks::new()
            .intervene(Intervention::new(HookPoint::Z(1), Action::Zero).heads(vec![h]))
            .intervene(Intervention::new(HookPoint::MlpOut(1), Action::Replace(mlp.clone())))
            .intervene(Intervention::new(HookPoint::LnFinalScale, Action::Replace(scale.clone())));
        let ablated = ld(&model, &tokens, c, i, hooks);
        let effect = lens.head_direct_effects[1][h] as f64;
        assert!((base - ablated - effect).abs() < 1e-5, "head {h}: {} vs {effect}", base - ablated);
    }
}

#[test]
fn token_attribution_ig_is_complete_and_gradient_x_input_sums_sensibly() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let tokens = model.tokenize(IOI).unwrap();
        let (c, i) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
        // A token baseline (token 0, `<|endoftext|>`): with rotary models and a zero baseline the
        // path starts at the first norm's singularity (RMSNorm(α·e) jumps near α = 0).
        let ig = token_attribution(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::token_attribution::TokenAttributionOptions { method: glassbox::methods::token_attribution::TokenMethod::IntegratedGradients, n_steps: 50, baseline: Baseline::Token(0) }).unwrap();
        assert!(ig.completeness_residual.unwrap() < 0.01, "{name}: {:?}", ig.completeness_residual);
        if name == "tiny-gpt2" {
            let zero = token_attribution(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::token_attribution::TokenAttributionOptions { method: glassbox::methods::token_attribution::TokenMethod::IntegratedGradients, n_steps: 50, baseline: Baseline::Zero }).unwrap();
            assert!(zero.completeness_residual.unwrap() < 0.01, "{name} zero baseline: {:?}", zero.completeness_residual);
        }
        assert_eq!(ig.tokens.len(), tokens.len());
        let gxi = token_attribution(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::token_attribution::TokenAttributionOptions { method: glassbox::methods::token_attribution::TokenMethod::GradientXInput, ..Default::default() }).unwrap();
        assert_eq!(gxi.top_tokens.len(), tokens.len());
        assert!(gxi.top_tokens[0].attribution.abs() >= gxi.top_tokens[1].attribution.abs());
    }
}

#[test]
fn name_swap_and_length_errors() {
    let model = load_tiny("tiny-gpt2");
    let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    assert_eq!(c.corrupted_prompt, "When John and Mary went to the store, Mary gave a drink to");
    let e = Contrast::new(&model, "The cat sat on the mat.", " Mary", " John", None).unwrap_err();
    assert!(e.to_string().contains("--corrupted"), "{e}");
    let e = Contrast::new(&model, IOI, " Mary", " John", Some("Hello")).unwrap_err();
    assert!(e.to_string().contains("equal lengths"), "{e}");
}

#[allow(dead_code)]
fn reference(name: &str) -> Reference {
    Reference::load(fixtures().join(name).join("reference.safetensors"))
}
