//! Composition scores through Gram matrices against the explicit d_model × d_model products.

mod common;

use candle_core::{DType, Tensor};
use common::load_tiny;
use glassbox::methods::composition::{composition_score, Kind};
use glassbox::methods::Head;

fn fro(t: &Tensor) -> f64 {
    t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt()
}

#[test]
fn gram_formula_equals_explicit_products() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let cfg = &model.config();
        let dh = cfg.d_head;
        let (s, r) = (Head { layer: 0, head: 1 }, Head { layer: 1, head: 3 });
        let f64w = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let ln = |l: usize| f64w(&model.weights().layers[l].ln1.w);
        let rows = |w: &glassbox::model::weights::Matrix, i: usize, l: usize| f64w(&w.tensor().unwrap().narrow(0, i * dh, dh).unwrap()).broadcast_mul(&ln(l)).unwrap();
        let kv = |h: usize| h / cfg.group_size();
        let (ls, lr) = (&model.weights().layers[0].attn, &model.weights().layers[1].attn);
        let ov = |a: &glassbox::model::weights::AttnWeights, h: usize, l: usize| {
            f64w(&a.w_o.tensor().unwrap().narrow(1, h * dh, dh).unwrap()).matmul(&rows(&a.w_v, kv(h), l)).unwrap()
        };
        let ov_s = ov(ls, s.head, 0);
        let ov_r = ov(lr, r.head, 1);
        let qk_r = rows(&lr.w_q, r.head, 1).t().unwrap().matmul(&rows(&lr.w_k, kv(r.head), 1)).unwrap();
        let expect = [
            (Kind::Q, fro(&qk_r.t().unwrap().matmul(&ov_s).unwrap()) / (fro(&qk_r) * fro(&ov_s))),
            (Kind::K, fro(&qk_r.matmul(&ov_s).unwrap()) / (fro(&qk_r) * fro(&ov_s))),
            (Kind::V, fro(&ov_r.matmul(&ov_s).unwrap()) / (fro(&ov_r) * fro(&ov_s))),
        ];
        for (kind, e) in expect {
            let got = composition_score(&model, s, r, kind).unwrap() as f64;
            assert!((got - e).abs() < 1e-5, "{name} {kind:?}: {got} vs {e}");
            assert!(e > 0.0 && e < 1.0);
        }
    }
}
