//! TransformerLens checkpoints (config.json from `HookedTransformerConfig.to_dict()`, the state
//! dict as safetensors) load and give TransformerLens' own logits at every position: six random
//! checkpoints of scripts/fixtures/tl_checkpoints.py covering LN / LNPre / RMS / no norms,
//! learned and rotary positions (halves and adjacent pairs, partial), grouped keys and values,
//! gated MLPs, bidirectional attention and attention-only models.

mod common;

use common::fixtures;
use glassbox::{Batch, Hooks, Model};

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("tl").join(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn transformer_lens_checkpoints_give_transformer_lens_logits() {
    for name in ["ln_learned", "lnpre_rotary_gqa", "rms_rotary_adjacent", "none_bidirectional", "attn_only_ln", "attn_only_lnpre_rotary"] {
        let model = Model::load(&fixtures().join("tl").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = reference(name);
        for p in r["prompts"].as_array().unwrap() {
            let ids: Vec<u32> = p["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(model.tokenize(p["prompt"].as_str().unwrap()).unwrap(), ids, "{name}: tokens");
            let out = model.forward(&Batch::new(std::slice::from_ref(&ids)).unwrap(), &Hooks::default()).unwrap();
            let ours = out.logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            let mut worst = 0f32;
            for (row, theirs) in ours.iter().zip(p["logits"].as_array().unwrap()) {
                for (a, b) in row.iter().zip(theirs.as_array().unwrap()) {
                    worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
                }
            }
            eprintln!("{name}: max |logit − TransformerLens| = {worst:e}");
            assert!(worst < 1e-4, "{name}: max |logit − TransformerLens| = {worst:e}");
        }
    }
}

#[test]
fn bidirectional_models_see_later_tokens_and_refuse_generation() {
    let model = Model::load(&fixtures().join("tl").join("none_bidirectional")).unwrap();
    assert!(model.config().variants.bidirectional);
    let a = model.tokenize("t3 t7 t1").unwrap();
    let mut b = a.clone();
    *b.last_mut().unwrap() = 9;
    let first = |ids: &[u32]| model.forward(&Batch::new(&[ids.to_vec()]).unwrap(), &Hooks::default()).unwrap().logits.get(0).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(first(&a), first(&b), "position 0 reads the last token in a bidirectional model");
    let e = model.generate("t3 t7", &Default::default(), &Hooks::default()).unwrap_err().to_string();
    assert!(e.contains("bidirectional"), "{e}");
}

#[test]
fn transformer_lens_configs_glassbox_does_not_compute_are_refused_by_name() {
    let src = fixtures().join("tl").join("ln_learned");
    let base: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    for (key, value, expect) in [
        // Set on a checkpoint that has MLP weights.
        ("attn_only", serde_json::json!(true), "attn_only is set, yet the state dict holds"),
        ("normalization_type", serde_json::json!("LNX"), "normalization_type"),
        ("positional_embedding_type", serde_json::json!("shortformer"), "shortformer"),
        ("d_vocab_out", serde_json::json!(7), "d_vocab_out"),
        ("use_local_attn", serde_json::json!(true), "use_local_attn"),
        ("act_fn", serde_json::json!("solu_ln"), "act_fn"),
        ("attention_dir", serde_json::json!("sideways"), "attention_dir"),
        ("eps", serde_json::json!(-1.0), "epsilon"),
        ("d_head", serde_json::json!(5), "expected"),
    ] {
        let dir = common::scratch(&format!("tl-refused-{key}"));
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.as_path().join(f)).unwrap();
        }
        let mut cfg = base.clone();
        cfg[key] = value;
        std::fs::write(dir.as_path().join("config.json"), cfg.to_string()).unwrap();
        let e = Model::load(dir.as_path()).err().unwrap_or_else(|| panic!("{key} accepted")).to_string();
        assert!(e.contains(expect), "{key}: {e}");
    }
    // A tensor the checkpoint has and glassbox would not read is an error, not ignored.
    let dir = common::scratch("tl-extra-tensor");
    std::fs::copy(src.join("config.json"), dir.as_path().join("config.json")).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dir.as_path().join("tokenizer.json")).unwrap();
    // candle reads no bool tensors: the copy leaves TransformerLens' mask buffers out.
    // SAFETY: a fixture file this test only reads.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(src.join("model.safetensors")) }.unwrap();
    let mut t: std::collections::HashMap<String, candle_core::Tensor> =
        st.tensors().into_iter().filter(|(n, _)| !n.ends_with(".attn.mask")).map(|(n, _)| (n.clone(), st.load(&n, &candle_core::Device::Cpu).unwrap())).collect();
    t.insert("blocks.0.attn.W_extra".into(), candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, dir.as_path().join("model.safetensors")).unwrap();
    let e = Model::load(dir.as_path()).err().unwrap().to_string();
    assert!(e.contains("W_extra"), "{e}");
}

/// An attention-only checkpoint has no MLP hooks but `hook_mlp_in`/`hook_mlp_out` (zero), its
/// MLPs are refused as attribution components and as a transcoder set's target, and its
/// `d_mlp` is 0 whatever the config left there.
#[test]
fn attention_only_models_run_without_mlps() {
    let model = Model::load(&fixtures().join("tl").join("attn_only_ln")).unwrap();
    assert!(model.config().variants.attn_only);
    assert_eq!(model.config().d_mlp, 0);
    let ids = model.tokenize("t3 t7 t1 t9 t4").unwrap();
    let out = model.forward(&Batch::new(std::slice::from_ref(&ids)).unwrap(), &Hooks::new().cache([glassbox::HookPoint::MlpOut(1)])).unwrap();
    assert!(out.cache.get(glassbox::HookPoint::MlpOut(1)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|&x| x == 0.0));
    let e = model.forward(&Batch::new(std::slice::from_ref(&ids)).unwrap(), &Hooks::new().cache([glassbox::HookPoint::MlpPost(0)])).err().unwrap().to_string();
    assert!(e.contains("attention-only"), "{e}");
    let contrast = glassbox::methods::Contrast::new(&model, "t3 t7 t1 t9 t4", " t5", " t6", Some("t3 t8 t1 t9 t4")).unwrap();
    let mlp = glassbox::methods::attribution::AttributionOptions { component: glassbox::methods::attribution::Component::Mlp, ..Default::default() };
    let e = glassbox::methods::attribution::attribute(&model, &contrast, &mlp).unwrap_err().to_string();
    assert!(e.contains("attention-only"), "{e}");
    let heads = glassbox::methods::attribution::attribute(&model, &contrast, &Default::default()).unwrap();
    assert!(heads.scores.iter().flatten().any(|&s| s != 0.0));
}
