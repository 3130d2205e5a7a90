//! The `glassbox` binary driven with random arguments (issue 30 item 4): each case picks a
//! method from `glassbox methods --json` (the catalog's schema), some of its input keys and
//! options, and a value for each drawn from the option's kind — valid values, and huge,
//! negative, NaN, unicode, empty and malformed ones — on the tiny fixture model, with
//! `--json` or a `--plot` now and then. Every run must exit 0 with its output (valid JSON
//! without NaN under `--json`) or exit 1 or 2 with a printable message; a signal, a panic, a
//! message of more than 8,000 bytes or a run longer than `CASE_SECONDS` fails the test.
//! Files named in arguments are only ever scratch files of this test (a missing one, an
//! empty one, garbage, a folder, a FIFO), never the system's.
//!
//! `CLI_FUZZ_CASES=N` (default 300) and `CLI_FUZZ_SEED=S` (default 0) set the run.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fixtures;
use serde_json::Value;

const CASE_SECONDS: u64 = 60;

/// The generator (glassbox's own); a `calm` case draws only plausible values (so that half
/// the cases reach the methods), the others hostile ones too.
struct Rng(glassbox::rng::Rng, bool);

impl Rng {
    fn calm(&self) -> bool {
        self.1
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.below(n.max(1))
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// The scratch files a file-valued argument may name.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-fuzz");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("folder")).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        std::fs::write(dir.join("garbage"), (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>()).unwrap();
        std::fs::write(dir.join("scores.json"), br#"{"edges": {"x": 1.0}}"#).unwrap();
        std::fs::copy(fixtures().join("tracr/reverse/prompts.jsonl"), dir.join("prompts.jsonl")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: `fifo` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        Scratch { dir }
    }

    /// A path for a file the command reads.
    fn input(&self, r: &mut Rng) -> String {
        let name = *r.pick(&["missing", "empty", "garbage", "folder", "fifo", "scores.json", "prompts.jsonl", "missing/dir/x"]);
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// A path for a file the command writes.
    fn output(&self, r: &mut Rng, ext: &str) -> String {
        let name = match r.below(5) {
            0 => "folder".to_string(),
            1 => format!("no/such/dir/out.{ext}"),
            2 => "fifo".to_string(),
            _ => format!("out.{ext}"),
        };
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

fn hostile_text(r: &mut Rng) -> String {
    match r.below(9) {
        0 => String::new(),
        1 => "ñ☃🙂 日本".into(),
        2 => "x".repeat(20_000),
        3 => "\u{202e}evil\u{7}bell\u{1b}[31m".into(),
        4 => "-1".into(),
        5 => "NaN".into(),
        6 => "18446744073709551616".into(),
        7 => "--json".into(),
        _ => "L99H99".into(),
    }
}

/// A value of `kind` (the schema's JSON form) as command-line text.
fn value_of(kind: &Value, r: &mut Rng, scratch: &Scratch, field: &str) -> String {
    if !r.calm() && r.chance(5) {
        return hostile_text(r);
    }
    let calm = r.calm();
    match kind["type"].as_str().unwrap_or("") {
        "optional" => value_of(&kind["value"], r, scratch, field),
        "boolean" if calm => r.pick(&["true", "false"]).to_string(),
        "boolean" => r.pick(&["true", "false", "yes", "2"]).to_string(),
        "integer" if calm => r.pick(&["1", "2", "3", "4"]).to_string(),
        "integer" => r.pick(&["0", "1", "2", "3", "5", "8", "-1", "99999999999", "1e3", "٣"]).to_string(),
        "number" if calm => r.pick(&["0.5", "0.1", "0.9"]).to_string(),
        "number" => r.pick(&["0.5", "0.1", "0", "-0", "1", "-2.5", "inf", "-inf", "1e309", "1e-320", "0x10", "nan"]).to_string(),
        "choice" => {
            let values: Vec<String> = kind["values"].as_array().unwrap().iter().flat_map(|v| std::iter::once(v["name"].as_str().unwrap().to_string()).chain(v["aliases"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()))).collect();
            if !calm && r.chance(6) {
                format!("{}x", r.pick(&values))
            } else {
                r.pick(&values).clone()
            }
        }
        "list" => (0..1 + r.below(3)).map(|_| value_of(&kind["items"], r, scratch, field)).collect::<Vec<_>>().join(","),
        "text" => match kind["format"].as_str() {
            Some(f) if f.contains("file") => {
                if field.ends_with("_out") || field == "out" {
                    scratch.output(r, "json")
                } else {
                    scratch.input(r)
                }
            }
            Some(f) if f.contains("head") && calm => r.pick(&["L0H1", "L1H3", "L1H2"]).to_string(),
            Some(f) if f.contains("head") => r.pick(&["L0H1", "L1H3", "L1H2", "0.2", "L2H0", "L-1H0", "LxHy", "L1H2.q", "L0H0.v"]).to_string(),
            _ => r.pick(&["L0H1", "L1H2", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "mlp", "0.1", "L1H2=io", "L0H1=s", "1,2"]).to_string(),
        },
        _ => hostile_text(r),
    }
}

/// Input keys drawn with good odds of a valid contrast or task.
fn input_value(name: &str, kind: &Value, r: &mut Rng, scratch: &Scratch) -> String {
    if !r.calm() && r.chance(6) {
        return value_of(kind, r, scratch, name);
    }
    match name {
        "prompt" => r.pick(&["When Mary and John went to the store, John gave a drink to", "The cat sat on the", "a"]).to_string(),
        "correct" => r.pick(&[" Mary", " mat", "Mary"]).to_string(),
        "incorrect" => r.pick(&[" John", " dog", " Mary"]).to_string(),
        "corrupted" => r.pick(&["When John and Mary went to the store, Mary gave a drink to", "short"]).to_string(),
        "task" => r.pick(&["ioi", "arithmetic", "induction", "greater-than", "mcqa", "docstring", "nope"]).to_string(),
        "n" => r.pick(&["2", "4", "0", "100000000"]).to_string(),
        "prompts" => scratch.input(r),
        _ => value_of(kind, r, scratch, name),
    }
}

fn flag(name: &str) -> String {
    format!("--{}", name.replace('_', "-"))
}

/// One case's arguments, and whether `--json` was given as the flag (it may also be a value).
fn arguments(methods: &[Value], r: &mut Rng, scratch: &Scratch) -> (Vec<String>, bool) {
    let m = r.pick(methods);
    let name = m["name"].as_str().unwrap();
    let mut args = vec![name.to_string()];
    let model = fixtures().join("tiny-llama").to_str().unwrap().to_string();
    args.extend(["--model".into(), if !r.calm() && r.chance(30) { hostile_text(r) } else { model.clone() }]);
    let needs = &m["needs"];
    if needs["sae"] == true {
        args.extend(["--sae".into(), fixtures().join(r.pick(&["sae/standard", "sae/transcoder", "transcoders/tiny-llama"])).to_str().unwrap().to_string()]);
    }
    if needs["transcoders"] == true {
        args.extend(["--transcoders".into(), fixtures().join("transcoders/tiny-llama").to_str().unwrap().to_string()]);
    }
    if needs["model_b"] == true {
        args.extend(["--model-b".into(), fixtures().join(r.pick(&["tiny-llama-tied", "tiny-gpt2"])).to_str().unwrap().to_string()]);
    }
    let inputs = m["input_fields"].as_array().unwrap();
    if r.calm() {
        // A plausible input: the contrast when the method takes one, else a small task set.
        let keys: Vec<&str> = inputs.iter().map(|f| f["name"].as_str().unwrap()).collect();
        if keys.contains(&"correct") && (!keys.contains(&"task") || r.below(3) != 0) {
            args.extend(["--prompt", "When Mary and John went to the store, John gave a drink to", "--correct", " Mary", "--incorrect", " John"].map(String::from));
        } else if keys.contains(&"task") {
            args.extend(["--task".to_string(), r.pick(&["ioi", "induction", "greater-than", "arithmetic"]).to_string(), "--n".into(), r.pick(&["2", "3", "4"]).to_string()]);
        } else if keys.contains(&"prompt") {
            args.extend(["--prompt", "When Mary and John went to the store, John gave a drink to"].map(String::from));
        }
    } else {
        for f in inputs {
            let key = f["name"].as_str().unwrap();
            let usual = matches!(key, "prompt" | "correct" | "incorrect");
            if (usual && !r.chance(8)) || r.chance(5) {
                args.extend([flag(key), input_value(key, &f["kind"], r, scratch)]);
            }
        }
    }
    let options = m["options"].as_array().unwrap();
    let mut chosen: Vec<&str> = Vec::new();
    for _ in 0..r.below(if r.calm() { 3 } else { 4 }) {
        let f = r.pick(options);
        let key = f["name"].as_str().unwrap();
        if r.calm() && chosen.contains(&key) {
            continue;
        }
        chosen.push(key);
        args.extend([flag(key), value_of(&f["kind"], r, scratch, key)]);
    }
    let json = r.chance(2);
    if json {
        args.push("--json".into());
    }
    if (m["plots"] == true || !r.calm()) && r.chance(6) {
        let ext = *r.pick(&["svg", "png", "txt"]);
        args.extend(["--plot".into(), scratch.output(r, ext)]);
    }
    if !r.calm() && r.chance(20) {
        args.push(hostile_text(r));
    }
    (args, json)
}

/// Runs one case: `Err` names a broken promise.
fn run(args: &[String], json: bool, dir: &Path) -> Result<(i32, String), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_glassbox")).args(args).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Both pipes drained while it runs (a large result would block on a full pipe).
    let drain = |mut p: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = p.read_to_end(&mut v);
            v
        })
    };
    let (out_reader, err_reader) = (drain(Box::new(child.stdout.take().unwrap())), drain(Box::new(child.stderr.take().unwrap())));
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(CASE_SECONDS) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("ran longer than {CASE_SECONDS} s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out_bytes, err_bytes) = (out_reader.join().unwrap(), err_reader.join().unwrap());
    let (stdout, stderr) = (String::from_utf8_lossy(&out_bytes), String::from_utf8_lossy(&err_bytes));
    let Some(code) = status.code() else { return Err(format!("killed by a signal: {status:?}")) };
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        return Err(format!("panicked: {}", stderr.chars().take(600).collect::<String>()));
    }
    match code {
        0 => {
            if json {
                // A bare NaN or Infinity is not JSON, so it fails here too (a prompt "NaN" is a
                // string and fine).
                serde_json::from_str::<Value>(&stdout).map_err(|e| format!("--json printed no JSON ({e}): {}", stdout.chars().take(300).collect::<String>()))?;
            } else if stdout.trim().is_empty() && !args.iter().any(|a| a == "--plot") {
                return Err("exit 0 and printed nothing".into());
            }
        }
        1 | 2 => {
            let msg = stderr.trim();
            if msg.is_empty() || msg.len() > 8000 || msg.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r' | '\u{1b}')) {
                return Err(format!("exit {code} with an unclear message ({} bytes): {:?}", msg.len(), msg.chars().take(400).collect::<String>()));
            }
        }
        c => return Err(format!("exit status {c}: {}", stderr.chars().take(400).collect::<String>())),
    }
    Ok((code, stderr.lines().next().unwrap_or("").chars().take(90).collect()))
}

#[test]
fn random_arguments_from_the_schema_exit_cleanly() {
    let n: u64 = std::env::var("CLI_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("CLI_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let schema = Command::new(env!("CARGO_BIN_EXE_glassbox")).args(["methods", "--json"]).output().unwrap();
    let methods: Vec<Value> = serde_json::from_slice(&schema.stdout).unwrap();
    let scratch = Scratch::new();
    let t0 = Instant::now();
    let mut failures = Vec::new();
    let mut messages: std::collections::HashMap<String, usize> = Default::default();
    let mut by_exit: std::collections::BTreeMap<(String, i32), usize> = Default::default();
    for i in 0..n {
        let mut r = Rng(glassbox::rng::Rng::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93)), i % 2 == 0);
        let (args, json) = arguments(&methods, &mut r, &scratch);
        match run(&args, json, &scratch.dir) {
            Ok((code, first)) => {
                *by_exit.entry((args[0].clone(), code)).or_default() += 1;
                if code != 0 {
                    *messages.entry(first).or_default() += 1;
                }
            }
            Err(e) => {
                let shown: Vec<String> = args.iter().map(|a| if a.len() > 60 { format!("{}…({} bytes)", &a[..a.char_indices().nth(40).map_or(a.len(), |(j, _)| j)], a.len()) } else { a.clone() }).collect();
                failures.push(format!("case {i}: glassbox {shown:?}: {e}"));
            }
        }
    }
    let mut per_method: std::collections::BTreeMap<&str, [usize; 3]> = Default::default();
    for ((m, code), k) in &by_exit {
        per_method.entry(m.as_str()).or_default()[(*code as usize).min(2)] += k;
    }
    println!("cli fuzz: {n} cases in {:.1} s (seed {seed}); per method [exit 0, exit 1, exit 2]:", t0.elapsed().as_secs_f64());
    for (m, c) in &per_method {
        println!("  {m:<22} {c:?}");
    }
    let mut common: Vec<(&String, &usize)> = messages.iter().collect();
    common.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!("  the commonest refusals:");
    for (m, k) in common.iter().take(8) {
        println!("  {k:>5}  {m}");
    }
    assert!(failures.is_empty(), "{} of {n} cases broke a promise:\n{}", failures.len(), failures.join("\n"));
}
