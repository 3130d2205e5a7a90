//! The weights of a model in one layout for every family: linear maps as `[out, in]`
//! (PyTorch `nn.Linear`), per-head projections with heads outermost in the `out` rows.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::quant::QMatrix;

/// A weight matrix `[rows, cols]` (a linear map's `[out, in]`, or an embedding's
/// `[vocab, d_model]`): a dense tensor, or a GGUF file's quantized blocks kept as they are
/// (the GGUF loader on CPUs with the kernels), which the products dequantize on the way to
/// exactly the f32 values of the dense form.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// A dense 2-D tensor (f32; f64 in finite-difference checks).
    Dense(Tensor),
    /// Quantized blocks, shared between clones.
    Quantized(Arc<QMatrix>),
}

impl From<Tensor> for Matrix {
    fn from(t: Tensor) -> Self {
        Matrix::Dense(t)
    }
}

impl Matrix {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Matrix::Dense(t) => match t.dims() {
                [] => (1, 1),
                [c] => (1, *c),
                [lead @ .., c] => (lead.iter().product(), *c),
            },
            Matrix::Quantized(q) => (q.rows(), q.cols()),
        }
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        let (r, c) = self.shape();
        [r, c]
    }

    /// Number of values.
    pub fn elem_count(&self) -> usize {
        let (r, c) = self.shape();
        r * c
    }

    /// The matrix as a dense tensor: the tensor itself, or an f32 copy of quantized blocks
    /// (for the methods that read a weight as a matrix; the forward never makes one).
    pub fn tensor(&self) -> Result<Tensor> {
        match self {
            Matrix::Dense(t) => Ok(t.clone()),
            Matrix::Quantized(q) => q.to_tensor(DType::F32),
        }
    }

    /// Rows `start..start + len` as a dense tensor (only those rows dequantized).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Tensor> {
        let (rows, cols) = self.shape();
        if start.checked_add(len).is_none_or(|e| e > rows) {
            return Err(Error::Invalid(format!("rows {start}..+{len} of a {rows}-row matrix")));
        }
        match self {
            Matrix::Dense(t) => Ok(t.narrow(0, start, len)?),
            Matrix::Quantized(q) => {
                let mut out = vec![0f32; len * cols];
                q.dequantize_rows(start, start + len, &mut out);
                Ok(Tensor::from_vec(out, (len, cols), &candle_core::Device::Cpu)?)
            }
        }
    }

    /// The transpose `[cols, rows]` as a dense contiguous tensor, made by a plain loop over the
    /// rows (a strided copy of a permuted tensor costs several times more).
    pub fn transposed(&self) -> Result<Tensor> {
        let (rows, cols) = self.shape();
        let dense = match self {
            Matrix::Dense(t) if t.dtype() != DType::F32 => return Ok(t.t()?.contiguous()?),
            Matrix::Dense(t) => t.flatten_all()?.to_vec1::<f32>()?,
            Matrix::Quantized(q) => {
                let mut v = vec![0f32; rows * cols];
                q.dequantize_rows(0, rows, &mut v);
                v
            }
        };
        let mut out = vec![0f32; rows * cols];
        // Blocks of 16 rows keep the writes' cache lines in use.
        for r0 in (0..rows).step_by(16) {
            for c in 0..cols {
                for r in r0..(r0 + 16).min(rows) {
                    out[c * rows + r] = dense[r * cols + c];
                }
            }
        }
        Ok(Tensor::from_vec(out, (cols, rows), &candle_core::Device::Cpu)?)
    }

    /// `x @ selfᵀ + b` over the last axis of `x`.
    pub fn linear(&self, x: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        crate::model::ops::linear_m(x, self, b)
    }

    /// The rows of `ids`, `[ids.len(), cols]` (an embedding lookup).
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        let rows = self.shape().0;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= rows) {
            return Err(Error::Invalid(format!("token id {bad} is outside the {rows} rows of the embedding")));
        }
        match self {
            Matrix::Dense(t) => Ok(t.index_select(&Tensor::from_slice(ids, ids.len(), t.device())?, 0)?),
            Matrix::Quantized(q) => q.gather(ids),
        }
    }

    /// Row `i`, `[cols]`.
    pub fn row(&self, i: usize) -> Result<Tensor> {
        let id = u32::try_from(i).map_err(|_| Error::Invalid(format!("row {i} is out of range")))?;
        Ok(self.rows(&[id])?.squeeze(0)?)
    }

    /// Whether `self` and `other` are the same stored weight (a tied embedding).
    pub fn same_as(&self, other: &Matrix) -> bool {
        match (self, other) {
            (Matrix::Dense(a), Matrix::Dense(b)) => a.id() == b.id(),
            (Matrix::Quantized(a), Matrix::Quantized(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The quantized blocks, where the matrix is kept quantized.
    pub fn quantized(&self) -> Option<&QMatrix> {
        match self {
            Matrix::Quantized(q) => Some(q),
            Matrix::Dense(_) => None,
        }
    }

    /// Bytes the matrix holds in memory.
    pub fn memory_bytes(&self) -> usize {
        match self {
            Matrix::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Matrix::Quantized(q) => q.memory_bytes(),
        }
    }

    /// A copy in `dtype`: quantized blocks stay as they are in f32 (unless `dense`) and become
    /// a dense tensor in any other dtype.
    pub fn to_dtype(&self, dtype: DType, dense: bool) -> Result<Matrix> {
        match self {
            Matrix::Quantized(_) if dtype == DType::F32 && !dense => Ok(self.clone()),
            Matrix::Quantized(q) => Ok(Matrix::Dense(q.to_tensor(dtype)?)),
            Matrix::Dense(t) => Ok(Matrix::Dense(t.to_dtype(dtype)?)),
        }
    }
}

/// A norm's elementwise weight and optional bias (LayerNorm has both, RMSNorm only `w`).
#[derive(Debug, Clone)]
pub struct Norm {
    /// Elementwise weight over the normalised axis (`[d_model]` for the block and final norms).
    pub w: Tensor,
    /// Elementwise bias, same shape as `w`, where the norm has one.
    pub b: Option<Tensor>,
}

/// Attention projections. `w_q: [n_heads*d_head, d_model]`, `w_k`/`w_v: [n_kv_heads*d_head, d_model]`,
/// `w_o: [d_model, n_heads*d_head]`.
#[derive(Debug, Clone)]
pub struct AttnWeights {
    /// `[n_heads*d_head, d_model]` query projection.
    pub w_q: Matrix,
    /// `[n_heads*d_head]` query bias, where the model has one.
    pub b_q: Option<Tensor>,
    /// `[n_kv_heads*d_head, d_model]` key projection.
    pub w_k: Matrix,
    /// `[n_kv_heads*d_head]` key bias, where the model has one.
    pub b_k: Option<Tensor>,
    /// `[n_kv_heads*d_head, d_model]` value projection.
    pub w_v: Matrix,
    /// `[n_kv_heads*d_head]` value bias, where the model has one.
    pub b_v: Option<Tensor>,
    /// `[d_model, n_heads*d_head]` output projection.
    pub w_o: Matrix,
    /// `[d_model]` output bias, where the model has one.
    pub b_o: Option<Tensor>,
}

/// MLP maps. `w_in`/`w_gate: [d_mlp, d_model]`, `w_out: [d_model, d_mlp]`.
#[derive(Debug, Clone)]
pub struct MlpWeights {
    /// `[d_mlp, d_model]` input projection (the up projection of a gated MLP).
    pub w_in: Matrix,
    /// `[d_mlp]` input bias, where the model has one.
    pub b_in: Option<Tensor>,
    /// `[d_mlp, d_model]` gate projection, in gated MLPs only.
    pub w_gate: Option<Matrix>,
    /// `[d_mlp]` gate bias, where the model has one.
    pub b_gate: Option<Tensor>,
    /// `[d_model, d_mlp]` output projection.
    pub w_out: Matrix,
    /// `[d_model]` output bias, where the model has one.
    pub b_out: Option<Tensor>,
}

/// A mixture of experts: the router `[n_experts, d_model]` and each expert's gated MLP.
#[derive(Debug, Clone)]
pub struct MoeWeights {
    /// `[n_experts, d_model]` router; its products are `hook_router_logits`.
    pub router: Tensor,
    /// Each expert's MLP, in the router's order.
    pub experts: Vec<MlpWeights>,
    /// A shared expert and its gate `[1, d_model]` (Qwen2-MoE).
    pub shared: Option<(MlpWeights, Tensor)>,
}

/// Weights only some families have (see `config::Variants`).
#[derive(Debug, Clone, Default)]
pub struct LayerExtras {
    /// Norm of the attention output (Gemma 2/3 `post_attention_layernorm`).
    pub ln1_post: Option<Norm>,
    /// Norm of the MLP output (Gemma 2/3 `post_feedforward_layernorm`).
    pub ln2_post: Option<Norm>,
    /// Per-head query and key RMSNorm weights `[d_head]` (Gemma 3).
    pub q_norm: Option<Norm>,
    /// The key norm's weights, as `q_norm` for the keys.
    pub k_norm: Option<Norm>,
    /// Present when the MLP is a mixture of experts (`mlp` is then unused).
    pub moe: Option<MoeWeights>,
}

/// The weights of one block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// The attention's norm (before it; after the residual addition in post-LN models).
    pub ln1: Norm,
    /// Attention projections.
    pub attn: AttnWeights,
    /// The MLP's norm (before it; after the residual addition in post-LN models).
    pub ln2: Norm,
    /// The dense MLP (unused when `extra.moe` is set).
    pub mlp: MlpWeights,
    /// Weights only some families have.
    pub extra: LayerExtras,
}

/// All weights. `embed: [d_vocab, d_model]`, `pos_embed: [n_positions, d_model]`,
/// `unembed: [d_vocab, d_model]` (the same tensor as `embed` when tied).
#[derive(Debug, Clone)]
pub struct Weights {
    /// `[d_vocab, d_model]` token embedding.
    pub embed: Matrix,
    /// `[n_positions, d_model]` learned position table, with `Positions::Learned` only.
    pub pos_embed: Option<Tensor>,
    /// One entry per block, in order.
    pub layers: Vec<LayerWeights>,
    /// The final norm before the unembedding.
    pub ln_final: Norm,
    /// `[d_vocab, d_model]` unembedding (the same tensor as `embed` when tied).
    pub unembed: Matrix,
    /// `[d_vocab]` unembedding bias, where the model has one.
    pub unembed_bias: Option<Tensor>,
    /// Divisors of the rotary frequencies, one per rotating pair (a GGUF file's
    /// `rope_freqs.weight`, llama.cpp's form of Llama 3.1 scaling).
    pub rope_freqs: Option<Vec<f32>>,
}

fn cast(t: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(t.to_dtype(dtype)?)
}

fn cast_opt(t: &Option<Tensor>, dtype: DType) -> Result<Option<Tensor>> {
    t.as_ref().map(|t| cast(t, dtype)).transpose()
}

impl Norm {
    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Norm {
            w: cast(&self.w, dtype)?,
            b: cast_opt(&self.b, dtype)?,
        })
    }
}

impl MlpWeights {
    /// A gated MLP without biases, as the experts of a mixture are.
    pub(crate) fn gated_unbiased(w_gate: Matrix, w_in: Matrix, w_out: Matrix) -> Self {
        MlpWeights { w_gate: Some(w_gate), b_gate: None, w_in, b_in: None, w_out, b_out: None }
    }

    fn to_dtype(&self, dtype: DType, dense: bool) -> Result<Self> {
        Ok(MlpWeights {
            w_in: self.w_in.to_dtype(dtype, dense)?,
            b_in: cast_opt(&self.b_in, dtype)?,
            w_gate: self.w_gate.as_ref().map(|w| w.to_dtype(dtype, dense)).transpose()?,
            b_gate: cast_opt(&self.b_gate, dtype)?,
            w_out: self.w_out.to_dtype(dtype, dense)?,
            b_out: cast_opt(&self.b_out, dtype)?,
        })
    }
}

impl Weights {
    /// The weights' dtype (the final norm's: f32, or f64 in finite-difference checks;
    /// quantized matrices compute in f32).
    pub fn dtype(&self) -> DType {
        self.ln_final.w.dtype()
    }

    /// Bytes the weights hold in memory (a tied unembedding counted once).
    pub fn memory_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let norm = |n: &Norm| t(&n.w) + n.b.as_ref().map_or(0, t);
        let opt = |x: &Option<Tensor>| x.as_ref().map_or(0, t);
        let mlp = |m: &MlpWeights| {
            m.w_in.memory_bytes() + m.w_out.memory_bytes() + m.w_gate.as_ref().map_or(0, |w| w.memory_bytes()) + opt(&m.b_in) + opt(&m.b_gate) + opt(&m.b_out)
        };
        let mut n = self.embed.memory_bytes() + opt(&self.pos_embed) + norm(&self.ln_final) + opt(&self.unembed_bias);
        if !self.unembed.same_as(&self.embed) {
            n += self.unembed.memory_bytes();
        }
        for l in &self.layers {
            let a = &l.attn;
            n += norm(&l.ln1) + norm(&l.ln2) + mlp(&l.mlp);
            n += [&a.w_q, &a.w_k, &a.w_v, &a.w_o].iter().map(|w| w.memory_bytes()).sum::<usize>();
            n += [&a.b_q, &a.b_k, &a.b_v, &a.b_o].iter().map(|b| opt(b)).sum::<usize>();
            let e = &l.extra;
            n += [&e.ln1_post, &e.ln2_post, &e.q_norm, &e.k_norm].iter().map(|x| x.as_ref().map_or(0, norm)).sum::<usize>();
            if let Some(moe) = &e.moe {
                n += t(&moe.router) + moe.experts.iter().map(mlp).sum::<usize>() + moe.shared.as_ref().map_or(0, |(m, g)| mlp(m) + t(g));
            }
        }
        n
    }

    /// A copy of every weight in `dtype` (f64 for finite-difference checks); quantized
    /// matrices stay quantized in f32.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        self.convert(dtype, false)
    }

    /// The weights with every quantized matrix dequantized to a dense f32 tensor (what the
    /// loader made before quantized weights were kept: the figures are the same bit for bit).
    pub fn dense(&self) -> Result<Self> {
        self.convert(DType::F32, true)
    }

    fn convert(&self, dtype: DType, dense: bool) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerWeights {
                    ln1: l.ln1.to_dtype(dtype)?,
                    ln2: l.ln2.to_dtype(dtype)?,
                    attn: AttnWeights {
                        w_q: l.attn.w_q.to_dtype(dtype, dense)?,
                        b_q: cast_opt(&l.attn.b_q, dtype)?,
                        w_k: l.attn.w_k.to_dtype(dtype, dense)?,
                        b_k: cast_opt(&l.attn.b_k, dtype)?,
                        w_v: l.attn.w_v.to_dtype(dtype, dense)?,
                        b_v: cast_opt(&l.attn.b_v, dtype)?,
                        w_o: l.attn.w_o.to_dtype(dtype, dense)?,
                        b_o: cast_opt(&l.attn.b_o, dtype)?,
                    },
                    mlp: l.mlp.to_dtype(dtype, dense)?,
                    extra: LayerExtras {
                        ln1_post: l.extra.ln1_post.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        ln2_post: l.extra.ln2_post.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        q_norm: l.extra.q_norm.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        k_norm: l.extra.k_norm.as_ref().map(|n| n.to_dtype(dtype)).transpose()?,
                        moe: l
                            .extra
                            .moe
                            .as_ref()
                            .map(|m| {
                                Ok::<_, crate::error::Error>(MoeWeights {
                                    router: cast(&m.router, dtype)?,
                                    experts: m.experts.iter().map(|e| e.to_dtype(dtype, dense)).collect::<Result<_>>()?,
                                    shared: m.shared.as_ref().map(|(e, g)| Ok::<_, crate::error::Error>((e.to_dtype(dtype, dense)?, cast(g, dtype)?))).transpose()?,
                                })
                            })
                            .transpose()?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = self.embed.to_dtype(dtype, dense)?;
        let tied = self.unembed.same_as(&self.embed);
        Ok(Weights {
            unembed: if tied {
                embed.clone()
            } else {
                self.unembed.to_dtype(dtype, dense)?
            },
            embed,
            pos_embed: cast_opt(&self.pos_embed, dtype)?,
            layers,
            ln_final: self.ln_final.to_dtype(dtype)?,
            unembed_bias: cast_opt(&self.unembed_bias, dtype)?,
            rope_freqs: self.rope_freqs.clone(),
        })
    }
}
