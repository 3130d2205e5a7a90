//! The `glassbox` binary end to end: output structure, files it writes, and errors (no panics).

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn glassbox(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_glassbox")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_json_on_the_default_model() {
    let (ok, stdout, stderr) = glassbox(&[
        "run",
        "--prompt",
        "When Mary and John went to the store, John gave a drink to",
        "--top-k",
        "3",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 15);
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["token"], " Mary");
    let p: f64 = top.iter().map(|t| t["prob"].as_f64().unwrap()).sum();
    assert!(p > 0.0 && p <= 1.0 + 1e-6);
}

#[test]
fn run_table_on_a_model_folder() {
    let model = fixtures().join("tiny-gpt2");
    let (ok, stdout, stderr) = glassbox(&["run", "--model", model.to_str().unwrap(), "--prompt", "Hello"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("top next tokens:"));
    assert!(stdout.contains("\"Hello\""));
}

#[test]
fn cache_writes_safetensors_with_the_hook_shapes() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-cache.safetensors");
    let model = fixtures().join("tiny-llama");
    let (ok, _, stderr) = glassbox(&[
        "cache",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "The cat sat on the mat.",
        "--hook",
        "blocks.1.attn.hook_pattern",
        "--hook",
        "blocks.0.attn.hook_k",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let t = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["blocks.1.attn.hook_pattern"].dims(), &[1, 4, 9, 9]);
    assert_eq!(t["blocks.0.attn.hook_k"].dims(), &[1, 9, 2, 16], "GQA: 2 key/value heads");
}

#[test]
fn errors_are_messages_not_panics() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--model", "/no/such/file.gguf", "--prompt", "x"], "no such file"),
        (vec!["run", "--model", m, "--prompt", ""], "prompt is empty"),
        (vec!["cache", "--model", m, "--prompt", "Hi", "--hook", "blocks.0.attn.hook_scores", "--out", "/tmp/x"], "unknown hook point"),
        (vec!["cache", "--model", m, "--prompt", "Hi", "--hook", "blocks.7.hook_resid_pre", "--out", "/tmp/x"], "layer 7 is out of range"),
        (vec!["models", "pull", "gpt-17"], "not a registry model"),
    ];
    for (args, expect) in cases {
        let (ok, _, stderr) = glassbox(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn models_list_shows_the_registry() {
    let (ok, stdout, _) = glassbox(&["models", "list"]);
    assert!(ok);
    assert!(stdout.contains("smollm2-135m"));
}

/// Every method subcommand answers in JSON with the reference tool's key names.
#[test]
fn method_subcommands_json_keys() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let p = "When Mary and John went to the store, John gave a drink to";
    let base = ["--model", m, "--prompt", p];
    let answers = ["--correct", " Mary", "--incorrect", " John", "--json"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["attribution"], vec!["attributions", "top", "clean_ld", "corrupted_ld"]),
        (vec!["attribution", "--method", "integrated_gradients", "--component", "mlp"], vec!["completeness_residual", "embed_attribution"]),
        (vec!["logit-lens"], vec!["logit_diffs", "logit_shifts", "head_direct_effects", "decomposition_residual"]),
        (vec!["token-attribution"], vec!["top_tokens", "tokens", "ld"]),
        (vec!["edges", "--top-k", "5"], vec!["top_edges", "n_edges"]),
    ];
    for (cmd, keys) in cases {
        let mut args = cmd.clone();
        args.extend(base);
        args.extend(answers);
        let (ok, stdout, stderr) = glassbox(&args);
        assert!(ok, "{cmd:?}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for k in keys {
            assert!(v.get(k).is_some(), "{cmd:?} lacks `{k}`");
        }
    }
    let (ok, stdout, stderr) = glassbox(&["attention", "--model", m, "--prompt", p, "--head", "L1H2", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["head_types"]["L01H02"].is_string());
    assert!(v["entropy"]["L01H02"].is_number());
    let (ok, _, stderr) = glassbox(&["attribution", "--model", m, "--prompt", p, "--correct", " Mary and", "--incorrect", " John"]);
    assert!(!ok && stderr.contains("answers must be one token"), "{stderr}");
}
