//! Every family runs the methods: attribution patching, logit lens (with the decomposition
//! identity where the architecture decomposes), exact patching, and a gradient check.

mod common;

use common::load_tiny;
use glassbox::methods::attribution::{attribute, Component, Method};
use glassbox::methods::logit_lens::logit_lens;
use glassbox::methods::patching::{exact_patching, Direction};
use glassbox::methods::Contrast;

const FAMILIES: &[&str] = &[
    "tiny-gpt2", "tiny-llama", "tiny-llama-tied", "tiny-qwen2", "tiny-mistral", "tiny-mixtral", "tiny-neox", "tiny-opt",
    "tiny-opt-postln", "tiny-gptneo", "tiny-gemma", "tiny-gemma2", "tiny-gemma3", "tiny-qwen3", "tiny-qwen3-moe",
    "tiny-qwen2-moe", "tiny-phi3", "tiny-olmo2", "tiny-opt-proj",
];

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

#[test]
fn methods_run_on_every_family() {
    for name in FAMILIES {
        let model = load_tiny(name);
        let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        let layers = model.config().n_layers;

        let taylor = attribute(&model, &c, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: Method::Taylor, metric: Default::default(), n_steps: 20 }).unwrap();
        assert_eq!(taylor.scores.len(), layers, "{name}");
        assert!(taylor.scores.iter().flatten().all(|x| x.is_finite()), "{name}");
        let ig = attribute(&model, &c, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 50, metric: Default::default() }).unwrap();
        let r = ig.completeness_residual.unwrap();
        if model.config().variants.moe.is_none() {
            assert!(r < 0.01, "{name}: IG residual {r}");
        } else {
            // Top-k routing switches experts along the path: the function jumps there, and
            // integrated gradients (which integrate a gradient) cannot see jumps. The residual
            // is reported, not hidden.
            assert!(r.is_finite(), "{name}");
        }

        let lens = logit_lens(&model, &glassbox::methods::Prompt { tokens: (c.clean).to_vec(), correct: c.correct_id, incorrect: c.incorrect_id }, &glassbox::methods::logit_lens::LogitLensOptions { top_k: 3 }).unwrap();
        assert!((lens.logit_diffs[layers] - lens.final_ld).abs() < 1e-4, "{name}: lens end {} vs {}", lens.logit_diffs[layers], lens.final_ld);
        if !model.config().variants.post_ln {
            assert!(lens.decomposition_residual < 1e-4, "{name}: decomposition residual {}", lens.decomposition_residual);
        }

        let p = exact_patching(&model, &c, &glassbox::methods::patching::PatchingOptions { direction: Direction::IntoClean, metric: Default::default() }).unwrap();
        assert!((p.base_ld - taylor.clean_ld).abs() < 1e-5, "{name}");
        assert_eq!(p.heads[0].len(), model.config().n_heads);
    }
}
