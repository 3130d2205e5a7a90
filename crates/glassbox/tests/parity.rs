//! Parity with Hugging Face `transformers` on tiny random-weight models made by
//! `scripts/make_fixtures.py`: logits and cached activations, loaded through the real loaders.

mod common;

use common::{fixtures, load_tiny, max_abs_diff, Reference};
use glassbox::{Batch, HookPoint, Hooks};

const TOL: f64 = 1e-4;

fn check_family(name: &str) {
    let model = load_tiny(name);
    let reference = Reference::load(fixtures().join(name).join("reference.safetensors"));
    let prompts = reference.prompts();
    assert_eq!(prompts.len(), 3);
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = reference.ids(i);
        assert_eq!(model.tokenize(prompt).unwrap(), ids, "{name}: tokenization of {prompt:?}");
        let batch = Batch::new(&[ids]).unwrap();
        let hooks = Hooks::new().cache([HookPoint::ResidPre(1), HookPoint::Pattern(1), HookPoint::Z(1)]);
        let out = model.forward(&batch, &hooks).unwrap();
        let logits = out.logits.squeeze(0).unwrap();
        let d = max_abs_diff(&logits, reference.get(&format!("p{i}.logits")));
        assert!(d <= TOL, "{name} prompt {i}: max |logit - reference| = {d:e}");
        for (point, key) in [
            (HookPoint::ResidPre(1), "blocks.1.hook_resid_pre"),
            (HookPoint::Pattern(1), "blocks.1.attn.hook_pattern"),
            (HookPoint::Z(1), "blocks.1.attn.hook_z"),
        ] {
            let ours = out.cache.get(point).unwrap().squeeze(0).unwrap();
            let d = max_abs_diff(&ours, reference.get(&format!("p{i}.{key}")));
            assert!(d <= TOL, "{name} prompt {i}: {key} differs by {d:e}");
        }
    }
}

#[test]
fn tiny_gpt2_matches_transformers() {
    check_family("tiny-gpt2");
}

#[test]
fn tiny_llama_gqa_untied_matches_transformers() {
    check_family("tiny-llama");
}

#[test]
fn tiny_llama_mqa_tied_matches_transformers() {
    check_family("tiny-llama-tied");
}

/// A padded batch gives each prompt the logits it gets alone.
#[test]
fn padded_batch_equals_single_runs() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let reference = Reference::load(fixtures().join(name).join("reference.safetensors"));
        let seqs: Vec<Vec<u32>> = (0..3).map(|i| reference.ids(i)).collect();
        let out = model.forward(&Batch::new(&seqs).unwrap(), &Hooks::new()).unwrap();
        for (i, s) in seqs.iter().enumerate() {
            let ours = out.logits.get(i).unwrap().narrow(0, 0, s.len()).unwrap();
            let d = max_abs_diff(&ours, reference.get(&format!("p{i}.logits")));
            assert!(d <= TOL, "{name} prompt {i} in a padded batch: {d:e}");
        }
    }
}
