//! Dataset runs from Python (`glassbox.distributed` shards them over Ray): parse JSONL items,
//! run a method over items into a Parquet file (resumable), join result files, summarise.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use glassbox::batch::summary::{summarize, SummaryOptions};
use glassbox::batch::{self, BatchOptions, Item, RunSpec, Settings};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{input, IntoPy};
use crate::kwargs::Kwargs;
use crate::model::Model;
use crate::sae::Sae;

/// Items from JSONL lines (line numbers from `first_line`): `(items, errors)`, each a dict.
#[pyfunction]
#[pyo3(signature = (lines, first_line=1))]
fn batch_parse<'py>(py: Python<'py>, lines: Vec<String>, first_line: usize) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let (mut items, mut errors) = (Vec::new(), Vec::new());
    let mut seen = std::collections::HashSet::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        match batch::parse_line(l, first_line + i) {
            Ok(it) if !seen.insert(it.id.clone()) => errors.push(batch::LineError { line: it.line, id: Some(it.id.clone()), message: format!("the id {:?} is on an earlier line too; ids must be unique", it.id) }),
            Ok(it) => items.push(it),
            Err(e) => errors.push(e),
        }
    }
    Ok((pythonize::pythonize(py, &items)?, pythonize::pythonize(py, &errors)?))
}

/// Runs `method` over `items` (dicts as `batch_parse` gives) into the Parquet file `out`, as
/// `glassbox batch` does; returns the run's report with the items the model could not take.
/// The run records the sha256 of the weights the model was loaded from, and `resume` refuses
/// parts written from other weights, another method or other options.
#[pyfunction]
#[pyo3(signature = (model, items, method, out, **kwargs))]
fn batch_run<'py>(
    py: Python<'py>,
    model: &Model,
    items: &Bound<'py, PyAny>,
    method: &str,
    out: PathBuf,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut kw = Kwargs::new(kwargs, "batch_run");
    let options = kw.object("options")?;
    let batch_size: usize = kw.or("batch_size", 16)?;
    let row_group: usize = kw.or("row_group", 64)?;
    let resume: bool = kw.or("resume", false)?;
    let sae: Option<PyRef<Sae>> = kw.get("sae")?;
    let transcoders: Option<PyRef<crate::sae::TranscoderSet>> = kw.get("transcoders")?;
    kw.finish()?;
    let items: Vec<Item> = pythonize::depythonize(items).map_err(|e| input(format!("items: {e}")))?;
    let entry = batch::method(method).py_err()?;
    let options: serde_json::Value = match options {
        Some(o) => pythonize::depythonize(&o).map_err(|e| input(format!("options: {e}")))?,
        None => serde_json::Value::Null,
    };
    let m = model.inner.clone();
    let sae = sae.map(|s| s.inner.clone());
    let set = transcoders.map(|t| t.inner.clone());
    let report = py
        .detach(move || -> glassbox::Result<serde_json::Value> {
            let settings = Settings::new(&m, entry, &options, sae.as_deref())?;
            let (prepared, unfit) = batch::prepare(&m, items, entry);
            let opts = BatchOptions { method: entry.name().to_string(), options, batch_size, row_group };
            if entry.needs().transcoders && set.is_none() {
                return Err(glassbox::Error::Invalid(format!("`{}` needs transcoders=glassbox.TranscoderSet.load(path)", entry.name())));
            }
            let cx = glassbox::methods::catalog::Context { model: &m, sae: sae.as_deref(), model_b: None, transcoders: set.as_deref() };
            let spec = RunSpec { options: &opts, settings: &settings, out: &out, resume };
            let r = batch::run(&cx, &prepared, &spec, &AtomicBool::new(false), &mut |_| {})?;
            Ok(serde_json::json!({"report": r, "lines_left_out": unfit, "settings": settings}))
        })
        .py_err()?;
    Ok(pythonize::pythonize(py, &report)?)
}

/// Joins result files (one schema) into `out`, row group by row group, without decoding;
/// `settings` (a dict) goes into the file's metadata.
#[pyfunction]
#[pyo3(signature = (parts, out, settings=None))]
fn batch_join(py: Python<'_>, parts: Vec<PathBuf>, out: PathBuf, settings: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let mut meta = Vec::new();
    if let Some(s) = settings.filter(|s| !s.is_none()) {
        let v: serde_json::Value = pythonize::depythonize(s).map_err(|e| input(format!("settings: {e}")))?;
        meta.push(("glassbox.settings".to_string(), v.to_string()));
    }
    py.detach(move || glassbox::batch::table::concat_files(&parts, &out, &meta)).py_err()
}

/// `glassbox batch summarize` of a result file, as a dict.
#[pyfunction]
#[pyo3(signature = (path, options=None))]
fn batch_summarize<'py>(py: Python<'py>, path: PathBuf, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let o: SummaryOptions = match options {
        Some(o) if !o.is_none() => pythonize::depythonize(o).map_err(|e| input(format!("options: {e}")))?,
        _ => SummaryOptions::default(),
    };
    let s = py.detach(move || summarize(&path, &o)).py_err()?;
    glassbox::check_finite(&s).py_err()?;
    Ok(pythonize::pythonize(py, &s)?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(batch_parse, m)?)?;
    m.add_function(wrap_pyfunction!(batch_run, m)?)?;
    m.add_function(wrap_pyfunction!(batch_join, m)?)?;
    m.add_function(wrap_pyfunction!(batch_summarize, m)?)?;
    Ok(())
}
