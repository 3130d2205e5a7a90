//! Hooks from Python: `glassbox.HookPoint` (what a hook function receives), declarative
//! `glassbox.Intervention`s, Python hook functions as actions, and the hook points a name,
//! a list or a filter function selects (with TransformerLens' `set_use_attn_result`-style
//! switches for the points computed only on request).

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use glassbox::model::hooks::CacheSpec;
use glassbox::{Action, Hooks};
use numpy::PyArrayMethods;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::arrays::{from_numpy, to_numpy};
use crate::errors::{input as input_error, IntoPy};

/// A hook point as a Python hook function sees it: `hook.name` is the TransformerLens name.
#[pyclass(module = "glassbox._native", frozen)]
pub struct HookPoint {
    pub inner: glassbox::HookPoint,
}

#[pymethods]
impl HookPoint {
    /// Parses a TransformerLens name (`blocks.3.attn.hook_z`).
    #[new]
    fn new(name: &str) -> PyResult<Self> {
        Ok(HookPoint { inner: name.parse().py_err()? })
    }
    /// The TransformerLens name.
    #[getter]
    fn name(&self) -> String {
        self.inner.to_string()
    }
    /// The block the point is in (`None` for embeddings and the final norm).
    fn layer(&self) -> Option<usize> {
        self.inner.layer()
    }
    fn __repr__(&self) -> String {
        format!("HookPoint({:?})", self.inner.to_string())
    }
    fn __str__(&self) -> String {
        self.inner.to_string()
    }
}

/// A declarative intervention, run inside the forward without calling back into Python:
/// `action` is `zero`, `mean` (over the batch), `replace` or `add` (with `value`, broadcast to
/// the hook's shape), restricted to `heads`, `positions` and `batch` rows when given.
#[pyclass(module = "glassbox._native", frozen)]
#[derive(Clone)]
pub struct Intervention {
    pub inner: glassbox::Intervention,
}

#[pymethods]
impl Intervention {
    #[new]
    #[pyo3(signature = (hook, action, value=None, heads=None, positions=None, batch=None))]
    fn new(
        hook: &str,
        action: &str,
        value: Option<&Bound<'_, PyAny>>,
        heads: Option<Vec<usize>>,
        positions: Option<Vec<usize>>,
        batch: Option<Vec<usize>>,
    ) -> PyResult<Self> {
        let point: glassbox::HookPoint = hook.parse().py_err()?;
        let action = match (action, value) {
            ("zero", None) => Action::Zero,
            ("mean", None) => Action::MeanOverBatch,
            ("replace", Some(v)) => Action::Replace(from_numpy(v, "the replacement value")?),
            ("add", Some(v)) => Action::Add(from_numpy(v, "the added value")?),
            ("zero" | "mean", Some(_)) => return Err(input_error(format!("the {action} intervention takes no value"))),
            ("replace" | "add", None) => return Err(input_error(format!("the {action} intervention needs a value (an array)"))),
            (other, _) => return Err(input_error(format!("unknown intervention {other:?}; use zero, mean, replace or add"))),
        };
        let mut i = glassbox::Intervention::new(point, action);
        i.heads = heads;
        i.positions = positions;
        i.batch = batch;
        Ok(Intervention { inner: i })
    }
    fn __repr__(&self) -> String {
        let a = match &self.inner.action {
            Action::Zero => "zero",
            Action::MeanOverBatch => "mean",
            Action::Replace(_) => "replace",
            Action::Add(_) => "add",
            Action::Closure(_) => "closure",
        };
        format!("Intervention({:?}, {a:?}, heads={:?}, positions={:?}, batch={:?})", self.inner.point.to_string(), self.inner.heads, self.inner.positions, self.inner.batch)
    }
}

/// TransformerLens' switches (`set_use_attn_result`, `set_use_attn_in`,
/// `set_use_split_qkv_input`): which points computed only on request a filter function and
/// `names_filter=None` see. A hook named in full runs whatever the switches say.
pub const USE_ATTN_RESULT: u8 = 1;
/// `hook_attn_in` (see `USE_ATTN_RESULT`).
pub const USE_ATTN_IN: u8 = 2;
/// `hook_q_input`, `hook_k_input`, `hook_v_input` (see `USE_ATTN_RESULT`).
pub const USE_SPLIT_QKV_INPUT: u8 = 4;

/// The hook points a filter function or `names_filter=None` considers: every point of the
/// model, with those computed only on request where `uses` switches them on. With per-head
/// attention inputs on, ln1's hooks are left out: the norm then runs once per head (where
/// TransformerLens gives `ln1.hook_scale` a head axis).
fn candidate_points(model: &glassbox::Model, uses: u8) -> Vec<glassbox::HookPoint> {
    use glassbox::HookPoint as P;
    let per_head = uses & (USE_ATTN_IN | USE_SPLIT_QKV_INPUT) != 0;
    glassbox::HookPoint::all_with_requested(model.config())
        .into_iter()
        .filter(|p| match p {
            P::Result(_) => uses & USE_ATTN_RESULT != 0,
            P::AttnIn(_) => uses & USE_ATTN_IN != 0,
            P::QInput(_) | P::KInput(_) | P::VInput(_) => uses & USE_SPLIT_QKV_INPUT != 0,
            P::Ln1Scale(_) | P::Ln1Normalized(_) => !per_head,
            _ => true,
        })
        .collect()
}

/// A Python exception raised inside a hook function, kept for the caller to re-raise.
pub type ErrorSlot = Arc<Mutex<Option<PyErr>>>;

/// The hook points a `fwd_hooks` entry names: a TransformerLens name, or a filter function of
/// the name (TransformerLens' `name_filter`).
fn points_named(model: &glassbox::Model, spec: &Bound<'_, PyAny>, uses: u8) -> PyResult<Vec<glassbox::HookPoint>> {
    if let Ok(s) = spec.cast::<PyString>() {
        let p: glassbox::HookPoint = s.to_cow()?.parse().py_err()?;
        p.check(model.config()).py_err()?;
        return Ok(vec![p]);
    }
    if spec.is_callable() {
        let mut out = Vec::new();
        for p in candidate_points(model, uses) {
            if spec.call1((p.to_string(),))?.is_truthy()? {
                out.push(p);
            }
        }
        return Ok(out);
    }
    Err(PyTypeError::new_err("a hook is named by a string (blocks.3.attn.hook_z) or a filter function of the name"))
}

/// An `Action::Closure` that calls `func(activation, hook)` with the GIL held: `None` keeps the
/// activation (with any in-place change to the array it was given), an array replaces it
/// (same shape). An exception inside `func` stops the run and is re-raised as it was.
fn python_action(func: Py<PyAny>, slot: ErrorSlot) -> Action {
    Action::closure(move |x: &Tensor, point: glassbox::HookPoint| -> glassbox::Result<Tensor> {
        Python::attach(|py| {
            let fail = |e: PyErr, slot: &ErrorSlot| {
                if let Ok(mut s) = slot.lock() {
                    s.get_or_insert(e);
                }
                glassbox::Error::Intervention { point: point.to_string(), detail: "the Python hook raised an exception".into() }
            };
            let arr = to_numpy(py, x).map_err(|e| fail(e, &slot))?;
            let before: Vec<f32> = arr.readonly().as_slice().map(<[f32]>::to_vec).unwrap_or_default();
            let hook = Py::new(py, HookPoint { inner: point }).map_err(|e| fail(e, &slot))?;
            let ret = func.call1(py, (arr.clone(), hook)).map_err(|e| fail(e, &slot))?;
            let (new, what) = if ret.is_none(py) {
                // TransformerLens semantics: an in-place edit of the array counts.
                let after = arr.readonly();
                let after = after.as_slice().map_err(|e| fail(e.into(), &slot))?;
                if after == before.as_slice() {
                    return Ok(x.clone());
                }
                (from_numpy(arr.as_any(), "the array the hook edited").map_err(|e| fail(e, &slot))?, "edited")
            } else {
                (from_numpy(ret.bind(py), "the array the hook returned").map_err(|e| fail(e, &slot))?, "returned")
            };
            if new.dims() != x.dims() {
                return Err(glassbox::Error::Intervention {
                    point: point.to_string(),
                    detail: format!("the hook {what} an array of shape {:?}; the activation has shape {:?}", new.dims(), x.dims()),
                });
            }
            Ok(new.to_dtype(x.dtype())?)
        })
    })
}

/// Hooks from `fwd_hooks` (Python functions) and `interventions`, plus what to cache.
pub fn build_hooks(model: &glassbox::Model, fwd_hooks: Option<&Bound<'_, PyAny>>, interventions: Option<Vec<Intervention>>, slot: &ErrorSlot, uses: u8) -> PyResult<Hooks> {
    let mut hooks = Hooks::new();
    for i in interventions.unwrap_or_default() {
        i.inner.point.check(model.config()).py_err()?;
        hooks = hooks.intervene(i.inner);
    }
    if let Some(list) = fwd_hooks {
        for item in list.try_iter()? {
            let item = item?;
            let pair = item.cast::<PyTuple>().map_err(|_| PyTypeError::new_err("fwd_hooks is a list of (name or filter, function) pairs"))?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err("fwd_hooks is a list of (name or filter, function) pairs"));
            }
            let func = pair.get_item(1)?;
            if !func.is_callable() {
                return Err(PyTypeError::new_err("the second item of a fwd_hooks pair must be a function (activation, hook) -> array or None"));
            }
            for p in points_named(model, &pair.get_item(0)?, uses)? {
                hooks = hooks.intervene(glassbox::Intervention::new(p, python_action(func.clone().unbind(), slot.clone())));
            }
        }
    }
    Ok(hooks)
}

/// Re-raises the exception a Python hook raised, if one did; else the library's error.
pub fn raise(e: glassbox::Error, slot: &ErrorSlot) -> PyErr {
    match slot.lock().ok().and_then(|mut s| s.take()) {
        Some(py_err) => py_err,
        None => crate::errors::to_py(e),
    }
}

/// The points `names_filter` selects: all (None), a name, a list of names, or a filter function.
pub fn cache_points(model: &glassbox::Model, names_filter: Option<&Bound<'_, PyAny>>, uses: u8) -> PyResult<CacheSpec> {
    let Some(f) = names_filter.filter(|f| !f.is_none()) else {
        return Ok(if uses == 0 { CacheSpec::All } else { CacheSpec::Only(candidate_points(model, uses).into_iter().collect()) });
    };
    let points: Vec<glassbox::HookPoint> = if let Ok(list) = f.cast::<PyList>() {
        let mut v = Vec::new();
        for name in list.iter() {
            v.extend(points_named(model, &name, uses)?);
        }
        v
    } else {
        points_named(model, f, uses)?
    };
    Ok(CacheSpec::Only(points.into_iter().collect()))
}

