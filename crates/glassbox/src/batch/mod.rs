//! Dataset runs: one method over the prompts of a JSONL file, one Parquet row per prompt.
//!
//! Input lines are `{"id", "prompt", "correct", "incorrect", "corrupted"?, "group"?}`; a line
//! that is not such an object, repeats an id, or that the model cannot take (an answer that is
//! not one token, a prompt longer than the context) is reported with its line number and left
//! out, and the other lines run (`read_jsonl`, `prepare`).
//!
//! `run` writes the results as they complete: every `row_group` rows become one complete
//! Parquet file in `OUT.parts/` (written to a temporary name and renamed, so a killed run
//! leaves only whole parts). When the run ends, or is stopped, the parts are joined, row group
//! by row group without decoding, into `OUT` (again through a temporary name); a finished run
//! then removes its parts. `resume` skips the ids already in the parts (or in `OUT`, when the
//! parts are gone) and appends the rest, so an interrupted run, resumed, holds each id once.
//!
//! Prompts are sorted by length and run in groups of up to `batch_size`; methods that can run
//! several prompts at once (Taylor attribution of the logit difference) run each group as one
//! right-padded batch, the others prompt by prompt. A prompt's row is the same either way.

pub mod summary;
pub mod table;

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::inputs::Contrast;
use crate::methods::catalog::{self, Context, Entry, Input, InputKind, InputSpec};
use crate::model::Model;
use crate::sae::Sae;

/// The longest input line read, in bytes.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The most input lines read.
pub const MAX_LINES: usize = 10_000_000;

/// One prompt of the dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    /// Its line in the input (from 1).
    pub line: usize,
    /// Its id (a JSON string, or a number written as text).
    pub id: String,
    /// The prompt.
    pub prompt: String,
    /// The answer the model should give (one token).
    pub correct: String,
    /// The competing answer (one token).
    pub incorrect: String,
    /// The corrupted prompt; by default the answers' words swapped.
    #[serde(default)]
    pub corrupted: Option<String>,
    /// A label to break the summary down by (e.g. the template).
    #[serde(default)]
    pub group: Option<String>,
}

/// A line left out, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LineError {
    /// The line (from 1).
    pub line: usize,
    /// The item's id, when the line had one.
    pub id: Option<String>,
    /// What was wrong.
    pub message: String,
}

fn text_field(o: &Map<String, Value>, name: &str, required: bool) -> std::result::Result<Option<String>, String> {
    match o.get(name) {
        None | Some(Value::Null) if required => Err(format!("missing field `{name}`")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) if name == "id" || name == "group" => Ok(Some(n.to_string())),
        Some(v) => Err(format!("`{name}` is {v}, not text")),
    }
}

/// Parses one input line (`line` from 1) into an item.
pub fn parse_line(text: &str, line: usize) -> std::result::Result<Item, LineError> {
    let fail = |id: Option<String>, message: String| LineError { line, id, message };
    let v: Value = serde_json::from_str(text).map_err(|e| fail(None, format!("not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(fail(None, "not a JSON object; write {\"id\": ..., \"prompt\": ..., \"correct\": ..., \"incorrect\": ...}".into()));
    };
    let id = text_field(&o, "id", true).map_err(|m| fail(None, m))?.unwrap_or_default();
    let field = |name: &str, required: bool| text_field(&o, name, required).map_err(|m| fail(Some(id.clone()), m));
    Ok(Item {
        line,
        prompt: field("prompt", true)?.unwrap_or_default(),
        correct: field("correct", true)?.unwrap_or_default(),
        incorrect: field("incorrect", true)?.unwrap_or_default(),
        corrupted: field("corrupted", false)?,
        group: field("group", false)?,
        id,
    })
}

/// The items of a JSONL file and the lines left out (not an object, missing fields, a
/// repeated id, a line over `MAX_LINE_BYTES`). Blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<(Vec<Item>, Vec<LineError>)> {
    let f = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(f);
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    for line in 1.. {
        if line > MAX_LINES {
            return Err(Error::Invalid(format!("{} has more than {MAX_LINES} lines; split it", path.display())));
        }
        buf.clear();
        // At most MAX_LINE_BYTES + 1 bytes of the line are kept; the rest is skipped.
        let n = read_bounded_line(&mut reader, &mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE_BYTES {
            errors.push(LineError { line, id: None, message: format!("the line is {n} bytes; the most is {MAX_LINE_BYTES}") });
            continue;
        }
        let Ok(text) = std::str::from_utf8(&buf) else {
            errors.push(LineError { line, id: None, message: "not UTF-8 text".into() });
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(text, line) {
            Ok(item) if !seen.insert(item.id.clone()) => errors.push(LineError { line, id: Some(item.id.clone()), message: format!("the id {:?} is on an earlier line too; ids must be unique", item.id) }),
            Ok(item) => items.push(item),
            Err(e) => errors.push(e),
        }
    }
    Ok((items, errors))
}

/// Reads one line into `buf`, keeping at most `MAX_LINE_BYTES + 1` bytes of it; returns the
/// line's full length in bytes (0 at the end of the input).
fn read_bounded_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_LINE_BYTES + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        total += take;
        if done {
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            return Ok(total);
        }
    }
}

/// The items of a generated task set: ids `{task}-00000`, the task's groups.
pub fn task_items(model: &Model, spec: &crate::tasks::TaskSpec) -> Result<Vec<Item>> {
    Ok(crate::tasks::generate(model, spec)?
        .into_iter()
        .enumerate()
        .map(|(i, p)| Item {
            line: i + 1,
            id: format!("{}-{i:05}", spec.task),
            prompt: p.contrast.clean_prompt,
            correct: p.contrast.correct,
            incorrect: p.contrast.incorrect,
            corrupted: Some(p.contrast.corrupted_prompt),
            group: Some(p.group).filter(|g| !g.is_empty()),
        })
        .collect())
}

/// A prompt ready to run: the item tokenized and checked as its method's input.
pub struct Prepared {
    /// The input item.
    pub item: Item,
    /// The method's input.
    pub input: Input,
}

impl Prepared {
    /// Its token count (runs are grouped by it).
    fn n_tokens(&self) -> usize {
        match &self.input {
            Input::Contrast(c) => c.clean.len(),
            Input::Prompt(p, _) => p.tokens.len(),
            Input::Text(_, t) => t.len(),
            _ => 0,
        }
    }
}

/// The catalog entry of a dataset run's method: one that reads one prompt per row.
pub fn method(name: &str) -> Result<&'static dyn Entry> {
    let e = catalog::entry(name)?;
    if !e.input().per_prompt() {
        let per: Vec<&str> = catalog::CATALOG.iter().filter(|e| e.input().per_prompt() && !e.needs().model_b).map(|e| e.name()).collect();
        return Err(Error::Invalid(format!("`{name}` does not read one prompt per row; a dataset run takes: {}", per.join(", "))));
    }
    if e.needs().model_b {
        return Err(Error::Invalid(format!("`{name}` compares two models; a dataset run has one")));
    }
    Ok(e)
}

/// Tokenizes and checks each item as `entry`'s input; the items it cannot take become line errors.
pub fn prepare(model: &Model, items: Vec<Item>, entry: &dyn Entry) -> (Vec<Prepared>, Vec<LineError>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for item in items {
        let spec = InputSpec {
            prompt: Some(item.prompt.clone()),
            correct: Some(item.correct.clone()).filter(|_| entry.input() != InputKind::Text),
            incorrect: Some(item.incorrect.clone()).filter(|_| entry.input() != InputKind::Text),
            corrupted: item.corrupted.clone().filter(|_| matches!(entry.input(), InputKind::Contrast | InputKind::ContrastOrTask)),
            ..Default::default()
        };
        match catalog::resolve_input(model, entry.input(), &spec, entry.name()).and_then(|input| {
            if let Input::Contrast(c) = &input {
                c.check(model)?;
            }
            Ok(input)
        }) {
            Ok(input) => ok.push(Prepared { item, input }),
            Err(e) => bad.push(LineError { line: item.line, id: Some(item.id), message: e.to_string() }),
        }
    }
    (ok, bad)
}

/// What `run` does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchOptions {
    /// The method (a catalog entry's name).
    pub method: String,
    /// The method's options as JSON (`null`: its defaults).
    #[serde(default)]
    pub options: Value,
    /// Prompts per group (one padded batch where the method allows).
    pub batch_size: usize,
    /// Rows per Parquet row group (and per part file).
    pub row_group: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { method: "attribution".into(), options: Value::Null, batch_size: 16, row_group: 64 }
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => Map::from_iter([("value".to_string(), other)]),
    }
}

/// The method's result for each prompt of `group`, in order: the result's fields, and
/// `warnings` when there are any (errors are per prompt).
pub fn run_group(cx: &Context, entry: &dyn Entry, opts: &Value, group: &[&Prepared]) -> Result<Vec<Result<Map<String, Value>>>> {
    let one = |p: &Prepared| -> Result<Map<String, Value>> {
        let (result, _, warnings) = entry.run(cx, &p.input, opts)?;
        let mut row = object(result);
        if !warnings.is_empty() {
            row.insert("warnings".into(), Value::from(warnings));
        }
        Ok(row)
    };
    if group.len() > 1 {
        let contrasts: Option<Vec<Contrast>> = group.iter().map(|p| p.input.contrast().ok().cloned()).collect();
        if let Some(Ok(all)) = contrasts.and_then(|cs| entry.run_many(cx, &cs, opts)) {
            // One batch for the group; should it fail as a whole, each prompt alone says which.
            return Ok(all.into_iter().map(|v| Ok(object(v))).collect());
        }
    }
    Ok(group.iter().map(|p| one(p)).collect())
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Prompts finished this run (rows written or failed).
    pub done: usize,
    /// Prompts this run has to do.
    pub total: usize,
    /// Prompts that failed this run.
    pub failed: usize,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The result file.
    pub out: PathBuf,
    /// Rows in it.
    pub rows: usize,
    /// Rows written by this run.
    pub written: usize,
    /// Ids skipped because an earlier run (resumed) had them.
    pub skipped: usize,
    /// Prompts that failed when run (each with its line and message).
    pub failed: Vec<LineError>,
    /// Whether the stop flag ended the run early.
    pub interrupted: bool,
}

/// The folder of the parts of `out`'s run.
pub fn parts_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".parts");
    PathBuf::from(s)
}

fn part_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("part-") && n.ends_with(".parquet")))
        .collect();
    v.sort();
    Ok(v)
}

/// The settings of a run, kept beside its parts and in the result's metadata; `resume`
/// refuses parts written with other settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// The method (a catalog entry's name).
    pub method: String,
    /// The method's options, every default filled in (JSON).
    pub options: Value,
    /// The model's name.
    pub model: String,
    /// The sha256 of the model's weight file(s) (lowercase hex), as the model computed it when
    /// it read them.
    pub model_sha256: String,
    /// The SAE folder, for `sae-attribute`.
    pub sae: Option<String>,
    /// glassbox's version.
    pub glassbox: String,
}

impl Settings {
    /// The settings of a run of `method` with `options` on the loaded model (and SAE).
    pub fn new(model: &Model, method: &dyn Entry, options: &Value, sae: Option<&Sae>) -> Result<Settings> {
        let model_sha256 = model.weights_sha256().ok_or_else(|| Error::Invalid("this model was not loaded from files, so a dataset run cannot record which weights it used; load it with Model::load".into()))?;
        if method.needs().sae && sae.is_none() {
            return Err(Error::Invalid(format!("`{}` needs an SAE (--sae DIR)", method.name())));
        }
        Ok(Settings {
            method: method.name().to_string(),
            options: method.resolve(options)?,
            model: model.name().to_string(),
            model_sha256,
            sae: sae.and_then(|s| s.source.as_ref().map(|p| p.display().to_string())),
            glassbox: env!("CARGO_PKG_VERSION").to_string(),
        })
    }
}

/// Where and how a dataset run writes.
#[derive(Clone, Copy)]
pub struct RunSpec<'a> {
    /// The method and batching.
    pub options: &'a BatchOptions,
    /// The settings recorded with the result (`Settings::new`).
    pub settings: &'a Settings,
    /// The Parquet file.
    pub out: &'a Path,
    /// Continue an earlier run into `out`.
    pub resume: bool,
}

/// Runs `opts.method` over `prepared` into the Parquet file `out` (see the module's notes).
/// `progress` sees each finished group; `stop` ends the run early with a valid file.
pub fn run(cx: &Context, prepared: &[Prepared], spec: &RunSpec, stop: &AtomicBool, progress: &mut dyn FnMut(Progress)) -> Result<RunReport> {
    let RunSpec { options: opts, settings, out, resume } = *spec;
    let entry = method(&opts.method)?;
    if settings.method != entry.name() {
        return Err(Error::Invalid(format!("the settings are for `{}`, the options for `{}`", settings.method, entry.name())));
    }
    crate::limits::check_count("batch_size", opts.batch_size, 1..=4096)?;
    crate::limits::check_count("row_group", opts.row_group, 1..=1_000_000)?;
    let dir = parts_dir(out);
    let settings_file = dir.join("settings.json");
    let mut done: HashSet<String> = HashSet::new();
    if resume {
        if !dir.exists() && out.exists() {
            // A finished (or joined) result: it becomes the first part.
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            std::fs::copy(out, dir.join("part-000000.parquet")).map_err(|e| Error::io(out, e))?;
            let (_, kv) = table::read_file(out)?;
            let old = kv.iter().find(|(k, _)| k == "glassbox.settings").map(|(_, v)| v.clone()).unwrap_or_default();
            std::fs::write(&settings_file, old).map_err(|e| Error::io(&settings_file, e))?;
        }
        if dir.exists() {
            let old: Settings = crate::files::read_regular_to_string(&settings_file)
                .ok()
                .and_then(|b| serde_json::from_str(&b).ok())
                .ok_or_else(|| Error::Invalid(format!("{} has no readable settings.json; it is not a glassbox batch run to resume", dir.display())))?;
            if old.method != settings.method || old.options != settings.options || old.model_sha256 != settings.model_sha256 || old.sae != settings.sae {
                return Err(Error::Invalid(format!(
                    "the run in {} used {} with options {} on {} ({}); resume it with the same method, options and model, or write to another --out",
                    dir.display(),
                    old.method,
                    old.options,
                    old.model,
                    &old.model_sha256[..old.model_sha256.len().min(12)]
                )));
            }
            for p in part_files(&dir)? {
                done.extend(table::read_column_text(&p, "id")?);
            }
        }
    } else if dir.exists() {
        return Err(Error::Invalid(format!("{} holds the parts of an unfinished run; continue it with --resume, or remove it", dir.display())));
    } else if out.exists() {
        return Err(Error::Invalid(format!("{} exists; give --resume to add to it, or another --out", out.display())));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    std::fs::write(&settings_file, serde_json::to_vec_pretty(settings).map_err(|e| Error::Invalid(e.to_string()))?).map_err(|e| Error::io(&settings_file, e))?;

    let mut todo: Vec<&Prepared> = prepared.iter().filter(|p| !done.contains(&p.item.id)).collect();
    let skipped = prepared.len() - todo.len();
    // Grouped by length (stable: equal lengths keep their input order).
    todo.sort_by_key(|p| p.n_tokens());
    // A resumed run writes parts with the columns of the earlier ones, numbered after them.
    let earlier = part_files(&dir)?;
    let mut next_part = earlier.len();
    let mut columns: Option<table::Columns> = earlier.first().map(|p| table::read_columns(p)).transpose()?;
    let mut pending: Vec<Map<String, Value>> = Vec::new();
    let mut failed = Vec::new();
    let mut written = 0usize;
    let mut report = Progress { done: 0, total: todo.len(), failed: 0 };
    let mut interrupted = false;
    let flush = |pending: &mut Vec<Map<String, Value>>, columns: &mut Option<table::Columns>, next_part: &mut usize| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let cols = columns.get_or_insert_with(|| table::Columns::infer(pending));
        let path = dir.join(format!("part-{:06}.parquet", *next_part));
        crate::files::write_atomically(&path, |tmp| table::write_file(tmp, cols, pending, &[]))?;
        *next_part += 1;
        pending.clear();
        Ok(())
    };
    for group in todo.chunks(opts.batch_size) {
        if stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let results = run_group(cx, entry, &settings.options, group)?;
        for (p, r) in group.iter().zip(results) {
            match r {
                Ok(fields) => {
                    let mut row = Map::new();
                    row.insert("id".into(), Value::String(p.item.id.clone()));
                    row.insert("line".into(), Value::from(p.item.line));
                    row.insert("group".into(), p.item.group.clone().map_or(Value::Null, Value::String));
                    for (k, v) in fields {
                        if !row.contains_key(&k) {
                            row.insert(k, v);
                        }
                    }
                    pending.push(row);
                    written += 1;
                }
                Err(e) => {
                    failed.push(LineError { line: p.item.line, id: Some(p.item.id.clone()), message: e.to_string() });
                    report.failed += 1;
                }
            }
        }
        report.done += group.len();
        if pending.len() >= opts.row_group {
            flush(&mut pending, &mut columns, &mut next_part)?;
        }
        progress(report);
    }
    flush(&mut pending, &mut columns, &mut next_part)?;
    // The parts joined into the result.
    let parts = part_files(&dir)?;
    let settings_json = serde_json::to_string(settings).map_err(|e| Error::Invalid(e.to_string()))?;
    let rows = if parts.is_empty() {
        0
    } else {
        crate::files::write_atomically(out, |tmp| table::concat_files(&parts, tmp, &[("glassbox.settings".into(), settings_json.clone())]))?;
        count_rows(out)?
    };
    if !interrupted {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(RunReport { out: out.to_path_buf(), rows, written, skipped, failed, interrupted })
}

fn count_rows(path: &Path) -> Result<usize> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
    let r = SerializedFileReader::new(f)?;
    Ok(r.metadata().file_metadata().num_rows().max(0) as usize)
}
