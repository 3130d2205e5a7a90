//! The GGUF loader on tiny LLaMA models written as llama.cpp would (Q/K rows permuted):
//! logits and activations must match `transformers` on the original weights.

mod common;

use common::{fixtures, max_abs_diff, scratch, write_gguf_from_fixture, Reference};
use glassbox::{Batch, HookPoint, Hooks, Model};

fn check(name: &str) {
    check_arch(name, "llama");
}

fn check_arch(name: &str, arch: &str) {
    let path = scratch(&format!("gguf-{name}")).join("model.gguf");
    write_gguf_from_fixture(name, arch, &path);
    let model = Model::load(&path).unwrap();
    let reference = Reference::load(fixtures().join(name).join("reference.safetensors"));
    for (i, prompt) in reference.prompts().iter().enumerate() {
        let ids = reference.ids(i);
        // GGUF `llama` models get BOS (id 0 here) prepended, as `transformers` does; `qwen2`
        // models none. The rest is the same BPE.
        let bos: &[u32] = if arch == "llama" { &[0] } else { &[] };
        assert_eq!(model.tokenize(prompt).unwrap(), [bos, &ids[..]].concat(), "{prompt:?}");
        let out = model.forward(&Batch::new(&[ids]).unwrap(), &Hooks::new().cache([HookPoint::Z(1)])).unwrap();
        let d = max_abs_diff(&out.logits.squeeze(0).unwrap(), reference.get(&format!("p{i}.logits")));
        assert!(d <= 1e-4, "{name} prompt {i}: logits differ by {d:e}");
        let z = out.cache.get(HookPoint::Z(1)).unwrap().squeeze(0).unwrap();
        let d = max_abs_diff(&z, reference.get(&format!("p{i}.blocks.1.attn.hook_z")));
        assert!(d <= 1e-4, "{name} prompt {i}: hook_z differs by {d:e} (Q/K permutation undone?)");
    }
}

#[test]
fn gguf_tiny_llama_gqa_untied() {
    check("tiny-llama");
}

#[test]
fn gguf_tiny_llama_tied() {
    check("tiny-llama-tied");
}

/// Qwen2 in GGUF: q/k/v biases, GQA, rope 1e6, no row permutation.
#[test]
fn gguf_tiny_qwen2() {
    check_arch("tiny-qwen2", "qwen2");
}

/// Mistral ships in GGUF as the `llama` architecture with `llama.attention.sliding_window`.
#[test]
fn gguf_tiny_mistral_as_llama_with_sliding_window() {
    check_arch("tiny-mistral", "llama");
}

/// GGUF mappings beyond llama and qwen2, each written as llama.cpp's converter writes it
/// from a tiny fixture and checked against `transformers` on the original weights (Gemma 2
/// against the same weights with `query_pre_attn_scalar = head_dim`, what a Gemma 2 GGUF
/// means to llama.cpp): Mixtral as `llama` with stacked experts, Gemma 1 and 2 (norms stored
/// as `1 + w`, post-norms, soft-caps), Qwen3 (per-head query/key norms), Phi-3 (fused
/// `attn_qkv`, `ffn_up` holding gate and up).
#[test]
fn gguf_mixtral_gemma_gemma2_qwen3() {
    for (name, arch, reference) in [
        ("tiny-mixtral", "llama", "tiny-mixtral/reference.safetensors"),
        ("tiny-gemma", "gemma", "tiny-gemma/reference.safetensors"),
        ("tiny-gemma2", "gemma2", "variants/gemma2-scalar-head-dim/reference.safetensors"),
        ("tiny-qwen3", "qwen3", "tiny-qwen3/reference.safetensors"),
        ("tiny-phi3", "phi3", "tiny-phi3/reference.safetensors"),
    ] {
        let path = scratch(&format!("gguf-map-{name}")).join("model.gguf");
        write_gguf_from_fixture(name, arch, &path);
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference = Reference::load(fixtures().join(reference));
        for i in 0..3 {
            let ids = reference.ids(i);
            let out = model.forward(&Batch::new(&[ids]).unwrap(), &Hooks::new()).unwrap();
            let d = max_abs_diff(&out.logits.squeeze(0).unwrap(), reference.get(&format!("p{i}.logits")));
            assert!(d <= 1e-4, "{name} as GGUF `{arch}` prompt {i}: logits differ by {d:e}");
        }
    }
}

/// The format each weight of the quantized tiny LLaMA file is stored in (five block formats).
fn tiny_format(name: &str) -> candle_core::quantized::GgmlDType {
    use candle_core::quantized::GgmlDType as G;
    let two_d = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_gate", "ffn_down", "token_embd"];
    match two_d.iter().position(|t| name.contains(&format!("{t}.weight"))) {
        Some(0) => G::Q8_0,
        Some(1) => G::Q4_1,
        Some(2) => G::Q5_0,
        Some(3) => G::Q5_1,
        Some(4..=6) => G::Q4_0,
        Some(_) => G::Q8_0,
        None => G::F32,
    }
}

/// A tiny LLaMA GGUF with its weights in five block formats (Q and K rows permuted as
/// llama.cpp stores them) loads with them kept quantized, and gives bit for bit the logits and
/// gradients of the same file with each weight stored as the f32 values its blocks dequantize
/// to (the loader's f32 path: its own row unpermutation, its own embedding lookup).
#[test]
fn quantized_tiny_llama_equals_its_dequantized_twin() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let d = scratch("gguf-quantized");
    let parts = common::gguf_parts_from_fixture("tiny-llama", "llama");
    let quantized = d.join("q.gguf");
    common::write_gguf_typed(&parts, &quantized, &tiny_format, &|_, _| {});
    let mut twin = common::GgufParts { meta: parts.meta.clone(), tensors: Vec::new() };
    for (n, t) in &parts.tensors {
        let ty = tiny_format(n);
        let t = if ty == GgmlDType::F32 { t.clone() } else { QTensor::quantize(t, ty).unwrap().dequantize(&candle_core::Device::Cpu).unwrap() };
        twin.tensors.push((n.clone(), t));
    }
    let dense = d.join("f32.gguf");
    common::write_gguf(&twin, &dense);
    let (q, f) = (Model::load(&quantized).unwrap(), Model::load(&dense).unwrap());
    let expected = if glassbox::model::kernels_available() { 7 * q.config().n_layers + 1 } else { 0 };
    assert_eq!(q.quantized_matrices(), expected);
    assert_eq!(f.quantized_matrices(), 0);
    common::assert_same_figures(&q, &f, &["When Mary and John went to the store, John gave a drink to"]);

    // A block whose scale is infinite or NaN: an error naming the tensor.
    for bits in [0x7c00u16, 0x7e00] {
        let damaged = d.join("damaged.gguf");
        common::write_gguf_typed(&parts, &damaged, &tiny_format, &|n, bytes| {
            if n == "blk.1.ffn_up.weight" {
                bytes[3 * 18..3 * 18 + 2].copy_from_slice(&bits.to_le_bytes());
            }
        });
        let e = Model::load(&damaged).err().expect("a damaged block scale loads").to_string();
        assert!(e.contains("blk.1.ffn_up.weight") && e.contains("NaN or infinite"), "{e}");
    }
}
