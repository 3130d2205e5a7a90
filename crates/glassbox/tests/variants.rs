//! Checkpoints as they are published (issue 11): tiny models under the config.json forms real
//! checkpoints use (no `layer_types`, Gemma 3's `sliding_window_pattern`, Qwen2's
//! `max_window_layers`, Mistral's null or absent window, absent keys with family defaults) and
//! every rope scaling type, against `transformers` loading the same files; and tiny GGUF
//! files written as llama.cpp writes them, against `transformers` loading those (its own token
//! ids, BOS included or not, and its logits). References from `scripts/make_fixtures.py`.

mod common;

use common::{fixtures, max_abs_diff, scratch, Reference};
use glassbox::{Batch, Hooks, Model};

/// The base fixture's weights and tokenizer under the variant's config.json.
fn assemble(variant: &str) -> (Model, Reference) {
    assemble_in(variant, variant)
}

/// `assemble` in a scratch folder of its own name (tests run in parallel).
fn assemble_in(variant: &str, folder: &str) -> (Model, Reference) {
    let dir = fixtures().join("variants").join(variant);
    let reference = Reference::load(dir.join("reference.safetensors"));
    let base = fixtures().join(&reference.metadata["base"]);
    let d = scratch(&format!("variant-{folder}"));
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(base.join(f), d.join(f)).unwrap();
    }
    std::fs::copy(dir.join("config.json"), d.join("config.json")).unwrap();
    (Model::load(&d).unwrap_or_else(|e| panic!("{variant}: {e}")), reference)
}

fn check_logits(name: &str, model: &Model, reference: &Reference, ids_from_model: bool) {
    for (i, prompt) in reference.prompts().iter().enumerate() {
        let ids = reference.ids(i);
        if ids_from_model {
            assert_eq!(model.tokenize(prompt).unwrap(), ids, "{name}: ids of {prompt:?}");
        }
        let out = model.forward(&Batch::new(&[ids]).unwrap(), &Hooks::new()).unwrap();
        let d = max_abs_diff(&out.logits.squeeze(0).unwrap(), reference.get(&format!("p{i}.logits")));
        assert!(d <= 1e-4, "{name} prompt {i}: logits differ from transformers by {d:e}");
    }
}

#[test]
fn published_config_forms_match_transformers() {
    for v in ["gemma3-sliding-window-pattern", "gemma3-no-tie-key", "gemma2-alternating", "qwen2-max-window-layers", "mistral-null-window", "mistral-absent-window"] {
        let (model, reference) = assemble(v);
        check_logits(v, &model, &reference, false);
    }
    // What the forms mean, read back from the configuration.
    let (m, _) = assemble("qwen2-max-window-layers");
    assert_eq!(m.config().layers.iter().map(|l| l.sliding_window).collect::<Vec<_>>(), vec![None, Some(4)]);
    let (m, _) = assemble("gemma3-sliding-window-pattern");
    assert_eq!((m.config().layers[0].sliding_window, m.config().layers[1].sliding_window), (Some(4), None));
    assert_eq!((m.config().layers[0].rope_base, m.config().layers[1].rope_base), (10_000.0, 1_000_000.0));
    let (m, _) = assemble("mistral-absent-window");
    assert!(m.config().layers.iter().all(|l| l.sliding_window == Some(4096)));
}

#[test]
fn each_rope_scaling_type_matches_transformers() {
    for v in ["llama-rope-linear", "llama-rope-dynamic", "llama-rope-llama3", "llama-rope-yarn", "neox-rope-dynamic"] {
        let (model, reference) = assemble(v);
        check_logits(v, &model, &reference, false);
    }
}

/// Llama 3.1 scaling as a GGUF file carries it (`rope_freqs.weight`, llama.cpp's divisors)
/// equals the config's `rope_scaling` (transformers' reference).
#[test]
fn gguf_rope_freqs_match_llama3_scaling() {
    use candle_core::quantized::gguf_file::Value;
    let (hf, reference) = assemble_in("llama-rope-llama3", "rope-freqs-reference");
    let mut parts = common::gguf_parts_from_fixture("tiny-llama", "llama");
    let d_head = hf.config().d_head;
    let factors = glassbox::model::rope::llama3_freq_factors(d_head, 50_000.0, 8.0, 1.0, 4.0, 16);
    let n = factors.len();
    parts.tensors.push(("rope_freqs.weight".into(), candle_core::Tensor::from_vec(factors, n, &candle_core::Device::Cpu).unwrap()));
    parts.set("llama.rope.dimension_count", Value::U32(d_head as u32));
    let path = scratch("gguf-rope-freqs").join("m.gguf");
    common::write_gguf(&parts, &path);
    let model = Model::load(&path).unwrap();
    assert!(model.weights().rope_freqs.is_some());
    check_logits("gguf rope_freqs", &model, &reference, false);
}

/// Tiny GGUF files read by `transformers`: glassbox's token ids are its ids (BOS first for
/// `llama`, none for `qwen2`), and the logits agree.
#[test]
fn gguf_files_tokenize_and_run_as_transformers_reads_them() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let dir = fixtures().join("gguf");
        let model = Model::load(&dir.join(format!("{name}.gguf"))).unwrap();
        let reference = Reference::load(dir.join(format!("{name}.reference.safetensors")));
        check_logits(name, &model, &reference, true);
    }
}

/// Strict tensors: a tensor no component reads is an error naming it; the known buffers
/// (rotary tables, causal masks of older checkpoints) are skipped.
#[test]
fn unused_tensors_are_errors_and_known_buffers_are_not() {
    use candle_core::{Device, Tensor};
    let base = fixtures().join("tiny-gpt2");
    let d = scratch("strict-tensors");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(base.join(f), d.join(f)).unwrap();
    }
    let mut st = candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    for b in glassbox::model::load::KNOWN_BUFFERS {
        st.insert(format!("transformer.h.0{b}"), mask.clone());
    }
    candle_core::safetensors::save(&st, d.join("model.safetensors")).unwrap();
    Model::load(&d).expect("known buffers are skipped");
    st.insert("transformer.h.1.mlp.c_fc2.weight".into(), mask.clone());
    st.insert("transformer.h.0.attn.q_norm.weight".into(), mask);
    candle_core::safetensors::save(&st, d.join("model.safetensors")).unwrap();
    let e = Model::load(&d).err().expect("unused tensors").to_string();
    assert!(e.contains("transformer.h.0.attn.q_norm.weight") && e.contains("transformer.h.1.mlp.c_fc2.weight"), "{e}");

    // In a GGUF file too.
    let mut parts = common::gguf_parts_from_fixture("tiny-llama", "llama");
    parts.tensors.push(("blk.0.attn_q_norm.weight".into(), Tensor::ones(16, candle_core::DType::F32, &Device::Cpu).unwrap()));
    let path = scratch("strict-gguf").join("m.gguf");
    common::write_gguf(&parts, &path);
    let e = Model::load(&path).err().expect("unused tensor").to_string();
    assert!(e.contains("blk.0.attn_q_norm.weight"), "{e}");
}

/// A config key that changes the computation in a way glassbox does not implement is an
/// error, and so is an unknown rope scaling type.
#[test]
fn unimplemented_config_features_are_errors() {
    for (key, value, want) in [
        ("scale_attn_by_inverse_layer_idx", serde_json::json!(true), "scale_attn_by_inverse_layer_idx"),
        ("rope_scaling", serde_json::json!({"rope_type": "longrope", "factor": 2.0}), "longrope"),
    ] {
        let base = fixtures().join(if key == "rope_scaling" { "tiny-llama" } else { "tiny-gpt2" });
        let d = scratch(&format!("unimpl-{key}"));
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(base.join(f), d.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
        let e = Model::load(&d).err().expect("should fail").to_string();
        assert!(e.contains(want), "{key}: {e}");
    }
}
