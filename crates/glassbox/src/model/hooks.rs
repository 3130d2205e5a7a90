//! Hook points (named as in TransformerLens) and what a forward pass does at them: cache,
//! intervene (replace, add, zero, mean-ablate, on chosen heads and positions) and gradient taps.
//!
//! Shapes (batch `b`, positions `p`, heads `h`, key/value heads `kv`):
//!
//! | hook | shape |
//! |---|---|
//! | `hook_embed`, `hook_pos_embed` | `[b, p, d_model]` |
//! | `blocks.{l}.hook_resid_pre` / `hook_resid_mid` / `hook_resid_post` | `[b, p, d_model]` |
//! | `blocks.{l}.hook_mlp_in` | `[b, p, d_model]`: the residual as the MLP reads it (a copy; patching it changes the MLP's input only) |
//! | `blocks.{l}.ln1.hook_scale`, `ln2.hook_scale`, `ln_final.hook_scale` | `[b, p, 1]` |
//! | `blocks.{l}.ln1.hook_normalized`, `ln2.hook_normalized`, `ln_final.hook_normalized` | `[b, p, d_model]`, before the norm's weight and bias |
//! | `blocks.{l}.attn.hook_q`, `hook_rot_q` | `[b, p, h, d_head]` (`rot`: after rotary) |
//! | `blocks.{l}.attn.hook_k`, `hook_v`, `hook_rot_k` | `[b, p, kv, d_head]`: with GQA, the key/value head count |
//! | `blocks.{l}.attn.hook_attn_scores`, `hook_pattern` | `[b, h, p_query, p_key]` (scores after the mask) |
//! | `blocks.{l}.attn.hook_z` | `[b, p, h, d_head]` |
//! | `blocks.{l}.hook_attn_out`, `hook_mlp_out` | `[b, p, d_model]` |
//! | `blocks.{l}.mlp.hook_pre`, `hook_pre_linear`, `hook_post` | `[b, p, d_mlp]` (gated MLPs: `hook_pre` is the gate, `hook_pre_linear` the up projection; not in MoE layers) |
//! | `blocks.{l}.mlp.hook_router_logits`, `hook_expert_weights` | `[b, p, n_experts]` (weights: 0 for unchosen experts) |
//! | `blocks.{l}.mlp.experts.{e}.hook_out` | `[b, p, d_model]`, expert `e`'s output before its weight |

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// A named place in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookPoint {
    /// `hook_embed`: token embeddings (times the embedding scale where the model has one), `[b, p, d_model]`.
    Embed,
    /// `hook_pos_embed`: learned position embeddings, `[b, p, d_model]`.
    PosEmbed,
    /// `blocks.{l}.hook_resid_pre`: the residual stream entering block `l`, `[b, p, d_model]`.
    ResidPre(usize),
    /// `blocks.{l}.ln1.hook_scale`: the attention norm's divisor (std or RMS, with eps), `[b, p, 1]`.
    Ln1Scale(usize),
    /// `blocks.{l}.ln1.hook_normalized`: the attention norm's output before its weight and bias, `[b, p, d_model]`.
    Ln1Normalized(usize),
    /// `blocks.{l}.hook_attn_in`: the residual stream as each head reads it for its query, key
    /// and value alike, before the attention norm, `[b, p, n_heads, d_model]` (TransformerLens'
    /// `use_attn_in`; models with one key/value head per query head). Computed only in runs
    /// that hook it explicitly, as `QInput`.
    AttnIn(usize),
    /// `blocks.{l}.hook_q_input`: the residual stream as each query head alone reads it, before
    /// the attention norm, `[b, p, n_heads, d_model]` (TransformerLens' split inputs). Computed only
    /// in runs that hook it explicitly (never by `cache_all`); the norm then runs once per head.
    QInput(usize),
    /// `blocks.{l}.hook_k_input`: the residual as each key/value head reads it for its keys,
    /// `[b, p, n_kv_heads, d_model]` (see `QInput`).
    KInput(usize),
    /// `blocks.{l}.hook_v_input`: the residual as each key/value head reads it for its values,
    /// `[b, p, n_kv_heads, d_model]` (see `QInput`).
    VInput(usize),
    /// `blocks.{l}.attn.hook_q`: queries (before query norm and rotary), `[b, p, n_heads, d_head]`.
    Q(usize),
    /// `blocks.{l}.attn.hook_k`: keys (before key norm and rotary), `[b, p, n_kv_heads, d_head]`.
    K(usize),
    /// `blocks.{l}.attn.hook_v`: values, `[b, p, n_kv_heads, d_head]`.
    V(usize),
    /// `blocks.{l}.attn.hook_rot_q`: queries after rotary, `[b, p, n_heads, d_head]` (rotary models only).
    RotQ(usize),
    /// `blocks.{l}.attn.hook_rot_k`: keys after rotary, `[b, p, n_kv_heads, d_head]` (rotary models only).
    RotK(usize),
    /// `blocks.{l}.attn.hook_attn_scores`: scaled (and soft-capped) scores after the mask,
    /// `[b, n_heads, p_query, p_key]`.
    AttnScores(usize),
    /// `blocks.{l}.attn.hook_pattern`: softmax of the scores over keys, `[b, n_heads, p_query, p_key]`.
    Pattern(usize),
    /// `blocks.{l}.attn.hook_z`: pattern-weighted values before the output projection, `[b, p, n_heads, d_head]`.
    Z(usize),
    /// `blocks.{l}.attn.hook_result`: each head's output, `z` through its rows of the output
    /// projection, before the heads are summed and the bias (and a post-norm) applied,
    /// `[b, p, n_heads, d_model]` (TransformerLens' `use_attn_result`). Computed only in runs
    /// that hook it explicitly (never by `cache_all`).
    Result(usize),
    /// `blocks.{l}.hook_attn_out`: the attention output added to the residual (after its post-norm
    /// where the model has one), `[b, p, d_model]`.
    AttnOut(usize),
    /// `blocks.{l}.hook_resid_mid`: the residual stream between attention and MLP, `[b, p, d_model]`
    /// (absent in parallel blocks).
    ResidMid(usize),
    /// `blocks.{l}.hook_mlp_in`: the residual as the MLP reads it, before its norm, `[b, p, d_model]`.
    MlpIn(usize),
    /// `blocks.{l}.ln2.hook_scale`: the MLP norm's divisor (std or RMS, with eps), `[b, p, 1]`.
    Ln2Scale(usize),
    /// `blocks.{l}.ln2.hook_normalized`: the MLP norm's output before its weight and bias, `[b, p, d_model]`.
    Ln2Normalized(usize),
    /// `blocks.{l}.mlp.hook_pre`: the MLP's pre-activation (the gate projection in gated MLPs), `[b, p, d_mlp]`.
    MlpPre(usize),
    /// `blocks.{l}.mlp.hook_pre_linear`: a gated MLP's up projection, `[b, p, d_mlp]`.
    MlpPreLinear(usize),
    /// `blocks.{l}.mlp.hook_post`: the MLP's hidden activation (times the up projection when gated),
    /// `[b, p, d_mlp]`.
    MlpPost(usize),
    /// `blocks.{l}.mlp.hook_router_logits`: a mixture's router logits, `[b, p, n_experts]`.
    RouterLogits(usize),
    /// `blocks.{l}.mlp.hook_expert_weights`: each expert's routing weight (0 where unchosen), `[b, p, n_experts]`.
    ExpertWeights(usize),
    /// Expert `.1`'s output (before its routing weight) in layer `.0`.
    ExpertOut(usize, usize),
    /// `blocks.{l}.hook_mlp_out`: the MLP (or mixture) output added to the residual (after its
    /// post-norm where the model has one), `[b, p, d_model]`.
    MlpOut(usize),
    /// `blocks.{l}.hook_resid_post`: the residual stream leaving block `l`, `[b, p, d_model]`.
    ResidPost(usize),
    /// `ln_final.hook_scale`: the final norm's divisor (std or RMS, with eps; 1 without a final norm), `[b, p, 1]`.
    LnFinalScale,
    /// `ln_final.hook_normalized`: the final norm's output before its weight and bias, `[b, p, d_model]`.
    LnFinalNormalized,
}

/// A block hook point's constructor from its layer.
type BlockHook = fn(usize) -> HookPoint;

/// Block-level hook names (after `blocks.{l}.`) and their constructors, in forward order.
const BLOCK_HOOKS: &[(&str, BlockHook)] = &[
    ("hook_resid_pre", HookPoint::ResidPre),
    ("ln1.hook_scale", HookPoint::Ln1Scale),
    ("ln1.hook_normalized", HookPoint::Ln1Normalized),
    ("attn.hook_q", HookPoint::Q),
    ("attn.hook_k", HookPoint::K),
    ("attn.hook_v", HookPoint::V),
    ("attn.hook_rot_q", HookPoint::RotQ),
    ("attn.hook_rot_k", HookPoint::RotK),
    ("attn.hook_attn_scores", HookPoint::AttnScores),
    ("attn.hook_pattern", HookPoint::Pattern),
    ("attn.hook_z", HookPoint::Z),
    ("hook_attn_out", HookPoint::AttnOut),
    ("hook_resid_mid", HookPoint::ResidMid),
    ("hook_mlp_in", HookPoint::MlpIn),
    ("ln2.hook_scale", HookPoint::Ln2Scale),
    ("ln2.hook_normalized", HookPoint::Ln2Normalized),
    ("mlp.hook_pre", HookPoint::MlpPre),
    ("mlp.hook_pre_linear", HookPoint::MlpPreLinear),
    ("mlp.hook_post", HookPoint::MlpPost),
    ("mlp.hook_router_logits", HookPoint::RouterLogits),
    ("mlp.hook_expert_weights", HookPoint::ExpertWeights),
    ("hook_mlp_out", HookPoint::MlpOut),
    ("hook_resid_post", HookPoint::ResidPost),
];

/// The per-head attention inputs: named and parsed like the block hooks, but not in `all()`
/// (a run computes them only where a hook asks for them).
const SPLIT_HOOKS: &[(&str, BlockHook)] = &[
    ("hook_attn_in", HookPoint::AttnIn),
    ("hook_q_input", HookPoint::QInput),
    ("hook_k_input", HookPoint::KInput),
    ("hook_v_input", HookPoint::VInput),
    ("attn.hook_result", HookPoint::Result),
];

const GLOBAL_HOOKS: &[(&str, HookPoint)] = &[
    ("hook_embed", HookPoint::Embed),
    ("hook_pos_embed", HookPoint::PosEmbed),
    ("ln_final.hook_scale", HookPoint::LnFinalScale),
    ("ln_final.hook_normalized", HookPoint::LnFinalNormalized),
];

/// Which axes of a hook's tensor hold what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axes {
    /// The position axis (the query position for scores and patterns).
    pub pos: usize,
    /// The head axis, for points that have one.
    pub head: Option<usize>,
}

impl HookPoint {
    /// The block this point belongs to, if any.
    pub fn layer(&self) -> Option<usize> {
        use HookPoint::*;
        match *self {
            Embed | PosEmbed | LnFinalScale | LnFinalNormalized => None,
            ResidPre(l) | AttnIn(l) | QInput(l) | KInput(l) | VInput(l) | Ln1Scale(l) | Ln1Normalized(l) | Q(l) | K(l) | V(l) | RotQ(l)
            | RotK(l) | AttnScores(l) | Pattern(l) | Z(l) | Result(l) | AttnOut(l) | ResidMid(l)
            | MlpIn(l) | Ln2Scale(l) | Ln2Normalized(l) | MlpPre(l) | MlpPreLinear(l) | MlpPost(l)
            | RouterLogits(l) | ExpertWeights(l) | ExpertOut(l, _) | MlpOut(l) | ResidPost(l) => Some(l),
        }
    }

    /// Which axes of this point's tensor hold positions and heads.
    pub fn axes(&self) -> Axes {
        use HookPoint::*;
        match self {
            Q(_) | K(_) | V(_) | RotQ(_) | RotK(_) | Z(_) | Result(_) | AttnIn(_) | QInput(_) | KInput(_) | VInput(_) => Axes { pos: 1, head: Some(2) },
            AttnScores(_) | Pattern(_) => Axes { pos: 2, head: Some(1) },
            _ => Axes { pos: 1, head: None },
        }
    }

    /// How many heads the head axis has in `cfg` (key/value heads for `hook_k`/`hook_v`).
    pub fn n_heads(&self, cfg: &ModelConfig) -> Option<usize> {
        use HookPoint::*;
        match self {
            K(_) | V(_) | RotK(_) | KInput(_) | VInput(_) => Some(cfg.n_kv_heads),
            Q(_) | RotQ(_) | Z(_) | Result(_) | AttnIn(_) | QInput(_) | AttnScores(_) | Pattern(_) => Some(cfg.n_heads),
            _ => None,
        }
    }

    /// Every hook point of a model with `n_layers` layers, in forward order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        let mut v = vec![HookPoint::Embed, HookPoint::PosEmbed];
        for l in 0..n_layers {
            v.extend(BLOCK_HOOKS.iter().map(|(_, f)| f(l)));
        }
        v.extend([HookPoint::LnFinalScale, HookPoint::LnFinalNormalized]);
        v
    }

    /// `all_for` with the points a run computes only where a hook asks for them
    /// (`hook_attn_in`, `hook_q_input`/`hook_k_input`/`hook_v_input` after each `resid_pre`,
    /// `hook_result` after each `hook_z`), in forward order.
    pub fn all_with_requested(cfg: &ModelConfig) -> Vec<HookPoint> {
        let mut out = Vec::new();
        for p in Self::all_for(cfg) {
            out.push(p);
            match p {
                HookPoint::ResidPre(l) => out.extend([HookPoint::AttnIn(l), HookPoint::QInput(l), HookPoint::KInput(l), HookPoint::VInput(l)].into_iter().filter(|q| q.present_in(cfg))),
                HookPoint::Z(l) => out.push(HookPoint::Result(l)),
                _ => {}
            }
        }
        out
    }

    /// Error unless this point exists in a model of config `cfg` (see `present_in`).
    pub fn check(&self, cfg: &ModelConfig) -> Result<()> {
        if let Some(l) = self.layer() {
            cfg.check_layer(l)?;
        }
        if let HookPoint::ExpertOut(_, e) = self {
            let n = cfg.variants.moe.map_or(0, |m| m.n_experts);
            if *e >= n {
                return Err(Error::Invalid(format!("{self}: this model has {n} experts per layer")));
            }
        }
        if !self.present_in(cfg) {
            return Err(Error::Invalid(format!(
                "{self} does not exist in this model ({}); run `glassbox hooks` to list its hook points",
                self.absent_because(cfg)
            )));
        }
        Ok(())
    }

    /// Whether a model of config `cfg` has this kind of point: the rotary points need rotary
    /// positions, the position embedding learned ones, the up projection a gated MLP, the
    /// MLP's inner points a dense MLP and the router's a mixture of experts.
    pub fn present_in(&self, cfg: &ModelConfig) -> bool {
        use crate::model::config::Positions;
        let moe = cfg.variants.moe.is_some();
        let mlp = !cfg.variants.attn_only;
        match self {
            HookPoint::PosEmbed => matches!(cfg.positions, Positions::Learned { .. }),
            HookPoint::Ln1Scale(_) | HookPoint::Ln1Normalized(_) => !cfg.variants.no_pre_norms,
            HookPoint::Ln2Scale(_) | HookPoint::Ln2Normalized(_) => !cfg.variants.no_pre_norms && mlp,
            // Parallel blocks (GPT-J, NeoX) have no stream between attention and MLP.
            HookPoint::ResidMid(_) => !cfg.parallel_block,
            HookPoint::RotQ(_) | HookPoint::RotK(_) => matches!(cfg.positions, Positions::Rotary(_)),
            HookPoint::AttnIn(_) => cfg.n_kv_heads == cfg.n_heads,
            HookPoint::MlpPreLinear(_) => cfg.mlp.gated && !moe && mlp,
            HookPoint::MlpPre(_) | HookPoint::MlpPost(_) => !moe && mlp,
            HookPoint::RouterLogits(_) | HookPoint::ExpertWeights(_) | HookPoint::ExpertOut(..) => moe,
            _ => true,
        }
    }

    fn absent_because(&self, cfg: &ModelConfig) -> &'static str {
        let mlp_part = matches!(self, HookPoint::Ln2Scale(_) | HookPoint::Ln2Normalized(_) | HookPoint::MlpPre(_) | HookPoint::MlpPost(_) | HookPoint::MlpPreLinear(_));
        if cfg.variants.attn_only && mlp_part {
            return "it is attention-only: it has no MLP (hook_mlp_out is zero)";
        }
        match self {
            HookPoint::PosEmbed => "it has no learned position embedding",
            HookPoint::Ln1Scale(_) | HookPoint::Ln1Normalized(_) | HookPoint::Ln2Scale(_) | HookPoint::Ln2Normalized(_) => {
                "it has no norms before its sublayers (only after them)"
            }
            HookPoint::ResidMid(_) => "its attention and MLP read the same stream in parallel",
            HookPoint::RotQ(_) | HookPoint::RotK(_) => "it has no rotary embedding",
            HookPoint::AttnIn(_) => "its keys and values have fewer heads than its queries; hook hook_q_input, hook_k_input and hook_v_input instead",
            HookPoint::MlpPreLinear(_) if cfg.variants.moe.is_none() => "its MLP is not gated",
            HookPoint::MlpPre(_) | HookPoint::MlpPost(_) | HookPoint::MlpPreLinear(_) => "its MLP is a mixture of experts; use the router and expert hooks",
            _ => "it has no mixture of experts",
        }
    }

    /// The hook points a model of config `cfg` has, in forward order (`present_in`), with
    /// each expert's output before the MLP output in mixture-of-experts layers.
    pub fn all_for(cfg: &ModelConfig) -> Vec<HookPoint> {
        let mut v: Vec<HookPoint> = Self::all(cfg.n_layers).into_iter().filter(|p| p.present_in(cfg)).collect();
        if let Some(m) = cfg.variants.moe {
            for l in 0..cfg.n_layers {
                let at = v.iter().position(|p| *p == HookPoint::MlpOut(l)).unwrap_or(v.len());
                v.splice(at..at, (0..m.n_experts).map(|e| HookPoint::ExpertOut(l, e)));
            }
        }
        v
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((name, _)) = GLOBAL_HOOKS.iter().find(|(_, p)| p == self) {
            return f.write_str(name);
        }
        let l = self.layer().unwrap_or(0);
        if let HookPoint::ExpertOut(l, e) = self {
            return write!(f, "blocks.{l}.mlp.experts.{e}.hook_out");
        }
        let name = BLOCK_HOOKS
            .iter()
            .chain(SPLIT_HOOKS)
            .find(|(_, c)| c(l) == *self)
            .map(|(n, _)| *n)
            .unwrap_or("?");
        write!(f, "blocks.{l}.{name}")
    }
}

impl FromStr for HookPoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let unknown = || Error::UnknownHook { name: s.to_string() };
        if let Some((_, p)) = GLOBAL_HOOKS.iter().find(|(n, _)| *n == s) {
            return Ok(*p);
        }
        let rest = s.strip_prefix("blocks.").ok_or_else(unknown)?;
        let (layer, name) = rest.split_once('.').ok_or_else(unknown)?;
        let layer: usize = layer.parse().map_err(|_| unknown())?;
        if let Some(rest) = name.strip_prefix("mlp.experts.") {
            let (e, hook) = rest.split_once('.').ok_or_else(unknown)?;
            if hook != "hook_out" {
                return Err(unknown());
            }
            return Ok(HookPoint::ExpertOut(layer, e.parse().map_err(|_| unknown())?));
        }
        BLOCK_HOOKS
            .iter()
            .chain(SPLIT_HOOKS)
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c(layer))
            .ok_or_else(unknown)
    }
}

impl crate::schema::FieldType for HookPoint {
    fn kind() -> crate::schema::Kind {
        crate::schema::Kind::Text { format: Some("a hook point, e.g. blocks.6.hook_resid_pre") }
    }
}

impl serde::Serialize for HookPoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HookPoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What an intervention does to the selected part of a hook's value. Every action but a
/// closure serialises (tensors as their shape, dtype and values), so an experiment's hooks can
/// be saved and replayed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Take this tensor's values (it must broadcast to the hook's shape, e.g. another run's cache).
    Replace(#[serde(with = "tensor_serde")] Tensor),
    /// Add this tensor (broadcast to the hook's shape).
    Add(#[serde(with = "tensor_serde")] Tensor),
    /// Set to zero.
    Zero,
    /// Set to the mean over the batch of this very run.
    MeanOverBatch,
    /// A function of the hook's value and its point that returns the replacement, of the same
    /// shape (TransformerLens' `fwd_hooks`). Gradients flow through it as through any op.
    /// Not serialised.
    #[serde(skip)]
    Closure(HookFn),
}

/// A closure hook: `f(value, point) → replacement`.
#[derive(Clone)]
pub struct HookFn(pub std::sync::Arc<HookFnBody>);

/// The function of a closure hook.
pub type HookFnBody = dyn Fn(&Tensor, HookPoint) -> Result<Tensor> + Send + Sync;

impl fmt::Debug for HookFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HookFn(..)")
    }
}

impl Action {
    /// A closure as an action.
    pub fn closure(f: impl Fn(&Tensor, HookPoint) -> Result<Tensor> + Send + Sync + 'static) -> Action {
        Action::Closure(HookFn(std::sync::Arc::new(f)))
    }
}

/// Tensors in JSON: `{"dtype": "f32", "shape": [...], "data": [...]}` (row-major).
mod tensor_serde {
    use candle_core::{DType, Device, Tensor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Flat {
        dtype: String,
        shape: Vec<usize>,
        data: Vec<f64>,
    }

    pub fn serialize<S: Serializer>(t: &Tensor, s: S) -> Result<S::Ok, S::Error> {
        let data = t.flatten_all().and_then(|f| f.to_dtype(DType::F64)).and_then(|f| f.to_vec1::<f64>()).map_err(serde::ser::Error::custom)?;
        Flat { dtype: t.dtype().as_str().to_string(), shape: t.dims().to_vec(), data }.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tensor, D::Error> {
        let f = Flat::deserialize(d)?;
        let n: usize = f.shape.iter().try_fold(1usize, |a, &x| a.checked_mul(x)).ok_or_else(|| serde::de::Error::custom("tensor shape overflows"))?;
        if n != f.data.len() {
            return Err(serde::de::Error::custom(format!("tensor of shape {:?} needs {n} values, got {}", f.shape, f.data.len())));
        }
        let dtype = match f.dtype.as_str() {
            "f64" => DType::F64,
            "f32" => DType::F32,
            other => return Err(serde::de::Error::custom(format!("tensor dtype `{other}`: use f32 or f64"))),
        };
        Tensor::from_vec(f.data, f.shape, &Device::Cpu).and_then(|t| t.to_dtype(dtype)).map_err(serde::de::Error::custom)
    }
}

/// An intervention at one hook point, on a selection of batch rows, positions and heads
/// (`None` selects all).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Intervention {
    /// Where it acts.
    pub point: HookPoint,
    /// What it does to the selected part of the hook's value.
    pub action: Action,
    /// Batch rows it acts on (`None`: all).
    pub batch: Option<Vec<usize>>,
    /// Positions it acts on (query positions for scores and patterns; `None`: all).
    pub positions: Option<Vec<usize>>,
    /// Heads it acts on (`None`: all); only at points with a head axis.
    pub heads: Option<Vec<usize>>,
}

impl Intervention {
    /// `action` at `point`, on every batch row, position and head.
    pub fn new(point: HookPoint, action: Action) -> Self {
        Intervention {
            point,
            action,
            batch: None,
            positions: None,
            heads: None,
        }
    }
    /// Restricts it to `heads`.
    pub fn heads(mut self, heads: Vec<usize>) -> Self {
        self.heads = Some(heads);
        self
    }
    /// Restricts it to `positions`.
    pub fn positions(mut self, positions: Vec<usize>) -> Self {
        self.positions = Some(positions);
        self
    }
    /// Restricts it to batch rows `batch`.
    pub fn batch(mut self, batch: Vec<usize>) -> Self {
        self.batch = Some(batch);
        self
    }

    /// Checks the point, heads and positions against the model and a run of
    /// `batch` prompts of `n_pos` positions.
    pub fn validate(&self, cfg: &ModelConfig, batch: usize, n_pos: usize) -> Result<()> {
        self.point.check(cfg)?;
        if let Some(heads) = &self.heads {
            let n = self.point.n_heads(cfg).ok_or_else(|| Error::Intervention {
                point: self.point.to_string(),
                detail: "this hook has no head axis; select heads at hook_q/k/v/z/pattern/attn_scores".into(),
            })?;
            if let Some(&h) = heads.iter().find(|&&h| h >= n) {
                return Err(Error::HeadOutOfRange {
                    head: h,
                    n_heads: n,
                    point: self.point.to_string(),
                });
            }
        }
        if let Some(&p) = self.positions.iter().flatten().find(|&&p| p >= n_pos) {
            return Err(Error::PositionOutOfRange {
                position: p,
                n_positions: n_pos,
            });
        }
        if let Some(&b) = self.batch.iter().flatten().find(|&&b| b >= batch) {
            return Err(Error::Invalid(format!(
                "batch row {b} is out of range: the run has {batch} prompts"
            )));
        }
        Ok(())
    }

    /// Applies the intervention to `x`, the hook's value.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape().clone();
        let err = |detail: String| Error::Intervention {
            point: self.point.to_string(),
            detail,
        };
        let new = match &self.action {
            Action::Replace(t) => t
                .to_dtype(x.dtype())?
                .broadcast_as(shape.clone())
                .map_err(|_| err(format!("replacement of shape {:?} does not fit the hook's shape {:?}", t.dims(), x.dims())))?,
            Action::Add(t) => {
                let t = t
                    .to_dtype(x.dtype())?
                    .broadcast_as(shape.clone())
                    .map_err(|_| err(format!("addend of shape {:?} does not fit the hook's shape {:?}", t.dims(), x.dims())))?;
                (x + t)?
            }
            Action::Zero => x.zeros_like()?,
            Action::MeanOverBatch => x.mean_keepdim(0)?.broadcast_as(shape.clone())?,
            Action::Closure(f) => {
                let y = (f.0)(x, self.point)?;
                if y.dims() != x.dims() {
                    return Err(err(format!("the closure returned shape {:?} for a value of shape {:?}", y.dims(), x.dims())));
                }
                y.to_dtype(x.dtype())?
            }
        };
        if self.batch.is_none() && self.positions.is_none() && self.heads.is_none() {
            return Ok(new);
        }
        let mask = self.mask(x.dims())?.broadcast_as(shape)?;
        Ok(mask.where_cond(&new, x)?)
    }

    /// A u8 mask over the batch, position and head axes (size 1 elsewhere).
    fn mask(&self, dims: &[usize]) -> Result<Tensor> {
        let axes = self.point.axes();
        let mut mdims = vec![1usize; dims.len()];
        mdims[0] = dims[0];
        mdims[axes.pos] = dims[axes.pos];
        if let Some(h) = axes.head {
            mdims[h] = dims[h];
        }
        let pick = |sel: &Option<Vec<usize>>, n: usize| -> Vec<bool> {
            match sel {
                None => vec![true; n],
                Some(v) => (0..n).map(|i| v.contains(&i)).collect(),
            }
        };
        let bsel = pick(&self.batch, dims[0]);
        let psel = pick(&self.positions, dims[axes.pos]);
        let hsel = axes.head.map(|h| pick(&self.heads, dims[h]));
        let n: usize = mdims.iter().product();
        let strides: Vec<usize> = (0..mdims.len())
            .map(|i| mdims[i + 1..].iter().product())
            .collect();
        let data: Vec<u8> = (0..n)
            .map(|flat| {
                let idx = |axis: usize| (flat / strides[axis]) % mdims[axis];
                let on = bsel[idx(0)]
                    && psel[idx(axes.pos)]
                    && match (&hsel, axes.head) {
                        (Some(hs), Some(h)) => hs[idx(h)],
                        _ => true,
                    };
                on as u8
            })
            .collect();
        Ok(Tensor::from_vec(data, mdims, &Device::Cpu)?)
    }
}

/// Which hook points a forward pass caches.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSpec {
    /// Cache no point (the default).
    #[default]
    Nothing,
    /// Cache every point the run passes.
    All,
    /// Cache these points only.
    Only(HashSet<HookPoint>),
}

/// What a forward pass does at its hook points. Serialises (without closures) so that an
/// experiment can be saved and replayed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Hooks {
    /// Which points the run caches (none by default).
    #[serde(default)]
    pub(crate) cache: CacheSpec,
    /// Interventions; those at one point apply in this order.
    #[serde(default)]
    pub(crate) interventions: Vec<Intervention>,
    /// Points whose gradient is wanted: each gets a zero `Var` added to it.
    #[serde(default)]
    pub(crate) grad_taps: Vec<HookPoint>,
    /// Compute logits at each prompt's last real position only (`logits: [b, 1, d_vocab]`);
    /// saves the unembedding of every other position.
    #[serde(default)]
    pub(crate) last_logits_only: bool,
    /// Compute the logits of these vocabulary ids only (`logits: [b, p, ids.len()]`): the
    /// unembedding of two answer tokens instead of the whole vocabulary, for methods that only
    /// read a logit difference. `ForwardOutput::logit_diff` maps ids to columns.
    #[serde(default)]
    pub(crate) logit_ids: Option<Vec<u32>>,
    /// Stop after this block: the run gives its cache only (logits `[b, 0, 0]`), e.g. to
    /// read activations at an early layer without paying for the rest of the model.
    #[serde(default)]
    pub(crate) stop_after_layer: Option<usize>,
}

impl Hooks {
    /// Hooks that do nothing: a plain forward pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which points the run caches.
    pub fn cache_spec(&self) -> &CacheSpec {
        &self.cache
    }

    /// The interventions, in the order they apply.
    pub fn interventions(&self) -> &[Intervention] {
        &self.interventions
    }

    /// The gradient taps.
    pub fn taps(&self) -> &[HookPoint] {
        &self.grad_taps
    }

    /// Whether the run computes logits at the last position only.
    pub fn reads_last_logits_only(&self) -> bool {
        self.last_logits_only
    }

    /// The vocabulary ids whose logits the run computes (all when `None`).
    pub fn logit_ids(&self) -> Option<&[u32]> {
        self.logit_ids.as_deref()
    }

    /// The block the run stops after, if it stops early.
    pub fn stops_after(&self) -> Option<usize> {
        self.stop_after_layer
    }
    /// Caches `points` as well as those of earlier `cache` calls (an earlier `cache_all` is dropped).
    pub fn cache(mut self, points: impl IntoIterator<Item = HookPoint>) -> Self {
        let mut set = match self.cache {
            CacheSpec::Only(s) => s,
            _ => HashSet::new(),
        };
        set.extend(points);
        self.cache = CacheSpec::Only(set);
        self
    }
    /// Caches what `spec` says (replacing earlier `cache` calls).
    pub fn with_cache(mut self, spec: CacheSpec) -> Self {
        self.cache = spec;
        self
    }
    /// Caches every hook point.
    pub fn cache_all(mut self) -> Self {
        self.cache = CacheSpec::All;
        self
    }
    /// Adds an intervention, after those already added.
    pub fn intervene(mut self, i: Intervention) -> Self {
        self.interventions.push(i);
        self
    }
    /// A closure hook at `point` (TransformerLens' `fwd_hooks`): `f(value, point)` returns
    /// the replacement.
    pub fn hook(self, point: HookPoint, f: impl Fn(&Tensor, HookPoint) -> Result<Tensor> + Send + Sync + 'static) -> Self {
        self.intervene(Intervention::new(point, Action::closure(f)))
    }

    /// Taps the gradient at `points` (see `grad_taps`).
    pub fn grad_tap(mut self, points: impl IntoIterator<Item = HookPoint>) -> Self {
        self.grad_taps.extend(points);
        self
    }
    /// Stops the run after block `layer` (see the field `stop_after_layer`).
    pub fn stop_after_layer(mut self, layer: usize) -> Self {
        self.stop_after_layer = Some(layer);
        self
    }

    /// Logits at each prompt's last real position only (see the field `last_logits_only`).
    pub fn last_logits_only(mut self) -> Self {
        self.last_logits_only = true;
        self
    }
    /// Logits of `ids` only, at the last position (see `logit_ids`).
    pub fn logits_for(mut self, ids: &[u32]) -> Self {
        self.last_logits_only = true;
        let mut v = ids.to_vec();
        v.sort_unstable();
        v.dedup();
        self.logit_ids = Some(v);
        self
    }

    /// Checks every intervention, gradient tap, cached point and logit id against the model and a
    /// run of `batch` prompts of `n_pos` positions.
    pub fn validate(&self, cfg: &ModelConfig, batch: usize, n_pos: usize) -> Result<()> {
        for i in &self.interventions {
            i.validate(cfg, batch, n_pos)?;
        }
        for p in &self.grad_taps {
            p.check(cfg)?;
        }
        if let CacheSpec::Only(s) = &self.cache {
            for p in s {
                p.check(cfg)?;
            }
        }
        if let Some(&id) = self.logit_ids.iter().flatten().find(|&&id| id as usize >= cfg.d_vocab) {
            return Err(Error::Invalid(format!(
                "token id {id} is outside the vocabulary of {} tokens",
                cfg.d_vocab
            )));
        }
        Ok(())
    }
}

/// The hook machinery during one forward pass: applies interventions, taps and caching.
pub(crate) struct HookState<'a> {
    hooks: &'a Hooks,
    by_point: HashMap<HookPoint, Vec<&'a Intervention>>,
    taps: HashSet<HookPoint>,
    pub cache: HashMap<HookPoint, Tensor>,
    pub tap_vars: HashMap<HookPoint, Var>,
}

impl<'a> HookState<'a> {
    pub fn new(hooks: &'a Hooks) -> Self {
        let mut by_point: HashMap<HookPoint, Vec<&Intervention>> = HashMap::new();
        for i in &hooks.interventions {
            by_point.entry(i.point).or_default().push(i);
        }
        HookState {
            hooks,
            by_point,
            taps: hooks.grad_taps.iter().copied().collect(),
            cache: HashMap::new(),
            tap_vars: HashMap::new(),
        }
    }

    fn caches(&self, point: HookPoint) -> bool {
        match &self.hooks.cache {
            CacheSpec::Nothing => false,
            CacheSpec::All => true,
            CacheSpec::Only(s) => s.contains(&point),
        }
    }

    /// Whether a hook names `point` itself (an intervention, a tap or a cache that lists it):
    /// `cache_all` does not count.
    pub fn asks_for(&self, point: HookPoint) -> bool {
        self.by_point.contains_key(&point) || self.taps.contains(&point) || matches!(&self.hooks.cache, CacheSpec::Only(s) if s.contains(&point))
    }

    /// Whether the hook at `point` does anything (an intervention, a tap or the cache).
    pub fn touches(&self, point: HookPoint) -> bool {
        self.by_point.contains_key(&point) || self.taps.contains(&point) || self.caches(point)
    }

    /// Runs the hook at `point` on `x`: interventions in order, then the gradient tap, then
    /// the cache (which so holds the value the rest of the model sees).
    pub fn apply(&mut self, point: HookPoint, mut x: Tensor) -> Result<Tensor> {
        if let Some(list) = self.by_point.get(&point) {
            for i in list {
                x = i.apply(&x)?;
            }
        }
        if self.taps.contains(&point) {
            let var = Var::zeros(x.shape(), x.dtype(), x.device())?;
            x = (x + var.as_tensor())?;
            self.tap_vars.insert(point, var);
        }
        if self.caches(point) {
            self.cache.insert(point, x.detach());
        }
        Ok(x)
    }
}
