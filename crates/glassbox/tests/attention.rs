//! Head typing on a hand-built two-layer attention-only model with an exact induction circuit:
//! layer 0's head attends to the previous position and copies that token into a "previous
//! token" subspace; layer 1's head matches the current token against it, so on a repeated
//! sequence it attends to the token after the first occurrence (an induction head).

mod common;

use candle_core::{DType, Device, Tensor};
use common::fixtures;
use glassbox::methods::attention::{attention_patterns, head_scores};
use glassbox::methods::Head;
use glassbox::model::config::{Activation, LayerAttention, MlpConfig, NormConfig, NormKind, Positions};
use glassbox::model::weights::{AttnWeights, LayerWeights, MlpWeights, Norm, Weights};
use glassbox::model::Tokenizer;
use glassbox::{Model, ModelConfig};

const V: usize = 384; // the fixture tokenizer's vocabulary
const P: usize = 48;
const D: usize = V + P + V; // token one-hots | position one-hots | previous-token one-hots

fn mat(rows: usize, cols: usize, entries: impl Iterator<Item = (usize, usize, f32)>) -> Tensor {
    let mut m = vec![0f32; rows * cols];
    for (r, c, v) in entries {
        m[r * cols + c] = v;
    }
    Tensor::from_vec(m, (rows, cols), &Device::Cpu).unwrap()
}

fn norm() -> Norm {
    Norm {
        w: Tensor::ones(D, DType::F32, &Device::Cpu).unwrap(),
        b: Some(Tensor::zeros(D, DType::F32, &Device::Cpu).unwrap()),
    }
}

/// `w_q, w_k, w_v, w_o` as `[out, in]` matrices over the residual's subspaces.
fn layer(q: Tensor, k: Tensor, v: Tensor, o: Tensor) -> LayerWeights {
    let zeros = |r, c| Tensor::zeros((r, c), DType::F32, &Device::Cpu).unwrap();
    LayerWeights {
        ln1: norm(),
        attn: AttnWeights { w_q: q.into(), b_q: None, w_k: k.into(), b_k: None, w_v: v.into(), b_v: None, w_o: o.into(), b_o: None },
        ln2: norm(),
        mlp: MlpWeights { w_in: zeros(4, D).into(), b_in: None, w_gate: None, b_gate: None, w_out: zeros(D, 4).into(), b_out: None },
        extra: Default::default(),
    }
}

fn induction_model(with_induction: bool) -> Model {
    let a = 3.0f32;
    let tok = |t: usize| t;
    let pos = |p: usize| V + p;
    let prev = |t: usize| V + P + t;
    // Layer 0: query at position p looks for the key at position p - 1; values copy the token
    // into the previous-token subspace (scaled down so the norm sees three unit-sized parts).
    let l0 = layer(
        mat(D, D, (1..P).map(|p| (pos(p - 1), pos(p), a))),
        mat(D, D, (0..P).map(|p| (pos(p), pos(p), a))),
        mat(D, D, (0..V).map(|t| (tok(t), tok(t), 1.0))),
        mat(D, D, (0..V).map(|t| (prev(t), tok(t), 1.0 / 20.0))),
    );
    // Layer 1: query = current token, key = previous token: attend where prev(key) == token.
    let q1 = if with_induction { mat(D, D, (0..V).map(|t| (tok(t), tok(t), a))) } else { mat(D, D, std::iter::empty()) };
    let l1 = layer(
        q1,
        mat(D, D, (0..V).map(|t| (tok(t), prev(t), a))),
        mat(D, D, (0..V).map(|t| (tok(t), tok(t), 1.0))),
        mat(D, D, std::iter::empty()),
    );
    let embed = mat(V, D, (0..V).map(|t| (t, tok(t), 1.0)));
    let config = ModelConfig {
        architecture: "hand-built".into(),
        n_layers: 2,
        d_model: D,
        n_heads: 1,
        n_kv_heads: 1,
        d_head: D,
        d_mlp: 4,
        d_vocab: V,
        n_ctx: P,
        norm: NormConfig { kind: NormKind::LayerNorm, eps: 1e-5 },
        positions: Positions::Learned { offset: 0 },
        attn_scale: 1.0 / (D as f64).sqrt(),
        mlp: MlpConfig { activation: Activation::Gelu, gated: false },
        parallel_block: false,
        tied_embeddings: true,
        embed_scale: None,
        layers: vec![LayerAttention { sliding_window: None, rope_base: 0.0 }; 2],
        variants: Default::default(),
    };
    let weights = Weights {
        unembed: embed.clone().into(),
        embed: embed.into(),
        pos_embed: Some(mat(P, D, (0..P).map(|p| (p, pos(p), 1.0)))),
        layers: vec![l0, l1],
        ln_final: norm(),
        unembed_bias: None,
        rope_freqs: None,
    };
    let tokenizer = Tokenizer::from_file(&fixtures().join("tiny-gpt2/tokenizer.json")).unwrap();
    Model::new("induction".into(), config, weights, tokenizer).unwrap()
}

#[test]
fn hand_built_induction_head_is_typed_induction() {
    let model = induction_model(true);
    let tokens = model.tokenize("When Mary and John went to the store, John gave a drink to").unwrap();
    let scores = head_scores(&model, &tokens, 1).unwrap();
    let (prev, ind) = (scores[0][0], scores[1][0]);
    assert!(prev.previous_token > 0.9, "layer 0 previous-token score {}", prev.previous_token);
    assert_eq!(prev.head_type(), "previous_token");
    assert!(ind.induction > 0.8, "layer 1 induction score {}", ind.induction);
    assert_eq!(ind.head_type(), "induction");

    let view = attention_patterns(&model, &tokens, &glassbox::methods::attention::AttentionOptions { heads: Some(vec![Head { layer: 1, head: 0 }]), top_k: 0, seed: 1 }).unwrap();
    assert_eq!(view.head_types["L01H00"], "induction");
    assert_eq!(view.heads[0].pattern.len(), tokens.len());
}

#[test]
fn uniform_head_is_not_induction() {
    let model = induction_model(false);
    let tokens = model.tokenize("When Mary and John went to the store, John gave a drink to").unwrap();
    let s = head_scores(&model, &tokens, 1).unwrap()[1][0];
    assert!(s.induction < 0.1, "{}", s.induction);
    assert!(s.entropy > 0.99, "a zero query attends uniformly: entropy {}", s.entropy);
    assert_eq!(s.head_type(), "diffuse");
}

/// Composition scores on the hand-built circuit: the induction head's keys read what the
/// previous-token head writes (K-composition), its queries do not (they read the token).
#[test]
fn induction_head_k_composes_with_the_previous_token_head() {
    use glassbox::methods::composition::{all_composition_scores, composition_score, Kind};
    let model = induction_model(true);
    let (s, r) = (Head { layer: 0, head: 0 }, Head { layer: 1, head: 0 });
    let k = composition_score(&model, s, r, Kind::K).unwrap();
    let q = composition_score(&model, s, r, Kind::Q).unwrap();
    let v = composition_score(&model, s, r, Kind::V).unwrap();
    // QK reads prev(t) against t, OV writes t into prev(t): both are (scaled) identities of
    // rank V, whose product has Frobenius ratio exactly 1/√V.
    assert!((k - 1.0 / (V as f32).sqrt()).abs() < 1e-4, "K-composition {k}");
    assert!(q < 1e-6, "Q-composition {q}");
    assert_eq!(v, 0.0, "the induction head writes nothing here (W_O = 0)");
    let all = all_composition_scores(&model, &[s, r], &glassbox::methods::composition::CompositionOptions { min_score: None, ..Default::default() }).unwrap();
    assert_eq!(all.combined_edges.len(), 1);
    let (b, e) = (all.baseline, &all.combined_edges[0]);
    assert!(b.k > 0.0 && b.k < 1.0 && b.q > 0.0 && b.v > 0.0 && b.n_samples > 1, "{b:?}");
    assert!((e.k_excess - (e.k - b.k)).abs() < 1e-6 && (e.q_excess - (e.q - b.q)).abs() < 1e-6);
    let strict = all_composition_scores(&model, &[s, r], &glassbox::methods::composition::CompositionOptions { min_score: Some(e.k_excess + 1e-3), ..Default::default() }).unwrap();
    assert!(strict.combined_edges.is_empty(), "min_score is read against the baseline");
    assert!(all_composition_scores(&model, &[s, r], &glassbox::methods::composition::CompositionOptions { min_score: Some(f32::NAN), ..Default::default() }).is_err());
    assert!(composition_score(&model, r, s, Kind::K).is_err(), "a later head cannot send to an earlier one");
}
