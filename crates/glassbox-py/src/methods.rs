//! Every method of the library as a function of the model, its input and an options dict
//! (the library's option structs through serde; missing keys take their defaults), returning
//! the library's result as plain Python objects. The GIL is released while they compute.

use glassbox::inputs::{Contrast, Prompt};
use glassbox::methods::analyze::{analyze, analyze_set, AnalyzeOptions, SetOptions};
use glassbox::methods::attention::{attention_patterns, AttentionOptions};
use glassbox::methods::attribution::{attribute, AttributionOptions};
use glassbox::methods::circuit::{minimum_faithful_circuit, CircuitOptions};
use glassbox::methods::composition::{all_composition_scores, composition_score, CompositionOptions, Kind};
use glassbox::methods::edges::{edge_attribution, EdgeOptions};
use glassbox::methods::faithfulness::{faithfulness, Circuit, CircuitEvaluator, EvaluatorOptions};
use glassbox::methods::logit_lens::{logit_lens, LogitLensOptions};
use glassbox::methods::patching::{exact_patching, PatchingOptions};
use glassbox::methods::path_patching::{path_patching, PathPatchingOptions};
use glassbox::methods::scrubbing::{causal_scrubbing, ScrubOptions, ScrubPrompt};
use glassbox::methods::stability::{attribution_stability, StabilityOptions};
use glassbox::methods::token_attribution::{token_attribution, TokenAttributionOptions};
use glassbox::methods::{Head, Metric};
use pyo3::prelude::*;
use pyo3::types::PyString;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::errors::{input, IntoPy};
use crate::model::{tokens_of, Model};

/// Options from a dict (None: the defaults), with serde's message naming a wrong key.
fn opts_of<T: DeserializeOwned + Default>(o: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<T> {
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

/// `analyze`: attribution, the minimum faithful circuit and its exact faithfulness.
#[pyfunction(name = "analyze")]
#[pyo3(signature = (model, contrast, options=None))]
fn analyze_py<'py>(py: Python<'py>, model: &Model, contrast: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (c, o): (Contrast, AnalyzeOptions) = (value(contrast, "contrast")?, opts_of(options, "analyze options")?);
    let r = compute(py, || analyze(&model.inner, &c, &o))?;
    result(py, &r)
}

/// `analyze_set`: the same over several contrasts, with bootstrap intervals.
#[pyfunction(name = "analyze_set")]
#[pyo3(signature = (model, contrasts, options=None))]
fn analyze_set_py<'py>(py: Python<'py>, model: &Model, contrasts: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (c, o): (Vec<Contrast>, SetOptions) = (value(contrasts, "contrasts")?, opts_of(options, "set options")?);
    let r = compute(py, || analyze_set(&model.inner, &c, &o, &mut |_, _, _| {}))?;
    result(py, &r)
}

/// Attribution patching (Taylor) or integrated gradients per head, MLP or attention output.
#[pyfunction(name = "attribute")]
#[pyo3(signature = (model, contrast, options=None))]
fn attribute_py<'py>(py: Python<'py>, model: &Model, contrast: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (c, o): (Contrast, AttributionOptions) = (value(contrast, "contrast")?, opts_of(options, "attribution options")?);
    let r = compute(py, || attribute(&model.inner, &c, &o))?;
    result(py, &r)
}

/// Edge attribution patching (EAP or EAP-IG).
#[pyfunction(name = "edge_attribution")]
#[pyo3(signature = (model, contrast, options=None))]
fn edge_attribution_py<'py>(py: Python<'py>, model: &Model, contrast: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (c, o): (Contrast, EdgeOptions) = (value(contrast, "contrast")?, opts_of(options, "edge options")?);
    let r = compute(py, || edge_attribution(&model.inner, &c, &o))?;
    result(py, &r)
}

/// Exact activation patching of every head and MLP.
#[pyfunction(name = "exact_patching")]
#[pyo3(signature = (model, contrast, options=None))]
fn exact_patching_py<'py>(py: Python<'py>, model: &Model, contrast: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (c, o): (Contrast, PatchingOptions) = (value(contrast, "contrast")?, opts_of(options, "patching options")?);
    let r = compute(py, || exact_patching(&model.inner, &c, &o))?;
    result(py, &r)
}

/// Path patching from every earlier head to a receiver.
#[pyfunction(name = "path_patching")]
#[pyo3(signature = (model, contrast, options=None))]
fn path_patching_py<'py>(py: Python<'py>, model: &Model, contrast: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (c, o): (Contrast, PathPatchingOptions) = (value(contrast, "contrast")?, opts_of(options, "path patching options")?);
    let r = compute(py, || path_patching(&model.inner, &c, &o))?;
    result(py, &r)
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

/// The logit lens with per-head and per-MLP direct effects.
#[pyfunction(name = "logit_lens")]
#[pyo3(signature = (model, prompt, options=None))]
fn logit_lens_py<'py>(py: Python<'py>, model: &Model, prompt: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (p, o): (Prompt, LogitLensOptions) = (value(prompt, "prompt")?, opts_of(options, "logit lens options")?);
    let r = compute(py, || logit_lens(&model.inner, &p, &o))?;
    result(py, &r)
}

/// Token saliency: gradient × input or integrated gradients.
#[pyfunction(name = "token_attribution")]
#[pyo3(signature = (model, prompt, options=None))]
fn token_attribution_py<'py>(py: Python<'py>, model: &Model, prompt: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (p, o): (Prompt, TokenAttributionOptions) = (value(prompt, "prompt")?, opts_of(options, "token attribution options")?);
    let r = compute(py, || token_attribution(&model.inner, &p, &o))?;
    result(py, &r)
}

/// Attribution stability across random corruptions (Kendall τ-b).
#[pyfunction(name = "attribution_stability")]
#[pyo3(signature = (model, prompt, options=None))]
fn attribution_stability_py<'py>(py: Python<'py>, model: &Model, prompt: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (p, o): (Prompt, StabilityOptions) = (value(prompt, "prompt")?, opts_of(options, "stability options")?);
    let r = compute(py, || attribution_stability(&model.inner, &p, &o))?;
    result(py, &r)
}

/// Attention patterns, entropy and head types of a prompt (a string or token ids).
#[pyfunction(name = "attention_patterns")]
#[pyo3(signature = (model, tokens, options=None))]
fn attention_patterns_py<'py>(py: Python<'py>, model: &Model, tokens: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (t, o): (Vec<u32>, AttentionOptions) = (tokens_of(&model.inner, tokens)?, opts_of(options, "attention options")?);
    let r = compute(py, || attention_patterns(&model.inner, &t, &o))?;
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

/// Q/K/V composition scores between every ordered pair of a circuit's heads.
#[pyfunction(name = "all_composition_scores")]
#[pyo3(signature = (model, circuit, options=None))]
fn all_composition_scores_py<'py>(py: Python<'py>, model: &Model, circuit: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (heads, o): (Vec<Head>, CompositionOptions) = (value(circuit, "circuit")?, opts_of(options, "composition options")?);
    let r = compute(py, || all_composition_scores(&model.inner, &heads, &o))?;
    result(py, &r)
}

/// Causal scrubbing of a head → feature hypothesis over prompts with features.
#[pyfunction(name = "causal_scrubbing")]
#[pyo3(signature = (model, prompts, options=None))]
fn causal_scrubbing_py<'py>(py: Python<'py>, model: &Model, prompts: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let (p, o): (Vec<ScrubPrompt>, ScrubOptions) = (value(prompts, "prompts")?, opts_of(options, "scrubbing options")?);
    let r = compute(py, || causal_scrubbing(&model.inner, &p, &o))?;
    result(py, &r)
}

/// `n` generated IOI prompts (Wang et al. 2022 templates; `corruption` `name_swap` or `abc`)
/// as `(prompts, contrasts, scrub_prompts)`: the texts, the contrasts `analyze_set` takes and
/// the prompts with features (`io`, `subject`, `template`, `order`) `causal_scrubbing` takes.
#[pyfunction(name = "ioi_prompts")]
#[pyo3(signature = (model, n, seed=0, corruption="name_swap"))]
fn ioi_prompts_py<'py>(py: Python<'py>, model: &Model, n: usize, seed: u64, corruption: &str) -> PyResult<Bound<'py, PyAny>> {
    use glassbox::tasks::ioi;
    let corruption: ioi::Corruption = corruption.parse().py_err()?;
    let m = &model.inner;
    let (prompts, contrasts, scrub) = compute(py, || {
        let prompts = ioi::generate(m, n, seed, corruption)?;
        let contrasts = ioi::contrasts(m, &prompts)?;
        let scrub = ioi::scrub_prompts(m, &prompts)?;
        Ok((prompts, contrasts, scrub))
    })?;
    result(py, &(prompts, contrasts, scrub))
}

/// Adds the functions to the module.
/// The picture of a result as an SVG document: `kind` is the method (`analyze`,
/// `attribution`, `patch`, `path-patch`, `logit-lens`, `attention`, `edges`,
/// `token-attribution`, `stability`, `composition`), `result` what that method returned (as
/// the native functions return it), `head_types` colours an analysis's circuit by head type.
#[pyfunction]
#[pyo3(signature = (kind, result, head_types=None))]
fn plot(py: Python<'_>, kind: &str, result: &Bound<'_, PyAny>, head_types: Option<std::collections::BTreeMap<String, String>>) -> PyResult<String> {
    let v: serde_json::Value = value(result, "result")?;
    compute(py, || glassbox::plot::plot_value(kind, &v, head_types.as_ref()).map(|s| s.finish()))
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(functional_circuit_alignment_py, m)?)?;
    m.add_function(wrap_pyfunction!(plot, m)?)?;
    m.add_function(wrap_pyfunction!(contrast, m)?)?;
    m.add_function(wrap_pyfunction!(contrast_from_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(prompt, m)?)?;
    m.add_function(wrap_pyfunction!(analyze_py, m)?)?;
    m.add_function(wrap_pyfunction!(analyze_set_py, m)?)?;
    m.add_function(wrap_pyfunction!(attribute_py, m)?)?;
    m.add_function(wrap_pyfunction!(edge_attribution_py, m)?)?;
    m.add_function(wrap_pyfunction!(exact_patching_py, m)?)?;
    m.add_function(wrap_pyfunction!(path_patching_py, m)?)?;
    m.add_function(wrap_pyfunction!(faithfulness_py, m)?)?;
    m.add_function(wrap_pyfunction!(minimum_faithful_circuit_py, m)?)?;
    m.add_function(wrap_pyfunction!(logit_lens_py, m)?)?;
    m.add_function(wrap_pyfunction!(token_attribution_py, m)?)?;
    m.add_function(wrap_pyfunction!(attribution_stability_py, m)?)?;
    m.add_function(wrap_pyfunction!(attention_patterns_py, m)?)?;
    m.add_function(wrap_pyfunction!(composition_score_py, m)?)?;
    m.add_function(wrap_pyfunction!(all_composition_scores_py, m)?)?;
    m.add_function(wrap_pyfunction!(causal_scrubbing_py, m)?)?;
    m.add_function(wrap_pyfunction!(ioi_prompts_py, m)?)?;
    m.add_function(wrap_pyfunction!(crate::cache::get_act_name, m)?)?;
    Ok(())
}
