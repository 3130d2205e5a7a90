//! Shared helpers for the integration tests: fixture paths, reference files, tolerances.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use glassbox::Model;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn load_tiny(name: &str) -> Model {
    Model::load(&fixtures().join(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A reference file's tensors and its `__metadata__`.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl Reference {
    pub fn load(path: PathBuf) -> Reference {
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let bytes = std::fs::read(&path).expect("reference file");
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let metadata = header
            .get("__metadata__")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        Reference { tensors, metadata }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no tensor {name}"))
    }

    pub fn ids(&self, prompt: usize) -> Vec<u32> {
        self.get(&format!("p{prompt}.input_ids"))
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    }

    pub fn prompts(&self) -> Vec<String> {
        serde_json::from_str(&self.metadata["prompts"]).expect("prompts metadata")
    }

    /// Asserts that `model` tokenizes every prompt of the reference to the reference's ids.
    pub fn assert_tokenizes_prompts(&self, model: &Model) {
        for (i, prompt) in self.prompts().iter().enumerate() {
            assert_eq!(model.tokenize(prompt).unwrap(), self.ids(i), "prompt {prompt:?}");
        }
    }

    /// Asserts that the last logits of the first three prompts (run with `hooks`) are within
    /// 1e-3 of the reference's `p{i}.last_logits`, with the same top token.
    pub fn assert_last_logits_match(&self, model: &Model, hooks: &glassbox::Hooks) {
        use candle_core::D;
        for i in 0..3 {
            let out = model.forward(&glassbox::Batch::new(&[self.ids(i)]).unwrap(), hooks).unwrap();
            let ours = out.last_logits().unwrap().squeeze(0).unwrap();
            let theirs = self.get(&format!("p{i}.last_logits"));
            let d = max_abs_diff(&ours, theirs);
            eprintln!("prompt {i}: max |logit - transformers| = {d:e}");
            assert!(d <= 1e-3, "prompt {i}: max |logit - transformers| = {d:e}");
            let top = |t: &Tensor| t.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
            assert_eq!(top(&ours), top(theirs), "prompt {i}: top-1 token");
        }
    }
}

/// `max |a - b|` over all elements (shapes must match).
/// Asserts that `model` and the same model with every quantized matrix dequantized to f32
/// give the same figures bit for bit (`assert_same_figures`).
#[allow(dead_code)]
pub fn assert_quantized_equals_dense(model: &Model, prompts: &[&str]) {
    let plain = model.with_weights(model.weights().dense().unwrap());
    assert_eq!(plain.quantized_matrices(), 0);
    assert_same_figures(model, &plain, prompts);
}

/// Asserts that two models give the same logits and gradients (of the logits' sum, at every
/// layer's `hook_z`) on `prompts`, bit for bit.
#[allow(dead_code)]
pub fn assert_same_figures(a: &Model, b: &Model, prompts: &[&str]) {
    use glassbox::{HookPoint, Hooks};
    let batch = a.batch(prompts).unwrap();
    let taps: Vec<HookPoint> = (0..a.config().n_layers).map(HookPoint::Z).collect();
    let run = |m: &Model| {
        let out = m.forward(&batch, &Hooks::new().grad_tap(taps.iter().copied())).unwrap();
        let grads = out.backward(&out.logits.sum_all().unwrap()).unwrap();
        let g: Vec<f32> = taps.iter().flat_map(|&p| grads.get(p).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
        (out.logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
    };
    let ((x, gx), (y, gy)) = (run(a), run(b));
    assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "logits differ");
    assert!(gx.iter().zip(&gy).all(|(p, q)| p.to_bits() == q.to_bits()), "gradients differ");
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Writes a tiny LLaMA-style fixture folder as a llama.cpp-style GGUF file (f32 tensors, Q and K
/// rows permuted as llama.cpp's converter does for `llama`, q/k/v biases where the folder has
/// them, vocabulary and merges from tokenizer.json), so the
/// GGUF loader can be checked against the `transformers` reference of the same weights.
/// `arch` is written as `general.architecture`.
pub fn write_gguf_from_fixture(name: &str, arch: &str, out: &std::path::Path) {
    write_gguf(&gguf_parts_from_fixture(name, arch), out);
}

/// A GGUF file's metadata and (f32) tensors, to change before writing.
pub struct GgufParts {
    pub meta: Vec<(String, candle_core::quantized::gguf_file::Value)>,
    pub tensors: Vec<(String, Tensor)>,
}

impl GgufParts {
    /// Replaces (or adds) a metadata value.
    pub fn set(&mut self, key: &str, v: candle_core::quantized::gguf_file::Value) {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.to_string(), v));
    }
}

/// Writes GGUF parts (tensors as F32).
pub fn write_gguf(parts: &GgufParts, out: &std::path::Path) {
    write_gguf_typed(parts, out, &|_| candle_core::quantized::GgmlDType::F32, &|_, _| {});
}

/// Writes GGUF parts with each tensor in `dtype(name)`, its stored bytes passed through
/// `edit(name, bytes)` first (to damage a block).
#[allow(dead_code)]
pub fn write_gguf_typed(
    parts: &GgufParts,
    out: &std::path::Path,
    dtype: &dyn Fn(&str) -> candle_core::quantized::GgmlDType,
    edit: &dyn Fn(&str, &mut Vec<u8>),
) {
    use candle_core::quantized::gguf_file;
    use candle_core::quantized::QTensor;
    let q: Vec<(String, QTensor)> = parts
        .tensors
        .iter()
        .map(|(n, t)| {
            let ty = dtype(n);
            let mut bytes = QTensor::quantize(t, ty).unwrap().data().unwrap().into_owned();
            edit(n, &mut bytes);
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(ty, &bytes, t.dims().to_vec(), &Device::Cpu).unwrap();
            (n.clone(), q)
        })
        .collect();
    let meta_refs: Vec<(&str, &gguf_file::Value)> = parts.meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
}

/// The parts `write_gguf_from_fixture` writes.
pub fn gguf_parts_from_fixture(name: &str, arch: &str) -> GgufParts {
    use candle_core::quantized::gguf_file::Value;

    let dir = fixtures().join(name);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let st = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let (heads, kv) = (u("num_attention_heads"), u("num_key_value_heads"));
    // llama.cpp permutes Q/K rows only for the LLaMA architecture.
    let llama = arch == "llama";

    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Value::String(s.clone()),
            other => Value::String(format!("{} {}", other[0].as_str().unwrap(), other[1].as_str().unwrap())),
        })
        .collect();
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.block_count"), Value::U32(u("num_hidden_layers"))),
        (format!("{arch}.context_length"), Value::U32(u("max_position_embeddings"))),
        (format!("{arch}.embedding_length"), Value::U32(u("hidden_size"))),
        (format!("{arch}.feed_forward_length"), Value::U32(u("intermediate_size"))),
        (format!("{arch}.attention.head_count"), Value::U32(heads)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(kv)),
        (format!("{arch}.rope.freq_base"), Value::F32(cfg["rope_theta"].as_f64().unwrap() as f32)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (format!("{arch}.attention.sliding_window"), Value::U32(cfg["sliding_window"].as_u64().unwrap_or(0) as u32)),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
    ];

    meta.retain(|(k, v)| !(k.ends_with("sliding_window") && matches!(v, Value::U32(0))));
    if let Some(hd) = cfg["head_dim"].as_u64() {
        meta.push((format!("{arch}.attention.key_length"), Value::U32(hd as u32)));
        meta.push((format!("{arch}.attention.value_length"), Value::U32(hd as u32)));
        meta.push((format!("{arch}.rope.dimension_count"), Value::U32(hd as u32)));
    }
    for key in ["attn_logit_softcapping", "final_logit_softcapping"] {
        if let Some(c) = cfg[key].as_f64() {
            meta.push((format!("{arch}.{key}"), Value::F32(c as f32)));
        }
    }
    if let (Some(n), Some(k)) = (cfg["num_local_experts"].as_u64(), cfg["num_experts_per_tok"].as_u64()) {
        meta.push((format!("{arch}.expert_count"), Value::U32(n as u32)));
        meta.push((format!("{arch}.expert_used_count"), Value::U32(k as u32)));
    }
    // llama.cpp's permute: rows (head, 2, d_head/2) -> (head, d_head/2, 2).
    let permute = |w: &Tensor, n: u32| -> Tensor {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((n as usize, 2, rows / n as usize / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    };
    // llama.cpp stores Gemma's norm weights as `1 + w` (the Hugging Face files store `w`).
    let gemma = arch.starts_with("gemma");
    let norm = |t: Tensor| if gemma { (t + 1.0).unwrap() } else { t };
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("token_embd.weight".into(), st["model.embed_tokens.weight"].clone()),
        ("output_norm.weight".into(), norm(st["model.norm.weight"].clone())),
    ];
    if let Some(lm) = st.get("lm_head.weight") {
        tensors.push(("output.weight".into(), lm.clone()));
    }
    let n_experts = cfg["num_local_experts"].as_u64();
    for l in 0..u("num_hidden_layers") {
        let hf = |s: &str| st[&format!("model.layers.{l}.{s}")].clone();
        let gg = |s: &str| format!("blk.{l}.{s}");
        tensors.push((gg("attn_norm.weight"), norm(hf("input_layernorm.weight"))));
        if st.contains_key(&format!("model.layers.{l}.self_attn.qkv_proj.weight")) {
            // Phi-3: one fused projection.
            tensors.push((gg("attn_qkv.weight"), hf("self_attn.qkv_proj.weight")));
        } else {
            tensors.extend([
                (gg("attn_q.weight"), if llama { permute(&hf("self_attn.q_proj.weight"), heads) } else { hf("self_attn.q_proj.weight") }),
                (gg("attn_k.weight"), if llama { permute(&hf("self_attn.k_proj.weight"), kv) } else { hf("self_attn.k_proj.weight") }),
                (gg("attn_v.weight"), hf("self_attn.v_proj.weight")),
            ]);
        }
        tensors.push((gg("attn_output.weight"), hf("self_attn.o_proj.weight")));
        if st.contains_key(&format!("model.layers.{l}.pre_feedforward_layernorm.weight")) {
            // Gemma 2/3: post_attention_layernorm is the attention output's norm.
            tensors.extend([
                (gg("post_attention_norm.weight"), norm(hf("post_attention_layernorm.weight"))),
                (gg("ffn_norm.weight"), norm(hf("pre_feedforward_layernorm.weight"))),
                (gg("post_ffw_norm.weight"), norm(hf("post_feedforward_layernorm.weight"))),
            ]);
        } else {
            tensors.push((gg("ffn_norm.weight"), norm(hf("post_attention_layernorm.weight"))));
        }
        for (ours, theirs) in [("attn_q_norm.weight", "self_attn.q_norm.weight"), ("attn_k_norm.weight", "self_attn.k_norm.weight")] {
            if let Some(t) = st.get(&format!("model.layers.{l}.{theirs}")) {
                tensors.push((gg(ours), norm(t.clone())));
            }
        }
        match n_experts {
            // Mixtral: the router and the experts stacked, as llama.cpp writes them.
            Some(n) => {
                let stack = |w: &str| {
                    let parts: Vec<Tensor> = (0..n).map(|e| hf(&format!("block_sparse_moe.experts.{e}.{w}.weight"))).collect();
                    Tensor::stack(&parts, 0).unwrap()
                };
                tensors.extend([
                    (gg("ffn_gate_inp.weight"), hf("block_sparse_moe.gate.weight")),
                    (gg("ffn_gate_exps.weight"), stack("w1")),
                    (gg("ffn_up_exps.weight"), stack("w3")),
                    (gg("ffn_down_exps.weight"), stack("w2")),
                ]);
            }
            None if st.contains_key(&format!("model.layers.{l}.mlp.gate_up_proj.weight")) => tensors.extend([
                (gg("ffn_up.weight"), hf("mlp.gate_up_proj.weight")),
                (gg("ffn_down.weight"), hf("mlp.down_proj.weight")),
            ]),
            None => tensors.extend([
                (gg("ffn_gate.weight"), hf("mlp.gate_proj.weight")),
                (gg("ffn_up.weight"), hf("mlp.up_proj.weight")),
                (gg("ffn_down.weight"), hf("mlp.down_proj.weight")),
            ]),
        }
        for (ours, theirs) in [("attn_q.bias", "q_proj.bias"), ("attn_k.bias", "k_proj.bias"), ("attn_v.bias", "v_proj.bias")] {
            if let Some(b) = st.get(&format!("model.layers.{l}.self_attn.{theirs}")) {
                tensors.push((gg(ours), b.clone()));
            }
        }
    }
    GgufParts { meta, tensors }
}

/// A path under the target directory with nothing at it (what an earlier run left is removed),
/// for a folder the code under test makes itself.
pub fn cleared(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A fresh scratch folder under the target directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = cleared(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small English corpus (a frozen copy of the README of 2026-12-07 in
/// tests/fixtures/corpus, so that editing the README does not change what tests train on), as
/// sequences of `context` tokens.
pub fn corpus_seqs(model: &Model, context: usize) -> Vec<Vec<u32>> {
    let files = glassbox::sae::corpus::corpus_files(&[fixtures().join("corpus")], &[]).unwrap();
    let docs = glassbox::sae::corpus::read_documents(&files).unwrap();
    glassbox::sae::corpus::sequences(model, &docs, context).unwrap()
}

/// The IOI contrast on a tiny model (in f64) whose corrupted run is ε-close to the clean one: a
/// spare token gets " John"'s embedding plus ε·noise and replaces " John"'s first occurrence.
pub fn eps_close(name: &str, eps: f64) -> (Model, glassbox::methods::Contrast) {
    use glassbox::methods::Contrast;
    const IOI: &str = "When Mary and John went to the store, John gave a drink to";
    let model = load_tiny(name).to_dtype(DType::F64).unwrap();
    let contrast0 = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let (john, spare) = (contrast0.incorrect_id as usize, model.config().d_vocab - 1);
    let d = model.config().d_model;
    let noise: Vec<f64> = (0..d).map(|k| ((k as f64) * 1.7).sin()).collect();
    let noise = Tensor::from_vec(noise, d, &Device::Cpu).unwrap();
    let row = (model.weights().embed.row(john).unwrap() + (noise * eps).unwrap()).unwrap();
    let mut rows: Vec<Tensor> = (0..model.config().d_vocab).map(|i| model.weights().embed.row(i).unwrap()).collect();
    rows[spare] = row;
    let embed = glassbox::model::weights::Matrix::Dense(Tensor::stack(&rows, 0).unwrap());
    let mut weights = model.weights().clone();
    if model.config().tied_embeddings {
        weights.unembed = embed.clone();
    }
    weights.embed = embed;
    let model = model.with_weights(weights);
    let mut contrast = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let pos = contrast.clean.iter().position(|&t| t as usize == john).unwrap();
    contrast.corrupted = contrast.clean.clone();
    contrast.corrupted[pos] = spare as u32;
    (model, contrast)
}

/// `logit[c] − logit[i]` at the last position of one prompt run with `hooks`, in f64.
pub fn last_ld(model: &Model, tokens: &[u32], c: u32, i: u32, hooks: glassbox::Hooks) -> f64 {
    let out = model.forward(&glassbox::Batch::new(&[tokens.to_vec()]).unwrap(), &hooks.last_logits_only()).unwrap();
    out.logit_diff(&[c], &[i]).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0]
}

/// `n` IOI prompts as a dataset run's items (ids `p0`…, groups by template).
pub fn ioi_items(model: &Model, n: usize) -> Vec<glassbox::batch::Item> {
    glassbox::tasks::ioi::generate(model, n, 3, glassbox::tasks::ioi::Corruption::NameSwap)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, p)| glassbox::batch::Item { line: i + 1, id: format!("p{i}"), prompt: p.clean, correct: p.io, incorrect: p.subject, corrupted: Some(p.corrupted), group: Some(format!("t{}", p.template)) })
        .collect()
}
