//! Damaged files other than models: SAE folders (SAELens, Gemma Scope `.npz`), transcoder
//! sets, Parquet results and unfinished runs, JSONL prompt sets.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use glassbox::batch::summary::{summarize, SummaryOptions};
use glassbox::batch::{self, table, BatchOptions, Item, RunSpec, Settings};
use glassbox::methods::catalog::{resolve_input, Context, InputKind, InputSpec};
use glassbox::sae::set::TranscoderSet;
use glassbox::sae::Sae;
use glassbox::{HookPoint, Model};

use crate::common::{fixtures, ioi_items};
use crate::{clear, finite, mutate_bytes, mutate_bytes_in, mutate_json, Case, Rng};

/// Every SAELens architecture and format among the fixtures.
const SAE_FOLDERS: &[&str] = &[
    "batchtopk",
    "constant_norm_rescale",
    "gated",
    "hook_z",
    "jumprelu",
    "jumprelu_transcoder",
    "layernorm",
    "old_standard",
    "old_topk",
    "skip_transcoder",
    "standard",
    "standard_nobdec",
    "topk",
    "topk_rescale",
    "transcoder",
];

fn copy_folder(from: &Path, to: &Path, skip: &[&str]) {
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap();
        if !skip.contains(&name) {
            std::fs::copy(&p, to.join(name)).unwrap();
        }
    }
}

/// The end of a safetensors header (its lengths and offsets live before it).
fn safetensors_hot(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Damages a JSON file's values (three times in four) or its bytes.
fn damage_json(path: &Path, r: &mut Rng) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let what = if r.below(4) != 0 {
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let what = mutate_json(&mut v, r);
        bytes = serde_json::to_vec(&v).unwrap();
        what
    } else {
        let n = bytes.len();
        mutate_bytes(&mut bytes, n, r)
    };
    std::fs::write(path, bytes).unwrap();
    what
}

fn damage_safetensors(path: &Path, r: &mut Rng) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let hot = safetensors_hot(&bytes);
    let what = (0..1 + r.below(3)).map(|_| mutate_bytes(&mut bytes, hot, r)).collect::<Vec<_>>().join(", ");
    std::fs::write(path, bytes).unwrap();
    what
}

/// Damages a stored `.npz`: the `.npy` headers' text (dtype, order, shape), or the zip's bytes.
fn damage_npz(path: &Path, r: &mut Rng) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let at_all = |needle: &[u8]| -> Vec<usize> { bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect() };
    let what = match r.below(4) {
        0 => {
            let spots = at_all(b"'descr': '");
            let at = *r.pick(&spots) + 10;
            let d = *r.pick(&[b"<f8", b">f4", b"<i4", b"|b1", b"<f2", b"<c8", b"O\0\0"]);
            bytes[at..at + 3].copy_from_slice(d);
            format!("descr {} at {at}", String::from_utf8_lossy(d))
        }
        1 => {
            let spots = at_all(b"'fortran_order': ");
            let at = *r.pick(&spots) + 17;
            bytes[at..at + 5].copy_from_slice(b"True,");
            format!("fortran order at {at}")
        }
        2 => {
            // A shape's digits replaced by others of the same or another length.
            let spots = at_all(b"'shape': (");
            let at = *r.pick(&spots) + 10;
            let end = at + bytes[at..].iter().position(|&b| b == b')').unwrap_or(0);
            let new = r.pick(&["0, 0", "99999999999, 99999999999", "18446744073709551615,", "-1, 4", "", "4, 4, 4, 4", "1,", "x"]).as_bytes().to_vec();
            let old = String::from_utf8_lossy(&bytes[at..end]).into_owned();
            bytes.splice(at..end, new.iter().copied());
            format!("shape ({old}) to ({})", String::from_utf8_lossy(&new))
        }
        _ => {
            let n = bytes.len();
            // The local headers (sizes, name lengths) at each entry's start, the central
            // directory at the end.
            let hot = if r.below(2) == 0 { 0..n.min(160) } else { n.saturating_sub(200)..n };
            (0..1 + r.below(3)).map(|_| mutate_bytes_in(&mut bytes, hot.clone(), r)).collect::<Vec<_>>().join(", ")
        }
    };
    std::fs::write(path, bytes).unwrap();
    what
}

/// An SAE folder with its `cfg.json`, weights or `.npz` damaged.
pub fn sae(r: &mut Rng, dir: &Path) -> Case {
    if r.below(4) == 0 {
        copy_folder(&fixtures().join("sae/gemma_scope"), dir, &["expected.safetensors"]);
        let what = damage_npz(&dir.join("params.npz"), r);
        return Case { path: dir.to_path_buf(), what: format!("gemma_scope params.npz: {what}"), kind: "sae-npz", check: run_gemma_scope };
    }
    let name = *r.pick(SAE_FOLDERS);
    copy_folder(&fixtures().join("sae").join(name), dir, &["expected.safetensors"]);
    let (what, kind) = match r.below(2) {
        0 => (damage_json(&dir.join("cfg.json"), r), "sae-cfg"),
        _ => (damage_safetensors(&dir.join("sae_weights.safetensors"), r), "sae-safetensors"),
    };
    Case { path: dir.to_path_buf(), what: format!("sae {name}: {what}"), kind, check: run_sae }
}

fn run_sae(path: &Path) -> Result<bool, String> {
    match Sae::load(path, None) {
        Ok(sae) => use_sae(&sae),
        Err(e) => clear(e),
    }
}

fn run_gemma_scope(path: &Path) -> Result<bool, String> {
    match Sae::load(path, Some(HookPoint::ResidPost(0))) {
        Ok(sae) => use_sae(&sae),
        Err(e) => clear(e),
    }
}

/// Encodes and decodes three rows of varied values.
fn use_sae(sae: &Sae) -> Result<bool, String> {
    let d = sae.cfg.d_in;
    if d > 1 << 16 {
        return Err(format!("an SAE of input width {d} loaded from a fixture of width at most 64"));
    }
    let x = Tensor::from_vec((0..3 * d).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<f32>>(), (3, d), &Device::Cpu).map_err(|e| e.to_string())?;
    let e = match sae.encode(&x) {
        Ok(e) => e,
        Err(e) => return clear(e),
    };
    match sae.output(&x, &e) {
        Ok(y) => finite(&y.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?, "an SAE's output")?,
        Err(e) => return clear(e),
    }
    Ok(true)
}

fn tiny_llama() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&fixtures().join("tiny-llama")).unwrap())
}

/// A transcoder set with its `config.yaml` or one layer's file damaged.
pub fn transcoders(r: &mut Rng, dir: &Path) -> Case {
    copy_folder(&fixtures().join("transcoders/tiny-llama"), dir, &["HOW.txt"]);
    let (what, kind) = if r.below(2) == 0 {
        let path = dir.join("config.yaml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        let what = if r.below(2) == 0 {
            // One line's value replaced, or the line dropped or repeated.
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let i = r.below(lines.len());
            let what = match r.below(4) {
                0 => format!("drop line {}", lines.remove(i)),
                1 => {
                    lines.insert(i, lines[i].clone());
                    format!("repeat line {}", lines[i])
                }
                _ => {
                    let key = lines[i].split(':').next().unwrap_or("").to_string();
                    let v = *r.pick(&["", "null", "[]", "{}", "-1", "1e400", "\"\u{0}\"", "layer_9.safetensors", "../../etc/passwd", "\"tiny-gpt2\"", "blocks.99.hook_resid_pre", "hook_mlp_out", "[a, b", "&anchor *anchor"]);
                    lines[i] = if lines[i].trim_start().starts_with('-') { format!("  - {v}") } else { format!("{key}: {v}") };
                    format!("line {i} = {}", lines[i])
                }
            };
            text = lines.join("\n");
            what
        } else {
            let mut b = text.into_bytes();
            let n = b.len();
            let what = mutate_bytes(&mut b, n, r);
            text = String::from_utf8_lossy(&b).into_owned();
            what
        };
        std::fs::write(&path, text).unwrap();
        (what, "transcoders-yaml")
    } else {
        let layer = r.below(2);
        (format!("layer_{layer}: {}", damage_safetensors(&dir.join(format!("layer_{layer}.safetensors")), r)), "transcoders-layer")
    };
    Case { path: dir.to_path_buf(), what, kind, check: run_transcoders }
}

fn run_transcoders(path: &Path) -> Result<bool, String> {
    let set = match TranscoderSet::load(path) {
        Ok(s) => s,
        Err(e) => return clear(e),
    };
    if let Err(e) = set.check(tiny_llama()) {
        return clear(e);
    }
    for t in &set.transcoders {
        if !use_sae(t)? {
            return Ok(false);
        }
    }
    Ok(true)
}

// ---- dataset runs ----

/// A finished dataset run of one method on tiny-llama: its items, options, settings and file.
struct Template {
    items: Vec<Item>,
    options: BatchOptions,
    settings: Settings,
    out: PathBuf,
}

const TEMPLATE_METHODS: &[&str] = &["attribution", "analyze"];

/// The runs every Parquet case starts from, made once.
fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| {
        let model = tiny_llama();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-templates");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        TEMPLATE_METHODS
            .iter()
            .map(|&method| {
                let items = ioi_items(model, 6);
                let options = BatchOptions { method: method.into(), batch_size: 4, row_group: 3, ..Default::default() };
                let entry = batch::method(method).unwrap();
                let settings = Settings::new(model, entry, &serde_json::Value::Null, None).unwrap();
                let out = root.join(format!("{method}.parquet"));
                let (prepared, bad) = batch::prepare(model, items.clone(), entry);
                assert!(bad.is_empty(), "{bad:?}");
                let spec = RunSpec { options: &options, settings: &settings, out: &out, resume: false };
                batch::run(&Context::new(model), &prepared, &spec, &AtomicBool::new(false), &mut |_| {}).unwrap();
                Template { items, options, settings, out }
            })
            .collect()
    })
}

/// Which template a case was made from, kept beside it.
fn template_of(dir: &Path) -> Result<&'static Template, String> {
    let i: usize = std::fs::read_to_string(dir.join("template")).map_err(|e| e.to_string())?.trim().parse().map_err(|e| format!("{e}"))?;
    templates().get(i).ok_or_else(|| "no such template".to_string())
}

/// Damages a Parquet file: its footer (the schema, row groups, offsets) or any byte.
fn damage_parquet(path: &Path, r: &mut Rng) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let hot = if r.below(3) != 0 { n.saturating_sub(footer + 8)..n } else { 0..n };
    let what = (0..1 + r.below(3)).map(|_| mutate_bytes_in(&mut bytes, hot.clone(), r)).collect::<Vec<_>>().join(", ");
    std::fs::write(path, bytes).unwrap();
    what
}

/// A finished result damaged (for `batch summarize`), or an unfinished run's part or
/// settings damaged (for `--resume`).
pub fn parquet(r: &mut Rng, dir: &Path) -> Case {
    let t = r.below(TEMPLATE_METHODS.len());
    let template = &templates()[t];
    std::fs::write(dir.join("template"), t.to_string()).unwrap();
    if r.below(2) == 0 {
        let path = dir.join("out.parquet");
        std::fs::copy(&template.out, &path).unwrap();
        let what = damage_parquet(&path, r);
        return Case { path, what: format!("{} result: {what}", TEMPLATE_METHODS[t]), kind: "parquet-result", check: run_summary };
    }
    let parts = batch::parts_dir(&dir.join("out.parquet"));
    std::fs::create_dir_all(&parts).unwrap();
    std::fs::copy(&template.out, parts.join("part-000000.parquet")).unwrap();
    std::fs::write(parts.join("settings.json"), serde_json::to_vec(&template.settings).unwrap()).unwrap();
    let what = if r.below(3) == 0 { format!("settings.json: {}", damage_json(&parts.join("settings.json"), r)) } else { format!("part 0: {}", damage_parquet(&parts.join("part-000000.parquet"), r)) };
    Case { path: dir.to_path_buf(), what: format!("{} unfinished run: {what}", TEMPLATE_METHODS[t]), kind: "parquet-resume", check: run_resume }
}

fn run_summary(path: &Path) -> Result<bool, String> {
    let summary = match summarize(path, &SummaryOptions { n_boot: 50, ..Default::default() }) {
        Ok(s) => s,
        Err(e) => return clear(e),
    };
    if let Err(e) = glassbox::finite::check_finite(&summary) {
        return Err(format!("a summary with non-finite figures: {e}"));
    }
    match table::read_file(path) {
        Ok(_) => Ok(true),
        Err(e) => clear(e),
    }
}

fn run_resume(dir: &Path) -> Result<bool, String> {
    let t = template_of(dir)?;
    let model = tiny_llama();
    let out = dir.join("out.parquet");
    let (prepared, _) = batch::prepare(model, t.items.clone(), batch::method(&t.options.method).unwrap());
    let spec = RunSpec { options: &t.options, settings: &t.settings, out: &out, resume: true };
    if let Err(e) = batch::run(&Context::new(model), &prepared, &spec, &AtomicBool::new(false), &mut |_| {}) {
        return clear(e);
    }
    match table::read_file(&out) {
        Ok((rows, _)) if rows.len() >= t.items.len() => Ok(true),
        Ok((rows, _)) => Err(format!("a resumed run of {} prompts finished with {} rows", t.items.len(), rows.len())),
        Err(e) => Err(format!("a resumed run finished but its result does not read back: {e}")),
    }
}

// ---- JSONL prompt sets ----

/// The prompt sets JSONL cases start from: a tracr model's and tiny-llama's IOI prompts.
fn jsonl_template(i: usize) -> (PathBuf, String) {
    match i {
        0 => (fixtures().join("tracr/reverse"), std::fs::read_to_string(fixtures().join("tracr/reverse/prompts.jsonl")).unwrap()),
        _ => {
            let lines: Vec<String> = ioi_items(tiny_llama(), 6)
                .into_iter()
                .map(|it| serde_json::json!({"id": it.id, "prompt": it.prompt, "correct": it.correct, "incorrect": it.incorrect, "corrupted": it.corrupted, "group": it.group}).to_string())
                .collect();
            (fixtures().join("tiny-llama"), lines.join("\n") + "\n")
        }
    }
}

/// A JSONL prompt set with one line's values, its bytes or its lines damaged.
pub fn jsonl(r: &mut Rng, dir: &Path) -> Case {
    let t = r.below(2);
    std::fs::write(dir.join("template"), t.to_string()).unwrap();
    let (_, text) = jsonl_template(t);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let i = r.below(lines.len());
    let what = match r.below(6) {
        0 | 1 => {
            let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
            let what = mutate_json(&mut v, r);
            lines[i] = v.to_string();
            format!("line {}: {what}", i + 1)
        }
        2 => {
            let mut b = lines[i].clone().into_bytes();
            let n = b.len();
            let what = mutate_bytes(&mut b, n, r);
            lines[i] = String::from_utf8_lossy(&b).into_owned();
            format!("line {}: {what}", i + 1)
        }
        3 => {
            let extra = r.pick(&["", "\u{feff}", "\r", "null", "[]", "{}", "   ", "{\"prompt\": \"\"}"]).to_string();
            lines.insert(i, extra.clone());
            format!("insert {extra:?} before line {}", i + 1)
        }
        4 => {
            let n = *r.pick(&[10_000usize, 1 << 20, 3 << 20]);
            let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
            let key = *r.pick(&["prompt", "correct", "id", "group", "corrupted"]);
            v[key] = serde_json::Value::String("a ".repeat(n / 2));
            lines[i] = v.to_string();
            format!("line {}: {key} of {n} bytes", i + 1)
        }
        _ => {
            let j = r.below(lines.len());
            let copy = lines[j].clone();
            lines.insert(i, copy);
            format!("line {} repeated", j + 1)
        }
    };
    let path = dir.join("prompts.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    Case { path, what, kind: "jsonl", check: run_jsonl }
}

/// Reads the set as a dataset run's input and as a method's prompt set, then runs a method
/// over up to four of its prompts.
fn run_jsonl(path: &Path) -> Result<bool, String> {
    let t: usize = std::fs::read_to_string(path.with_file_name("template")).map_err(|e| e.to_string())?.trim().parse().map_err(|e| format!("{e}"))?;
    let (model_dir, _) = jsonl_template(t);
    let model = match t {
        0 => Model::load(&model_dir).map_err(|e| e.to_string())?,
        _ => tiny_llama().clone(),
    };
    let items = match batch::read_jsonl(path) {
        Ok((items, _)) => items,
        Err(e) => return clear(e),
    };
    let spec = InputSpec { prompts: Some(path.to_str().unwrap().to_string()), ..Default::default() };
    if let Err(e) = resolve_input(&model, InputKind::Task, &spec, "evaluate") {
        return clear(e);
    }
    let entry = batch::method("attribution").unwrap();
    let (prepared, _) = batch::prepare(&model, items, entry);
    let group: Vec<&batch::Prepared> = prepared.iter().take(4).collect();
    if group.is_empty() {
        return Ok(false);
    }
    match batch::run_group(&Context::new(&model), entry, &serde_json::Value::Null, &group) {
        Ok(rows) => {
            for row in rows {
                if let Err(e) = row {
                    clear(e)?;
                }
            }
            Ok(true)
        }
        Err(e) => clear(e),
    }
}
