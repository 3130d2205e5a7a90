//! Damaged models: Hugging Face folders of every family, TransformerLens checkpoints, tracr
//! models and GGUF files of every GGUF mapping.

use std::path::Path;

use glassbox::{Batch, Hooks, Model};

use crate::common::{fixtures, gguf_parts_from_fixture, write_gguf};
use crate::{clear, finite, mutate_bytes, mutate_gguf_parts, mutate_json, Case, Rng};

/// Every Hugging Face family's fixture, and the TransformerLens and tracr checkpoints (the
/// same three files: config.json, model.safetensors, tokenizer.json).
const FOLDERS: &[(&str, &str)] = &[
    ("tiny-gpt2", "hf"),
    ("tiny-llama", "hf"),
    ("tiny-llama-tied", "hf"),
    ("tiny-qwen2", "hf"),
    ("tiny-qwen2-moe", "hf"),
    ("tiny-qwen3", "hf"),
    ("tiny-qwen3-moe", "hf"),
    ("tiny-mistral", "hf"),
    ("tiny-mixtral", "hf"),
    ("tiny-neox", "hf"),
    ("tiny-opt", "hf"),
    ("tiny-opt-postln", "hf"),
    ("tiny-opt-proj", "hf"),
    ("tiny-gptneo", "hf"),
    ("tiny-gemma", "hf"),
    ("tiny-gemma2", "hf"),
    ("tiny-gemma3", "hf"),
    ("tiny-phi3", "hf"),
    ("tiny-olmo2", "hf"),
    ("tl/ln_learned", "tl"),
    ("tl/lnpre_rotary_gqa", "tl"),
    ("tl/none_bidirectional", "tl"),
    ("tl/rms_rotary_adjacent", "tl"),
    ("tracr/reverse", "tracr"),
    ("tracr/sort_unique", "tracr"),
    ("tracr/sort_freq", "tracr"),
];

/// Every GGUF mapping, written from a fixture as llama.cpp's converter writes it.
const GGUF_FAMILIES: &[(&str, &str)] = &[
    ("tiny-llama", "llama"),
    ("tiny-llama-tied", "llama"),
    ("tiny-mistral", "llama"),
    ("tiny-mixtral", "llama"),
    ("tiny-qwen2", "qwen2"),
    ("tiny-qwen3", "qwen3"),
    ("tiny-phi3", "phi3"),
    ("tiny-gemma", "gemma"),
    ("tiny-gemma2", "gemma2"),
];

/// A GGUF file damaged in its structure (metadata, tensor shapes, values, names) or bytes.
pub fn gguf(r: &mut Rng, dir: &Path) -> Case {
    let (name, arch) = *r.pick(GGUF_FAMILIES);
    let path = dir.join("model.gguf");
    let mut parts = gguf_parts_from_fixture(name, arch);
    if r.below(2) == 0 {
        let what = mutate_gguf_parts(&mut parts, r);
        write_gguf(&parts, &path);
        Case { path, what: format!("{name} as {arch} gguf: {what}"), kind: "gguf-structure", check: run_model }
    } else {
        write_gguf(&parts, &path);
        let mut bytes = std::fs::read(&path).unwrap();
        // The metadata and tensor table come first; the data after.
        let hot = bytes.len() - parts.tensors.iter().map(|(_, t)| t.elem_count() * 4).sum::<usize>().min(bytes.len() - 1);
        let what = (0..1 + r.below(3)).map(|_| mutate_bytes(&mut bytes, hot, r)).collect::<Vec<_>>().join(", ");
        std::fs::write(&path, bytes).unwrap();
        Case { path, what: format!("{name} as {arch} gguf bytes: {what}"), kind: "gguf-bytes", check: run_model }
    }
}

/// A model folder with one of its three files damaged.
pub fn folder(r: &mut Rng, dir: &Path) -> Case {
    let (name, family) = *r.pick(FOLDERS);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join(name).join(f), dir.join(f)).unwrap();
    }
    let (file, part) = match r.below(4) {
        0 | 1 => ("config.json", "config"),
        2 => ("model.safetensors", "safetensors"),
        _ => ("tokenizer.json", "tokenizer"),
    };
    let kind = match (family, part) {
        ("hf", "config") => "hf-config",
        ("hf", "safetensors") => "hf-safetensors",
        ("hf", _) => "hf-tokenizer",
        ("tl", "config") => "tl-config",
        ("tl", "safetensors") => "tl-safetensors",
        ("tl", _) => "tl-tokenizer",
        (_, "config") => "tracr-config",
        (_, "safetensors") => "tracr-safetensors",
        _ => "tracr-tokenizer",
    };
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    let what = if file.ends_with(".json") && r.below(4) != 0 {
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let what = mutate_json(&mut v, r);
        bytes = serde_json::to_vec(&v).unwrap();
        what
    } else {
        let hot = if file.ends_with(".safetensors") { 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize } else { bytes.len() };
        (0..1 + r.below(3)).map(|_| mutate_bytes(&mut bytes, hot, r)).collect::<Vec<_>>().join(", ")
    };
    std::fs::write(&path, bytes).unwrap();
    Case { path: dir.to_path_buf(), what: format!("{name} {file}: {what}"), kind, check: run_model }
}

/// Loads and runs the damaged model: its own tokenizer on a prompt of words and digits, a
/// forward pass with and without every hook cached.
fn run_model(path: &Path) -> Result<bool, String> {
    let model = match Model::load(path) {
        Ok(m) => m,
        Err(e) => return clear(e),
    };
    // tracr's vocabularies are a few symbols; the others take words.
    let text = if model.tokenize("1 2 3").is_ok_and(|t| t.len() <= 4) { "2 1 3" } else { "When Mary and John went to the store" };
    let ids = match model.tokenize(text) {
        Ok(ids) => ids,
        Err(e) => return clear(e),
    };
    let batch = match Batch::new(&[ids]) {
        Ok(b) => b,
        Err(e) => return clear(e),
    };
    for hooks in [Hooks::new(), Hooks::new().cache_all()] {
        match model.forward(&batch, &hooks) {
            Ok(out) => finite(&out.logits.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?, "a forward pass")?,
            Err(e) => return clear(e),
        }
    }
    Ok(true)
}
