//! Dataset runs (`glassbox::batch`): rows equal to running each prompt alone, Parquet that
//! reads back, resumable parts, bad lines reported by number, and the summary's figures.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use glassbox::batch::summary::{summarize, SummaryOptions};
use glassbox::batch::{self, table, BatchOptions, Item, RunSpec, Settings};
use glassbox::methods::catalog::Context;
use glassbox::methods::analyze::analyze;
use glassbox::methods::attribution::{attribute, AttributionOptions};
use common::ioi_items;
use glassbox::Model;
use serde_json::{Map, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tiny() -> Model {
    Model::load(&fixtures().join("tiny-llama")).unwrap()
}

fn settings(method: &str) -> Settings {
    Settings { method: method.into(), options: Value::Null, model: "tiny-llama".into(), model_sha256: "0".repeat(64), sae: None, glassbox: "test".into() }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glassbox-batch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows_by_id(path: &Path) -> std::collections::BTreeMap<String, Map<String, Value>> {
    table::read_file(path).unwrap().0.into_iter().map(|r| (r["id"].as_str().unwrap().to_string(), r)).collect()
}

fn prepare(model: &Model, items: Vec<Item>, method: &str) -> (Vec<batch::Prepared>, Vec<batch::LineError>) {
    batch::prepare(model, items, batch::method(method).unwrap())
}

/// A run's settings, for `batch::run`.
fn spec<'a>(opts: &'a BatchOptions, settings: &'a Settings, out: &'a Path, resume: bool) -> RunSpec<'a> {
    RunSpec { options: opts, settings, out, resume }
}

fn run(model: &Model, items: Vec<Item>, opts: &BatchOptions, out: &Path, resume: bool) -> batch::RunReport {
    let (prepared, bad) = prepare(model, items, &opts.method);
    assert!(bad.is_empty(), "{bad:?}");
    batch::run(&Context::new(model), &prepared, &spec(opts, &settings(&opts.method), out, resume), &AtomicBool::new(false), &mut |_| {}).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: {a} against {b}");
}

#[test]
fn batched_attribution_over_256_prompts_equals_each_prompt_alone() {
    let model = tiny();
    let items = ioi_items(&model, 256);
    let dir = tmp("attr");
    let out = dir.join("r.parquet");
    let report = run(&model, items.clone(), &BatchOptions { method: "attribution".into(), batch_size: 32, row_group: 50, ..Default::default() }, &out, false);
    assert_eq!((report.rows, report.written, report.failed.len()), (256, 256, 0));
    assert!(!batch::parts_dir(&out).exists(), "a finished run leaves no parts");
    let rows = rows_by_id(&out);
    assert_eq!(rows.len(), 256);
    let (prepared, _) = prepare(&model, items, "attribution");
    for p in &prepared {
        let want = attribute(&model, p.input.contrast().unwrap(), &AttributionOptions::default()).unwrap();
        let row = &rows[&p.item.id];
        close(row["clean_ld"].as_f64().unwrap(), want.clean_ld as f64, "clean_ld");
        close(row["corrupted_ld"].as_f64().unwrap(), want.corrupted_ld as f64, "corrupted_ld");
        let scores = row["scores"].as_array().unwrap();
        for (l, layer) in want.scores.iter().enumerate() {
            for (h, &w) in layer.iter().enumerate() {
                close(scores[l][h].as_f64().unwrap(), w as f64, &format!("{} L{l}H{h}", p.item.id));
            }
        }
        assert_eq!(row["group"].as_str(), p.item.group.as_deref());
        assert_eq!(row["line"].as_i64(), Some(p.item.line as i64));
    }
    // Row groups as flushed: groups of 32 prompts, flushed at 50 rows or more: 4 of 64.
    let f = std::fs::File::open(&out).unwrap();
    use parquet::file::reader::FileReader;
    let r = parquet::file::reader::SerializedFileReader::new(f).unwrap();
    assert_eq!(r.metadata().file_metadata().num_rows(), 256);
    assert_eq!(r.metadata().num_row_groups(), 4);
}

#[test]
fn analyze_rows_equal_analyze_alone_and_the_summary_finds_the_circuit() {
    let model = tiny();
    let items = ioi_items(&model, 12);
    let dir = tmp("analyze");
    let out = dir.join("r.parquet");
    run(&model, items.clone(), &BatchOptions { method: "analyze".into(), batch_size: 4, row_group: 5, ..Default::default() }, &out, false);
    let rows = rows_by_id(&out);
    let (prepared, _) = prepare(&model, items, "analyze");
    let mut counts = std::collections::BTreeMap::new();
    for p in &prepared {
        let want = serde_json::to_value(analyze(&model, p.input.contrast().unwrap(), &Default::default()).unwrap()).unwrap();
        let row = &rows[&p.item.id];
        assert_eq!(row["circuit"], want["circuit"], "{}", p.item.id);
        assert_eq!(row["faithfulness"], want["faithfulness"], "{}", p.item.id);
        for h in want["circuit"].as_array().unwrap() {
            *counts.entry(h.to_string()).or_insert(0usize) += 1;
        }
    }
    let s = summarize(&out, &SummaryOptions { n_boot: 200, ..Default::default() }).unwrap();
    assert_eq!(s.method.as_deref(), Some("analyze"));
    assert_eq!(s.all.n, 12);
    // The set's circuit: the heads in at least half the circuits, counted here independently.
    let mut want: Vec<String> = counts.iter().filter(|(_, &c)| 2 * c >= 12).map(|(h, _)| h.clone()).collect();
    want.sort();
    let mut got: Vec<String> = s.all.circuit.iter().map(|h| serde_json::to_value(h).unwrap().to_string()).collect();
    got.sort();
    assert_eq!(got, want);
    // The mean clean LD and its interval.
    let mean = rows.values().map(|r| r["clean_ld"].as_f64().unwrap()).sum::<f64>() / 12.0;
    let ci = s.all.figures["clean_ld"];
    close(ci.mean as f64, mean, "mean clean_ld");
    assert!(ci.ci_lo <= ci.mean && ci.mean <= ci.ci_hi, "{ci:?}");
    // Groups: the templates, their sizes summing to the set.
    assert_eq!(s.groups.values().map(|g| g.n).sum::<usize>(), 12);
}

#[test]
fn a_resumed_run_adds_only_missing_ids() {
    let model = tiny();
    let items = ioi_items(&model, 30);
    let dir = tmp("resume");
    let (whole, part) = (dir.join("whole.parquet"), dir.join("part.parquet"));
    let opts = BatchOptions { method: "patch".into(), batch_size: 4, row_group: 4, ..Default::default() };
    run(&model, items.clone(), &opts, &whole, false);
    // The first 13 prompts, then all 30 with resume.
    run(&model, items[..13].to_vec(), &opts, &part, false);
    let report = run(&model, items.clone(), &opts, &part, true);
    assert_eq!((report.skipped, report.written, report.rows), (13, 17, 30));
    assert_eq!(rows_by_id(&whole), rows_by_id(&part));
    // A second resume has nothing to do.
    let again = run(&model, items, &opts, &part, true);
    assert_eq!((again.skipped, again.written, again.rows), (30, 0, 30));
    // Without --resume an existing output is refused, and other options refuse to resume.
    let (prepared, _) = prepare(&model, ioi_items(&model, 2), "patch");
    let e = batch::run(&Context::new(&model), &prepared, &spec(&opts, &settings("patch"), &part, false), &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let other = Settings { options: serde_json::json!({"metric": "logprob"}), ..settings("patch") };
    let e = batch::run(&Context::new(&model), &prepared, &spec(&opts, &other, &part, true), &AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("same method, options and model"), "{e}");
}

#[test]
fn a_stopped_run_leaves_a_valid_file_and_resumes() {
    let model = tiny();
    let items = ioi_items(&model, 20);
    let dir = tmp("stop");
    let out = dir.join("r.parquet");
    let opts = BatchOptions { method: "logit-lens".into(), batch_size: 3, row_group: 3, ..Default::default() };
    let (prepared, _) = prepare(&model, items.clone(), &opts.method);
    let stop = AtomicBool::new(false);
    let report = batch::run(&Context::new(&model), &prepared, &spec(&opts, &settings(&opts.method), &out, false), &stop, &mut |p| {
        if p.done >= 6 {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .unwrap();
    assert!(report.interrupted);
    assert_eq!(report.rows, 6);
    assert_eq!(rows_by_id(&out).len(), 6, "the stopped run's file reads");
    assert!(batch::parts_dir(&out).exists(), "its parts stay for --resume");
    let done = run(&model, items, &opts, &out, true);
    assert_eq!((done.rows, done.skipped, done.written), (20, 6, 14));
}

#[test]
fn bad_lines_are_reported_by_number_and_the_rest_run() {
    let model = tiny();
    let dir = tmp("bad");
    let input = dir.join("in.jsonl");
    let long = "word ".repeat(model.config().n_ctx + 10);
    let good = |id: &str| format!(r#"{{"id": "{id}", "prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John"}}"#);
    let lines = [
        good("a"),
        "{not json".to_string(),
        r#"{"id": "b", "prompt": "When Mary and John went", "correct": " Mary"}"#.to_string(),
        r#"{"id": "c", "prompt": "When Mary and John went", "correct": " Mary and", "incorrect": " John"}"#.to_string(),
        format!(r#"{{"id": "d", "prompt": "Mary John {long}", "correct": " Mary", "incorrect": " John"}}"#),
        String::new(),
        good("a"),
        "[1, 2]".to_string(),
        r#"{"id": 7, "prompt": "When Mary and John went to the store, John gave a drink to", "correct": " Mary", "incorrect": " John", "group": 3}"#.to_string(),
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let (items, mut bad) = batch::read_jsonl(&input).unwrap();
    let (prepared, unfit) = prepare(&model, items, "attribution");
    bad.extend(unfit);
    bad.sort_by_key(|e| e.line);
    let lines_out: Vec<usize> = bad.iter().map(|e| e.line).collect();
    assert_eq!(lines_out, vec![2, 3, 4, 5, 7, 8], "{bad:?}");
    for (e, needle) in bad.iter().zip(["not valid JSON", "missing field `incorrect`", "one token", "tokens", "earlier line", "not a JSON object"]) {
        assert!(e.message.contains(needle), "line {}: {} lacks {needle}", e.line, e.message);
    }
    assert_eq!(prepared.iter().map(|p| p.item.id.as_str()).collect::<Vec<_>>(), vec!["a", "7"]);
    assert_eq!(prepared[1].item.group.as_deref(), Some("3"));
}

#[test]
fn parquet_columns_round_trip() {
    let dir = tmp("table");
    let rows: Vec<Map<String, Value>> = vec![
        serde_json::from_str(r#"{"id": "x", "n": 3, "f": 0.5, "b": true, "s": "hi", "v": [1.5, 2.0], "m": [[1.0, 2.0], [3.0]], "o": {"k": [1, 2]}, "z": null, "e": []}"#).unwrap(),
        serde_json::from_str(r#"{"id": "y", "n": 4, "f": 2, "b": false, "s": null, "v": [], "m": [], "o": null, "z": null, "e": [[]]}"#).unwrap(),
    ];
    let cols = table::Columns::infer(&rows);
    assert_eq!(cols.0[0].0, "id");
    let path = dir.join("t.parquet");
    table::write_file(&path, &cols, &rows, &[("k".into(), "v".into())]).unwrap();
    let (back, kv) = table::read_file(&path).unwrap();
    assert!(kv.contains(&("k".to_string(), "v".to_string())));
    assert_eq!(back[0]["n"], 3);
    assert_eq!(back[1]["f"], 2.0);
    assert_eq!(back[0]["m"], serde_json::json!([[1.0, 2.0], [3.0]]));
    assert_eq!(back[1]["m"], serde_json::json!([]));
    assert_eq!(back[0]["o"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(back[1]["s"], Value::Null);
    assert_eq!(back[0]["v"], serde_json::json!([1.5, 2.0]));
    assert_eq!(table::read_columns(&path).unwrap(), cols);
    // A truncated file (a killed writer) is an error with the path, not a panic.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(table::read_file(&path).is_err());
}

#[test]
fn sae_attribute_rows_equal_the_sae_attribution_alone() {
    use glassbox::methods::sae_attribution::{sae_attribution, SaeAttributionOptions};
    let model = tiny();
    let sae = glassbox::sae::Sae::load(&fixtures().join("sae").join("standard"), None).unwrap();
    let items = ioi_items(&model, 6);
    let dir = tmp("sae");
    let out = dir.join("r.parquet");
    let opts = BatchOptions { method: "sae-attribute".into(), batch_size: 4, row_group: 4, ..Default::default() };
    let (prepared, bad) = prepare(&model, items, &opts.method);
    assert!(bad.is_empty());
    let report = batch::run(&Context { model: &model, sae: Some(&sae), model_b: None, transcoders: None }, &prepared, &spec(&opts, &settings(&opts.method), &out, false), &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!(report.rows, 6);
    let rows = rows_by_id(&out);
    for p in &prepared {
        let want = serde_json::to_value(sae_attribution(&model, &sae, p.input.prompt().unwrap(), &SaeAttributionOptions::default()).unwrap()).unwrap();
        assert_eq!(rows[&p.item.id]["top_features"], want["top_features"], "{}", p.item.id);
    }
    // Without an SAE each prompt fails with the reason, and the run still ends with a report.
    let out2 = dir.join("none.parquet");
    let r = batch::run(&Context::new(&model), &prepared, &spec(&opts, &settings(&opts.method), &out2, false), &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!((r.rows, r.failed.len()), (0, 6));
    assert!(r.failed[0].message.contains("needs an SAE"), "{}", r.failed[0].message);
}

#[test]
fn damaged_result_files_are_errors_not_crashes() {
    let model = tiny();
    let dir = tmp("damaged");
    let out = dir.join("r.parquet");
    run(&model, ioi_items(&model, 8), &BatchOptions { method: "attribution".into(), ..Default::default() }, &out, false);
    let bytes = std::fs::read(&out).unwrap();
    let mut rng = glassbox::rng::Rng::new(9);
    let bad = dir.join("bad.parquet");
    for _ in 0..300 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            b[i] = rng.below(256) as u8;
        }
        if rng.below(4) == 0 {
            b.truncate(rng.below(b.len()));
        }
        std::fs::write(&bad, &b).unwrap();
        // Either reads (a byte that did not matter) or is an error; never a panic or a hang.
        let _ = table::read_file(&bad);
        let _ = summarize(&bad, &SummaryOptions { n_boot: 10, ..Default::default() });
    }
}
