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
        // Every activation the reference recorded, by its hook name.
        let points: Vec<(HookPoint, String)> = reference
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("p{i}.")))
            .filter(|k| *k != "input_ids" && *k != "logits")
            .map(|k| (k.parse::<HookPoint>().unwrap_or_else(|e| panic!("{name}: {e}")), k.to_string()))
            .collect();
        assert!(!points.is_empty());
        let batch = Batch::new(&[ids]).unwrap();
        let hooks = Hooks::new().cache(points.iter().map(|(p, _)| *p));
        let out = model.forward(&batch, &hooks).unwrap();
        let logits = out.logits.squeeze(0).unwrap();
        let d = max_abs_diff(&logits, reference.get(&format!("p{i}.logits")));
        assert!(d <= TOL, "{name} prompt {i}: max |logit - reference| = {d:e}");
        for (point, key) in &points {
            let ours = out.cache.get(*point).unwrap().squeeze(0).unwrap();
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

#[test]
fn tiny_qwen2_qkv_bias_matches_transformers() {
    check_family("tiny-qwen2");
}

#[test]
fn tiny_mistral_sliding_window_matches_transformers() {
    check_family("tiny-mistral");
}

#[test]
fn tiny_mixtral_moe_matches_transformers() {
    check_family("tiny-mixtral");
}

#[test]
fn tiny_neox_parallel_partial_rotary_matches_transformers() {
    check_family("tiny-neox");
}

#[test]
fn tiny_opt_matches_transformers() {
    check_family("tiny-opt");
}

#[test]
fn tiny_opt_post_ln_matches_transformers() {
    check_family("tiny-opt-postln");
}

#[test]
fn tiny_gptneo_local_attention_matches_transformers() {
    check_family("tiny-gptneo");
}

#[test]
fn tiny_gemma_matches_transformers() {
    check_family("tiny-gemma");
}

#[test]
fn tiny_gemma2_softcap_sliding_matches_transformers() {
    check_family("tiny-gemma2");
}

#[test]
fn tiny_gemma3_qk_norm_local_rope_matches_transformers() {
    check_family("tiny-gemma3");
}

/// A padded batch gives each prompt the logits it gets alone (with sliding windows shorter
/// than the padding too).
#[test]
fn padded_batch_equals_single_runs() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-mistral", "tiny-gemma3", "tiny-gptneo", "tiny-mixtral"] {
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

/// Qwen3: per-head query/key RMSNorm, head_dim 24 (neither d_model / heads nor a power of 2).
#[test]
fn tiny_qwen3_qk_norm_matches_transformers() {
    check_family("tiny-qwen3");
}

/// Qwen3-MoE: Qwen3 attention, every layer a top-2 of 4 renormalised mixture.
#[test]
fn tiny_qwen3_moe_matches_transformers() {
    check_family("tiny-qwen3-moe");
}

/// Qwen2-MoE: q/k/v biases, routed experts not renormalised, a gated shared expert.
#[test]
fn tiny_qwen2_moe_shared_expert_matches_transformers() {
    check_family("tiny-qwen2-moe");
}

/// Phi-3: fused qkv_proj and gate_up_proj.
#[test]
fn tiny_phi3_fused_projections_match_transformers() {
    check_family("tiny-phi3");
}

/// OLMo-2: norms only after the sublayers, query/key norms over the whole projections.
#[test]
fn tiny_olmo2_post_norms_match_transformers() {
    check_family("tiny-olmo2");
}

/// OPT with a narrower embedding (project_in/out, as OPT-350m), folded at load.
#[test]
fn tiny_opt_projections_match_transformers() {
    check_family("tiny-opt-proj");
}
