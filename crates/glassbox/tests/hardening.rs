//! Regression tests for the classes of bad input that fuzzing found (issue 12): each one is a
//! clear error now, never a panic, a hang, unbounded memory or a NaN printed as a result.

mod common;

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use common::{fixtures, gguf_parts_from_fixture, load_tiny, scratch, write_gguf, write_gguf_from_fixture};
use glassbox::methods::analyze::{analyze, AnalyzeOptions};
use glassbox::methods::attribution::{attribute, Component, Method};
use glassbox::methods::contrast::swap_words;
use glassbox::methods::Contrast;
use glassbox::{Error, Model};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

fn load_err(path: &std::path::Path) -> String {
    match Model::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of a tiny fixture folder whose config.json is `edit`ed.
fn folder_with_config(name: &str, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> std::path::PathBuf {
    let d = scratch(&format!("hard-{tag}"));
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures().join(name).join(f), d.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join(name).join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(d.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    d
}

// ---- 1. runaway memory from one argument ----

#[test]
fn whitespace_answer_is_an_error_not_an_endless_swap() {
    let model = load_tiny("tiny-gpt2");
    let e = Contrast::new(&model, IOI, " ", " John", None).unwrap_err().to_string();
    assert!(e.contains("only whitespace") && e.contains("--corrupted"), "{e}");
    // The word swap itself ends on an empty word.
    assert_eq!(swap_words("a b", "", "b"), "a b");
}

#[test]
fn identical_answers_and_unchanged_corruption_are_errors() {
    let model = load_tiny("tiny-gpt2");
    let e = Contrast::new(&model, IOI, " Mary", " Mary", None).unwrap_err().to_string();
    assert!(e.contains("same token"), "{e}");
    let e = Contrast::new(&model, IOI, " Mary", " John", Some(IOI)).unwrap_err().to_string();
    assert!(e.contains("same tokens as the clean prompt"), "{e}");
    // A contrast built by hand is checked by the methods themselves.
    let mut c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    c.corrupted = c.clean.clone();
    let e = attribute(&model, &c, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: Method::Taylor, metric: Default::default(), n_steps: 20 }).unwrap_err().to_string();
    assert!(e.contains("nothing to attribute"), "{e}");
    c.corrupted.pop();
    assert!(attribute(&model, &c, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: Method::Taylor, metric: Default::default(), n_steps: 20 }).is_err());
    let (tokens, a) = (model.tokenize(IOI).unwrap(), model.answer_token(" Mary").unwrap());
    let e = glassbox::methods::logit_lens::logit_lens(&model, &glassbox::methods::Prompt { tokens, correct: a, incorrect: a }, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("same token"), "{e}");
}

// ---- 8. unbounded work from arguments ----

#[test]
fn absurd_counts_are_refused_before_any_work() {
    let model = load_tiny("tiny-llama");
    let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let e = attribute(&model, &c, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 100_000_000, metric: Default::default() }).unwrap_err().to_string();
    assert!(e.contains("integration steps is 100000000") && e.contains("1 to 1000"), "{e}");
    let prompt = glassbox::methods::Prompt { tokens: c.clean.clone(), correct: c.correct_id, incorrect: c.incorrect_id };
    let stab = |n_corruptions: usize, p: f32| {
        let opts = glassbox::methods::stability::StabilityOptions { n_corruptions, p, seed: 0 };
        glassbox::methods::stability::attribution_stability(&model, &prompt, &opts).unwrap_err().to_string()
    };
    assert!(stab(10_000_000, 0.3).contains("corruptions"));
    assert!(stab(5, 1.5).contains("probability"));
    assert!(stab(5, f32::NAN).contains("probability"));
    let opts = AnalyzeOptions { target: 7.0, ..Default::default() };
    assert!(analyze(&model, &c, &opts).unwrap_err().to_string().contains("target sufficiency"));
    let opts = AnalyzeOptions { max_heads: 0, ..Default::default() };
    assert!(analyze(&model, &c, &opts).is_err());
    let mut p2 = |_: usize, _: usize, _: &str| {};
    let set = |n_boot: usize| AnalyzeOptions { n_boot, ..Default::default() };
    let e = glassbox::methods::analyze::analyze_set(&model, std::slice::from_ref(&c), &set(1_000_000_000), &mut p2).unwrap_err().to_string();
    assert!(e.contains("bootstrap resamples"), "{e}");
    let e = glassbox::methods::analyze::analyze_set(&model, &[c], &set(0), &mut p2).unwrap_err().to_string();
    assert!(e.contains("bootstrap resamples is 0"), "{e}");
    let e = glassbox::tasks::ioi::generate(&model, 50_000_000, 0, glassbox::tasks::ioi::Corruption::NameSwap).unwrap_err().to_string();
    assert!(e.contains("number of prompts"), "{e}");
}

// ---- 4. sizes from the file validated first ----

#[test]
fn gguf_with_huge_counts_fails_fast_without_allocating() {
    let d = scratch("hard-gguf-counts");
    for (key, v) in [
        ("llama.block_count", Value::U64(1 << 62)),
        ("llama.block_count", Value::U32(4_000_000)),
        ("llama.attention.head_count", Value::U64(u64::MAX)),
        ("llama.embedding_length", Value::U64(1 << 40)),
        ("llama.attention.head_count", Value::U32(0)),
        ("llama.attention.key_length", Value::U64(1 << 61)),
        ("llama.context_length", Value::U32(0)),
    ] {
        let mut parts = gguf_parts_from_fixture("tiny-llama", "llama");
        parts.set(key, v.clone());
        let f = d.join("m.gguf");
        write_gguf(&parts, &f);
        let e = load_err(&f);
        assert!(e.contains("model config") || e.contains("layers"), "{key} = {v:?}: {e}");
    }
}

#[test]
fn gguf_alignment_zero_and_bad_tensor_sizes() {
    let d = scratch("hard-gguf-align");
    let f = d.join("m.gguf");
    let mut parts = gguf_parts_from_fixture("tiny-llama", "llama");
    parts.set("general.alignment", Value::U32(0));
    write_gguf(&parts, &f);
    assert!(load_err(&f).contains("general.alignment"));

    // Patch a tensor's first dimension in the raw header: byte sizes that wrap, dims of 0.
    write_gguf_from_fixture("tiny-llama", "llama", &f);
    let bytes = std::fs::read(&f).unwrap();
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    // n_dims (u32) then the first dimension (u64).
    for dim in [0u64, 1 << 62, u64::MAX, 3] {
        let mut b = bytes.clone();
        b[at + 4..at + 12].copy_from_slice(&dim.to_le_bytes());
        std::fs::write(&f, &b).unwrap();
        let e = load_err(&f);
        assert!(e.contains("blk.0.attn_q.weight") || e.contains("corrupt"), "dim {dim}: {e}");
    }
    // An offset that overlaps the previous tensor, and one that is not aligned.
    let offset_at = at + 4 + 2 * 8 + 4;
    for off in [0u64, 7, u64::MAX - 3] {
        let mut b = bytes.clone();
        b[offset_at..offset_at + 8].copy_from_slice(&off.to_le_bytes());
        std::fs::write(&f, &b).unwrap();
        let e = load_err(&f);
        assert!(e.contains("overlaps") || e.contains("alignment") || e.contains("past the end"), "offset {off}: {e}");
    }
}

#[test]
fn gguf_duplicate_tensor_and_key_are_errors() {
    let d = scratch("hard-gguf-dup");
    let f = d.join("m.gguf");
    write_gguf_from_fixture("tiny-llama", "llama", &f);
    let mut bytes = std::fs::read(&f).unwrap();
    // Rename the second tensor to the first's name (same length).
    let (a, b) = (b"blk.0.attn_k.weight", b"blk.0.attn_q.weight");
    let at = bytes.windows(a.len()).position(|w| w == a).unwrap();
    bytes[at..at + a.len()].copy_from_slice(b);
    std::fs::write(&f, &bytes).unwrap();
    assert!(load_err(&f).contains("appears twice"));
}

#[test]
fn gguf_huge_metadata_arrays_and_strings_fail_on_the_file_size() {
    let d = scratch("hard-gguf-arrays");
    let f = d.join("m.gguf");
    write_gguf_from_fixture("tiny-llama", "llama", &f);
    let bytes = std::fs::read(&f).unwrap();
    // The token array's length (it follows the key and its type codes).
    let key = b"tokenizer.ggml.tokens";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 4;
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(&f, &b).unwrap();
    let e = load_err(&f);
    assert!(e.contains("claims") && e.contains("elements"), "{e}");
    // The first string's length inside that array.
    let mut b = bytes.clone();
    b[at + 8..at + 16].copy_from_slice(&(1u64 << 50).to_le_bytes());
    std::fs::write(&f, &b).unwrap();
    assert!(load_err(&f).contains("bytes"));
}

#[test]
fn config_sizes_and_products_that_overflow() {
    for (tag, key, v) in [
        ("heads", "num_attention_heads", serde_json::json!(1u64 << 62)),
        ("hidden", "hidden_size", serde_json::json!(1u64 << 40)),
        ("layers", "num_hidden_layers", serde_json::json!(1u64 << 62)),
        ("headdim", "head_dim", serde_json::json!(u64::MAX)),
        ("vocab", "vocab_size", serde_json::json!(0)),
    ] {
        let d = folder_with_config("tiny-llama", tag, |c| c[key] = v.clone());
        let e = load_err(&d);
        assert!(e.contains("model config") || e.contains("heads") || e.contains("shape"), "{key}: {e}");
    }
}

#[test]
fn gptneo_attention_types_with_a_huge_repeat_count_ends() {
    let d = folder_with_config("tiny-gptneo", "neo-repeat", |c| c["attention_types"] = serde_json::json!([[["global", "local"], 1u64 << 62]]));
    assert!(load_err(&d).contains("attention_types give"));
    let d = folder_with_config("tiny-gptneo", "neo-kind", |c| c["attention_types"] = serde_json::json!([[["global", 7], 1]]));
    assert!(load_err(&d).contains("attention_types"));
}

// ---- 5. NaN/inf in, never NaN out ----

#[test]
fn non_finite_numbers_in_the_config_are_errors() {
    for (tag, key, v, want) in [
        ("eps", "rms_norm_eps", serde_json::json!(0.0), "epsilon"),
        ("eps-neg", "rms_norm_eps", serde_json::json!(-1e-5), "epsilon"),
        ("rope", "rope_theta", serde_json::json!(0.0), "rotary base"),
        ("rope-neg", "rope_theta", serde_json::json!(-10000.0), "rotary base"),
        ("window", "sliding_window", serde_json::json!(0), "sliding_window"),
    ] {
        let d = folder_with_config("tiny-mistral", tag, |c| c[key] = v.clone());
        let e = load_err(&d);
        assert!(e.contains(want), "{key} = {v}: {e}");
    }
    for (tag, key, v, want) in [
        ("softcap", "attn_logit_softcapping", serde_json::json!(0.0), "soft-cap"),
        ("finalcap", "final_logit_softcapping", serde_json::json!(-3.0), "soft-cap"),
        ("qpas", "query_pre_attn_scalar", serde_json::json!(-24), "attention scale"),
        ("act", "hidden_activation", serde_json::json!(7), "`hidden_activation`: invalid type"),
    ] {
        let d = folder_with_config("tiny-gemma2", tag, |c| c[key] = v.clone());
        let e = load_err(&d);
        assert!(e.contains(want), "{key} = {v}: {e}");
    }
    let d = folder_with_config("tiny-llama", "hidden-act", |c| c["hidden_act"] = serde_json::json!(["silu"]));
    assert!(load_err(&d).contains("`hidden_act`: invalid type"));
}

#[test]
fn non_finite_weights_are_an_error_naming_the_tensor() {
    let d = scratch("hard-nan-weights");
    let f = d.join("m.gguf");
    let mut parts = gguf_parts_from_fixture("tiny-llama", "llama");
    let (_, t) = parts.tensors.iter_mut().find(|(n, _)| n == "blk.1.ffn_up.weight").unwrap();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[17] = f32::NAN;
    *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
    write_gguf(&parts, &f);
    let e = load_err(&f);
    assert!(e.contains("blk.1.ffn_up.weight") && e.contains("NaN"), "{e}");

    let st = d.join("folder");
    std::fs::create_dir_all(&st).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-gpt2").join(f), st.join(f)).unwrap();
    }
    let mut tensors = candle_core::safetensors::load(fixtures().join("tiny-gpt2/model.safetensors"), &Device::Cpu).unwrap();
    let w = &tensors["transformer.h.0.ln_1.weight"];
    let inf = Tensor::full(f32::INFINITY, w.dims(), &Device::Cpu).unwrap();
    tensors.insert("transformer.h.0.ln_1.weight".into(), inf);
    candle_core::safetensors::save(&tensors, st.join("model.safetensors")).unwrap();
    assert!(load_err(&st).contains("transformer.h.0.ln_1.weight"));
}

#[test]
fn non_finite_logits_are_an_error_not_nan() {
    let model = load_tiny("tiny-llama");
    let batch = model.batch(&["Hello"]).unwrap();
    // An intervention that writes NaN (say, a steering vector read from a damaged file).
    let nan = Tensor::full(f32::NAN, (1, 1, model.config().d_model), &Device::Cpu).unwrap();
    let hooks = glassbox::Hooks::new().intervene(glassbox::Intervention::new(glassbox::HookPoint::ResidPre(1), glassbox::Action::Add(nan)));
    let e = model.forward(&batch, &hooks).err().unwrap();
    assert!(matches!(e, Error::NonFinite(_)), "{e}");
}

// ---- 6. special files ----

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let d = scratch("hard-fifo");
    let fifo = d.join("model.gguf");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert!(load_err(&fifo).contains("not a regular file"));

    // config.json as a FIFO, tokenizer.json linked to /dev/zero.
    let m = d.join("folder");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::copy(fixtures().join("tiny-gpt2/model.safetensors"), m.join("model.safetensors")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(m.join("config.json")).status().unwrap().success());
    assert!(load_err(&m).contains("not a regular file"));
    std::fs::remove_file(m.join("config.json")).unwrap();
    std::fs::copy(fixtures().join("tiny-gpt2/config.json"), m.join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", m.join("tokenizer.json")).unwrap();
    assert!(load_err(&m).contains("not a regular file"));
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", m.join("model.safetensors.index.json")).unwrap();
    std::fs::remove_file(m.join("model.safetensors")).unwrap();
    assert!(load_err(&m).contains("not a regular file"));
}

/// Runs `f` on another thread; a call that blocks for 20 s fails the test instead of hanging it.
#[cfg(unix)]
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap_or_else(|_| panic!("{what} blocked on a FIFO"))
}

/// Every entry point that reads a file checks its type before reading, without blocking: the
/// cached registry model, a TransformerLens checkpoint's weights, an SAE folder's config, a
/// transcoder set's config, a corpus file, a JSONL prompt set and a Parquet part.
#[cfg(unix)]
#[test]
fn a_fifo_at_every_entry_point_is_an_error_naming_it() {
    let d = scratch("hard-fifo-everywhere");
    let fifo = |name: &str| -> std::path::PathBuf {
        let p = d.join(name);
        let _ = std::fs::remove_file(&p);
        assert!(std::process::Command::new("mkfifo").arg(&p).status().unwrap().success());
        p
    };
    let says_fifo = |what: &str, e: String| assert!(e.contains("FIFO") || e.contains("not a regular file"), "{what}: {e}");

    // The registry's cached model file (its integrity check hashes it).
    let home = d.join("home");
    let e = glassbox::registry::entry(glassbox::registry::DEFAULT_MODEL).unwrap();
    let cached = glassbox::registry::cached_path_in(e, &home);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&cached).status().unwrap().success());
    let h = home.clone();
    says_fifo("registry status", within_20s("the registry's status", move || glassbox::registry::status(e, &h).map(|_| ()).unwrap_err().to_string()));

    // A TransformerLens checkpoint whose weights are a FIFO.
    let tl = d.join("tl");
    std::fs::create_dir_all(&tl).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tl/ln_learned").join(f), tl.join(f)).unwrap();
    }
    let _ = std::fs::remove_file(tl.join("model.safetensors"));
    assert!(std::process::Command::new("mkfifo").arg(tl.join("model.safetensors")).status().unwrap().success());
    says_fifo("TransformerLens weights", within_20s("loading a TL checkpoint", move || load_err(&tl)));

    // An SAE folder and a transcoder set whose configs are FIFOs.
    let sae = d.join("sae");
    std::fs::create_dir_all(&sae).unwrap();
    let _ = std::fs::remove_file(sae.join("cfg.json"));
    assert!(std::process::Command::new("mkfifo").arg(sae.join("cfg.json")).status().unwrap().success());
    let s2 = sae.clone();
    says_fifo("SAE cfg.json", within_20s("loading an SAE", move || glassbox::sae::Sae::load(&s2, None).err().unwrap().to_string()));
    let set = d.join("set");
    std::fs::create_dir_all(&set).unwrap();
    let _ = std::fs::remove_file(set.join("config.yaml"));
    assert!(std::process::Command::new("mkfifo").arg(set.join("config.yaml")).status().unwrap().success());
    says_fifo("transcoder set config", within_20s("loading a transcoder set", move || glassbox::sae::set::TranscoderSet::load(&set).err().unwrap().to_string()));

    // A corpus file, a JSONL prompt set and a Parquet part.
    let corpus = fifo("corpus.txt");
    says_fifo("corpus", within_20s("reading a corpus", move || glassbox::sae::corpus::read_documents(&[corpus]).err().unwrap().to_string()));
    let jsonl = fifo("prompts.jsonl");
    says_fifo("JSONL", within_20s("reading a JSONL file", move || glassbox::batch::read_jsonl(&jsonl).err().unwrap().to_string()));
    let part = fifo("part.parquet");
    says_fifo("Parquet", within_20s("reading a Parquet part", move || glassbox::batch::table::read_file(&part).err().unwrap().to_string()));
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_is_reported_as_one() {
    let d = scratch("hard-loop");
    let (a, b) = (d.join("a.gguf"), d.join("b.gguf"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let e = glassbox::registry::resolve(a.to_str().unwrap(), &mut |_| {}).unwrap_err().to_string();
    assert!(!e.contains("not a registry model") && e.to_lowercase().contains("symbolic links"), "{e}");
}

#[test]
fn oversized_json_is_refused_by_its_size() {
    let d = folder_with_config("tiny-gpt2", "big-config", |_| {});
    let mut text = std::fs::read_to_string(d.join("config.json")).unwrap();
    text.insert_str(1, &format!("\"pad\": \"{}\",", "x".repeat(17 << 20)));
    std::fs::write(d.join("config.json"), text).unwrap();
    assert!(load_err(&d).contains("at most"));
}

// ---- 7. silently inconsistent inputs ----

#[test]
fn duplicate_tensors_across_shards_and_escaping_shard_paths() {
    let d = scratch("hard-shards");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixtures().join("tiny-gpt2").join(f), d.join(f)).unwrap();
    }
    std::fs::copy(fixtures().join("tiny-gpt2/model.safetensors"), d.join("a.safetensors")).unwrap();
    let one = candle_core::safetensors::load(fixtures().join("tiny-gpt2/model.safetensors"), &Device::Cpu).unwrap();
    let first: std::collections::HashMap<String, Tensor> = one.iter().take(1).map(|(k, v)| (k.clone(), (v * 2.0).unwrap())).collect();
    candle_core::safetensors::save(&first, d.join("b.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for k in one.keys() {
        map.insert(k.clone(), "a.safetensors".into());
    }
    let dup = first.keys().next().unwrap().clone();
    map.insert(dup.clone(), "b.safetensors".into());
    let write_index = |m: &serde_json::Map<String, serde_json::Value>| {
        std::fs::write(d.join("model.safetensors.index.json"), serde_json::json!({ "weight_map": m }).to_string()).unwrap()
    };
    write_index(&map);
    let e = load_err(&d);
    assert!(e.contains(&dup) && e.contains("also in"), "{e}");
    for bad in ["/etc/passwd", "../a.safetensors", "sub/a.safetensors"] {
        map.insert(dup.clone(), bad.into());
        write_index(&map);
        let e = load_err(&d);
        assert!(e.contains("not a file name in the model folder"), "{bad}: {e}");
    }
}

#[test]
fn duplicate_names_in_one_safetensors_header() {
    let d = folder_with_config("tiny-gpt2", "st-dup", |_| {});
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    // Rename one tensor to another's name (same length, so offsets stay valid).
    let (a, b) = ("transformer.h.0.ln_1.bias", "transformer.h.0.ln_2.bias");
    assert!(header.contains(a) && header.contains(b));
    let header = header.replacen(a, b, 1);
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(d.join("model.safetensors"), out).unwrap();
    let e = load_err(&d);
    assert!(e.contains("listed twice"), "{e}");
}

#[test]
fn a_vocabulary_longer_than_the_embedding_or_empty() {
    let d = folder_with_config("tiny-llama", "vocab-long", |_| {});
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    for i in 0..50 {
        let id = vocab.len();
        vocab.insert(format!("extra{i}"), id.into());
    }
    std::fs::write(d.join("tokenizer.json"), tok.to_string()).unwrap();
    assert!(load_err(&d).contains("does not belong to these weights"));

    let d = scratch("hard-vocab-empty");
    let f = d.join("m.gguf");
    let mut parts = gguf_parts_from_fixture("tiny-llama", "llama");
    parts.set("tokenizer.ggml.tokens", Value::Array(vec![]));
    parts.set("tokenizer.ggml.merges", Value::Array(vec![]));
    write_gguf(&parts, &f);
    let e = load_err(&f);
    assert!(e.contains("vocabulary is empty"), "{e}");
}

#[test]
fn hook_points_the_model_lacks_are_errors() {
    use glassbox::{HookPoint, Hooks};
    let llama = load_tiny("tiny-llama");
    let batch = llama.batch(&["Hello"]).unwrap();
    for p in [HookPoint::PosEmbed, HookPoint::RouterLogits(0), HookPoint::ExpertWeights(1)] {
        let e = llama.forward(&batch, &Hooks::new().cache([p])).err().unwrap().to_string();
        assert!(e.contains("does not exist in this model"), "{p}: {e}");
    }
    let gpt2 = load_tiny("tiny-gpt2");
    let e = gpt2.forward(&gpt2.batch(&["Hello"]).unwrap(), &Hooks::new().grad_tap([HookPoint::RotQ(0)])).err().unwrap().to_string();
    assert!(e.contains("no rotary"), "{e}");
    let moe = load_tiny("tiny-mixtral");
    let e = moe.forward(&moe.batch(&["Hello"]).unwrap(), &Hooks::new().cache([HookPoint::MlpPost(0)])).err().unwrap().to_string();
    assert!(e.contains("mixture of experts"), "{e}");
}

#[test]
fn hub_ids_with_dot_parts_are_not_hub_ids() {
    for bad in ["org/..", "../x", "org/.hidden", "a..b/c"] {
        let e = glassbox::registry::resolve(bad, &mut |_| {}).unwrap_err().to_string();
        assert!(!e.contains("Hugging Face Hub"), "{bad}: {e}");
    }
}

// ---- 9. quadratic tokenizer ----

#[test]
fn very_long_text_is_refused_before_tokenizing() {
    let model = load_tiny("tiny-gpt2");
    let e = model.tokenize(&"a".repeat(2 << 20)).unwrap_err();
    assert!(matches!(e, Error::PromptTooLongText { .. }), "{e}");
}

// ---- 11. library safety ----

#[cfg(feature = "bench")]
#[test]
fn kernel_entry_points_check_their_sizes() {
    use glassbox::bench;
    assert!(bench::Q41Weight::new(4, 33, vec![0; 4 * 20]).is_err());
    assert!(bench::Q41Weight::new(4, 32, vec![0; 79]).is_err());
    assert!(bench::Q41Weight::new(usize::MAX, 64, vec![]).is_err());
    if bench::kernels_available() {
        let q = bench::Q41Weight::new(2, 32, vec![0; 40]).unwrap();
        assert!(q.x_wt(&[0.0; 31], 1).is_err());
        assert!(q.g_w(&[0.0; 3], 1).is_err());
        assert!(bench::x_wt(&[0.0; 4], &[0.0; 4], 2, 2, 3).is_err());
        assert!(bench::g_w(&[0.0; 4], &[0.0; 4], usize::MAX, 2, 2).is_err());
    }
}

#[test]
fn kernel_threads_are_an_explicit_option() {
    assert!(glassbox::threads::set_kernel_threads(0).is_err());
    let env = glassbox::threads::candle_env();
    assert!(env.iter().all(|(k, _)| *k == "CANDLE_NUM_THREADS" || *k == "RAYON_NUM_THREADS"));
    let _ = DType::F32;
}

// ---- 10. messages ----

/// Names and other libraries' messages quoted from a damaged file reach the terminal with
/// their control characters escaped (found by the fuzzer: an architecture `\x1b[31mred`, a
/// DEL byte in a safetensors dtype).
#[test]
fn messages_escape_control_characters_from_files() {
    let no_control = |m: &str| assert!(!m.chars().any(|c| c.is_control() && c != '\n'), "{m:?}");
    let d = scratch("hard-escape");
    let f = d.join("m.gguf");
    let mut parts = gguf_parts_from_fixture("tiny-llama", "llama");
    parts.set("general.architecture", Value::String("\u{1b}[31mred".into()));
    write_gguf(&parts, &f);
    let e = load_err(&f);
    no_control(&e);
    assert!(e.contains("\\u{1b}[31mred"), "{e}");

    let dir = folder_with_config("tiny-mistral", "escape-type", |c| c["model_type"] = "mis\u{7f}ral".into());
    no_control(&load_err(&dir));
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let at = bytes.windows(5).position(|w| w == b"\"F32\"").unwrap();
    let mut b = bytes.clone();
    b[at + 2] = 0x7f;
    std::fs::write(dir.join("model.safetensors"), b).unwrap();
    let dir2 = folder_with_config("tiny-mistral", "escape-dtype", |_| {});
    std::fs::copy(dir.join("model.safetensors"), dir2.join("model.safetensors")).unwrap();
    no_control(&load_err(&dir2));
}

/// A config that contradicts its weights or physics is refused, naming both values: OPT's
/// `word_embed_proj_dim` against the embedding's width, a norm epsilon outside (0, 1].
#[test]
fn configs_that_contradict_their_weights_are_refused() {
    let with = |fixture: &str, key: &str, value: serde_json::Value| -> String {
        let d = scratch(&format!("hard-cfg-{fixture}-{key}"));
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(fixtures().join(fixture).join(f), d.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join(fixture).join("config.json")).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
        load_err(&d)
    };
    let e = with("tiny-opt-proj", "word_embed_proj_dim", serde_json::json!(48));
    assert!(e.contains("word_embed_proj_dim is 48") && e.contains("columns"), "{e}");
    for eps in [serde_json::json!(1e38), serde_json::json!(2.0), serde_json::json!(0.0)] {
        let e = with("tiny-llama", "rms_norm_eps", eps.clone());
        assert!(e.contains("epsilon") && e.contains("(0, 1]"), "{eps}: {e}");
    }
    // Each dimension the weights also give: the error names the tensor, its shape and the
    // config's value.
    for (fixture, key, value) in [
        ("tiny-llama", "head_dim", 8),
        ("tiny-llama", "intermediate_size", 100),
        ("tiny-llama", "vocab_size", 1000),
        ("tiny-llama", "num_key_value_heads", 1),
        ("tiny-mixtral", "num_local_experts", 3),
        ("tiny-qwen2-moe", "num_experts", 3),
    ] {
        let e = with(fixture, key, serde_json::json!(value));
        assert!(e.contains("has shape") && e.contains("expected"), "{fixture} {key} = {value}: {e}");
    }
}

/// Found by the format fuzzer (issue 30): a tokenizer.json whose post-processor names a
/// special token it does not define made the tokenizers crate panic on every encode.
#[test]
fn a_post_processor_naming_a_missing_token_is_refused_at_load() {
    let d = scratch("hard-post-processor");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("tl/ln_learned").join(f), d.join(f)).unwrap();
    }
    let mut tok: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tl/ln_learned/tokenizer.json")).unwrap()).unwrap();
    tok["post_processor"]["special_tokens"].as_object_mut().unwrap().remove("t0");
    std::fs::write(d.join("tokenizer.json"), tok.to_string()).unwrap();
    let e = load_err(&d);
    assert!(e.contains("tokenizer.json") && e.contains("post-processor"), "{e}");
}

/// Found by the format fuzzer: messages quoted a 10,000-character answer (and a damaged
/// Parquet value, and a damaged zip entry's name) whole.
#[test]
fn messages_quote_at_most_an_excerpt_of_what_they_were_given() {
    let model = load_tiny("tiny-llama");
    let long = " a".repeat(5000);
    let e = Contrast::new(&model, IOI, &long, " John", None).unwrap_err().to_string();
    assert!(e.len() < 1000 && e.contains("answers must be one token") && e.contains("characters in all"), "{} bytes: {}", e.len(), &e[..e.len().min(300)]);
    let text = format!("invalid value '{}' for '--metric'", "x".repeat(20_000));
    let short = glassbox::error::shorten_long_words(&text, 200);
    assert!(short.len() < 400 && short.starts_with("invalid value '") && short.ends_with("for '--metric'") && short.contains("(20002 characters)"), "{short}");
}

/// Found by the format fuzzer: SAE weights holding NaN, or a finite 3e38 that overflows the
/// first product, loaded; a `.npy` entry of 8 bytes indexed past its end.
#[test]
fn damaged_sae_weights_are_refused_by_name() {
    use glassbox::sae::Sae;
    let src = fixtures().join("sae/standard");
    let bytes = std::fs::read(src.join("sae_weights.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for (tag, value, needle) in [("nan", f32::NAN, "NaN or infinite"), ("huge", 3.0e38f32, "magnitude")] {
        let d = scratch(&format!("hard-sae-{tag}"));
        std::fs::copy(src.join("cfg.json"), d.join("cfg.json")).unwrap();
        let mut b = bytes.clone();
        b[header_end..header_end + 4].copy_from_slice(&value.to_le_bytes());
        std::fs::write(d.join("sae_weights.safetensors"), b).unwrap();
        let e = Sae::load(&d, None).err().unwrap_or_else(|| panic!("{tag}: loaded")).to_string();
        assert!(e.contains(needle) && e.contains('`'), "{tag}: {e}");
    }
    // A zip whose one stored entry is the 8 bytes `\x93NUMPY\x01\x00`: no header length.
    let d = scratch("hard-sae-short-npy");
    let (name, data) = (b"W_enc.npy", b"\x93NUMPY\x01\x00");
    let mut zip = Vec::new();
    zip.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    zip.extend_from_slice(&0u32.to_le_bytes()); // crc (not read)
    zip.extend_from_slice(&(data.len() as u32).to_le_bytes());
    zip.extend_from_slice(&(data.len() as u32).to_le_bytes());
    zip.extend_from_slice(&(name.len() as u16).to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes());
    zip.extend_from_slice(name);
    zip.extend_from_slice(data);
    std::fs::write(d.join("params.npz"), zip).unwrap();
    let e = match Sae::load(&d, Some(glassbox::HookPoint::ResidPost(0))) {
        Ok(_) => panic!("a truncated .npy loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("W_enc.npy") && e.contains("truncated"), "{e}");
}
