//! Bad input gets a clear error naming the problem, never a panic.

mod common;

use common::{fixtures, load_tiny, scratch, write_gguf_from_fixture};
use glassbox::{Action, Batch, Error, HookPoint, Hooks, Intervention, Model};

fn load_err(path: &std::path::Path) -> Error {
    match Model::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_file() {
    let e = load_err(std::path::Path::new("/no/such/model.gguf"));
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("/no/such/model.gguf"));
}

#[test]
fn file_that_is_neither_gguf_nor_a_model_folder() {
    let d = scratch("err-notmodel");
    let f = d.join("notes.txt");
    std::fs::write(&f, "hello").unwrap();
    let e = load_err(&f);
    assert!(matches!(e, Error::NotAModel { .. }), "{e}");
    assert!(e.to_string().contains("GGUF"), "{e}");
}

#[test]
fn folder_with_corrupt_safetensors() {
    let d = scratch("err-corrupt-st");
    std::fs::copy(fixtures().join("tiny-gpt2/config.json"), d.join("config.json")).unwrap();
    std::fs::copy(fixtures().join("tiny-gpt2/tokenizer.json"), d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let e = load_err(&d);
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}

#[test]
fn folder_with_missing_tensor() {
    let d = scratch("err-missing-tensor");
    std::fs::copy(fixtures().join("tiny-llama/config.json"), d.join("config.json")).unwrap();
    std::fs::copy(fixtures().join("tiny-llama/tokenizer.json"), d.join("tokenizer.json")).unwrap();
    let mut st = candle_core::safetensors::load(fixtures().join("tiny-llama/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    st.remove("model.layers.1.mlp.down_proj.weight");
    candle_core::safetensors::save(&st, d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.to_string().contains("model.layers.1.mlp.down_proj.weight"), "{e}");
}

#[test]
fn truncated_gguf() {
    let d = scratch("err-truncated");
    let full = d.join("full.gguf");
    write_gguf_from_fixture("tiny-llama", "llama", &full);
    let bytes = std::fs::read(&full).unwrap();
    for keep in [bytes.len() * 3 / 4, 100, 6] {
        let cut = d.join(format!("cut{keep}.gguf"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let e = load_err(&cut);
        assert!(matches!(e, Error::Corrupt { .. }), "keeping {keep} bytes: {e}");
    }
}

#[test]
fn unknown_architecture() {
    let d = scratch("err-arch");
    let g = d.join("m.gguf");
    write_gguf_from_fixture("tiny-llama", "mamba", &g);
    let e = load_err(&g);
    assert!(matches!(e, Error::UnknownArchitecture { ref name, .. } if name == "mamba"), "{e}");

    std::fs::copy(fixtures().join("tiny-gpt2/model.safetensors"), d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("config.json"), r#"{"model_type": "rwkv"}"#).unwrap();
    let e = load_err(&d);
    assert!(e.to_string().contains("rwkv") && e.to_string().contains("llama"), "{e}");
}

#[test]
fn unknown_hook_name() {
    for bad in ["blocks.0.attn.hook_scores", "hook_resid_pre", "blocks.x.hook_resid_pre", "blocks.1"] {
        let e = bad.parse::<HookPoint>().unwrap_err();
        assert!(matches!(e, Error::UnknownHook { .. }), "{bad}: {e}");
    }
}

#[test]
fn layer_head_and_position_out_of_range() {
    let model = load_tiny("tiny-llama");
    let batch = Batch::new(&[vec![1, 2, 3]]).unwrap();
    let run = |h: Hooks| model.forward(&batch, &h).err().expect("should fail");
    let e = run(Hooks::new().cache([HookPoint::ResidPre(2)]));
    assert!(matches!(e, Error::LayerOutOfRange { layer: 2, n_layers: 2 }), "{e}");
    let e = run(Hooks::new().intervene(Intervention::new(HookPoint::Z(0), Action::Zero).heads(vec![4])));
    assert!(matches!(e, Error::HeadOutOfRange { head: 4, n_heads: 4, .. }), "{e}");
    // hook_k has the key/value head count (2 here, GQA).
    let e = run(Hooks::new().intervene(Intervention::new(HookPoint::K(0), Action::Zero).heads(vec![2])));
    assert!(matches!(e, Error::HeadOutOfRange { head: 2, n_heads: 2, .. }), "{e}");
    let e = run(Hooks::new().intervene(Intervention::new(HookPoint::ResidPre(0), Action::Zero).positions(vec![3])));
    assert!(matches!(e, Error::PositionOutOfRange { position: 3, .. }), "{e}");
    let e = run(Hooks::new().intervene(Intervention::new(HookPoint::ResidPre(0), Action::Zero).heads(vec![0])));
    assert!(matches!(e, Error::Intervention { .. }), "{e}");
    let wrong = candle_core::Tensor::zeros((1, 3, 7), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = run(Hooks::new().intervene(Intervention::new(HookPoint::ResidPre(0), Action::Replace(wrong))));
    assert!(e.to_string().contains("does not fit"), "{e}");
}

#[test]
fn empty_prompt_and_prompt_too_long() {
    let model = load_tiny("tiny-gpt2");
    assert!(matches!(model.tokenize(""), Err(Error::EmptyPrompt)));
    assert!(matches!(Batch::new(&[vec![]]), Err(Error::EmptyPrompt)));
    let long = "When Mary and John went to the store. ".repeat(20);
    let e = model.tokenize(&long).unwrap_err();
    assert!(matches!(e, Error::PromptTooLong { max: 64, .. }), "{e}");
    let ids: Vec<u32> = (0..65).collect();
    let e = model.forward(&Batch::new(&[ids]).unwrap(), &Hooks::new()).err().unwrap();
    assert!(matches!(e, Error::PromptTooLong { n_tokens: 65, max: 64 }), "{e}");
}

#[test]
fn multi_token_answer_and_bad_token_id() {
    let model = load_tiny("tiny-gpt2");
    let e = model.answer_token(" Mary and").unwrap_err();
    assert!(matches!(e, Error::NotSingleToken { n_tokens: 2, .. }), "{e}");
    assert!(e.to_string().contains("try \" Mary\""), "{e}");
    let e = model.forward(&Batch::new(&[vec![100_000]]).unwrap(), &Hooks::new()).err().unwrap();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
}

#[test]
fn inconsistent_batch_and_residual_start() {
    let model = load_tiny("tiny-llama");
    let mut batch = Batch::new(&[vec![1, 2, 3]]).unwrap();
    batch.lengths = vec![0];
    let e = model.forward(&batch, &Hooks::new()).err().unwrap();
    assert!(e.to_string().contains("lengths"), "{e}");
    let resid = candle_core::Tensor::zeros((1, 3, 64), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let e = model
        .forward_from(glassbox::Start::Residual { layer: 1, resid: &resid, lengths: &[4] }, &Hooks::new())
        .err()
        .unwrap();
    assert!(e.to_string().contains("lengths"), "{e}");
    let e = model
        .forward_from(glassbox::Start::Residual { layer: 5, resid: &resid, lengths: &[3] }, &Hooks::new())
        .err()
        .unwrap();
    assert!(matches!(e, Error::LayerOutOfRange { layer: 5, .. }), "{e}");
}
