//! A deterministic mutation fuzzer over every file glassbox reads, run by `cargo test`.
//!
//! Each case takes a small valid input and damages one part of it the way a bad download, a
//! hostile file or a careless edit would, then reads it with the real reader and uses what it
//! read (`models.rs`, `formats.rs`):
//! - models: a Hugging Face folder of every family, a TransformerLens checkpoint, a tracr
//!   model (config.json, safetensors header and values, tokenizer.json), and GGUF files of
//!   every GGUF mapping (bytes, metadata values, tensor shapes, values and names) — loaded,
//!   then run forward with and without every hook cached;
//! - SAE folders (SAELens `cfg.json` + safetensors of every architecture, Gemma Scope `.npz`:
//!   zip structure and `.npy` headers) — loaded, then encoding and decoding a batch;
//! - transcoder sets (`config.yaml`, each layer's file) — loaded and checked against the model;
//! - Parquet results of a dataset run (bytes of the file and its footer, the parts of an
//!   unfinished run and their `settings.json`) — summarized, read back, and resumed;
//! - JSONL prompt sets (values, bytes, lines) — read as a dataset run's input and as a
//!   method's `--prompts`, each contrast tokenized and checked.
//!
//! Every case must end in finite numbers or in an error whose message is printable text; a
//! panic fails the run, and so does a case that runs longer than `CASE_SECONDS` (a watchdog
//! aborts the process naming the case) or allocates more than `MEMORY_BUDGET` bytes at once
//! (the allocator refuses, naming the case). The output counts cases per target.
//!
//! `FUZZ_CASES=N` sets the number of cases (default 3000), `FUZZ_SEED=S` the seed (default 0),
//! `FUZZ_ONLY=I` runs case I alone and prints what it did.

#[path = "../common/mod.rs"]
mod common;
mod formats;
mod models;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;
use candle_core::{Device, Tensor};
use common::GgufParts;

const MEMORY_BUDGET: usize = 2 << 30;
const CASE_SECONDS: u64 = 30;

// ---- the budgeted allocator ----

static LIVE: AtomicUsize = AtomicUsize::new(0);
static CASE: AtomicU64 = AtomicU64::new(u64::MAX);
static CASE_STARTED_MS: AtomicU64 = AtomicU64::new(0);

struct Budget;

/// Writes "fuzz case N: what" to stderr without allocating (for the allocator and the watchdog).
fn report(what: &str) {
    let mut buf = [0u8; 128];
    let mut at = 0;
    let mut put = |b: &[u8]| {
        let n = b.len().min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&b[..n]);
        at += n;
    };
    put(b"\nfuzz case ");
    let case = CASE.load(Relaxed);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut c = case;
    loop {
        i -= 1;
        digits[i] = b'0' + (c % 10) as u8;
        c /= 10;
        if c == 0 {
            break;
        }
    }
    put(&digits[i..]);
    put(b": ");
    put(what.as_bytes());
    put(b" (rerun it alone with FUZZ_ONLY)\n");
    let _ = std::io::stderr().write_all(&buf[..at]);
}

// SAFETY: forwards every call to the system allocator unchanged; it only refuses (returns
// null, which Rust turns into an allocation-failure abort) requests beyond the budget.
unsafe impl GlobalAlloc for Budget {
    // # Safety: each method's contract is `GlobalAlloc`'s, passed on to `System` unchanged.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if LIVE.load(Relaxed) + layout.size() > MEMORY_BUDGET {
            report("allocated beyond the memory budget");
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout goes to the system allocator as it is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && LIVE.load(Relaxed) + (new_size - layout.size()) > MEMORY_BUDGET {
            report("allocated beyond the memory budget");
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`; `ptr` came from this allocator with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            LIVE.fetch_add(new_size, Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Budget = Budget;

// ---- a small deterministic generator ----

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D))
    }
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const INTERESTING_U64: &[u64] = &[0, 1, 2, 3, 7, 31, 32, 33, 255, 256, 4096, 65535, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40, 1 << 62, u64::MAX - 1, u64::MAX];

fn interesting_f64(r: &mut Rng) -> f64 {
    *r.pick(&[0.0, -0.0, -1.0, 1e-300, 1e300, -1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.5, 1e6, f64::MIN_POSITIVE])
}

// ---- mutations ----

/// Damages `bytes` in place, mostly within `hot` (the header region) where lengths and
/// counts live. Returns what it did.
fn mutate_bytes(bytes: &mut Vec<u8>, hot: usize, r: &mut Rng) -> String {
    mutate_bytes_in(bytes, 0..hot, r)
}

/// Damages `bytes` in place, mostly within `hot` (a header or a footer). Returns what it did.
fn mutate_bytes_in(bytes: &mut Vec<u8>, hot: std::ops::Range<usize>, r: &mut Rng) -> String {
    if bytes.is_empty() {
        return "empty".into();
    }
    let lo = hot.start.min(bytes.len() - 1);
    let hi = hot.end.clamp(lo + 1, bytes.len());
    let at = if r.below(10) < 7 { lo + r.below(hi - lo) } else { r.below(bytes.len()) };
    match r.below(7) {
        0 => {
            let bit = r.below(8);
            bytes[at] ^= 1 << bit;
            format!("flip bit {bit} at {at}")
        }
        1 => {
            let v = *r.pick(&[0u8, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\\']);
            bytes[at] = v;
            format!("byte {v:#x} at {at}")
        }
        2 | 3 => {
            let v = *r.pick(INTERESTING_U64);
            let width = if r.below(2) == 0 { 4 } else { 8 };
            let end = (at + width).min(bytes.len());
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            format!("u{} {v} at {at}", width * 8)
        }
        4 => {
            let keep = r.below(bytes.len());
            bytes.truncate(keep);
            format!("truncate to {keep}")
        }
        5 => {
            let len = r.below(64).min(bytes.len() - at);
            let chunk = bytes[at..at + len].to_vec();
            let to = r.below(bytes.len());
            bytes.splice(to..to, chunk);
            format!("insert {len} bytes from {at} at {to}")
        }
        _ => {
            let len = r.below(64).min(bytes.len() - at);
            bytes.drain(at..at + len);
            format!("delete {len} bytes at {at}")
        }
    }
}

fn random_value(r: &mut Rng) -> Value {
    match r.below(9) {
        0 => Value::U32(*r.pick(INTERESTING_U64) as u32),
        1 => Value::U64(*r.pick(INTERESTING_U64)),
        2 => Value::I32(-(r.below(1000) as i32) - 1),
        3 => Value::F32(interesting_f64(r) as f32),
        4 => Value::F64(interesting_f64(r)),
        5 => Value::Bool(r.below(2) == 0),
        6 => Value::String(r.pick(&["", "gpt2", "llama", "qwen2", "\u{1b}[31mred", "x".repeat(300).as_str()]).to_string()),
        7 => Value::Array(vec![]),
        _ => Value::Array((0..r.below(4)).map(|i| Value::U32(i as u32)).collect()),
    }
}

/// Damages GGUF parts structurally: a metadata value, a tensor's shape or values, a tensor
/// removed or renamed.
fn mutate_gguf_parts(p: &mut GgufParts, r: &mut Rng) -> String {
    match r.below(5) {
        0 | 1 => {
            let keys: Vec<String> = p.meta.iter().map(|(k, _)| k.clone()).chain(["general.alignment".to_string(), "llama.rope.dimension_count".to_string(), "llama.attention.key_length".to_string()]).collect();
            let key = r.pick(&keys).clone();
            if r.below(5) == 0 {
                p.meta.retain(|(k, _)| *k != key);
                return format!("drop {key}");
            }
            let v = random_value(r);
            let what = format!("{key} = {v:?}");
            p.set(&key, v);
            what.chars().take(120).collect()
        }
        2 => {
            let i = r.below(p.tensors.len());
            let (name, t) = &mut p.tensors[i];
            let n = t.elem_count();
            let dims: Vec<usize> = match r.below(3) {
                0 => vec![n],
                1 => t.dims().iter().rev().copied().collect(),
                _ => vec![1, n],
            };
            *t = t.reshape(dims.clone()).unwrap();
            format!("reshape {name} to {dims:?}")
        }
        3 => {
            let i = r.below(p.tensors.len());
            let (name, t) = &mut p.tensors[i];
            let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let at = r.below(v.len());
            let x = *r.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 0.0]);
            v[at] = x;
            *t = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
            format!("{name}[{at}] = {x}")
        }
        _ => {
            let i = r.below(p.tensors.len());
            if r.below(2) == 0 {
                let (name, _) = p.tensors.remove(i);
                format!("remove {name}")
            } else {
                let j = r.below(p.tensors.len());
                let other = p.tensors[j].0.clone();
                let old = std::mem::replace(&mut p.tensors[i].0, other.clone());
                format!("rename {old} to {other}")
            }
        }
    }
}

fn random_json(r: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match r.below(14) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(*r.pick(INTERESTING_U64)),
        3 => json!(1e300),
        4 => json!(-0.5),
        5 => json!(0.5),
        6 => json!("silu"),
        7 => json!(""),
        8 => serde_json::Value::Null,
        9 => json!(true),
        10 => json!([]),
        11 => json!({}),
        12 => json!([["global", "local"], 1u64 << 40]),
        _ => json!({"rope_type": "llama3", "factor": 8.0}),
    }
}

/// Damages a JSON document: a value of a top-level or nested key replaced, a key dropped, or
/// a known key added.
fn mutate_json(v: &mut serde_json::Value, r: &mut Rng) -> String {
    let extra = ["sliding_window", "layer_types", "head_dim", "rope_scaling", "tie_word_embeddings", "attention_types", "num_key_value_heads", "max_position_embeddings", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "use_sliding_window", "partial_rotary_factor", "rotary_pct", "hidden_act", "hidden_activation", "model_type", "word_embed_proj_dim", "num_local_experts", "num_experts_per_tok"];
    // Descend into nested objects (tokenizer.json's `model`, `vocab`) now and then.
    let mut cur = v;
    let mut path = String::new();
    while r.below(3) == 0 {
        let Some(obj) = cur.as_object() else { break };
        let nested: Vec<String> = obj.iter().filter(|(_, x)| x.is_object()).map(|(k, _)| k.clone()).collect();
        if nested.is_empty() {
            break;
        }
        let k = r.pick(&nested).clone();
        path.push_str(&k);
        path.push('.');
        cur = cur.get_mut(&k).unwrap();
    }
    let Some(obj) = cur.as_object_mut() else { return "not an object".into() };
    let mut keys: Vec<String> = obj.keys().take(500).cloned().collect();
    if path.is_empty() {
        keys.extend(extra.iter().map(|s| s.to_string()));
    }
    if keys.is_empty() {
        return "empty object".into();
    }
    let key = r.pick(&keys).clone();
    if r.below(6) == 0 {
        obj.remove(&key);
        return format!("drop {path}{key}");
    }
    let val = random_json(r);
    let what = format!("{path}{key} = {val}");
    obj.insert(key, val);
    what
}

/// What one case checks: `Ok(true)` when the damaged input was read and used to finite
/// numbers, `Ok(false)` for a clear error, `Err` for a broken promise (a bad message, NaN).
type Check = fn(&Path) -> Result<bool, String>;

/// One damaged input: where it is, what was done to it, its target's name and its check.
struct Case {
    path: PathBuf,
    what: String,
    kind: &'static str,
    check: Check,
}

#[derive(Default)]
struct Tally {
    cases: usize,
    used: usize,
    errors: usize,
    failures: Vec<String>,
}

/// An error is clear when its message is printable text of a readable length.
fn check_message(e: &dyn std::fmt::Display) -> Result<(), String> {
    let m = e.to_string();
    if m.is_empty() || m.len() > 4000 || m.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("unclear error message: {m:?}"));
    }
    Ok(())
}

/// `Ok(false)` for a clear error, `Err` for an unclear one: for `?` on a reader's result.
fn clear(e: impl std::fmt::Display) -> Result<bool, String> {
    check_message(&e).map(|()| false)
}

/// Every value finite, or the broken promise named.
fn finite(values: &[f32], what: &str) -> Result<(), String> {
    match values.iter().all(|x| x.is_finite()) {
        true => Ok(()),
        false => Err(format!("{what} returned non-finite values")),
    }
}

/// Builds case `i`'s damaged input under `dir`.
fn build_case(i: u64, seed: u64, dir: &Path) -> Case {
    let mut r = Rng::new(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    match r.below(10) {
        0 | 1 => models::gguf(&mut r, dir),
        2..=4 => models::folder(&mut r, dir),
        5 => formats::sae(&mut r, dir),
        6 => formats::transcoders(&mut r, dir),
        7 => formats::parquet(&mut r, dir),
        _ => formats::jsonl(&mut r, dir),
    }
}

fn main() {
    let n: u64 = std::env::var("FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let only: Option<u64> = std::env::var("FUZZ_ONLY").ok().and_then(|s| s.parse().ok());
    // `cargo test -- <filter>` and friends: run only when unfiltered or asked for by name.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if !args.is_empty() && !args.iter().any(|a| "fuzz_loaders".contains(a.as_str())) {
        return;
    }
    // Quiet panics: each is caught and counted.
    std::panic::set_hook(Box::new(|_| {}));
    let t0 = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let started = CASE_STARTED_MS.load(Relaxed);
        let now = t0.elapsed().as_millis() as u64;
        if started > 0 && now.saturating_sub(started) > CASE_SECONDS * 1000 {
            report("ran longer than the time budget");
            std::process::abort();
        }
    });

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-case");
    let mut tallies: std::collections::BTreeMap<&str, Tally> = Default::default();
    let cases: Vec<u64> = match only {
        Some(i) => vec![i],
        None => (0..n).collect(),
    };
    for &i in &cases {
        let Case { path, what, kind, check } = build_case(i, seed, &dir);
        CASE.store(i, Relaxed);
        CASE_STARTED_MS.store(t0.elapsed().as_millis().max(1) as u64, Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| check(&path)));
        CASE_STARTED_MS.store(0, Relaxed);
        let t = tallies.entry(kind).or_default();
        t.cases += 1;
        match outcome {
            Ok(Ok(true)) => t.used += 1,
            Ok(Ok(false)) => t.errors += 1,
            Ok(Err(broken)) => t.failures.push(format!("case {i} ({what}): {broken}")),
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                t.failures.push(format!("case {i} ({what}): panicked: {msg}"));
            }
        }
        if only.is_some() {
            eprintln!("case {i} ({kind}): {what}");
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("\nfuzz_loaders: {} cases in {secs:.1} s (seed {seed})", cases.len());
    println!("{:<16} {:>7} {:>9} {:>13} {:>9}", "target", "cases", "read+used", "clear error", "failures");
    let mut failures = Vec::new();
    for (kind, t) in &tallies {
        println!("{kind:<16} {:>7} {:>9} {:>13} {:>9}", t.cases, t.used, t.errors, t.failures.len());
        failures.extend(t.failures.iter().cloned());
    }
    if !failures.is_empty() {
        for f in failures.iter().take(40) {
            let cut: String = f.chars().take(1500).collect();
            eprintln!("{cut}");
        }
        eprintln!("{} of {} fuzz cases broke a promise", failures.len(), cases.len());
        std::process::exit(1);
    }
    println!("test fuzz_loaders ... ok");
}
