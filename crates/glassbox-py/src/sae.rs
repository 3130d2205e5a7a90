//! Sparse autoencoders and transcoders (`glassbox.SAE`): SAELens' folders and Gemma Scope's
//! parameters, `encode`/`decode` on numpy arrays, and SAE feature attribution.

use std::sync::Arc;

use glassbox::methods::sae_attribution::{sae_attribution, SaeAttributionOptions};
use glassbox::methods::Prompt;
use pyo3::prelude::*;

use crate::arrays::{from_numpy, to_numpy};
use crate::errors::{input, IntoPy};
use crate::model::Model;

/// A sparse autoencoder or transcoder.
#[pyclass(module = "glassbox._native", frozen, name = "SAE")]
pub struct Sae {
    pub inner: Arc<glassbox::sae::Sae>,
    /// The folder or file it was loaded from (recorded in dataset runs' settings).
    pub path: String,
}

#[pymethods]
impl Sae {
    /// Loads an SAE folder: SAELens' `cfg.json` + `sae_weights.safetensors` (both config
    /// layouts), or Gemma Scope's `params.npz`/`params.safetensors` (give `hook`, which those
    /// files do not name). `hook` overrides the config's hook point.
    #[staticmethod]
    #[pyo3(signature = (path, hook=None))]
    fn load(py: Python<'_>, path: std::path::PathBuf, hook: Option<&str>) -> PyResult<Sae> {
        let hook = hook.map(|h| h.parse::<glassbox::HookPoint>()).transpose().py_err()?;
        let shown = path.display().to_string();
        let sae = py.detach(move || glassbox::sae::Sae::load(&path, hook)).py_err()?;
        Ok(Sae { inner: Arc::new(sae), path: shown })
    }

    /// The configuration as a dict (architecture, sizes, hook points, format, Neuronpedia id).
    #[getter]
    fn cfg<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(pythonize::pythonize(py, &self.inner.cfg)?)
    }

    /// The hook point it reads (TransformerLens name).
    #[getter]
    fn hook_name(&self) -> String {
        self.inner.cfg.hook.to_string()
    }

    /// Feature activations of activations `x` (`[..., d_in]`, or `[..., heads, d_head]` for
    /// `hook_z`): `[..., d_sae]`, the leading axes kept (SAELens' `encode`).
    fn encode<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let x = from_numpy(x, "x")?;
        let sae = self.inner.clone();
        let lead = leading(&sae, &x)?;
        let acts = py.detach(move || -> glassbox::Result<candle_core::Tensor> { Ok(sae.encode(&sae.rows(&x)?)?.acts) }).py_err()?;
        Ok(to_numpy(py, &reshaped(acts, &lead)?)?.into_any())
    }

    /// Activations `[..., d_out]` from feature activations `acts` `[..., d_sae]`:
    /// `acts · W_dec + b_dec` (SAELens' `decode`). An SAE that normalises its input needs the
    /// input's scale to undo it: use `reconstruct(x)` there.
    fn decode<'py>(&self, py: Python<'py>, acts: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let a = from_numpy(acts, "acts")?;
        let sae = self.inner.clone();
        if !matches!(sae.cfg.normalize, glassbox::sae::Normalize::None) {
            return Err(input("this SAE normalises its input, so decoding needs the input's scale: use reconstruct(x)"));
        }
        let d_sae = sae.cfg.d_sae;
        let dims = a.dims().to_vec();
        if dims.last() != Some(&d_sae) {
            return Err(input(format!("acts has shape {dims:?}; its last axis must be the SAE's {d_sae} features")));
        }
        let lead = dims[..dims.len() - 1].to_vec();
        let y = py
            .detach(move || -> glassbox::Result<candle_core::Tensor> {
                let rows = a.reshape((a.elem_count() / d_sae, d_sae))?;
                let n = rows.dim(0)?;
                let ones = candle_core::Tensor::ones((n, 1), candle_core::DType::F32, rows.device())?;
                let e = glassbox::sae::Encoded { acts: rows, out_scale: ones.clone(), out_shift: ones.zeros_like()? };
                sae.decode(&e)
            })
            .py_err()?;
        Ok(to_numpy(py, &reshaped(y, &lead)?)?.into_any())
    }

    /// The reconstruction of activations `x` (a transcoder's output, with its skip
    /// connection), shaped as `x` when the SAE writes where it reads (`[..., d_out]`
    /// otherwise): it can replace `x` in a hook.
    fn reconstruct<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let x = from_numpy(x, "x")?;
        let sae = self.inner.clone();
        let lead = leading(&sae, &x)?;
        let same = (sae.cfg.d_out == sae.cfg.d_in).then(|| x.dims().to_vec());
        let y = py
            .detach(move || -> glassbox::Result<candle_core::Tensor> {
                let rows = sae.rows(&x)?;
                let e = sae.encode(&rows)?;
                sae.output(&rows, &e)
            })
            .py_err()?;
        let y = match same {
            Some(dims) => y.reshape(dims).map_err(crate::errors::candle)?,
            None => reshaped(y, &lead)?,
        };
        Ok(to_numpy(py, &y)?.into_any())
    }

    /// `reconstruct` (SAELens' `forward`).
    fn forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.reconstruct(py, x)
    }

    /// `reconstruct` (calling the SAE as SAELens' module).
    fn __call__<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.reconstruct(py, x)
    }

    /// The decoder's rows `W_dec` `[d_sae, d_out]`.
    #[getter(W_dec)]
    fn w_dec_tl<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(to_numpy(py, &self.inner.w_dec)?.into_any())
    }

    /// The encoder `W_enc` `[d_in, d_sae]`.
    #[getter(W_enc)]
    fn w_enc_tl<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(to_numpy(py, &self.inner.w_enc)?.into_any())
    }

    /// The decoder's rows `W_dec` `[d_sae, d_out]` (also `W_dec`).
    #[getter]
    fn w_dec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(to_numpy(py, &self.inner.w_dec)?.into_any())
    }

    /// The encoder `W_enc` `[d_in, d_sae]` (also `W_enc`).
    #[getter]
    fn w_enc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(to_numpy(py, &self.inner.w_enc)?.into_any())
    }

    /// The encoder's bias `b_enc` `[d_sae]`.
    #[getter]
    fn b_enc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(to_numpy(py, &self.inner.b_enc)?.into_any())
    }

    /// The decoder's bias `b_dec` `[d_out]`.
    #[getter]
    fn b_dec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(to_numpy(py, &self.inner.b_dec)?.into_any())
    }

    /// JumpReLU's thresholds `[d_sae]` (None for other activations).
    #[getter]
    fn threshold<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner.threshold.as_ref().map(|t| Ok(to_numpy(py, t)?.into_any())).transpose()
    }

    /// Neuronpedia's page of feature `f` (None without a Neuronpedia id).
    fn neuronpedia_url(&self, f: usize) -> PyResult<Option<String>> {
        if f >= self.inner.cfg.d_sae {
            return Err(input(format!("feature {f} is out of range: this SAE has {}", self.inner.cfg.d_sae)));
        }
        Ok(self.inner.neuronpedia_url(f))
    }

    fn __repr__(&self) -> String {
        let c = &self.inner.cfg;
        format!("SAE({:?}, d_in={}, d_sae={}, hook={:?}, format={:?})", c.architecture, c.d_in, c.d_sae, c.hook.to_string(), c.format)
    }
}

/// The leading axes of `x` that `sae.rows` flattens into rows (the longest prefix of its
/// shape whose product is the number of rows).
fn leading(sae: &glassbox::sae::Sae, x: &candle_core::Tensor) -> PyResult<Vec<usize>> {
    let dims = x.dims();
    let d_in = sae.cfg.d_in;
    if d_in == 0 || !x.elem_count().is_multiple_of(d_in) {
        // Not rows of this SAE: `rows` says so.
        return Ok(Vec::new());
    }
    let n = x.elem_count() / d_in;
    // The longest prefix whose product is `n` (`[2, 15, 576]` → `[2, 15]`; `[576]` → `[]`).
    let mut best = None;
    let mut prod = 1usize;
    for k in 0..=dims.len() {
        if prod == n {
            best = Some(k);
        }
        match dims.get(k) {
            Some(&d) if prod.saturating_mul(d) <= n => prod *= d,
            _ => break,
        }
    }
    Ok(best.map_or_else(|| vec![n], |k| dims[..k].to_vec()))
}

/// `t` `[n, width]` as `[*lead, width]`.
fn reshaped(t: candle_core::Tensor, lead: &[usize]) -> PyResult<candle_core::Tensor> {
    let width = t.dim(1).map_err(crate::errors::candle)?;
    let mut dims = lead.to_vec();
    dims.push(width);
    t.reshape(dims).map_err(crate::errors::candle)
}

/// `sae_attribution`: the metric attributed to the SAE's features (gradient × activation for
/// all, exact ablation for the top `n_exact`, direct effects for residual-stream SAEs).
#[pyfunction(name = "sae_attribution")]
#[pyo3(signature = (model, sae, prompt, options=None))]
fn sae_attribution_py<'py>(py: Python<'py>, model: &Model, sae: &Sae, prompt: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let p: Prompt = pythonize::depythonize(prompt).map_err(|e| input(format!("prompt: {e}")))?;
    let o: SaeAttributionOptions = match options {
        Some(o) if !o.is_none() => pythonize::depythonize(o).map_err(|e| input(format!("sae attribution options: {e}")))?,
        _ => SaeAttributionOptions::default(),
    };
    let (m, s) = (model.inner.clone(), sae.inner.clone());
    let r = py.detach(move || sae_attribution(&m, &s, &p, &o)).py_err()?;
    glassbox::check_finite(&r).py_err()?;
    Ok(pythonize::pythonize(py, &r)?)
}

/// `circuit_features`: which active features of a residual-stream SAE each circuit head writes
/// to at the answer position (a linear approximation, stated in the result).
#[pyfunction(name = "sae_circuit_features")]
#[pyo3(signature = (model, sae, prompt, options))]
fn sae_circuit_features_py<'py>(py: Python<'py>, model: &Model, sae: &Sae, prompt: &Bound<'py, PyAny>, options: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    use glassbox::methods::sae_attribution::{circuit_features, CircuitFeatureOptions};
    let p: Prompt = pythonize::depythonize(prompt).map_err(|e| input(format!("prompt: {e}")))?;
    let o: CircuitFeatureOptions = pythonize::depythonize(options).map_err(|e| input(format!("circuit feature options: {e}")))?;
    let (m, s) = (model.inner.clone(), sae.inner.clone());
    let r = py.detach(move || circuit_features(&m, &s, &p, &o)).py_err()?;
    glassbox::check_finite(&r).py_err()?;
    Ok(pythonize::pythonize(py, &r)?)
}

/// A transcoder set: one transcoder per MLP, the replacement an attribution graph is built over.
#[pyclass(module = "glassbox._native", frozen, name = "TranscoderSet")]
pub struct TranscoderSet {
    pub inner: Arc<glassbox::sae::set::TranscoderSet>,
    /// The folder it was loaded from.
    pub path: String,
}

#[pymethods]
impl TranscoderSet {
    /// Loads a transcoder-set folder: `config.yaml` in circuit-tracer's layout and one
    /// safetensors file per layer (as `glassbox sae train --set` writes it).
    #[staticmethod]
    fn load(py: Python<'_>, path: std::path::PathBuf) -> PyResult<TranscoderSet> {
        let shown = path.display().to_string();
        let set = py.detach(move || glassbox::sae::set::TranscoderSet::load(&path)).py_err()?;
        Ok(TranscoderSet { inner: Arc::new(set), path: shown })
    }

    /// The number of transcoders (one per layer).
    fn __len__(&self) -> usize {
        self.inner.transcoders.len()
    }

    /// The model it was trained on, as its config names it.
    #[getter]
    fn model_name(&self) -> Option<String> {
        self.inner.model_name.clone()
    }

    /// Layer `layer`'s transcoder.
    fn __getitem__(&self, layer: usize) -> PyResult<Sae> {
        let t = self.inner.transcoders.get(layer).ok_or_else(|| input(format!("layer {layer}: this set has {} transcoders", self.inner.transcoders.len())))?;
        Ok(Sae { inner: Arc::new(t.clone()), path: format!("{}[{layer}]", self.path) })
    }

    /// The unpruned attribution graph of `prompt` (`{"prompt", "correct", "incorrect"}`) as a
    /// sparse matrix `A[target, source]` in coordinate form (`rows`, `cols`, `values`, `shape`:
    /// `scipy.sparse.coo_array((values, (rows, cols)), shape)`) with the node table (`nodes`:
    /// kind, layer, position, feature, activation, in the matrix's order) and the targets.
    #[pyo3(signature = (model, prompt, options=None))]
    fn adjacency<'py>(&self, py: Python<'py>, model: &Model, prompt: &Bound<'py, PyAny>, options: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        use glassbox::methods::graph::{full_graph, GraphOptions};
        let o: GraphOptions = crate::methods::opts_of(options, "graph options")?;
        let p: std::collections::HashMap<String, String> = pythonize::depythonize(prompt).map_err(|e| input(format!("prompt: give a dict with prompt, correct and incorrect ({e})")))?;
        let get = |k: &str| p.get(k).cloned().ok_or_else(|| input(format!("prompt: no `{k}`")));
        let (text, correct, incorrect) = (get("prompt")?, get("correct")?, get("incorrect")?);
        let m = model.inner.clone();
        let set = self.inner.clone();
        let g = py
            .detach(move || -> glassbox::Result<glassbox::methods::graph::FullGraph> {
                let prompt = Prompt::new(&m, &text, &correct, &incorrect)?;
                full_graph(&m, &set, &prompt, &o)
            })
            .py_err()?;
        let (mut rows, mut cols, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (t, r) in g.adjacency.rows.iter().enumerate() {
            for &(c, w) in r {
                rows.push(t as u64);
                cols.push(u64::from(c));
                values.push(w);
            }
        }
        let ly = g.layout;
        let n = ly.tokens;
        let mut nodes = Vec::with_capacity(g.adjacency.n);
        for &(l, p, f, a) in &g.features {
            nodes.push(serde_json::json!({"kind": "feature", "layer": l, "position": p, "feature": f, "activation": a}));
        }
        for i in 0..ly.errors {
            nodes.push(serde_json::json!({"kind": "error", "layer": i / n, "position": i % n}));
        }
        for (p, t) in g.tokens.iter().enumerate() {
            nodes.push(serde_json::json!({"kind": "token", "position": p, "token": t}));
        }
        for t in &g.targets {
            nodes.push(serde_json::json!({"kind": "logit", "position": n - 1, "token": t.id, "label": t.token, "probability": t.probability, "weight": t.weight}));
        }
        let out = serde_json::json!({"rows": rows, "cols": cols, "values": values, "shape": [g.adjacency.n, g.adjacency.n], "nodes": nodes, "targets": g.targets, "n_active_features": g.n_active});
        Ok(pythonize::pythonize(py, &out)?)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sae_circuit_features_py, m)?)?;
    m.add_class::<Sae>()?;
    m.add_class::<TranscoderSet>()?;
    m.add_function(wrap_pyfunction!(sae_attribution_py, m)?)?;
    Ok(())
}
