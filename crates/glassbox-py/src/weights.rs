//! The model's weights with TransformerLens' names and shapes (`model.W_Q`:
//! `[n_layers, n_heads, d_model, d_head]`, ...), as numpy arrays made on each access
//! (quantized GGUF weights dequantized then). Grouped keys and values are repeated per query
//! head, as TransformerLens' `W_K` property does; absent biases are zeros, as TransformerLens
//! holds them. Each is a copy: changing it changes nothing in the model.

use candle_core::{DType, Tensor};
use glassbox::model::weights::{LayerWeights, MlpWeights};
use pyo3::prelude::*;

use crate::arrays::to_numpy;
use crate::errors::{candle, input};
use crate::model::Model;

type Layer = dyn Fn(&LayerWeights) -> candle_core::Result<Tensor> + Sync;

impl Model {
    /// `f` of each layer, stacked on a new first axis.
    fn stacked<'py>(&self, py: Python<'py>, f: &Layer) -> PyResult<Bound<'py, PyAny>> {
        let m = self.inner.clone();
        let t = py
            .detach(move || -> candle_core::Result<Tensor> {
                let per: Vec<Tensor> = m.weights().layers.iter().map(f).collect::<candle_core::Result<_>>()?;
                Tensor::stack(&per, 0)
            })
            .map_err(candle)?;
        Ok(to_numpy(py, &t)?.into_any())
    }

    /// A dense MLP's weights through `f` (MoE models have one MLP per expert: an error).
    fn mlp_stacked<'py>(&self, py: Python<'py>, what: &str, f: fn(&MlpWeights) -> candle_core::Result<Tensor>) -> PyResult<Bound<'py, PyAny>> {
        if self.inner.weights().layers.iter().any(|l| l.extra.moe.is_some()) {
            return Err(input(format!("{what}: this model's MLPs are mixtures of experts, with weights per expert; TransformerLens' dense {what} has no meaning here")));
        }
        self.stacked(py, &move |l| f(&l.mlp))
    }

    fn dims(&self) -> (usize, usize, usize, usize) {
        let c = self.inner.config();
        (c.n_heads, c.n_kv_heads, c.d_head, c.d_model)
    }
}

/// `[heads*d_head, d_model]` rows as `[n_heads, d_model, d_head]`, key/value heads repeated
/// `repeat` times each (grouped-query attention).
fn per_head_in(w: &Tensor, heads: usize, d_head: usize, d_model: usize, repeat: usize) -> candle_core::Result<Tensor> {
    let t = w.reshape((heads, d_head, d_model))?.transpose(1, 2)?.contiguous()?;
    repeat_heads(&t, repeat)
}

/// Each head's slice repeated `repeat` times on axis 0 (`repeat_interleave`).
fn repeat_heads(t: &Tensor, repeat: usize) -> candle_core::Result<Tensor> {
    if repeat == 1 {
        return Ok(t.clone());
    }
    let mut dims = t.dims().to_vec();
    let heads = dims[0];
    let t = t.unsqueeze(1)?.repeat(std::iter::once(1).chain(std::iter::once(repeat)).chain(std::iter::repeat_n(1, dims.len() - 1)).collect::<Vec<_>>())?;
    dims[0] = heads * repeat;
    t.reshape(dims)
}

/// A bias, or zeros of `len` where the model has none.
fn bias_or_zeros(b: &Option<Tensor>, len: usize) -> candle_core::Result<Tensor> {
    match b {
        Some(b) => b.to_dtype(DType::F32),
        None => Tensor::zeros(len, DType::F32, &candle_core::Device::Cpu),
    }
}

impl Model {
    /// The token embedding `W_E` `[d_vocab, d_model]`.
    pub(crate) fn tl_w_e<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(to_numpy(py, &self.inner.weights().embed.tensor().map_err(crate::errors::to_py)?)?.into_any())
    }

    /// The learned position embedding `W_pos` `[n_ctx, d_model]` (None for rotary models).
    pub(crate) fn tl_w_pos<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner.weights().pos_embed.as_ref().map(|t| Ok(to_numpy(py, t)?.into_any())).transpose()
    }

    /// The unembedding `W_U` `[d_model, d_vocab]`.
    pub(crate) fn tl_w_u<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let t = self.inner.weights().unembed.tensor().map_err(crate::errors::to_py)?;
        Ok(to_numpy(py, &t.t().and_then(|t| t.contiguous()).map_err(candle)?)?.into_any())
    }

    /// The unembedding's bias `b_U` `[d_vocab]` (zeros where the model has none).
    pub(crate) fn tl_b_u<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.inner.config().d_vocab;
        Ok(to_numpy(py, &bias_or_zeros(&self.inner.weights().unembed_bias, v).map_err(candle)?)?.into_any())
    }

    /// Queries `W_Q` `[n_layers, n_heads, d_model, d_head]`.
    pub(crate) fn tl_w_q<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (h, _, dh, dm) = self.dims();
        self.stacked(py, &move |l| per_head_in(&l.attn.w_q.tensor().map_err(to_candle)?, h, dh, dm, 1))
    }

    /// Keys `W_K` `[n_layers, n_heads, d_model, d_head]` (grouped heads repeated).
    pub(crate) fn tl_w_k<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (h, kv, dh, dm) = self.dims();
        self.stacked(py, &move |l| per_head_in(&l.attn.w_k.tensor().map_err(to_candle)?, kv, dh, dm, h / kv))
    }

    /// Values `W_V` `[n_layers, n_heads, d_model, d_head]` (grouped heads repeated).
    pub(crate) fn tl_w_v<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (h, kv, dh, dm) = self.dims();
        self.stacked(py, &move |l| per_head_in(&l.attn.w_v.tensor().map_err(to_candle)?, kv, dh, dm, h / kv))
    }

    /// Outputs `W_O` `[n_layers, n_heads, d_head, d_model]`.
    pub(crate) fn tl_w_o<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (h, _, dh, dm) = self.dims();
        self.stacked(py, &move |l| l.attn.w_o.tensor().map_err(to_candle)?.t()?.contiguous()?.reshape((h, dh, dm)))
    }

    /// Query biases `b_Q` `[n_layers, n_heads, d_head]`.
    pub(crate) fn tl_b_q<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (h, _, dh, _) = self.dims();
        self.stacked(py, &move |l| bias_or_zeros(&l.attn.b_q, h * dh)?.reshape((h, dh)))
    }

    /// Key biases `b_K` `[n_layers, n_heads, d_head]` (grouped heads repeated).
    pub(crate) fn tl_b_k<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (h, kv, dh, _) = self.dims();
        self.stacked(py, &move |l| repeat_heads(&bias_or_zeros(&l.attn.b_k, kv * dh)?.reshape((kv, dh))?, h / kv))
    }

    /// Value biases `b_V` `[n_layers, n_heads, d_head]` (grouped heads repeated).
    pub(crate) fn tl_b_v<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (h, kv, dh, _) = self.dims();
        self.stacked(py, &move |l| repeat_heads(&bias_or_zeros(&l.attn.b_v, kv * dh)?.reshape((kv, dh))?, h / kv))
    }

    /// Output biases `b_O` `[n_layers, d_model]`.
    pub(crate) fn tl_b_o<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dm = self.dims().3;
        self.stacked(py, &move |l| bias_or_zeros(&l.attn.b_o, dm))
    }

    /// MLP inputs `W_in` `[n_layers, d_model, d_mlp]` (a gated MLP's up projection).
    pub(crate) fn tl_w_in<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.mlp_stacked(py, "W_in", |m| m.w_in.tensor().map_err(to_candle)?.t()?.contiguous())
    }

    /// Gates `W_gate` `[n_layers, d_model, d_mlp]` (None without a gated MLP).
    pub(crate) fn tl_w_gate<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if self.inner.weights().layers.iter().any(|l| l.mlp.w_gate.is_none() && l.extra.moe.is_none()) {
            return Ok(None);
        }
        self.mlp_stacked(py, "W_gate", |m| m.w_gate.as_ref().map_or_else(|| Err(candle_core::Error::Msg("no gate".into())), |g| g.tensor().map_err(to_candle)?.t()?.contiguous())).map(Some)
    }

    /// MLP outputs `W_out` `[n_layers, d_mlp, d_model]`.
    pub(crate) fn tl_w_out<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.mlp_stacked(py, "W_out", |m| m.w_out.tensor().map_err(to_candle)?.t()?.contiguous())
    }

    /// MLP input biases `b_in` `[n_layers, d_mlp]`.
    pub(crate) fn tl_b_in<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.mlp_stacked(py, "b_in", |m| bias_or_zeros(&m.b_in, m.w_in.dims()[0]))
    }

    /// MLP output biases `b_out` `[n_layers, d_model]`.
    pub(crate) fn tl_b_out<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.mlp_stacked(py, "b_out", |m| bias_or_zeros(&m.b_out, m.w_out.dims()[0]))
    }
}

/// glassbox's error as candle's, inside the closures above.
fn to_candle(e: glassbox::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}
