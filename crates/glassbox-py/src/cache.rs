//! `glassbox.ActivationCache`: a run's cached activations, dict-like over TransformerLens
//! names (`cache["blocks.3.attn.hook_pattern"]`, `cache["pattern", 3]`), with the library's
//! TransformerLens helpers (decompositions and stacks return `[components, batch, pos, d_model]`).

use std::sync::Arc;

use candle_core::Tensor;
use glassbox::{Decompose, HookPoint, Stack, StackNorm};
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
    /// `run_with_cache(remove_batch_dim=True)` of one prompt: arrays read by name and the
    /// stacking helpers' stacks come without their batch axis, and stacks handed in have none.
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
        ("q" | "k" | "v" | "z" | "result" | "rot_q" | "rot_k" | "pattern" | "attn_scores", Some(l)) => format!("blocks.{l}.attn.hook_{name}"),
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

/// `None`, an int or a list of ints (negative from the end) as indices below `n`: `what` names
/// the argument and what it counts in errors (`("pos_slice", "positions")`).
fn indices(arg: Option<&Bound<'_, PyAny>>, n: usize, what: (&str, &str)) -> PyResult<Option<Vec<usize>>> {
    let Some(p) = arg.filter(|p| !p.is_none()) else { return Ok(None) };
    let wrap = |i: i64| -> PyResult<usize> {
        let j = if i < 0 { i + n as i64 } else { i };
        usize::try_from(j).ok().filter(|&j| j < n).ok_or_else(|| input(format!("{} {i} is out of range for {n} {}", what.0, what.1)))
    };
    if let Ok(i) = p.extract::<i64>() {
        return Ok(Some(vec![wrap(i)?]));
    }
    let list: Vec<i64> = p.extract().map_err(|_| input(format!("{} is an int or a list of ints", what.0)))?;
    Ok(Some(list.into_iter().map(wrap).collect::<PyResult<_>>()?))
}

/// The positions `pos_slice` keeps. An int drops the position axis from what the helper
/// returns (TransformerLens' `pos_slice=-1`); see `is_single`.
fn positions(pos_slice: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Option<Vec<usize>>> {
    indices(pos_slice, n, ("pos_slice", "positions"))
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

/// The norm convention of the stacking helpers' `apply_ln` (`StackNorm`): TransformerLens'
/// frozen scale without the weight unless `apply_weight`, or the recomputed final norm.
fn stack_norm(recompute_ln: bool, apply_weight: bool) -> PyResult<StackNorm> {
    match (recompute_ln, apply_weight) {
        (true, true) => Err(input("recompute_ln applies the final norm whole (weight and bias included); apply_weight is for the frozen scale: give one of them")),
        (true, false) => Ok(StackNorm::Recomputed),
        (false, true) => Ok(StackNorm::FrozenWeighted),
        (false, false) => Ok(StackNorm::Frozen),
    }
}

/// TransformerLens' `batch_slice`: the prompts it keeps.
fn batch_slice_rows(batch_slice: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Option<Vec<usize>>> {
    indices(batch_slice, n, ("batch_slice", "prompts"))
}

/// `t` without its axis `axis` when `drop` (it has length 1 there).
fn drop_axis(t: Tensor, axis: usize, drop: bool) -> PyResult<Tensor> {
    if drop {
        t.squeeze(axis).map_err(candle)
    } else {
        Ok(t)
    }
}

/// A stack handed in from Python, as `[components, batch, pos, d_model]`, with the cache rows
/// and positions it is read against and how to give it back in the caller's shape.
struct StackIn {
    stack: Stack,
    cache: glassbox::ActivationCache,
    /// The stack had no position axis (an int `pos_slice` dropped it).
    no_pos: bool,
    /// The caller asked for one position (an int `pos_slice`).
    single: bool,
    /// The stack had no batch axis.
    no_batch: bool,
}

impl StackIn {
    /// `t` (`[components, batch, pos, ...]`) in the caller's shape.
    fn shape_back(&self, t: Tensor) -> PyResult<Tensor> {
        drop_axis(drop_axis(t, 2, self.no_pos || self.single)?, 1, self.no_batch)
    }
}

impl ActivationCache {
    /// A residual stack from Python (`[components, batch, pos, d]`, `[components, batch, d]`
    /// after an int `pos_slice`, either without its batch axis when `has_batch_dim=False`),
    /// with `batch_slice` applied to it (when it has a batch axis) and to the cache, and the
    /// cache at `pos_slice` (at each prompt's last position for a stack without positions).
    fn stack_in(&self, residual_stack: &Bound<'_, PyAny>, pos_slice: Option<&Bound<'_, PyAny>>, batch_slice: Option<&Bound<'_, PyAny>>, has_batch_dim: bool) -> PyResult<StackIn> {
        // A cache without its batch axis (`remove_batch_dim`) hands out and takes stacks
        // without one.
        let has_batch_dim = has_batch_dim && !self.remove_batch_dim;
        let mut t = from_numpy(residual_stack, "the residual stack")?;
        let rows = batch_slice_rows(batch_slice, self.lengths.len())?;
        if !has_batch_dim {
            t = t.unsqueeze(1).map_err(candle)?;
        } else if let Some(r) = &rows {
            let idx = Tensor::new(r.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(), t.device()).map_err(candle)?;
            t = t.index_select(&idx, 1).map_err(candle)?;
        }
        let (t, no_pos) = positionless(t)?;
        let n = t.dim(0).map_err(candle)?;
        let stack = Stack { tensor: t, labels: (0..n).map(|i| i.to_string()).collect() };
        let picked;
        let c = match rows {
            Some(r) => {
                picked = self.batch_rows(r)?;
                &picked
            }
            None => self,
        };
        let cache = match pos_slice.filter(|p| !p.is_none()) {
            None if no_pos => c.inner.at_positions(&[c.last_position()]).py_err()?,
            _ => c.sliced(pos_slice)?,
        };
        Ok(StackIn { stack, cache, no_pos, single: is_single(pos_slice), no_batch: !has_batch_dim })
    }

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
    /// The stack `build` makes from the cache at `pos_slice`, through the norm `ln` names
    /// (`(layer, mlp_input, how)`, as `apply_ln_to_stack_as`) when given, out as `stack_out`.
    fn stack_with_ln<'py>(
        &self,
        py: Python<'py>,
        pos_slice: Option<&Bound<'py, PyAny>>,
        return_labels: bool,
        ln: Option<(Option<usize>, bool, StackNorm)>,
        build: impl FnOnce(&glassbox::ActivationCache, &glassbox::Model) -> glassbox::Result<Stack> + Send,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.sliced(pos_slice)?;
        let model = &self.model;
        let stack = py
            .detach(|| -> glassbox::Result<Stack> {
                let stack = build(&c, model)?;
                match ln {
                    Some((layer, mlp_input, how)) => c.apply_ln_to_stack_as(model, &stack, layer, mlp_input, how),
                    None => Ok(stack),
                }
            })
            .py_err()?;
        self.stack_out(py, stack, return_labels, is_single(pos_slice))
    }

    /// A stack `[components, batch, pos, d]` as numpy, without its position axis when `single`
    /// and without its batch axis under `remove_batch_dim` (as TransformerLens' helpers on such
    /// a cache).
    fn stack_out<'py>(&self, py: Python<'py>, stack: Stack, return_labels: bool, single: bool) -> PyResult<Bound<'py, PyAny>> {
        let arr = to_numpy(py, &drop_axis(drop_axis(stack.tensor, 2, single)?, 1, self.remove_batch_dim)?)?.into_any();
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
        glassbox::HookPoint::all_with_requested(self.model.config()).into_iter().filter(|p| self.inner.values.contains_key(p)).map(|p| p.to_string()).collect()
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
    /// negative counts back), with `resid_mid` when `incl_mid` (and `layer`'s own when
    /// `mlp_input`): `[components, batch, pos, d_model]`, without the position axis for an int
    /// `pos_slice` (and the labels when `return_labels`).
    ///
    /// `apply_ln` follows TransformerLens: at the unembedding (layer None) each stream goes
    /// through the final norm with statistics of its own, weight and bias included (each
    /// stream's logit lens; `recompute_ln=None` means this rule); at a block, through that
    /// block's norm with the run's frozen scale and no weight. `recompute_ln=False` freezes
    /// the final norm's scale too, and `apply_weight=True` then multiplies by the norm's weight
    /// (glassbox's linear form: `logit_attrs` of it are direct effects).
    #[pyo3(signature = (layer=None, incl_mid=false, apply_ln=false, pos_slice=None, mlp_input=false, return_labels=false, recompute_ln=None, apply_weight=false))]
    #[allow(clippy::too_many_arguments)]
    fn accumulated_resid<'py>(
        &self,
        py: Python<'py>,
        layer: Option<i64>,
        incl_mid: bool,
        apply_ln: bool,
        pos_slice: Option<&Bound<'py, PyAny>>,
        mlp_input: bool,
        return_labels: bool,
        recompute_ln: Option<bool>,
        apply_weight: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        // TransformerLens' `layer` includes that layer's `resid_pre` (`layer + 1` streams); the
        // library's counts the layers before it.
        let n_layers = self.model.config().n_layers;
        let tl_layer = up_to_layer(layer, n_layers)?.filter(|&l| l < n_layers);
        if mlp_input && tl_layer.is_none() {
            return Err(input("mlp_input adds a block's resid_mid; the final stream (layer None) has none"));
        }
        let how = stack_norm(recompute_ln.unwrap_or(tl_layer.is_none()), apply_weight)?;
        self.stack_with_ln(py, pos_slice, return_labels, apply_ln.then_some((tl_layer, mlp_input, how)), |c, model| {
                let mut stack = c.accumulated_resid(model, tl_layer.map(|l| l + 1), incl_mid, false)?;
                if let Some(l) = tl_layer {
                    // TransformerLens stops at `layer`'s resid_pre: that layer's resid_mid only
                    // with `mlp_input`.
                    if incl_mid {
                        let keep = stack.labels.len() - 1;
                        stack.labels.truncate(keep);
                        stack.tensor = stack.tensor.narrow(0, 0, keep)?;
                    }
                    if mlp_input {
                        stack.tensor = Tensor::cat(&[&stack.tensor, &c.get(HookPoint::ResidMid(l))?.unsqueeze(0)?], 0)?;
                        stack.labels.push(format!("{l}_mid"));
                    }
                }
                Ok(stack)
            })
    }

    /// The residual stream at `layer` as the sum of its parts: embeddings (when
    /// `incl_embeds`) and each earlier block's attention and MLP outputs (`mode`: `all`,
    /// `attn` or `mlp`; `mlp_input` adds `layer`'s own attention output). `apply_ln` as
    /// TransformerLens: through the norm that reads the stream at `layer` with the run's
    /// frozen scale and no weight (`apply_weight=True` multiplies by it).
    #[pyo3(signature = (layer=None, mode="all", **kwargs))]
    fn decompose_resid<'py>(&self, py: Python<'py>, layer: Option<i64>, mode: &str, kwargs: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let mut kw = Kwargs::new(kwargs, "decompose_resid");
        let apply_ln: bool = kw.or("apply_ln", false)?;
        let apply_weight: bool = kw.or("apply_weight", false)?;
        let mlp_input: bool = kw.or("mlp_input", false)?;
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
        let n_layers = self.model.config().n_layers;
        let layer = up_to_layer(layer, n_layers)?.filter(|&l| l < n_layers);
        if mlp_input && layer.is_none() {
            return Err(input("mlp_input adds a block's attention output; the final stream (layer None) has no MLP after it"));
        }
        let how = stack_norm(false, apply_weight)?;
        self.stack_with_ln(py, pos_slice.as_ref(), return_labels, apply_ln.then_some((layer, mlp_input, how)), |c, model| {
            let mut stack = c.decompose_resid(model, layer, mode, false, incl_embeds)?;
            if let (true, Some(l), false) = (mlp_input, layer, mode == Decompose::Mlp) {
                stack.tensor = Tensor::cat(&[&stack.tensor, &c.get(HookPoint::AttnOut(l))?.unsqueeze(0)?], 0)?;
                stack.labels.push(format!("{l}_attn_out"));
            }
            Ok(stack)
        })
    }

    /// Each head's output as it joins the residual stream (labels `L{l}H{h}`), for the layers
    /// before `layer`; `incl_remainder` adds everything else as one component. `apply_ln` as
    /// TransformerLens: through the norm reading the stream at `layer` (the final norm for
    /// None), frozen scale, no weight (`apply_weight=True` multiplies by it: then
    /// `logit_attrs` gives each head's direct effect).
    #[pyo3(signature = (layer=None, return_labels=false, incl_remainder=false, pos_slice=None, apply_ln=false, apply_weight=false))]
    #[allow(clippy::too_many_arguments)]
    fn stack_head_results<'py>(
        &self,
        py: Python<'py>,
        layer: Option<i64>,
        return_labels: bool,
        incl_remainder: bool,
        pos_slice: Option<&Bound<'py, PyAny>>,
        apply_ln: bool,
        apply_weight: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let layer = up_to_layer(layer, self.model.config().n_layers)?;
        let ln = apply_ln.then_some((layer, false, stack_norm(false, apply_weight)?));
        self.stack_with_ln(py, pos_slice, return_labels, ln, |c, model| c.stack_head_results(model, layer, false, incl_remainder))
    }

    /// Each MLP neuron's output as it joins the stream (labels `L{l}N{n}`); large, so give a
    /// `pos_slice`. `apply_ln` and `apply_weight` as in `stack_head_results`.
    #[pyo3(signature = (layer=None, return_labels=false, incl_remainder=false, pos_slice=None, apply_ln=false, apply_weight=false))]
    #[allow(clippy::too_many_arguments)]
    fn stack_neuron_results<'py>(
        &self,
        py: Python<'py>,
        layer: Option<i64>,
        return_labels: bool,
        incl_remainder: bool,
        pos_slice: Option<&Bound<'py, PyAny>>,
        apply_ln: bool,
        apply_weight: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let layer = up_to_layer(layer, self.model.config().n_layers)?;
        let ln = apply_ln.then_some((layer, false, stack_norm(false, apply_weight)?));
        self.stack_with_ln(py, pos_slice, return_labels, ln, |c, model| c.stack_neuron_results(model, layer, false, incl_remainder))
    }

    /// A stack `[components, batch, pos, d_model]` through the norm that reads the stream at
    /// `layer` (None or n_layers: the final norm; a block's attention norm, or its MLP norm
    /// with `mlp_input`), as TransformerLens without folded norms: centred (LayerNorm) and
    /// divided by the run's frozen scale, **without** the norm's weight. `apply_weight=True`
    /// multiplies by the weight (glassbox's form: on the final norm, `logit_attrs` of the
    /// result are direct effects); `recompute_ln=True` applies the whole final norm to each
    /// component with statistics of its own. `batch_slice` picks prompts (of the stack too,
    /// unless `has_batch_dim=False`).
    #[pyo3(signature = (residual_stack, layer=None, mlp_input=false, pos_slice=None, batch_slice=None, has_batch_dim=true, recompute_ln=false, apply_weight=false))]
    #[allow(clippy::too_many_arguments)]
    fn apply_ln_to_stack<'py>(
        &self,
        py: Python<'py>,
        residual_stack: &Bound<'py, PyAny>,
        layer: Option<i64>,
        mlp_input: bool,
        pos_slice: Option<&Bound<'py, PyAny>>,
        batch_slice: Option<&Bound<'py, PyAny>>,
        has_batch_dim: bool,
        recompute_ln: bool,
        apply_weight: bool,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let how = stack_norm(recompute_ln, apply_weight)?;
        let layer = up_to_layer(layer, self.model.config().n_layers)?;
        let s = self.stack_in(residual_stack, pos_slice, batch_slice, has_batch_dim)?;
        let out = py.detach(|| s.cache.apply_ln_to_stack_as(&self.model, &s.stack, layer, mlp_input, how)).py_err()?;
        to_numpy(py, &s.shape_back(out.tensor)?)
    }

    /// Each component's logit of `tokens` (minus `incorrect_tokens`' when given) at every batch
    /// row and position, `[components, batch, pos]`, as TransformerLens computes it: the stack
    /// through the final norm with the run's frozen scale (`apply_ln_to_stack`), then the dot
    /// product with the tokens' unembedding columns. glassbox does not fold the final norm's
    /// weight into `W_U`, so by default this is TransformerLens' figure without `fold_ln`;
    /// `apply_weight=True` includes the weight, and then these are the components' direct
    /// effects (what TransformerLens gives on a model loaded with `fold_ln`). Give the raw
    /// stack, not one through `apply_ln_to_stack`. Tokens are ids or one-token strings.
    #[pyo3(signature = (residual_stack, tokens, incorrect_tokens=None, pos_slice=None, batch_slice=None, has_batch_dim=true, apply_weight=false))]
    #[allow(clippy::too_many_arguments)]
    fn logit_attrs<'py>(
        &self,
        py: Python<'py>,
        residual_stack: &Bound<'py, PyAny>,
        tokens: &Bound<'py, PyAny>,
        incorrect_tokens: Option<&Bound<'py, PyAny>>,
        pos_slice: Option<&Bound<'py, PyAny>>,
        batch_slice: Option<&Bound<'py, PyAny>>,
        has_batch_dim: bool,
        apply_weight: bool,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let how = stack_norm(false, apply_weight)?;
        let token = self.token_id(tokens)?;
        let incorrect = incorrect_tokens.map(|i| self.token_id(i)).transpose()?;
        let s = self.stack_in(residual_stack, pos_slice, batch_slice, has_batch_dim)?;
        let model = &self.model;
        let out = py
            .detach(|| -> glassbox::Result<Tensor> {
                let normed = s.cache.apply_ln_to_stack_as(model, &s.stack, None, false, how)?;
                s.cache.logit_attrs(model, &normed, token, incorrect)
            })
            .py_err()?;
        to_numpy(py, &s.shape_back(out.unsqueeze(3).map_err(candle)?)?.squeeze(candle_core::D::Minus1).map_err(candle)?)
    }

    fn __repr__(&self) -> String {
        format!("ActivationCache({} hook points, {} prompts)", self.inner.values.len(), self.lengths.len())
    }
}
