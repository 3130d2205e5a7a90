//! Every method of the library as a function of the model, its input and an options dict
//! (the library's option structs through serde; missing keys take their defaults), returning
//! the library's result as plain Python objects. The GIL is released while they compute.

use glassbox::inputs::{Contrast, Prompt, TaskPrompt};
use glassbox::methods::catalog::{self, Context, Input, InputSpec};
use glassbox::methods::circuit::{minimum_faithful_circuit, CircuitOptions};
use glassbox::methods::composition::{composition_score, Kind};
use glassbox::methods::faithfulness::{faithfulness, Circuit, CircuitEvaluator, EvaluatorOptions};
use glassbox::methods::{Head, Metric};
use glassbox::schema::OptionSchema;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::errors::{input, IntoPy};
use crate::kwargs::Kwargs;
use crate::model::{tokens_of, Model};

/// Options from a dict (None: the defaults), with serde's message naming a wrong key.
pub(crate) fn opts_of<T: DeserializeOwned + Default>(o: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<T> {
    match o {
        None => Ok(T::default()),
        Some(o) if o.is_none() => Ok(T::default()),
        Some(o) => value(o, what),
    }
}

/// A library value (a contrast, a circuit, ...) from its Python form.
fn value<T: DeserializeOwned>(o: &Bound<'_, PyAny>, what: &str) -> PyResult<T> {
    pythonize::depythonize(o).map_err(|e| input(format!("{what}: {e}")))
}

/// A result as Python objects, after checking that no figure in it is NaN or infinite.
fn result<'py, T: Serialize>(py: Python<'py>, r: &T) -> PyResult<Bound<'py, PyAny>> {
    glassbox::check_finite(r).py_err()?;
    Ok(pythonize::pythonize(py, r)?)
}

/// A metric: None (the logit difference), a name (`logit_diff`, `logprob`, `prob`, `kl`) or a
/// dict (`{"kind": "kl", "position": "mean"}`).
pub fn metric_of(m: Option<&Bound<'_, PyAny>>) -> PyResult<Metric> {
    match m {
        None => Ok(Metric::default()),
        Some(m) if m.is_none() => Ok(Metric::default()),
        Some(m) => match m.cast::<PyString>() {
            Ok(s) => Metric::parse(&s.to_cow()?).py_err(),
            Err(_) => value(m, "metric"),
        },
    }
}

/// The clean/corrupted contrast of a prompt: the corrupted prompt given, or the answers'
/// words swapped. A dict the methods take.
#[pyfunction]
#[pyo3(signature = (model, prompt, correct, incorrect, corrupted=None))]
fn contrast<'py>(py: Python<'py>, model: &Model, prompt: &str, correct: &str, incorrect: &str, corrupted: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
    result(py, &Contrast::new(&model.inner, prompt, correct, incorrect, corrupted).py_err()?)
}

/// A contrast from token ids (`model.to_tokens` arrays or lists) and answer ids.
#[pyfunction]
fn contrast_from_tokens<'py>(py: Python<'py>, model: &Model, clean: &Bound<'py, PyAny>, corrupted: &Bound<'py, PyAny>, correct: u32, incorrect: u32) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let (clean, corrupted) = (tokens_of(m, clean)?, tokens_of(m, corrupted)?);
    let text = |id: u32| m.to_string(&[id]);
    let c = Contrast {
        clean_prompt: m.to_string(&clean),
        corrupted_prompt: m.to_string(&corrupted),
        corruption: "given".into(),
        correct: text(correct),
        incorrect: text(incorrect),
        clean,
        corrupted,
        correct_id: correct,
        incorrect_id: incorrect,
    };
    c.check(m).py_err()?;
    result(py, &c)
}

/// A prompt and its two answers (strings or ids) for the single-prompt methods.
#[pyfunction]
fn prompt<'py>(py: Python<'py>, model: &Model, prompt: &Bound<'py, PyAny>, correct: &Bound<'py, PyAny>, incorrect: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let m = &model.inner;
    let id = |a: &Bound<'py, PyAny>| -> PyResult<u32> {
        match a.extract::<u32>() {
            Ok(id) => Ok(id),
            Err(_) => m.answer_token(&a.extract::<String>()?).py_err(),
        }
    };
    let p = Prompt { tokens: tokens_of(m, prompt)?, correct: id(correct)?, incorrect: id(incorrect)? };
    p.check(m).py_err()?;
    if p.correct == p.incorrect {
        return Err(input("the correct and incorrect answers are the same token; give two different answers"));
    }
    result(py, &p)
}

/// Runs `f` on the model with the GIL released.
fn compute<T: Send>(py: Python<'_>, f: impl FnOnce() -> glassbox::Result<T> + Send) -> PyResult<T> {
    py.detach(f).py_err()
}

/// The exact faithfulness of a circuit (`{"heads": [(l, h), ...], "mlps": [...]}`), with the
/// Taylor sufficiency beside it when head attributions are given.
#[pyfunction(name = "faithfulness")]
#[pyo3(signature = (model, contrast, circuit, options=None, attributions=None))]
fn faithfulness_py<'py>(
    py: Python<'py>,
    model: &Model,
    contrast: &Bound<'py, PyAny>,
    circuit: &Bound<'py, PyAny>,
    options: Option<&Bound<'py, PyAny>>,
    attributions: Option<Vec<Vec<f32>>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (c, circ, o): (Contrast, Circuit, EvaluatorOptions) = (value(contrast, "contrast")?, value(circuit, "circuit")?, opts_of(options, "evaluator options")?);
    let r = compute(py, || faithfulness(&model.inner, &c, &circ, &o, attributions.as_deref()))?;
    result(py, &r)
}

/// The minimum faithful circuit: heads added by decreasing attribution (`[layer][head]`)
/// until the exact sufficiency reaches the target, then pruned.
#[pyfunction(name = "minimum_faithful_circuit")]
#[pyo3(signature = (model, contrast, attributions, options=None, evaluator=None))]
fn minimum_faithful_circuit_py<'py>(
    py: Python<'py>,
    model: &Model,
    contrast: &Bound<'py, PyAny>,
    attributions: Vec<Vec<f32>>,
    options: Option<&Bound<'py, PyAny>>,
    evaluator: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (c, o, e): (Contrast, CircuitOptions, EvaluatorOptions) = (value(contrast, "contrast")?, opts_of(options, "circuit options")?, opts_of(evaluator, "evaluator options")?);
    let r = compute(py, || {
        let ev = CircuitEvaluator::new(&model.inner, &c, &e)?;
        minimum_faithful_circuit(&ev, &attributions, &o)
    })?;
    result(py, &r)
}

/// One composition score (`kind`: `q`, `k` or `v`) from `sender` to `receiver` heads.
#[pyfunction(name = "composition_score")]
fn composition_score_py(py: Python<'_>, model: &Model, sender: (usize, usize), receiver: (usize, usize), kind: &str) -> PyResult<f32> {
    let kind = match kind {
        "q" | "Q" => Kind::Q,
        "k" | "K" => Kind::K,
        "v" | "V" => Kind::V,
        other => return Err(input(format!("composition kind {other:?} is not q, k or v"))),
    };
    let (s, r) = (Head { layer: sender.0, head: sender.1 }, Head { layer: receiver.0, head: receiver.1 });
    compute(py, || composition_score(&model.inner, s, r, kind))
}

/// A generated prompt set (`task`: ioi) as task prompts: each a dict with `contrast`,
/// `features` (ioi: `io`, `subject`, `template`, `order`) and `group`: what `analyze`,
/// `causal_scrubbing` and the other set methods take.
#[pyfunction(name = "task_prompts")]
#[pyo3(signature = (model, task="ioi", n=64, seed=0, corruption=None))]
fn task_prompts_py<'py>(py: Python<'py>, model: &Model, task: &str, n: usize, seed: u64, corruption: Option<String>) -> PyResult<Bound<'py, PyAny>> {
    let spec = glassbox::tasks::TaskSpec { task: task.to_string(), n, seed, corruption };
    let m = &model.inner;
    let prompts = compute(py, || glassbox::tasks::generate(m, &spec))?;
    result(py, &prompts)
}

/// The picture of a result as an SVG document: `method` is the catalog method that returned
/// `result` (its envelope's `result`, or the envelope itself).
#[pyfunction]
fn plot(py: Python<'_>, method: &str, result: &Bound<'_, PyAny>) -> PyResult<String> {
    let entry = catalog::entry(method).py_err()?;
    let mut v: serde_json::Value = value(result, "result")?;
    if v.get("method").is_some() && v.get("result").is_some() {
        v = v["result"].take();
    }
    match compute(py, || entry.plot(&v))? {
        Some(svg) => Ok(svg.finish()),
        None => Err(input(format!("`{method}` draws no picture"))),
    }
}

/// The picture of a result rendered to PNG bytes at `scale` times its size (the CLI's
/// `--plot FILE.png` uses 2).
#[pyfunction]
#[pyo3(signature = (method, result, scale=2.0))]
fn plot_png<'py>(py: Python<'py>, method: &str, result: &Bound<'py, PyAny>, scale: f32) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let svg = plot(py, method, result)?;
    let bytes = compute(py, || glassbox::plot::png(&svg, scale))?;
    Ok(pyo3::types::PyBytes::new(py, &bytes))
}

/// The result as the CLI's text report (`rows`: the longest lists' length).
#[pyfunction]
#[pyo3(signature = (method, result, rows=15))]
fn report(method: &str, result: &Bound<'_, PyAny>, rows: usize) -> PyResult<String> {
    let entry = catalog::entry(method).py_err()?;
    let mut v: serde_json::Value = value(result, "result")?;
    if v.get("method").is_some() && v.get("result").is_some() {
        v = v["result"].take();
    }
    entry.report(&v, rows).py_err()
}

/// Every method of the catalog: name, Python name, summary, input kind and fields, needs,
/// options (name, kind, default, help), whether it draws.
#[pyfunction]
fn catalog_entries(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Ok(pythonize::pythonize(py, &catalog::describe())?)
}

/// The input's keys (prompt, correct, incorrect, corrupted, task, n, seed, corruption) with
/// their help.
#[pyfunction]
fn input_fields(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Ok(pythonize::pythonize(py, &InputSpec::fields())?)
}

/// A method's input from Python: a contrast dict (`glassbox.contrast`), a prompt dict
/// (`glassbox.prompt`), a list of contrasts or task prompts, a prompt string, token ids, or a
/// dict of input keys (`{"prompt": ..., "correct": ..., "incorrect": ...}`, `{"task": "ioi"}`).
fn input_of(m: &glassbox::Model, entry: &dyn catalog::Entry, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Input> {
    use pyo3::types::{PyDict, PyList};
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return catalog::resolve_input(m, entry.input(), &InputSpec::default(), entry.name()).py_err();
    };
    if let Ok(d) = obj.cast::<PyDict>() {
        if d.contains("clean")? {
            let c: Contrast = value(obj, "contrast")?;
            c.check(m).py_err()?;
            return Ok(Input::Contrast(c));
        }
        if d.contains("tokens")? {
            let p: Prompt = value(obj, "prompt")?;
            p.check(m).py_err()?;
            let text = m.to_string(&p.tokens);
            return Ok(Input::Prompt(p, text));
        }
        let spec: InputSpec = glassbox::schema::parse_options(&value::<serde_json::Value>(obj, "input")?, "the input").py_err()?;
        return catalog::resolve_input(m, entry.input(), &spec, entry.name()).py_err();
    }
    if obj.cast::<PyString>().is_ok() && entry.input() != catalog::InputKind::Text {
        return Err(input(format!("`{}` needs more than a prompt string: give glassbox.contrast(...) / glassbox.prompt(...) or a dict of {}", entry.name(), entry.input().keys().join(", "))));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        if l.len() > 0 && l.get_item(0)?.cast::<PyDict>().is_ok() {
            let first = l.get_item(0)?;
            let prompts: Vec<TaskPrompt> = if first.cast::<PyDict>()?.contains("contrast")? {
                value(obj, "prompts")?
            } else {
                let cs: Vec<Contrast> = value(obj, "contrasts")?;
                cs.into_iter().map(|contrast| TaskPrompt { contrast, features: Default::default(), group: String::new() }).collect()
            };
            for p in &prompts {
                p.contrast.check(m).py_err()?;
            }
            let spec = glassbox::tasks::TaskSpec { task: "given".into(), n: prompts.len(), seed: 0, corruption: None };
            return Ok(Input::Set(spec, prompts));
        }
    }
    let tokens = tokens_of(m, obj)?;
    Ok(Input::Text(m.to_string(&tokens), tokens))
}

/// Runs the catalog method `method` on `model`: its envelope (`method`, `glassbox_version`,
/// `model`, `input`, `metric`, `options` with defaults filled in, `result`, `warnings`,
/// `seconds`). `progress(done, total, stage)` is called as it goes; Ctrl-C stops it within a
/// step (KeyboardInterrupt), and the model stays usable.
#[pyfunction]
#[pyo3(signature = (method, model, input=None, options=None, **kwargs))]
fn run<'py>(
    py: Python<'py>,
    method: &str,
    model: &Model,
    input: Option<&Bound<'py, PyAny>>,
    options: Option<&Bound<'py, PyAny>>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut kw = Kwargs::new(kwargs, "run");
    let sae: Option<PyRef<crate::sae::Sae>> = kw.get("sae")?;
    let model_b: Option<PyRef<Model>> = kw.get("model_b")?;
    let transcoders: Option<PyRef<crate::sae::TranscoderSet>> = kw.get("transcoders")?;
    let progress: Option<Py<PyAny>> = kw.get("progress")?;
    kw.finish()?;
    let entry = catalog::entry(method).py_err()?;
    let options: serde_json::Value = match options {
        Some(o) if !o.is_none() => value(o, "options")?,
        _ => serde_json::Value::Null,
    };
    entry.resolve(&options).py_err()?;
    let started = std::time::Instant::now();
    let m = &model.inner;
    let input = input_of(m, entry, input)?;
    let sae = sae.map(|s| s.inner.clone());
    let b = model_b.map(|b| b.inner.clone());
    let set = transcoders.map(|t| t.inner.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let controls = glassbox::controls::Controls {
        progress: progress.map(|f| -> glassbox::controls::ProgressFn {
            std::sync::Arc::new(move |p: &glassbox::controls::Progress| {
                Python::attach(|py| {
                    let _ = f.call1(py, (p.done, p.total, p.stage.as_str()));
                })
            })
        }),
        cancel: Some(stop.clone()),
        // A pending KeyboardInterrupt (or other signal exception) stops the run. Python runs
        // signal handlers on its main thread only, and reading a signal clears it: the flag
        // carries it to the method's other stream, which would otherwise finish its half.
        poll: Some(std::sync::Arc::new(move || {
            let signalled = Python::attach(|py| py.check_signals().is_err());
            if signalled {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            signalled
        })),
    };
    let envelope = compute(py, || {
        let cx = Context { model: m, sae: sae.as_deref(), model_b: b.as_deref(), transcoders: set.as_deref() };
        glassbox::controls::with(&controls, || catalog::run_input(entry, &cx, &input, &options, started))
    })?;
    result(py, &envelope)
}

/// `functional_circuit_alignment`: FCAS between two rankings of heads (`[layer, head]`, best
/// first) of models of shapes `(n_layers, n_heads)`, with its Monte Carlo null.
#[pyfunction(name = "functional_circuit_alignment")]
#[pyo3(signature = (heads_a, shape_a, heads_b, shape_b, options=None))]
fn functional_circuit_alignment_py<'py>(
    py: Python<'py>,
    heads_a: Vec<(usize, usize)>,
    shape_a: (usize, usize),
    heads_b: Vec<(usize, usize)>,
    shape_b: (usize, usize),
    options: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    use glassbox::methods::alignment::{functional_circuit_alignment, AlignmentOptions, ModelShape};
    let o: AlignmentOptions = opts_of(options, "alignment options")?;
    let heads = |v: Vec<(usize, usize)>| -> Vec<Head> { v.into_iter().map(|(layer, head)| Head { layer, head }).collect() };
    let (a, b) = (heads(heads_a), heads(heads_b));
    let sa = ModelShape { n_layers: shape_a.0, n_heads: shape_a.1 };
    let sb = ModelShape { n_layers: shape_b.0, n_heads: shape_b.1 };
    let r = compute(py, || functional_circuit_alignment(&a, sa, &b, sb, &o))?;
    result(py, &r)
}

/// Adds the functions to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(functional_circuit_alignment_py, m)?)?;
    m.add_function(wrap_pyfunction!(plot, m)?)?;
    m.add_function(wrap_pyfunction!(report, m)?)?;
    m.add_function(wrap_pyfunction!(plot_png, m)?)?;
    m.add_function(wrap_pyfunction!(catalog_entries, m)?)?;
    m.add_function(wrap_pyfunction!(input_fields, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(contrast, m)?)?;
    m.add_function(wrap_pyfunction!(contrast_from_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(prompt, m)?)?;
    m.add_function(wrap_pyfunction!(faithfulness_py, m)?)?;
    m.add_function(wrap_pyfunction!(minimum_faithful_circuit_py, m)?)?;
    m.add_function(wrap_pyfunction!(composition_score_py, m)?)?;
    m.add_function(wrap_pyfunction!(task_prompts_py, m)?)?;
    m.add_function(wrap_pyfunction!(crate::cache::get_act_name, m)?)?;
    Ok(())
}
