//! Gradient taps against central finite differences, in f64 on the tiny models: the gradient
//! candle's autograd returns at a hook must be the derivative of the metric with respect to
//! that activation, computed by perturbing the activation through an `Add` intervention.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, load_tiny, Reference};
use glassbox::{Action, Batch, HookPoint, Hooks, Intervention, Model};

/// `logit[a] - logit[b]` at the last position, summed over the batch.
fn metric(model: &Model, batch: &Batch, hooks: &Hooks, a: u32, b: u32) -> (f64, glassbox::ForwardOutput) {
    let out = model.forward(batch, hooks).unwrap();
    let n = batch.size();
    let ld = out.logit_diff(&vec![a; n], &vec![b; n]).unwrap().sum_all().unwrap();
    (ld.to_scalar::<f64>().unwrap(), out)
}

/// A deterministic pseudo-random direction of unit norm.
fn direction(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    Tensor::from_vec(v.into_iter().map(|x| x / norm).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
}

fn one_hot(shape: &[usize], flat: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v = vec![0f64; n];
    v[flat] = 1.0;
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-8)
}

fn check_taps(name: &str) {
    check_taps_at(name, &[HookPoint::Embed, HookPoint::ResidPre(1), HookPoint::Z(0), HookPoint::Z(1)]);
}

fn check_taps_at(name: &str, points: &[HookPoint]) {
    let model = load_tiny(name).to_dtype(DType::F64).unwrap();
    let reference = Reference::load(fixtures().join(name).join("reference.safetensors"));
    // Two prompts of different lengths: gradients must respect the padding.
    let batch = Batch::new(&[reference.ids(0), reference.ids(1)]).unwrap();
    let (a, b) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
    let (_, out) = metric(&model, &batch, &Hooks::new().grad_tap(points.iter().copied()), a, b);
    let n = batch.size();
    let ld = out.logit_diff(&vec![a; n], &vec![b; n]).unwrap().sum_all().unwrap();
    let grads = out.backward(&ld).unwrap();
    let eps = 1e-5;
    for &point in points {
        let g = grads.get(point).unwrap();
        let shape = g.dims().to_vec();
        let fd = |delta: &Tensor| {
            let plus = Hooks::new().intervene(Intervention::new(point, Action::Add((delta * eps).unwrap())));
            let minus = Hooks::new().intervene(Intervention::new(point, Action::Add((delta * -eps).unwrap())));
            (metric(&model, &batch, &plus, a, b).0 - metric(&model, &batch, &minus, a, b).0) / (2.0 * eps)
        };
        // A random direction through every element.
        let d = direction(&shape, 7);
        let analytic = (g * &d).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        let numeric = fd(&d);
        assert!(
            rel_err(analytic, numeric) < 1e-3,
            "{name} {point}: directional derivative {analytic} vs finite difference {numeric}"
        );
        // The largest single element.
        let flat: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        let (imax, gmax) = flat
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .map(|(i, v)| (i, *v))
            .unwrap();
        assert!(gmax.abs() > 1e-6, "{name} {point}: gradient is all zero");
        let numeric = fd(&one_hot(&shape, imax));
        assert!(
            rel_err(gmax, numeric) < 1e-3,
            "{name} {point}: element {imax}: {gmax} vs finite difference {numeric}"
        );
    }
}

#[test]
fn gradient_taps_match_finite_differences_gpt2() {
    check_taps("tiny-gpt2");
}

#[test]
fn gradient_taps_match_finite_differences_llama() {
    check_taps("tiny-llama");
}

/// Padding positions and positions after the last one get no gradient from the metric.
#[test]
fn padding_positions_get_zero_gradient() {
    let model = load_tiny("tiny-llama").to_dtype(DType::F64).unwrap();
    let reference = Reference::load(fixtures().join("tiny-llama/reference.safetensors"));
    let batch = Batch::new(&[reference.ids(0), reference.ids(1)]).unwrap();
    let out = model.forward(&batch, &Hooks::new().grad_tap([HookPoint::ResidPre(0)])).unwrap();
    let ld = out.logit_diff(&[5, 5], &[6, 6]).unwrap().sum_all().unwrap();
    let g = out.backward(&ld).unwrap();
    let g = g.get(HookPoint::ResidPre(0)).unwrap();
    let len1 = batch.lengths[1];
    let pad = g.get(1).unwrap().narrow(0, len1, batch.n_pos() - len1).unwrap();
    let max = pad.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(max, 0.0);
}

/// Gradients flow through the mixture of experts: at the router logits (through the softmax
/// and the renormalised top-k weights) and at an expert's output.
#[test]
fn gradient_taps_through_the_router() {
    check_taps_at("tiny-mixtral", &[HookPoint::RouterLogits(0), HookPoint::ExpertOut(1, 2), HookPoint::Z(0)]);
}

/// Gradients through Gemma 3's query/key norms, soft-capped Gemma 2 attention, and NeoX's
/// parallel block with partial rotary.
#[test]
fn gradient_taps_on_modern_families() {
    check_taps("tiny-gemma3");
    check_taps("tiny-gemma2");
    check_taps("tiny-neox");
}

/// The fused norm, gated activation and attention core (used where no hook inside them is
/// touched) against the chains of candle ops (forced by caching the norms' scales and the
/// attention scores): the same logits and the same gradients at the embeddings and at every
/// head's output, in f64, on every family, with a padded batch.
#[test]
fn fused_ops_equal_the_chains() {
    const FAMILIES: &[&str] = &[
        "tiny-gpt2", "tiny-llama", "tiny-llama-tied", "tiny-qwen2", "tiny-mistral", "tiny-mixtral", "tiny-neox", "tiny-opt",
        "tiny-opt-postln", "tiny-gptneo", "tiny-gemma", "tiny-gemma2", "tiny-gemma3",
    ];
    for name in FAMILIES {
        let model = load_tiny(name).to_dtype(DType::F64).unwrap();
        let reference = Reference::load(fixtures().join(name).join("reference.safetensors"));
        let batch = Batch::new(&[reference.ids(0), reference.ids(1)]).unwrap();
        let layers = model.config().n_layers;
        let mut taps = vec![HookPoint::Embed];
        taps.extend((0..layers).map(HookPoint::Z));
        let mut inside = vec![HookPoint::LnFinalScale];
        for l in 0..layers {
            inside.extend([HookPoint::Ln1Scale(l), HookPoint::Ln2Scale(l), HookPoint::AttnScores(l)]);
        }
        let run = |hooks: Hooks| {
            let out = model.forward(&batch, &hooks.grad_tap(taps.iter().copied())).unwrap();
            let ld = out.logit_diff(&[5, 5], &[6, 6]).unwrap().sum_all().unwrap();
            let grads = out.backward(&ld).unwrap();
            (out.logits.clone(), grads)
        };
        let (fused_logits, fused) = run(Hooks::new());
        let (chain_logits, chain) = run(Hooks::new().cache(inside.iter().copied()));
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-3);
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(d <= 1e-9 * scale, "{name} {what}: fused and chained differ by {d:e} (scale {scale:e})");
        };
        close(&fused_logits, &chain_logits, "logits");
        for p in &taps {
            close(fused.get(*p).unwrap(), chain.get(*p).unwrap(), &p.to_string());
        }
    }
}
