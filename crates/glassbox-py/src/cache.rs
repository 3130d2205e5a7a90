//! `glassbox.ActivationCache`: a run's cached activations, dict-like over TransformerLens
//! names (`cache["blocks.3.attn.hook_pattern"]`, `cache["pattern", 3]`), with the library's
//! TransformerLens helpers (decompositions and stacks return `[components, batch, pos, d_model]`).

use std::sync::Arc;

use candle_core::Tensor;
use glassbox::{Decompose, Stack};
use numpy::PyArrayDyn;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::arrays::{from_numpy, to_numpy};
use crate::errors::{candle, input, IntoPy};
use crate::kwargs::Kwargs;

/// Cached activations of one run.
#[pyclass(module = "glassbox._native", frozen)]
pub struct ActivationCache {
    pub inner: glassbox::ActivationCache,
    pub model: Arc<glassbox::Model>,
    /// Real length of each prompt of the run.
    pub lengths: Vec<usize>,
    /// `run_with_cache(remove_batch_dim=True)` of one prompt: arrays read by name come
    /// without their batch axis (the stacking helpers keep it).
    pub remove_batch_dim: bool,
}

/// TransformerLens' `utils.get_act_name`: the full hook name from a short one and a layer
/// (`("pattern", 3)` → `blocks.3.attn.hook_pattern`; `("scale", 2, "ln1")` →
/// `blocks.2.ln1.hook_scale`; `("resid_post", 5)`; `"embed"`).
#[pyfunction]
#[pyo3(signature = (name, layer=None, layer_type=None))]
pub fn get_act_name(name: &str, layer: Option<usize>, layer_type: Option<&str>) -> PyResult<String> {
    let name = match name {
        "attn" => "pattern",
        "attn_logits" => "attn_scores",
        "key" => "k",
        "query" => "q",
        "value" => "v",
        "mlp_pre" => "pre",
        "mlp_post" => "post",
        n => n,
    };
    if name.contains("hook_") {
        return Ok(name.to_string());
    }
    let full = match (name, layer) {
        ("embed" | "pos_embed", _) => format!("hook_{name}"),
        ("scale" | "normalized", None) => format!("ln_final.hook_{name}"),
        ("scale" | "normalized", Some(l)) => match layer_type {
            Some(t @ ("ln1" | "ln2")) => format!("blocks.{l}.{t}.hook_{name}"),
            Some("attn") => format!("blocks.{l}.ln1.hook_{name}"),
            Some("mlp") => format!("blocks.{l}.ln2.hook_{name}"),
            _ => return Err(input(format!("{name} at a layer needs layer_type \"ln1\" or \"ln2\""))),
        },
        (_, None) => return Err(input(format!("the hook {name:?} needs a layer"))),
        ("q" | "k" | "v" | "z" | "rot_q" | "rot_k" | "pattern" | "attn_scores", Some(l)) => format!("blocks.{l}.attn.hook_{name}"),
        ("pre" | "post" | "pre_linear" | "router_logits" | "expert_weights", Some(l)) => format!("blocks.{l}.mlp.hook_{name}"),
        (_, Some(l)) => format!("blocks.{l}.hook_{name}"),
    };
    // Error on a name that names nothing.
    full.parse::<glassbox::HookPoint>().py_err()?;
    Ok(full)
}

/// The hook point of a cache key: a full name, or a `(short name, layer[, layer_type])` tuple
/// whose layer may count from the end (`("resid_post", -1)`: the last layer), as in Python.
fn key_point(key: &Bound<'_, PyAny>, n_layers: usize) -> PyResult<glassbox::HookPoint> {
    if let Ok(s) = key.cast::<PyString>() {
        return get_act_name(&s.to_cow()?, None, None)?.parse().py_err();
    }
    if let Ok(t) = key.cast::<PyTuple>() {
        let name: String = t.get_item(0)?.extract()?;
        let layer: Option<i64> = if t.len() > 1 { t.get_item(1)?.extract()? } else { None };
        let layer = layer
            .map(|l| {
                let j = if l < 0 { l + n_layers as i64 } else { l };
                usize::try_from(j).ok().filter(|&j| j < n_layers).ok_or_else(|| input(format!("layer {l} is out of range for a model of {n_layers} layers")))
            })
            .transpose()?;
        let layer_type: Option<String> = if t.len() > 2 { t.get_item(2)?.extract()? } else { None };
        return get_act_name(&name, layer, layer_type.as_deref())?.parse().py_err();
    }
    Err(PyKeyError::new_err("a cache key is a hook name or a (name, layer) tuple"))
}

/// `None`, an int or a list of ints: the positions to keep. An int drops the position axis
/// from what the helper returns (TransformerLens' `pos_slice=-1`); see `is_single`.
fn positions(pos_slice: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Option<Vec<usize>>> {
    let Some(p) = pos_slice else { return Ok(None) };
    if p.is_none() {
        return Ok(None);
    }
    let wrap = |i: i64| -> PyResult<usize> {
        let j = if i < 0 { i + n as i64 } else { i };
        usize::try_from(j).ok().filter(|&j| j < n).ok_or_else(|| input(format!("position {i} is out of range for {n} positions")))
    };
    if let Ok(i) = p.extract::<i64>() {
        return Ok(Some(vec![wrap(i)?]));
    }
    let list: Vec<i64> = p.extract().map_err(|_| input("pos_slice is an int or a list of ints"))?;
    Ok(Some(list.into_iter().map(wrap).collect::<PyResult<_>>()?))
}

/// A stack of rank 3 (`[components, batch, d_model]`: no position axis) with a position axis
/// of 1 added, and whether it was added.
fn positionless(t: Tensor) -> PyResult<(Tensor, bool)> {
    match t.rank() {
        3 => Ok((t.unsqueeze(2).map_err(candle)?, true)),
        _ => Ok((t, false)),
    }
}

/// Whether `pos_slice` is one int (the position axis is then dropped from the result).
fn is_single(pos_slice: Option<&Bound<'_, PyAny>>) -> bool {
    pos_slice.is_some_and(|p| !p.is_none() && p.extract::<i64>().is_ok())
}

/// TransformerLens' `layer` argument of the stacking helpers: `None` or -1 for every layer
/// (and the final stream), another negative counting back from that.
fn up_to_layer(layer: Option<i64>, n_layers: usize) -> PyResult<Option<usize>> {
    match layer {
        None | Some(-1) => Ok(None),
        Some(l) => {
            let j = if l < 0 { l + n_layers as i64 + 1 } else { l };
            usize::try_from(j).ok().filter(|&j| j <= n_layers).map(Some).ok_or_else(|| input(format!("layer {l} is out of range for a model of {n_layers} layers")))
        }
    }
}

/// `t` without its axis `axis` when `drop` (it has length 1 there).
fn drop_axis(t: Tensor, axis: usize, drop: bool) -> PyResult<Tensor> {
    if drop {
        t.squeeze(axis).map_err(candle)
    } else {
        Ok(t)
    }
}

impl ActivationCache {
    /// A cached activation as numpy, without its batch axis under `remove_batch_dim`.
    fn array<'py>(&self, py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        to_numpy(py, &drop_axis(t.clone(), 0, self.remove_batch_dim)?)
    }

    /// The last position of the run (the longest prompt's last token).
    fn last_position(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(1).saturating_sub(1)
    }

    fn sliced(&self, pos_slice: Option<&Bound<'_, PyAny>>) -> PyResult<glassbox::ActivationCache> {
        let n = self.lengths.iter().copied().max().unwrap_or(0);
        match positions(pos_slice, n)? {
            None => Ok(self.inner.clone()),
            Some(p) => self.inner.at_positions(&p).py_err(),
        }
    }

    /// A stack `[components, batch, pos, ...]` as numpy, without its position axis when
    /// `single` (an int `pos_slice`), with its labels when `return_labels`.
    fn stack_out<'py>(&self, py: Python<'py>, stack: Stack, return_labels: bool, single: bool) -> PyResult<Bound<'py, PyAny>> {
        let arr = to_numpy(py, &drop_axis(stack.tensor, 2, single)?)?.into_any();
        if return_labels {
            Ok(PyTuple::new(py, [arr, PyList::new(py, &stack.labels)?.into_any()])?.into_any())
        } else {
            Ok(arr)
        }
    }

    fn token_id(&self, t: &Bound<'_, PyAny>) -> PyResult<u32> {
        match t.extract::<u32>() {
            Ok(id) => Ok(id),
            Err(_) => self.model.answer_token(&t.extract::<String>()?).py_err(),
        }
    }
}

#[pymethods]
impl ActivationCache {
    /// The activation at a hook: `cache["blocks.3.attn.hook_pattern"]` or `cache["pattern", 3]`.
    fn __getitem__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let point = key_point(key, self.model.config().n_layers)?;
        match self.inner.values.get(&point) {
            Some(t) => self.array(py, t),
            None => Err(PyKeyError::new_err(format!("{point} was not cached in this run (names_filter)"))),
        }
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> bool {
        key_point(key, self.model.config().n_layers).is_ok_and(|p| self.inner.values.contains_key(&p))
    }

    fn __len__(&self) -> usize {
        self.inner.values.len()
    }

    /// The cached hook names, in forward order.
    fn keys(&self) -> Vec<String> {
        glassbox::HookPoint::all_for(self.model.config()).into_iter().filter(|p| self.inner.values.contains_key(p)).map(|p| p.to_string()).collect()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, self.keys())?.as_any().try_iter().map(Bound::into_any)
    }

    /// `(name, array)` pairs, in forward order.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, Bound<'py, PyArrayDyn<f32>>)>> {
        self.keys()
            .into_iter()
            .map(|k| {
                let p: glassbox::HookPoint = k.parse().py_err()?;
                Ok((k, self.array(py, &self.inner.values[&p])?))
            })
            .collect()
    }

    /// The arrays, in forward order.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyArrayDyn<f32>>>> {
        Ok(self.items(py)?.into_iter().map(|(_, v)| v).collect())
    }

    /// The cache restricted to some positions (an int or a list; negative from the end).
    fn at_positions(&self, positions: &Bound<'_, PyAny>) -> PyResult<ActivationCache> {
        let inner = self.sliced(Some(positions))?;
        let n = self.lengths.iter().copied().max().unwrap_or(0);
        let kept = self::positions(Some(positions), n)?.map_or(n, |p| p.len());
        Ok(ActivationCache { inner, model: self.model.clone(), lengths: vec![kept; self.lengths.len()], remove_batch_dim: self.remove_batch_dim })
    }

    /// The cache restricted to some batch rows.
    fn batch_rows(&self, rows: Vec<usize>) -> PyResult<ActivationCache> {
        let inner = self.inner.batch_rows(&rows).py_err()?;
        let lengths: Vec<usize> = rows.iter().map(|&r| self.lengths[r]).collect();
        Ok(ActivationCache { inner, model: self.model.clone(), remove_batch_dim: self.remove_batch_dim && lengths.len() == 1, lengths })
    }

    /// The residual stream entering each layer up to and including `layer` (as TransformerLens:
    /// `layer + 1` streams; all, plus the final stream, for None, -1 or n_layers; another
    /// negative counts back), with `resid_mid` when `incl_mid`, through the frozen final norm
    /// when `apply_ln`: `[components, batch, pos, d_model]`, without the position axis for an
    /// int `pos_slice` (and the labels when `return_labels`).
    #[pyo3(signature = (layer=None, incl_mid=false, apply_ln=false, pos_slice=None, return_labels=false))]
    fn accumulated_resid<'py>(&self, py: Python<'py>, layer: Option<i64>, incl_mid: bool, apply_ln: bool, pos_slice: Option<&Bound<'py, PyAny>>, return_labels: bool) -> PyResult<Bound<'py, PyAny>> {
        // TransformerLens' `layer` includes that layer's `resid_pre` (`layer + 1` streams); the
        // library's counts the layers before it.
        let n_layers = self.model.config().n_layers;
        let layer = up_to_layer(layer, n_layers)?.map(|l| l + 1).filter(|&l| l <= n_layers);
        let c = self.sliced(pos_slice)?;
        let mut stack = py.detach(|| c.accumulated_resid(&self.model, layer, incl_mid, apply_ln)).py_err()?;
        if incl_mid && layer.is_some() {
            // TransformerLens stops at `layer`'s resid_pre: without that layer's resid_mid.
            let keep = stack.labels.len() - 1;
            stack.labels.truncate(keep);
            stack.tensor = stack.tensor.narrow(0, 0, keep).map_err(candle)?;
        }
        self.stack_out(py, stack, return_labels, is_single(pos_slice))
    }

    /// The residual stream at `layer` as the sum of its parts: embeddings (when
    /// `incl_embeds`) and each earlier block's attention and MLP outputs (`mode`: `all`,
    /// `attn` or `mlp`).
    #[pyo3(signature = (layer=None, mode="all", **kwargs))]
    fn decompose_resid<'py>(&self, py: Python<'py>, layer: Option<i64>, mode: &str, kwargs: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let mut kw = Kwargs::new(kwargs, "decompose_resid");
        let apply_ln: bool = kw.or("apply_ln", false)?;
        let pos_slice = kw.object("pos_slice")?;
        let incl_embeds: bool = kw.or("incl_embeds", true)?;
        let return_labels: bool = kw.or("return_labels", false)?;
        kw.finish()?;
        let mode = match mode {
            "all" => Decompose::All,
            "attn" => Decompose::Attn,
            "mlp" => Decompose::Mlp,
            other => return Err(input(format!("mode {other:?} is not all, attn or mlp"))),
        };
        let layer = up_to_layer(layer, self.model.config().n_layers)?;
        let c = self.sliced(pos_slice.as_ref())?;
        let stack = py.detach(|| c.decompose_resid(&self.model, layer, mode, apply_ln, incl_embeds)).py_err()?;
        self.stack_out(py, stack, return_labels, is_single(pos_slice.as_ref()))
    }

    /// Each head's output as it joins the residual stream (labels `L{l}H{h}`), for the layers
    /// before `layer`; `incl_remainder` adds everything else as one component.
    #[pyo3(signature = (layer=None, return_labels=false, incl_remainder=false, pos_slice=None, apply_ln=false))]
    fn stack_head_results<'py>(&self, py: Python<'py>, layer: Option<i64>, return_labels: bool, incl_remainder: bool, pos_slice: Option<&Bound<'py, PyAny>>, apply_ln: bool) -> PyResult<Bound<'py, PyAny>> {
        let layer = up_to_layer(layer, self.model.config().n_layers)?;
        let c = self.sliced(pos_slice)?;
        let stack = py.detach(|| c.stack_head_results(&self.model, layer, apply_ln, incl_remainder)).py_err()?;
        self.stack_out(py, stack, return_labels, is_single(pos_slice))
    }

    /// Each MLP neuron's output as it joins the stream (labels `L{l}N{n}`); large, so give a
    /// `pos_slice`.
    #[pyo3(signature = (layer=None, return_labels=false, incl_remainder=false, pos_slice=None, apply_ln=false))]
    fn stack_neuron_results<'py>(&self, py: Python<'py>, layer: Option<i64>, return_labels: bool, incl_remainder: bool, pos_slice: Option<&Bound<'py, PyAny>>, apply_ln: bool) -> PyResult<Bound<'py, PyAny>> {
        let layer = up_to_layer(layer, self.model.config().n_layers)?;
        let c = self.sliced(pos_slice)?;
        let stack = py.detach(|| c.stack_neuron_results(&self.model, layer, apply_ln, incl_remainder)).py_err()?;
        self.stack_out(py, stack, return_labels, is_single(pos_slice))
    }

    /// A stack `[components, batch, pos, d_model]` through the final norm with the run's scale
    /// frozen (linear, so the parts still sum to the normalised stream).
    #[pyo3(signature = (residual_stack, pos_slice=None))]
    fn apply_ln_to_stack<'py>(&self, py: Python<'py>, residual_stack: &Bound<'py, PyAny>, pos_slice: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        // A stack without its position axis (`[components, batch, d_model]`, from an int
        // `pos_slice`) goes through as one position.
        let (t, no_pos) = positionless(from_numpy(residual_stack, "the residual stack")?)?;
        let n = t.dim(0).map_err(candle)?;
        let stack = Stack { tensor: t, labels: (0..n).map(|i| i.to_string()).collect() };
        let c = match pos_slice.filter(|p| !p.is_none()) {
            None if no_pos => self.inner.at_positions(&[self.last_position()]).py_err()?,
            _ => self.sliced(pos_slice)?,
        };
        let out = py.detach(|| c.apply_ln_to_stack(&self.model, &stack)).py_err()?;
        to_numpy(py, &drop_axis(out.tensor, 2, no_pos || is_single(pos_slice))?)
    }

    /// Each component's logit of `tokens` (minus `incorrect_tokens`' when given) at every
    /// batch row and position: `[components, batch, pos]`. On a stack through
    /// `apply_ln_to_stack` these are the direct effects. Tokens are ids or one-token strings.
    #[pyo3(signature = (residual_stack, tokens, incorrect_tokens=None))]
    fn logit_attrs<'py>(&self, py: Python<'py>, residual_stack: &Bound<'py, PyAny>, tokens: &Bound<'py, PyAny>, incorrect_tokens: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (t, no_pos) = positionless(from_numpy(residual_stack, "the residual stack")?)?;
        let n = t.dim(0).map_err(candle)?;
        let stack = Stack { tensor: t, labels: (0..n).map(|i| i.to_string()).collect() };
        let token = self.token_id(tokens)?;
        let incorrect = incorrect_tokens.map(|i| self.token_id(i)).transpose()?;
        // Without a position axis the stack is read at the last position of each prompt.
        let cache = if no_pos { self.inner.at_positions(&[self.last_position()]).py_err()? } else { self.inner.clone() };
        let out = py.detach(|| cache.logit_attrs(&self.model, &stack, token, incorrect)).py_err()?;
        to_numpy(py, &drop_axis(out, 2, no_pos)?)
    }

    fn __repr__(&self) -> String {
        format!("ActivationCache({} hook points, {} prompts)", self.inner.values.len(), self.lengths.len())
    }
}
