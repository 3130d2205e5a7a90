//! The `glassbox` binary end to end: output structure, files it writes, and errors (no panics).

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn glassbox(args: &[&str]) -> (bool, String, String) {
    glassbox_env(args, &[])
}

/// Runs `glassbox ARGS...`, which must fail with a message holding `expect` (not a panic);
/// gives its standard output.
fn assert_fails_with(args: &[&str], expect: &str) -> String {
    let (ok, stdout, stderr) = glassbox(args);
    assert!(!ok, "{args:?} succeeded: {stdout}");
    assert!(stderr.contains(expect), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stdout
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
    let env: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // The envelope: what ran, on what model (with the weights' hash), with what input.
    assert_eq!(env["method"], "run");
    assert_eq!(env["model"]["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(env["input"]["tokens"].as_array().unwrap().len(), 15);
    assert_eq!(env["options"]["top_k"], 3);
    let v = &env["result"];
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
        assert_fails_with(&args, expect);
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
        (vec!["attribution", "--metric", "kl"], vec!["metric", "clean_ld"]),
        (vec!["patch", "--metric", "logprob"], vec!["metric", "head_effects"]),
    ];
    for (cmd, keys) in cases {
        let mut args = cmd.clone();
        args.extend(base);
        args.extend(answers);
        let (ok, stdout, stderr) = glassbox(&args);
        assert!(ok, "{cmd:?}: {stderr}");
        let env: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        for k in ["method", "glassbox_version", "model", "input", "metric", "options", "result", "warnings", "seconds"] {
            assert!(env.get(k).is_some(), "{cmd:?}'s envelope lacks `{k}`");
        }
        for k in keys {
            assert!(env["result"].get(k).is_some(), "{cmd:?} lacks `{k}`");
        }
    }
    let (ok, stdout, stderr) = glassbox(&["attention", "--model", m, "--prompt", p, "--head", "L1H2", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["result"].clone();
    assert!(v["head_types"]["L01H02"].is_string());
    assert!(v["entropy"]["L01H02"].is_number());
    let (ok, _, stderr) = glassbox(&["attribution", "--model", m, "--prompt", p, "--correct", " Mary and", "--incorrect", " John"]);
    assert!(!ok && stderr.contains("answers must be one token"), "{stderr}");
}

fn glassbox_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glassbox"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Arguments that used to run away, crash or print NaN (issue 12) end in a message.
#[test]
fn hostile_arguments_end_in_messages() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let p = "When Mary and John went to the store, John gave a drink to";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["analyze", "--model", m, "--prompt", p, "--correct", " ", "--incorrect", " John"], "only whitespace"),
        (vec!["patch", "--model", m, "--prompt", p, "--correct", " Mary", "--incorrect", " Mary"], "same token"),
        (vec!["attribution", "--model", m, "--prompt", p, "--correct", " Mary", "--incorrect", " John", "--corrupted", p], "same tokens as the clean prompt"),
        (vec!["attribution", "--model", m, "--prompt", p, "--correct", " Mary", "--incorrect", " John", "--method", "integrated_gradients", "--n-steps", "100000000"], "from 1 to 1000"),
        (vec!["stability", "--model", m, "--prompt", p, "--correct", " Mary", "--incorrect", " John", "--n-corruptions", "10000000"], "corruptions"),
        (vec!["stability", "--model", m, "--prompt", p, "--correct", " Mary", "--incorrect", " John", "--p", "2"], "probability"),
        (vec!["analyze", "--model", m, "--prompt", p, "--correct", " Mary", "--incorrect", " John", "--target", "7"], "target sufficiency"),
        (vec!["analyze", "--model", m, "--task", "ioi", "--n", "4", "--n-boot", "0"], "bootstrap resamples is 0"),
        (vec!["analyze", "--model", m, "--task", "ioi", "--n", "4", "--n-boot", "1000000000"], "bootstrap resamples"),
        (vec!["run", "--model", "org/..", "--prompt", "x"], "no such file"),
    ];
    for (args, expect) in cases {
        let stdout = assert_fails_with(&args, expect);
        assert!(!stdout.to_lowercase().contains("nan"), "{args:?}: {stdout}");
    }
}

/// `cache --out` never replaces what is not a regular file.
#[cfg(unix)]
#[test]
fn cache_out_refuses_devices_fifos_links_and_folders() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let d = scratch("cli-out");
    let target = d.join("precious.txt");
    std::fs::write(&target, "keep me").unwrap();
    let link = d.join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for out in [PathBuf::from("/dev/null"), link.clone(), fifo.clone(), d.clone()] {
        let (ok, _, stderr) = glassbox(&["cache", "--model", m, "--prompt", "Hi", "--hook", "hook_embed", "--out", out.to_str().unwrap()]);
        assert!(!ok, "{}", out.display());
        assert!(stderr.contains("not a regular file") || stderr.contains("symbolic link"), "{}: {stderr}", out.display());
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    // A regular file is replaced whole.
    let ok_out = d.join("acts.safetensors");
    std::fs::write(&ok_out, "old").unwrap();
    let (ok, _, stderr) = glassbox(&["cache", "--model", m, "--prompt", "Hi", "--hook", "hook_embed", "--out", ok_out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(candle_core::safetensors::load(&ok_out, &candle_core::Device::Cpu).unwrap().contains_key("hook_embed"));
}

/// A cached registry model with a few bytes overwritten is found damaged by `run`,
/// `models list` and `models verify`, each saying what to run; it is never used.
#[test]
fn a_damaged_cached_model_is_never_used() {
    let home = scratch("cli-damaged-home");
    let (ok, stdout, stderr) = glassbox(&["models", "pull", "smollm2-135m", "--if-missing"]);
    assert!(ok, "{stderr}");
    let real = PathBuf::from(stdout.trim());
    let dir = home.join("models").join("smollm2-135m");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join(real.file_name().unwrap());
    let mut bytes = std::fs::read(&real).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4096].fill(0);
    std::fs::write(&copy, &bytes).unwrap();
    let env = [("GLASSBOX_HOME", home.as_path())];
    let (ok, _, stderr) = glassbox_env(&["run", "--prompt", "Hello"], &env);
    assert!(!ok && stderr.contains("damaged") && stderr.contains("models pull smollm2-135m --force"), "{stderr}");
    let (ok, stdout, _) = glassbox_env(&["models", "list"], &env);
    assert!(ok && stdout.contains("DAMAGED"), "{stdout}");
    let (ok, stdout, stderr) = glassbox_env(&["models", "verify", "smollm2-135m"], &env);
    assert!(!ok && stdout.contains("DAMAGED") && stderr.contains("--force"), "{stdout} {stderr}");
}

/// Without HOME and GLASSBOX_HOME there is no cache folder: an error that says what to set,
/// not a cache in whatever folder the program runs from.
#[test]
fn no_home_is_an_error_not_a_local_cache() {
    let d = scratch("cli-no-home");
    let out = Command::new(env!("CARGO_BIN_EXE_glassbox"))
        .args(["models", "list"])
        .env_remove("HOME")
        .env_remove("GLASSBOX_HOME")
        .current_dir(&d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("GLASSBOX_HOME"), "{stderr}");
    assert!(!d.join(".cache").exists());
}

/// `generate`: greedy by default, sampled reproducibly by seed, steered beside the unsteered
/// continuation, with a vector from two prompts or from a file; bad steering is a message.
#[test]
fn generate_greedy_sampled_and_steered() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["generate", "--model", m, "--prompt", "The cat sat on the", "--max-new-tokens", "6", "--ignore-eos", "--json"];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = glassbox(&all);
        assert!(ok, "{args:?}: {stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["result"].clone()
    };
    let g = json(&[]);
    assert_eq!(g["generation"]["tokens"].as_array().unwrap().len(), 6);
    assert!(g["unsteered"].is_null());
    // A temperature of 0 means the most likely token each step, as TransformerLens reads it.
    assert_eq!(json(&["--temperature", "0"])["generation"], g["generation"]);
    let s1 = json(&["--temperature", "1.5", "--seed", "3"]);
    let s2 = json(&["--temperature", "1.5", "--seed", "3"]);
    assert_eq!(s1["generation"], s2["generation"]);

    let steer = ["--steer", "blocks.1.hook_resid_pre", "--steer-positive", "I love it", "--steer-negative", "I hate it", "--steer-scale", "-3"];
    let st = json(&steer);
    assert_eq!(st["unsteered"], g["generation"]);
    assert_eq!(st["steering"]["scale"], -3.0);
    assert!(st["steering"]["norm"].as_f64().unwrap() > 0.0);

    // A file from `cache` holds a whole activation [1, p, d], not a [d] vector: a message.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let v = dir.join("cli-steer.safetensors");
    let (ok, _, stderr) = glassbox(&["cache", "--model", m, "--prompt", "The cat sat on the", "--hook", "blocks.1.hook_resid_pre", "--out", v.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = glassbox(&["generate", "--model", m, "--prompt", "x", "--steer", "blocks.1.hook_resid_pre", "--steer-vector", v.to_str().unwrap(), "--steer-scale", "1"]);
    assert!(!ok && stderr.contains("does not fit"), "a [1, p, d] activation is not a [d] vector: {stderr}");

    let bad: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--steer", "blocks.99.hook_resid_pre", "--steer-positive", "a", "--steer-negative", "b", "--steer-scale", "1"], "out of range"),
        (vec!["--steer", "blocks.1.hook_resid_pre", "--steer-vector", "/nonexistent.safetensors", "--steer-scale", "1"], "nonexistent"),
        (vec!["--steer", "blocks.1.hook_resid_pre", "--steer-positive", "a", "--steer-negative", "b", "--steer-scale", "inf"], "scale"),
        (vec!["--temperature", "-1"], "temperature is -1"),
        (vec!["--steer-positive", "a"], "need `steer`"),
        (vec!["--top-p", "2"], "top_p is 2"),
    ];
    for (args, expect) in bad {
        let mut all = vec!["generate", "--model", m, "--prompt", "The cat sat on the"];
        all.extend_from_slice(&args);
        assert_fails_with(&all, expect);
    }
}

#[test]
fn sae_attribute_info_and_align() {
    let model = fixtures().join("tiny-llama");
    let m = model.to_str().unwrap();
    let sae = fixtures().join("sae/standard");
    let p = "When Mary and John went to the store, John gave a drink to";
    let plot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-sae.svg");
    let (ok, stdout, stderr) = glassbox(&[
        "sae", "attribute", "--model", m, "--sae", sae.to_str().unwrap(), "--prompt", p, "--correct", " Mary", "--incorrect", " John",
        "--top-k", "5", "--n-exact", "2", "--json", "--plot", plot.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["result"].clone();
    let feats = v["top_features"].as_array().unwrap();
    assert_eq!(feats.len(), 5);
    for k in ["layer", "feature_id", "activation", "ld_contribution", "direction", "neuronpedia_url"] {
        assert!(feats[0].get(k).is_some(), "top_features lacks {k}");
    }
    assert!(feats[0]["exact_effect"].is_number() && feats[2]["exact_effect"].is_null());
    assert!(v["direct"]["decomposition_residual"].as_f64().unwrap() < 1e-4);
    let svg = std::fs::read_to_string(&plot).unwrap();
    let bars = svg.matches("class=\"bar\"").count();
    assert_eq!(bars, 5);

    let (ok, stdout, stderr) = glassbox(&["sae", "info", "--sae", fixtures().join("sae/gemma_scope").to_str().unwrap(), "--hook", "blocks.0.hook_resid_post"]);
    assert!(ok && stdout.contains("gemma-scope") && stdout.contains("JumpRelu"), "{stdout}{stderr}");
    let (ok, _, stderr) = glassbox(&["sae", "info", "--sae", fixtures().join("sae/gemma_scope").to_str().unwrap()]);
    assert!(!ok && stderr.contains("name no hook point"), "{stderr}");
    let (ok, _, stderr) = glassbox(&["sae", "attribute", "--model", m, "--sae", sae.to_str().unwrap(), "--hook", "blocks.0.mlp.hook_post", "--prompt", p, "--correct", " Mary", "--incorrect", " John"]);
    assert!(!ok && stderr.contains("made for another model"), "{stderr}");
    let (ok, _, stderr) = glassbox(&["sae", "attribute", "--model", fixtures().join("tiny-gpt2").to_str().unwrap(), "--sae", sae.to_str().unwrap(), "--prompt", p, "--correct", " Mary", "--incorrect", " John"]);
    assert!(ok && stderr.contains("was trained on tiny-llama"), "{stderr}");

    let (ok, stdout, stderr) = glassbox(&["align", "--model-a", m, "--model-b", fixtures().join("tiny-gpt2").to_str().unwrap(), "--prompt", p, "--correct", " Mary", "--incorrect", " John", "--top-k", "3", "--n-null", "500", "--json"]);
    assert!(ok, "{stderr}");
    let env: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(env["model_b"]["name"], "tiny-gpt2");
    let v = &env["result"];
    let f = v["fcas"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f));
    assert_eq!(v["pairs"].as_array().unwrap().len(), 3);
    // A model aligned with itself: FCAS 1, far above the null.
    let (ok, stdout, stderr) = glassbox(&["align", "--model-a", m, "--model-b", m, "--prompt", p, "--correct", " Mary", "--incorrect", " John", "--top-k", "4", "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["result"].clone();
    assert!((v["fcas"].as_f64().unwrap() - 1.0).abs() < 1e-6 && v["null_mean"].as_f64().unwrap() < 0.9, "{v}");
    let (ok, _, stderr) = glassbox(&["align", "--model-a", m, "--model-b", m, "--task", "ioi", "--n", "4", "--top-k", "9", "--json"]);
    assert!(!ok && stderr.contains("top_k 9"), "{stderr}");
}
