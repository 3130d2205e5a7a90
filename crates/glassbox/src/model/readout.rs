//! The model's own readout and the linear pieces of its residual stream, for every method that
//! decomposes it (logit lens, direct effects, edge attribution, composition, the activation
//! cache's helpers): how the final norm, the unembedding, the soft-cap, the attention and MLP
//! post-norms and each head's output are computed lives here once; the forward and the
//! methods call these functions instead of restating the rules.
//!
//! A norm is not linear: where a decomposition needs it to be (per-component effects), its
//! scale is **frozen** at the value it had in the run (`scale` arguments), so that the
//! components' images add up to the image of their sum exactly.

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::NormKind;
use crate::model::ops::norm_parts;
use crate::model::weights::Norm;
use crate::model::Model;

impl Model {
    /// `x` centred as the model's norm centres it (LayerNorm: the mean over the last axis
    /// subtracted; RMSNorm: unchanged). Linear.
    pub fn centre(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.config.norm.kind {
            NormKind::LayerNorm => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
            NormKind::RmsNorm => x.clone(),
        })
    }

    /// The model's norm scale of `x` (`sqrt(mean(centred²) + eps)` over the last axis).
    pub fn norm_scale_of(&self, x: &Tensor) -> Result<Tensor> {
        Ok(norm_parts(x, self.config.norm.kind, self.config.norm.eps)?.1)
    }

    /// A norm with its scale frozen: `centre(x) / scale · w` (without the bias, which is a
    /// constant of its own: `norm_bias`). Linear in `x`. `scale` broadcasts against `x`.
    fn frozen(&self, x: &Tensor, scale: &Tensor, n: &Norm) -> Result<Tensor> {
        Ok(self.centre(x)?.broadcast_div(scale)?.broadcast_mul(&n.w)?)
    }

    /// The final norm applied to `x` with the scale frozen at `scale` (the run's
    /// `ln_final.hook_scale`), without its bias. Models without a final norm (post-LN OPT)
    /// return `x`.
    pub fn final_norm_frozen(&self, x: &Tensor, scale: &Tensor) -> Result<Tensor> {
        if self.config.variants.no_final_norm {
            return Ok(x.clone());
        }
        self.frozen(x, scale, &self.weights.ln_final)
    }

    /// The final norm applied to `x` with its own scale, bias included (the logit lens).
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        if self.config.variants.no_final_norm {
            return Ok(x.clone());
        }
        let y = self.frozen(x, &self.norm_scale_of(x)?, &self.weights.ln_final)?;
        Ok(match &self.weights.ln_final.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// The final norm's bias, where it has one.
    pub fn final_norm_bias(&self) -> Option<&Tensor> {
        self.weights.ln_final.b.as_ref()
    }

    /// Logits of normalised residual vectors `x: [..., d_model]`: the unembedding, its bias,
    /// and the final soft-cap (Gemma 2) — what the forward does after the final norm.
    pub fn unembed(&self, x: &Tensor) -> Result<Tensor> {
        self.softcap_logits(self.weights.unembed.linear(x, self.weights.unembed_bias.as_ref())?)
    }

    /// The final soft-cap `c · tanh(logits / c)` where the model has one.
    pub fn softcap_logits(&self, logits: Tensor) -> Result<Tensor> {
        Ok(match self.config.variants.final_softcap {
            Some(c) => ((logits / c)?.tanh()? * c)?,
            None => logits,
        })
    }

    /// The unembedding row of each token: `[tokens, d_model]`.
    pub fn unembed_rows(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.config.d_vocab) {
            return Err(Error::Invalid(format!("token id {t} is outside the vocabulary of {} tokens", self.config.d_vocab)));
        }
        self.weights.unembed.rows(tokens)
    }

    /// The logit contribution of unembedding bias of `correct` minus that of `incorrect`.
    pub fn unembed_bias_diff(&self, correct: u32, incorrect: u32) -> Result<f32> {
        match &self.weights.unembed_bias {
            Some(b) => Ok((b.get(correct as usize)? - b.get(incorrect as usize)?)?.to_dtype(candle_core::DType::F32)?.to_scalar()?),
            None => Ok(0.0),
        }
    }

    /// The scale of the attention post-norm (Gemma 2/3, OLMo-2) at every position, from the
    /// run's `hook_z` of `layer` (`[b, p, h, d_head]`): `None` for models without one.
    pub fn attn_post_scale(&self, layer: usize, z: &Tensor) -> Result<Option<Tensor>> {
        self.config.check_layer(layer)?;
        let lw = &self.weights.layers[layer];
        if lw.extra.ln1_post.is_none() {
            return Ok(None);
        }
        let (b, p, h, dh) = z.dims4()?;
        let pre = lw.attn.w_o.linear(&z.reshape((b, p, h * dh))?, lw.attn.b_o.as_ref())?;
        Ok(Some(self.norm_scale_of(&pre)?))
    }

    /// Each head's output as it joins the residual stream: `[b, p, h, d_model]` from
    /// `z: [b, p, h, d_head]`: `z_h · W_O,hᵀ`, through the attention post-norm with its scale
    /// frozen at `post_scale` (`attn_post_scale`) where the model has one. The heads' results
    /// plus `attn_bias_result` sum to `hook_attn_out`.
    pub fn head_results(&self, layer: usize, z: &Tensor, post_scale: Option<&Tensor>) -> Result<Tensor> {
        self.config.check_layer(layer)?;
        let out = self.head_outputs(layer, z)?;
        self.through_post_norm(&self.weights.layers[layer].extra.ln1_post, out, post_scale.map(|s| s.unsqueeze(2)).transpose()?.as_ref())
    }

    /// Each head's `z` through its rows of the output projection, before any post-norm and
    /// without the bias (`hook_result`): `[b, p, h, d_model]`.
    pub(crate) fn head_outputs(&self, layer: usize, z: &Tensor) -> Result<Tensor> {
        let lw = &self.weights.layers[layer];
        let (b, p, h, dh) = z.dims4()?;
        let d = self.config.d_model;
        // [d, h·dh] → per head [h, dh, d]
        let w_o = lw.attn.w_o.transposed()?.reshape((h, dh, d))?.to_dtype(z.dtype())?;
        // [b·p, h, dh] × [h, dh, d] per head
        let zz = z.reshape((b * p, h, dh))?.transpose(0, 1)?.contiguous()?; // [h, b·p, dh]
        Ok(zz.matmul(&w_o)?.transpose(0, 1)?.reshape((b, p, h, d))?) // [b, p, h, d]
    }

    /// The attention output bias as it joins the stream `[b, p, d_model]` (zeros without a
    /// bias), through the post-norm with its frozen scale where the model has one.
    pub fn attn_bias_result(&self, layer: usize, shape: (usize, usize), post_scale: Option<&Tensor>) -> Result<Tensor> {
        self.config.check_layer(layer)?;
        let lw = &self.weights.layers[layer];
        let d = self.config.d_model;
        let bias = match &lw.attn.b_o {
            Some(b) => b.broadcast_as((shape.0, shape.1, d))?.contiguous()?,
            None => Tensor::zeros((shape.0, shape.1, d), self.weights.dtype(), &candle_core::Device::Cpu)?,
        };
        self.through_post_norm(&lw.extra.ln1_post, bias, post_scale)
    }

    /// `x` through a post-norm with a frozen scale (none: `x` as it is). The post-norm's bias
    /// (none in the families that have post-norms) would be a constant of its own.
    fn through_post_norm(&self, post: &Option<Norm>, x: Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
        match (post, scale) {
            (None, _) => Ok(x),
            (Some(n), Some(s)) => self.frozen(&x, s, n),
            (Some(_), None) => Err(Error::Invalid("this model normalises its attention output: give the post-norm scale of the run".into())),
        }
    }

    /// The scale of the MLP post-norm from the run's `hook_mlp_post` of `layer` (`None` for
    /// models without one).
    pub fn mlp_post_scale(&self, layer: usize, post: &Tensor) -> Result<Option<Tensor>> {
        self.config.check_layer(layer)?;
        let lw = &self.weights.layers[layer];
        if lw.extra.ln2_post.is_none() {
            return Ok(None);
        }
        Ok(Some(self.norm_scale_of(&lw.mlp.w_out.linear(post, lw.mlp.b_out.as_ref())?)?))
    }

    /// Each MLP neuron's output as it joins the stream: `[b, p, d_mlp, d_model]` from
    /// `post: [b, p, d_mlp]` (`hook_post`), `post_n · W_out[:, n]`, through the MLP post-norm
    /// with its frozen scale where the model has one. Dense MLPs only.
    pub fn neuron_results(&self, layer: usize, post: &Tensor, post_scale: Option<&Tensor>) -> Result<Tensor> {
        self.config.check_layer(layer)?;
        let lw = &self.weights.layers[layer];
        if lw.extra.moe.is_some() {
            return Err(Error::Invalid(format!("layer {layer} is a mixture of experts: it has no neurons of one MLP")));
        }
        let w_out = lw.mlp.w_out.tensor()?.t()?; // [d_mlp, d]
        let out = post.unsqueeze(3)?.broadcast_mul(&w_out.unsqueeze(0)?.unsqueeze(0)?)?; // [b, p, m, d]
        self.through_post_norm(&lw.extra.ln2_post, out, post_scale.map(|s| s.unsqueeze(2)).transpose()?.as_ref())
    }

    /// The weight of the norm a layer's attention reads its input through (`None` where it
    /// reads the raw residual: post-LN and OLMo-2-style models).
    pub fn attn_input_norm(&self, layer: usize) -> Result<Option<&Tensor>> {
        self.config.check_layer(layer)?;
        let v = &self.config.variants;
        Ok((!v.post_ln && !v.no_pre_norms).then(|| &self.weights.layers[layer].ln1.w))
    }

    /// The gradient at a norm's input from the gradient at its normalised output (before its
    /// weight), the norm's scale frozen at the run's (`normalized = centred / scale`, as cached at
    /// `ln*.hook_normalized` and `ln*.hook_scale`): `(g − n·mean(g⊙n) [− mean(g) for LayerNorm]) /
    /// scale`. `normalized` and `scale` broadcast against `g` (leading axes of one).
    pub fn norm_backward(&self, g: &Tensor, normalized: &Tensor, scale: &Tensor) -> Result<Tensor> {
        let gn = g.broadcast_mul(normalized)?.mean_keepdim(candle_core::D::Minus1)?;
        let mut out = (g - normalized.broadcast_mul(&gn)?)?;
        if self.config.norm.kind == crate::model::config::NormKind::LayerNorm {
            out = out.broadcast_sub(&g.mean_keepdim(candle_core::D::Minus1)?)?;
        }
        Ok(out.broadcast_div(scale)?)
    }

    /// The gradient at the residual stream entering `layer` from the gradient at its
    /// attention's input (after the input norm and its weight), through the input norm with
    /// the run's `ln1.hook_normalized` and `ln1.hook_scale`; as it is where attention reads the
    /// raw residual.
    pub fn attn_input_backward(&self, layer: usize, g: &Tensor, normalized: &Tensor, scale: &Tensor) -> Result<Tensor> {
        match self.attn_input_norm(layer)? {
            Some(w) => self.norm_backward(&g.broadcast_mul(w)?, normalized, scale),
            None => Ok(g.clone()),
        }
    }
}
