//! `glassbox.Model`: loading, tokens, runs with a cache or with hooks (Python functions, or
//! declarative interventions that never call back into Python), gradients and generation.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use glassbox::methods::metric::Scorer;
use glassbox::methods::Metric;
use glassbox::model::hooks::CacheSpec;
use glassbox::{registry, Batch, GenerateOptions, Hooks, Sampling};
use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::arrays::{to_numpy, token_rows};
use crate::cache::ActivationCache;
use crate::errors::{candle, input as input_error, IntoPy};
use crate::hooks::{build_hooks, cache_points, raise, ErrorSlot, Intervention, USE_ATTN_IN, USE_ATTN_RESULT, USE_SPLIT_QKV_INPUT};
use crate::kwargs::Kwargs;

/// A loaded model (shared, read-only): run it, hook it, differentiate it, generate from it.
#[pyclass(module = "glassbox._native", frozen)]
pub struct Model {
    pub inner: Arc<glassbox::Model>,
    /// TransformerLens' `set_use_*` switches (`hooks::USE_ATTN_RESULT`, ...).
    pub uses: AtomicU8,
}

/// A model's shape, with TransformerLens' names (`model.cfg.n_layers`, ...).
#[pyclass(module = "glassbox._native", frozen, get_all)]
pub struct Config {
    /// The model's name (file stem or folder name).
    pub model_name: String,
    /// The family it was loaded as (`llama`, `gemma3`, `gpt2`, ...).
    pub architecture: String,
    /// Blocks.
    pub n_layers: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Key/value heads per layer (fewer than `n_heads` with grouped-query attention).
    pub n_key_value_heads: usize,
    /// Residual stream width.
    pub d_model: usize,
    /// Width of one head.
    pub d_head: usize,
    /// MLP hidden width.
    pub d_mlp: usize,
    /// Vocabulary size.
    pub d_vocab: usize,
    /// Context length in tokens.
    pub n_ctx: usize,
    /// `LN` or `RMS`.
    pub normalization_type: String,
    /// `rotary`, `standard` (learned) or `none`.
    pub positional_embedding_type: String,
    /// The MLP's activation (`gelu`, `silu`, ...).
    pub act_fn: String,
    /// Whether the MLP is gated (SwiGLU, GeGLU).
    pub gated_mlp: bool,
    /// Experts per mixture-of-experts layer (0 for dense models).
    pub num_experts: usize,
    /// Whether attention and MLP read the same residual (GPT-J, NeoX).
    pub parallel_attn_mlp: bool,
}

#[pymethods]
impl Config {
    /// The whole configuration as a dict (every field the forward reads).
    fn to_dict<'py>(&self, py: Python<'py>, model: &Model) -> PyResult<Bound<'py, PyAny>> {
        Ok(pythonize::pythonize(py, &model.inner.config())?)
    }

    fn __repr__(&self) -> String {
        format!(
            "Config(model_name={:?}, architecture={:?}, n_layers={}, n_heads={}, n_key_value_heads={}, d_model={}, d_head={}, d_mlp={}, d_vocab={}, n_ctx={})",
            self.model_name, self.architecture, self.n_layers, self.n_heads, self.n_key_value_heads, self.d_model, self.d_head, self.d_mlp, self.d_vocab, self.n_ctx
        )
    }
}

/// The tokens of a run: prompts (each tokenized, right-padded with their real lengths kept)
/// or token ids (every position real).
pub fn batch_of(model: &glassbox::Model, input: &Bound<'_, PyAny>) -> PyResult<Batch> {
    if let Ok(s) = input.cast::<PyString>() {
        return model.batch(&[&s.to_cow()?]).py_err();
    }
    if let Ok(list) = input.cast::<PyList>() {
        if !list.is_empty() && list.iter().all(|x| x.is_instance_of::<PyString>()) {
            let texts: Vec<String> = list.extract()?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            return model.batch(&refs).py_err();
        }
    }
    let rows = token_rows(input).map_err(|_| input_type_error())?;
    let v = model.config().d_vocab;
    if let Some(&t) = rows.iter().flatten().find(|&&t| t as usize >= v) {
        return Err(input_error(format!("token id {t} is outside the vocabulary of {v} tokens")));
    }
    Batch::new(&rows).py_err()
}

/// The items of a list of prompts (strings) or of a 2-D batch of token ids with more than one
/// row, for the functions that take one prompt and map over a list (as TransformerLens does).
fn many_prompts<'py>(input: &Bound<'py, PyAny>) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
    if let Ok(list) = input.cast::<PyList>() {
        if !list.is_empty() && list.iter().all(|x| x.is_instance_of::<PyString>()) {
            return Ok(Some(list.iter().collect()));
        }
    }
    if let Ok(rows) = token_rows(input) {
        if rows.len() > 1 {
            let py = input.py();
            return rows.into_iter().map(|r| Ok(PyList::new(py, r)?.into_any())).collect::<PyResult<Vec<_>>>().map(Some);
        }
    }
    Ok(None)
}

fn input_type_error() -> PyErr {
    PyTypeError::new_err("give a prompt (str), a list of prompts, or token ids (a list of ints or an integer array from to_tokens)")
}

/// One prompt's tokens from a string or token ids (1-D, or 2-D with one row).
pub fn tokens_of(model: &glassbox::Model, input: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(s) = input.cast::<PyString>() {
        return model.tokenize(&s.to_cow()?).py_err();
    }
    let mut rows = token_rows(input).map_err(|_| PyTypeError::new_err("give a prompt (str) or its token ids (a list of ints or an integer array from to_tokens)"))?;
    if rows.len() != 1 {
        return Err(input_error(format!("one prompt is expected here, not a batch of {}", rows.len())));
    }
    let row = rows.remove(0);
    let v = model.config().d_vocab;
    if let Some(&t) = row.iter().find(|&&t| t as usize >= v) {
        return Err(input_error(format!("token id {t} is outside the vocabulary of {v} tokens")));
    }
    if row.is_empty() {
        return Err(crate::errors::to_py(glassbox::Error::EmptyPrompt));
    }
    Ok(row)
}

/// Mean next-token cross-entropy of each row over its real positions: `[b]`.
/// Each prompt's next-token cross-entropy at each of its real positions but the last.
fn token_losses(logits: &Tensor, batch: &Batch) -> PyResult<Vec<Vec<f32>>> {
    let logits = logits.to_dtype(DType::F32).map_err(candle)?;
    let ids: Vec<Vec<u32>> = batch.ids.to_vec2().map_err(candle)?;
    let mut out = Vec::new();
    for (b, &len) in batch.lengths.iter().enumerate() {
        if len < 2 {
            return Err(input_error("the loss needs prompts of at least two tokens"));
        }
        let row = logits.get(b).and_then(|r| r.narrow(0, 0, len - 1)).map_err(candle)?; // [len-1, V]
        let max = row.max_keepdim(D::Minus1).map_err(candle)?;
        let lse = (row.broadcast_sub(&max).and_then(|x| x.exp()).and_then(|x| x.sum_keepdim(D::Minus1)).and_then(|x| x.log()).and_then(|x| x + &max)).map_err(candle)?;
        let targets = Tensor::from_vec(ids[b][1..len].to_vec(), (len - 1, 1), row.device()).map_err(candle)?;
        let picked = row.gather(&targets, 1).map_err(candle)?;
        out.push((lse - picked).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1::<f32>()).map_err(candle)?);
    }
    Ok(out)
}

/// Each prompt's mean next-token cross-entropy.
fn loss_per_row(logits: &Tensor, batch: &Batch) -> PyResult<Vec<f32>> {
    Ok(token_losses(logits, batch)?.iter().map(|l| l.iter().sum::<f32>() / l.len() as f32).collect())
}

/// The loss as TransformerLens' `loss_per_token=True` gives it: `[batch, positions − 1]` when
/// the prompts have equal lengths, else one array per prompt.
fn per_token<'py>(py: Python<'py>, logits: &Tensor, batch: &Batch) -> PyResult<Bound<'py, PyAny>> {
    let rows = token_losses(logits, batch)?;
    let width = rows[0].len();
    if rows.iter().all(|r| r.len() == width) {
        let n = rows.len();
        return Ok(numpy::PyArray1::from_vec(py, rows.concat()).reshape(vec![n, width])?.into_any());
    }
    Ok(PyList::new(py, rows.into_iter().map(|r| numpy::PyArray1::from_vec(py, r)))?.into_any())
}

impl Model {
    /// The `set_use_*` switches now on.
    fn uses(&self) -> u8 {
        self.uses.load(Ordering::Relaxed)
    }

    /// Turns switch `bit` on or off; `hook_attn_in` and the split inputs exclude each other.
    fn set_use(&self, bit: u8, on: bool) -> PyResult<()> {
        let now = if on { self.uses() | bit } else { self.uses() & !bit };
        if now & USE_ATTN_IN != 0 && now & USE_SPLIT_QKV_INPUT != 0 {
            return Err(input_error("hook_attn_in and the split inputs (hook_q_input, ...) feed the same projections: turn one off first"));
        }
        if now & USE_ATTN_IN != 0 && !glassbox::HookPoint::AttnIn(0).present_in(self.inner.config()) {
            return Err(input_error("this model's keys and values have fewer heads than its queries, so it has no hook_attn_in; use set_use_split_qkv_input"));
        }
        self.uses.store(now, Ordering::Relaxed);
        Ok(())
    }

    fn run(&self, py: Python<'_>, batch: &Batch, hooks: Hooks, slot: &ErrorSlot) -> PyResult<glassbox::ForwardOutput> {
        let m = self.inner.clone();
        py.detach(|| m.forward(batch, &hooks)).map_err(|e| raise(e, slot))
    }

    fn output<'py>(&self, py: Python<'py>, out: &glassbox::ForwardOutput, batch: &Batch, return_type: Option<&str>, per_token_loss: bool) -> PyResult<Bound<'py, PyAny>> {
        let loss = || -> PyResult<Bound<'py, PyAny>> {
            match per_token_loss {
                true => per_token(py, &out.logits, batch),
                false => Ok(numpy::PyArray1::from_vec(py, loss_per_row(&out.logits, batch)?).into_any()),
            }
        };
        match return_type {
            Some("logits") => Ok(to_numpy(py, &out.logits)?.into_any()),
            Some("loss") => loss(),
            Some("both") => Ok(PyTuple::new(py, [to_numpy(py, &out.logits)?.into_any(), loss()?])?.into_any()),
            None => Ok(py.None().into_bound(py)),
            Some(other) => Err(input_error(format!("return_type {other:?} is not one of logits, loss, both, None"))),
        }
    }
}

#[pymethods]
impl Model {
    /// Loads a model: a registry name (`smollm2-135m`, fetched and verified on first use), a
    /// GGUF file, or a Hugging Face model folder. `prepend_bos`: whether prompts start with
    /// the BOS token (None: as `transformers` tokenizes this model).
    #[staticmethod]
    #[pyo3(signature = (name_or_path="smollm2-135m", prepend_bos=None))]
    fn load(py: Python<'_>, name_or_path: &str, prepend_bos: Option<bool>) -> PyResult<Model> {
        let spec = name_or_path.to_string();
        let model = py.detach(move || -> glassbox::Result<glassbox::Model> {
            let path = registry::resolve(&spec, &mut |m| eprintln!("{m}"))?;
            let mut model = glassbox::Model::load(&path)?;
            model.set_prepend_bos(prepend_bos)?;
            Ok(model)
        });
        Ok(Model { inner: Arc::new(model.py_err()?), uses: AtomicU8::new(0) })
    }

    /// The model's name.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// The model's shape (`cfg.n_layers`, `cfg.d_model`, ...).
    #[getter]
    fn cfg(&self) -> Config {
        let c = &self.inner.config();
        use glassbox::model::config::{NormKind, Positions};
        Config {
            model_name: self.inner.name().to_string(),
            architecture: c.architecture.clone(),
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_key_value_heads: c.n_kv_heads,
            d_model: c.d_model,
            d_head: c.d_head,
            d_mlp: c.d_mlp,
            d_vocab: c.d_vocab,
            n_ctx: c.n_ctx,
            normalization_type: match c.norm.kind {
                NormKind::LayerNorm => "LN".into(),
                NormKind::RmsNorm => "RMS".into(),
            },
            positional_embedding_type: match c.positions {
                Positions::Rotary(_) => "rotary".into(),
                Positions::Learned { .. } => "standard".into(),
                Positions::None => "none".into(),
            },
            act_fn: serde_json::to_value(c.mlp.activation).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{:?}", c.mlp.activation).to_lowercase()),
            gated_mlp: c.mlp.gated,
            num_experts: c.variants.moe.map_or(0, |m| m.n_experts),
            parallel_attn_mlp: c.parallel_block,
        }
    }

    /// Every hook point of this model, by TransformerLens name (the points computed only on
    /// request, `hook_result`, `hook_attn_in`, `hook_q_input`, ..., included: a run computes
    /// them where a hook names them or a `set_use_*` switch is on).
    #[getter]
    fn hook_names(&self) -> Vec<String> {
        glassbox::HookPoint::all_with_requested(self.inner.config()).iter().map(ToString::to_string).collect()
    }

    /// TransformerLens' switch: filter functions and `run_with_cache()` include
    /// `blocks.{l}.attn.hook_result` (each head's output, `[batch, pos, head, d_model]`).
    fn set_use_attn_result(&self, use_attn_result: bool) -> PyResult<()> {
        self.set_use(USE_ATTN_RESULT, use_attn_result)
    }

    /// TransformerLens' switch: filter functions and `run_with_cache()` include
    /// `blocks.{l}.hook_attn_in` (each head's input for query, key and value), and leave out
    /// ln1's hooks (the norm then runs once per head).
    fn set_use_attn_in(&self, use_attn_in: bool) -> PyResult<()> {
        self.set_use(USE_ATTN_IN, use_attn_in)
    }

    /// TransformerLens' switch: filter functions and `run_with_cache()` include
    /// `hook_q_input`, `hook_k_input` and `hook_v_input`, and leave out ln1's hooks.
    fn set_use_split_qkv_input(&self, use_split_qkv_input: bool) -> PyResult<()> {
        self.set_use(USE_SPLIT_QKV_INPUT, use_split_qkv_input)
    }

    /// Token ids `[batch, positions]` (int64) of a prompt or a list of prompts (right-padded
    /// with 0; `to_tokens` of one prompt at a time keeps lengths exact).
    /// `prepend_bos` overrides the model's rule for this call; `padding_side="left"` pads on the
    /// left (as TransformerLens can; a glassbox run of such an array reads every id as real).
    #[pyo3(signature = (input, prepend_bos=None, padding_side="right"))]
    fn to_tokens<'py>(&self, py: Python<'py>, input: &Bound<'py, PyAny>, prepend_bos: Option<bool>, padding_side: &str) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
        if !matches!(padding_side, "right" | "left") {
            return Err(input_error(format!("padding_side {padding_side:?} is not right or left")));
        }
        let rows: Vec<Vec<u32>> = match prepend_bos {
            None => {
                let batch = batch_of(&self.inner, input)?;
                let ids: Vec<Vec<u32>> = batch.ids.to_vec2().map_err(candle)?;
                ids.into_iter().zip(&batch.lengths).map(|(r, &n)| r[..n].to_vec()).collect()
            }
            Some(bos) => {
                let texts: Vec<String> = match input.extract::<String>() {
                    Ok(t) => vec![t],
                    Err(_) => input.extract().map_err(|_| PyTypeError::new_err("prepend_bos applies to text: give a prompt (str) or a list of prompts"))?,
                };
                let tok = self.inner.tokenizer();
                let first = match (bos, tok.bos_token()) {
                    (true, None) => return Err(input_error("this model's tokenizer has no BOS token to prepend")),
                    (true, b) => b,
                    (false, _) => None,
                };
                texts.iter().map(|t| Ok(first.into_iter().chain(tok.encode_plain(t).py_err()?).collect())).collect::<PyResult<_>>()?
            }
        };
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * width);
        for r in &rows {
            let pad = std::iter::repeat_n(0i64, width - r.len());
            let row = r.iter().map(|&t| i64::from(t));
            match padding_side {
                "left" => ids.extend(pad.chain(row)),
                _ => ids.extend(row.chain(pad)),
            }
        }
        numpy::PyArray1::from_vec(py, ids).reshape(vec![rows.len(), width])
    }

    /// Each token of a prompt (or of token ids) as a string; a list of them for a list of
    /// prompts or a batch of ids.
    fn to_str_tokens<'py>(&self, py: Python<'py>, input: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(items) = many_prompts(input)? {
            let each = items.iter().map(|x| Ok(self.inner.to_str_tokens(&tokens_of(&self.inner, x)?))).collect::<PyResult<Vec<_>>>()?;
            return Ok(PyList::new(py, each)?.into_any());
        }
        Ok(PyList::new(py, self.inner.to_str_tokens(&tokens_of(&self.inner, input)?))?.into_any())
    }

    /// The text of token ids; a list of texts for a batch of ids.
    fn to_string<'py>(&self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(items) = many_prompts(tokens)? {
            let each = items.iter().map(|x| Ok(self.inner.to_string(&tokens_of(&self.inner, x)?))).collect::<PyResult<Vec<_>>>()?;
            return Ok(PyList::new(py, each)?.into_any());
        }
        Ok(PyString::new(py, &self.inner.to_string(&tokens_of(&self.inner, tokens)?)).into_any())
    }

    /// The id of a string that is one token (e.g. `" Mary"`); an error otherwise.
    fn to_single_token(&self, text: &str) -> PyResult<u32> {
        self.inner.answer_token(text).py_err()
    }

    /// Runs the model: `return_type` `logits` (`[batch, positions, d_vocab]` float32),
    /// `loss` (mean next-token cross-entropy per prompt; per position with
    /// `loss_per_token`), `both`, or None. `stop_at_layer=l` returns the residual stream
    /// entering block `l` instead (`[batch, positions, d_model]`; negative counts from the end).
    #[pyo3(signature = (input, return_type=Some("logits"), loss_per_token=false, stop_at_layer=None))]
    fn __call__<'py>(&self, py: Python<'py>, input: &Bound<'py, PyAny>, return_type: Option<&str>, loss_per_token: bool, stop_at_layer: Option<i64>) -> PyResult<Bound<'py, PyAny>> {
        let batch = batch_of(&self.inner, input)?;
        let slot = ErrorSlot::default();
        if let Some(l) = stop_at_layer {
            // The residual stream entering block `l` (negative: from the end), as TL returns it.
            let n = self.inner.config().n_layers;
            let j = if l < 0 { l + n as i64 } else { l };
            let layer = usize::try_from(j).ok().filter(|&j| j < n).ok_or_else(|| input_error(format!("stop_at_layer {l} is out of range for a model of {n} layers")))?;
            let point = glassbox::HookPoint::ResidPre(layer);
            let out = self.run(py, &batch, Hooks::new().with_cache(CacheSpec::Only(std::iter::once(point).collect())), &slot)?;
            return Ok(to_numpy(py, out.cache.get(point).py_err()?)?.into_any());
        }
        let out = self.run(py, &batch, Hooks::new(), &slot)?;
        self.output(py, &out, &batch, return_type, loss_per_token)
    }

    /// Runs the model caching activations: `(logits, cache)`. `names_filter`: None (every
    /// point), a name, a list of names, or a function of the name.
    #[pyo3(signature = (input, names_filter=None, fwd_hooks=None, interventions=None, return_type=Some("logits"), remove_batch_dim=false))]
    #[allow(clippy::too_many_arguments)]
    fn run_with_cache<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        names_filter: Option<&Bound<'py, PyAny>>,
        fwd_hooks: Option<&Bound<'py, PyAny>>,
        interventions: Option<Vec<Intervention>>,
        return_type: Option<&str>,
        remove_batch_dim: bool,
    ) -> PyResult<(Bound<'py, PyAny>, ActivationCache)> {
        let batch = batch_of(&self.inner, input)?;
        if remove_batch_dim && batch.size() != 1 {
            return Err(input_error(format!("remove_batch_dim needs one prompt; this run has {}", batch.size())));
        }
        let slot = ErrorSlot::default();
        let hooks = build_hooks(&self.inner, fwd_hooks, interventions, &slot, self.uses())?.with_cache(cache_points(&self.inner, names_filter, self.uses())?);
        let out = self.run(py, &batch, hooks, &slot)?;
        let first = self.output(py, &out, &batch, return_type, false)?;
        Ok((first, ActivationCache { inner: out.cache, model: self.inner.clone(), lengths: batch.lengths.clone(), remove_batch_dim }))
    }

    /// Runs the model with hooks: `fwd_hooks` is a list of `(name or filter, fn)` where
    /// `fn(activation, hook)` returns a replacement array or None (TransformerLens' form);
    /// `interventions` are declarative `Intervention`s (no Python call per hook).
    /// `bwd_hooks` may be given empty (TransformerLens code passes `bwd_hooks=[]`); backward
    /// hooks themselves need a backward pass, which `grad` is.
    #[pyo3(signature = (input, fwd_hooks=None, interventions=None, return_type=Some("logits"), bwd_hooks=None))]
    fn run_with_hooks<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        fwd_hooks: Option<&Bound<'py, PyAny>>,
        interventions: Option<Vec<Intervention>>,
        return_type: Option<&str>,
        bwd_hooks: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if bwd_hooks.is_some_and(|b| !b.is_none() && b.len().map_or(true, |n| n > 0)) {
            return Err(input_error("backward hooks run in a backward pass, which a forward run has not: take gradients with model.grad(prompt, at=[hook names], correct=..., incorrect=...)"));
        }
        let batch = batch_of(&self.inner, input)?;
        let slot = ErrorSlot::default();
        let hooks = build_hooks(&self.inner, fwd_hooks, interventions, &slot, self.uses())?;
        let out = self.run(py, &batch, hooks, &slot)?;
        self.output(py, &out, &batch, return_type, false)
    }

    /// Gradients of a metric of one prompt with respect to the activations at `at` (names):
    /// `{name: array}`. `metric`: `logit_diff` (needs `incorrect`), `logprob`, `prob`, or a
    /// dict such as `{"kind": "kl", "position": "last"}`.
    #[pyo3(signature = (input, at, correct, incorrect=None, **kwargs))]
    fn grad<'py>(
        &self,
        py: Python<'py>,
        input: &Bound<'py, PyAny>,
        at: Vec<String>,
        correct: &Bound<'py, PyAny>,
        incorrect: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if let Some(items) = many_prompts(input)? {
            // One prompt at a time: each its own gradients, in a list.
            let each = items.iter().map(|x| self.grad(py, x, at.clone(), correct, incorrect, kwargs)).collect::<PyResult<Vec<_>>>()?;
            return Ok(PyList::new(py, each)?.into_any());
        }
        let mut kw = Kwargs::new(kwargs, "grad");
        let metric = kw.object("metric")?;
        let interventions: Option<Vec<Intervention>> = kw.get("interventions")?;
        kw.finish()?;
        let tokens = tokens_of(&self.inner, input)?;
        let metric = crate::methods::metric_of(metric.as_ref())?;
        let answer = |a: &Bound<'py, PyAny>| -> PyResult<u32> {
            match a.extract::<u32>() {
                Ok(id) => Ok(id),
                Err(_) => self.inner.answer_token(&a.extract::<String>()?).py_err(),
            }
        };
        let correct = answer(correct)?;
        let incorrect = match incorrect {
            Some(i) => answer(i)?,
            None if matches!(metric, Metric::LogitDiff { .. }) => return Err(input_error("the logit difference needs an incorrect answer")),
            // Unused by the other metrics; any id other than `correct` passes the checks.
            None => u32::from(correct == 0),
        };
        let points: Vec<glassbox::HookPoint> = at.iter().map(|n| n.parse::<glassbox::HookPoint>()).collect::<glassbox::Result<_>>().py_err()?;
        for p in &points {
            p.check(self.inner.config()).py_err()?;
        }
        let mut base = Hooks::new();
        for i in interventions.unwrap_or_default() {
            base = base.intervene(i.inner);
        }
        let m = self.inner.clone();
        let grads = py
            .detach(|| -> glassbox::Result<glassbox::Gradients> {
                let scorer = Scorer::for_answers(&m, &tokens, correct, incorrect, &metric)?;
                let hooks = base.interventions().iter().cloned().fold(scorer.hooks().grad_tap(points.iter().copied()), |h, i| h.intervene(i));
                let out = m.forward(&Batch::new(std::slice::from_ref(&tokens))?, &hooks)?;
                let value = scorer.eval(&out)?.sum_all()?;
                out.backward(&value)
            })
            .py_err()?;
        let d = PyDict::new(py);
        for p in points {
            d.set_item(p.to_string(), to_numpy(py, grads.get(p).py_err()?)?)?;
        }
        Ok(d.into_any())
    }

    /// Continues a prompt with the key/value cache: greedy, or sampled when `temperature`,
    /// `top_k` or `top_p` is given (reproducible by `seed`). Hooks act at every step.
    /// `return_type`: `str` (prompt and continuation, as TransformerLens), `tokens` (the new
    /// ids) or `dict` (tokens, text, log-probabilities, stop reason).
    #[pyo3(signature = (input, **kwargs))]
    fn generate<'py>(&self, py: Python<'py>, input: &Bound<'py, PyAny>, kwargs: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(items) = many_prompts(input)? {
            // Each prompt continued alone (same options and seed), the answers in a list.
            let each = items.iter().map(|x| self.generate(py, x, kwargs)).collect::<PyResult<Vec<_>>>()?;
            return Ok(PyList::new(py, each)?.into_any());
        }
        let mut kw = Kwargs::new(kwargs, "generate");
        let max_new_tokens: usize = kw.or("max_new_tokens", 32)?;
        let temperature: Option<f32> = kw.get("temperature")?;
        let top_k: Option<usize> = kw.get("top_k")?;
        let top_p: Option<f32> = kw.get("top_p")?;
        let do_sample: Option<bool> = kw.get("do_sample")?;
        let seed: u64 = kw.or("seed", 0)?;
        let stop_at_eos: bool = kw.or("stop_at_eos", true)?;
        let stop_tokens: Option<Vec<u32>> = kw.get("stop_tokens")?;
        let fwd_hooks = kw.object("fwd_hooks")?;
        let interventions: Option<Vec<Intervention>> = kw.get("interventions")?;
        let return_type: String = kw.or("return_type", "str".to_string())?;
        let _verbose: bool = kw.or("verbose", false)?;
        kw.finish()?;
        let is_text = input.is_instance_of::<PyString>();
        let tokens = tokens_of(&self.inner, input)?;
        // As TransformerLens: sampling unless `do_sample=False`; temperature 0 is greedy.
        // Without `do_sample`, sampling only when a sampling setting is given.
        let wants_sample = do_sample.unwrap_or(temperature.is_some() || top_k.is_some() || top_p.is_some());
        let sampling = match temperature {
            Some(t) if !t.is_finite() || t < 0.0 => return Err(input_error(format!("temperature {t} must be a finite number ≥ 0 (0 is greedy)"))),
            Some(0.0) => Sampling::Greedy,
            _ if wants_sample => Sampling::Sample { temperature: temperature.unwrap_or(1.0), top_k, top_p, seed },
            _ => Sampling::Greedy,
        };
        let opts = GenerateOptions { max_new_tokens, sampling, stop_at_eos, stop_tokens: stop_tokens.unwrap_or_default() };
        let slot = ErrorSlot::default();
        let hooks = build_hooks(&self.inner, fwd_hooks.as_ref(), interventions, &slot, self.uses())?;
        let m = self.inner.clone();
        let g = py.detach(|| m.generate_from_tokens(&tokens, &opts, &hooks)).map_err(|e| raise(e, &slot))?;
        match return_type.as_str() {
            "str" if is_text => Ok(PyString::new(py, &format!("{}{}", input.extract::<String>()?, g.text)).into_any()),
            "str" => Ok(PyString::new(py, &self.inner.to_string(&[g.prompt_tokens.clone(), g.tokens.clone()].concat())).into_any()),
            "tokens" => Ok(PyList::new(py, &g.tokens)?.into_any()),
            "dict" => Ok(pythonize::pythonize(py, &g)?),
            other => Err(input_error(format!("return_type {other:?} is not one of str, tokens, dict"))),
        }
    }

    /// TransformerLens' `model.blocks[l]`: one layer's weights and hook points by TL's
    /// attribute names (`model.blocks[3].attn.W_Q`, `.mlp.W_in`, `.hook_resid_pre.name`,
    /// `.attn.hook_z`), each weight the layer's slice of the stacked property, read when asked.
    #[getter]
    fn blocks<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("glassbox._blocks")?.getattr("Blocks")?.call1((slf,))
    }

    /// The tokenizer as TransformerLens code reaches it (`encode`, `decode`, ...).
    #[getter]
    fn tokenizer(&self) -> crate::tokenizer::Tokenizer {
        crate::tokenizer::Tokenizer { model: self.inner.clone() }
    }

    // TransformerLens' weight names and shapes (src/weights.rs says how each is made).
    #[getter(W_E)]
    fn w_e<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_e(py)
    }

    #[getter(W_pos)]
    fn w_pos<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.tl_w_pos(py)
    }

    #[getter(W_U)]
    fn w_u<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_u(py)
    }

    #[getter(b_U)]
    fn b_u<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_b_u(py)
    }

    #[getter(W_Q)]
    fn w_q<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_q(py)
    }

    #[getter(W_K)]
    fn w_k<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_k(py)
    }

    #[getter(W_V)]
    fn w_v<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_v(py)
    }

    #[getter(W_O)]
    fn w_o<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_o(py)
    }

    #[getter(b_Q)]
    fn b_q<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_b_q(py)
    }

    #[getter(b_K)]
    fn b_k<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_b_k(py)
    }

    #[getter(b_V)]
    fn b_v<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_b_v(py)
    }

    #[getter(b_O)]
    fn b_o<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_b_o(py)
    }

    #[getter(W_in)]
    fn w_in<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_in(py)
    }

    #[getter(W_gate)]
    fn w_gate<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.tl_w_gate(py)
    }

    #[getter(W_out)]
    fn w_out<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_w_out(py)
    }

    #[getter(b_in)]
    fn b_in<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_b_in(py)
    }

    #[getter(b_out)]
    fn b_out<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.tl_b_out(py)
    }

    fn __repr__(&self) -> String {
        let c = &self.inner.config();
        format!("Model({:?}, {} layers, {} heads, d_model {})", self.inner.name(), c.n_layers, c.n_heads, c.d_model)
    }
}
