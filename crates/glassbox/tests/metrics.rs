//! Metrics other than the last-position logit difference (issue 13): log-probability,
//! probability and KL from the clean distribution, at a chosen position or averaged, and a
//! user closure; each through attribution patching, integrated gradients, exact patching and
//! faithfulness, checked against runs written out by hand.

mod common;

use candle_core::{DType, Tensor, D};
use common::{eps_close, load_tiny};
use glassbox::methods::attribution::{attribute, AttributionOptions, Component, Method};
use glassbox::methods::faithfulness::{faithfulness, Circuit, EvaluatorOptions};
use glassbox::methods::patching::{exact_patching, Direction, PatchingOptions};
use glassbox::methods::{Contrast, Head, Metric, Position, Scorer};
use glassbox::{Action, Batch, HookPoint, Hooks, Intervention, Model};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

/// Log-probabilities of the next token after `tokens` (f64), with `hooks`.
fn logprobs(model: &Model, tokens: &[u32], hooks: Hooks) -> Vec<f64> {
    let out = model.forward(&Batch::new(&[tokens.to_vec()]).unwrap(), &hooks).unwrap();
    let l = out.last_logits().unwrap().squeeze(0).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let m = l.iter().cloned().fold(f64::MIN, f64::max);
    let lse = m + l.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    l.iter().map(|x| x - lse).collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// A head patched from the corrupted run into the clean one.
fn patch_head(corr: &glassbox::ForwardOutput, l: usize, h: usize) -> Hooks {
    let z = corr.cache.get(HookPoint::Z(l)).unwrap().get(1).unwrap().unsqueeze(0).unwrap();
    Hooks::new().intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z)).heads(vec![h]))
}

#[test]
fn logprob_and_prob_attribution_match_exact_patching_in_the_linear_regime() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let (model, contrast) = eps_close(name, 1e-4);
        let corr = model.forward(&contrast.batch().unwrap(), &Hooks::new().cache((0..2).map(HookPoint::Z))).unwrap();
        for metric in [Metric::parse("logprob").unwrap(), Metric::parse("prob").unwrap()] {
            let opts = AttributionOptions { metric: metric.clone(), ..Default::default() };
            let attr = attribute(&model, &contrast, &opts).unwrap();
            let value = |hooks: Hooks| {
                let lp = logprobs(&model, &contrast.clean, hooks)[contrast.correct_id as usize];
                if metric.name() == "prob" { lp.exp() } else { lp }
            };
            let clean = value(Hooks::new());
            assert!((clean - attr.clean_ld as f64).abs() < 1e-5, "{name} {}: clean value", metric.name());
            let (mut max_err, mut max_exact) = (0f64, 0f64);
            for l in 0..2 {
                for h in 0..model.config().n_heads {
                    let exact = clean - value(patch_head(&corr, l, h));
                    max_err = max_err.max((exact - attr.scores[l][h] as f64).abs());
                    max_exact = max_exact.max(exact.abs());
                }
            }
            assert!(max_exact > 1e-9, "{name} {}: the corruption has no effect", metric.name());
            assert!(max_err / max_exact < 1e-2, "{name} {}: max error {max_err:e} of max effect {max_exact:e}", metric.name());
        }
    }
}

/// KL from the clean distribution is 0 with a zero gradient at the clean run, so to first
/// order attribution and exact patching agree at 0; exact patching grows as ε² (second
/// order), attribution stays at 0.
#[test]
fn kl_attribution_and_exact_patching_agree_to_first_order() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let mut exacts = Vec::new();
        for eps in [1e-3, 2e-3] {
            let (model, contrast) = eps_close(name, eps);
            let kl_metric = Metric::Kl { position: Position::Last };
            let attr = attribute(&model, &contrast, &AttributionOptions { metric: kl_metric.clone(), ..Default::default() }).unwrap();
            assert!(attr.clean_ld.abs() < 1e-9, "{name}: KL of the clean run is {}", attr.clean_ld);
            let p = exact_patching(&model, &contrast, &PatchingOptions { direction: Direction::IntoClean, metric: kl_metric }).unwrap();
            let max_attr = attr.scores.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
            let max_exact = p.heads.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max_attr < 1e-7, "{name}: KL gradient at the clean run should vanish ({max_attr:e})");
            assert!(max_exact > 0.0 && max_exact < 1e-3, "{name}: {max_exact:e}");
            exacts.push(max_exact as f64);
        }
        let ratio = exacts[1] / exacts[0];
        assert!((ratio - 4.0).abs() < 0.5, "{name}: KL of patching grows as ε² (ratio {ratio} for 2ε)");
    }
}

/// Exact patching with the KL metric equals KL computed by hand from two runs; integrated
/// gradients with KL are complete (they sum to KL(clean) − KL(corrupted)).
#[test]
fn kl_exact_patching_equals_hand_written_runs_and_ig_is_complete() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name).to_dtype(DType::F64).unwrap();
        let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        let kl_metric = Metric::Kl { position: Position::Last };
        let p = exact_patching(&model, &c, &PatchingOptions { direction: Direction::IntoClean, metric: kl_metric.clone() }).unwrap();
        let corr = model.forward(&c.batch().unwrap(), &Hooks::new().cache((0..2).map(HookPoint::Z))).unwrap();
        let clean = logprobs(&model, &c.clean, Hooks::new());
        for (l, h) in [(0, 1), (1, 2)] {
            let want = kl(&clean, &logprobs(&model, &c.clean, patch_head(&corr, l, h)));
            assert!((want - p.heads[l][h] as f64).abs() <= 1e-6 * want.max(1.0), "{name} L{l}H{h}: {want} vs {}", p.heads[l][h]);
        }
        let want = kl(&clean, &logprobs(&model, &c.corrupted, Hooks::new()));
        assert!((want - p.source_ld as f64).abs() < 1e-6, "{name}: KL of the corrupted run");

        let ig = attribute(&model, &c, &AttributionOptions { component: Component::Mlp, method: Method::IntegratedGradients, n_steps: 50, metric: kl_metric }).unwrap();
        let r = ig.completeness_residual.unwrap();
        assert!(r < 0.02, "{name}: IG with KL, completeness residual {r}");
    }
}

/// The logit difference at a chosen position and averaged over positions, by hand; a user
/// closure metric equals the built-in one it restates; faithfulness of the full circuit is 1
/// whatever the metric.
#[test]
fn positions_custom_metrics_and_faithfulness_identity() {
    let model = load_tiny("tiny-llama");
    let c = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let (ci, ii) = (c.correct_id as usize, c.incorrect_id as usize);
    let out = model.forward(&Batch::new(std::slice::from_ref(&c.clean)).unwrap(), &Hooks::new()).unwrap();
    let logits = out.logits.squeeze(0).unwrap().to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let at = |pos: usize| logits[pos][ci] - logits[pos][ii];
    for (metric, want) in [
        (Metric::LogitDiff { position: Position::At(3) }, at(3)),
        (Metric::LogitDiff { position: Position::Mean }, (0..c.clean.len()).map(at).sum::<f64>() / c.clean.len() as f64),
    ] {
        let s = Scorer::new(&model, &c, &metric).unwrap();
        let run = model.forward(&Batch::new(std::slice::from_ref(&c.clean)).unwrap(), &s.hooks()).unwrap();
        let got = s.values(&run).unwrap()[0] as f64;
        assert!((got - want).abs() < 1e-5, "{metric:?}: {got} vs {want}");
    }
    assert!(Scorer::new(&model, &c, &Metric::LogitDiff { position: Position::At(99) }).is_err());

    let custom = Metric::custom(move |out: &glassbox::ForwardOutput| {
        let last = out.last_logits()?;
        Ok((last.narrow(D::Minus1, ci, 1)? - last.narrow(D::Minus1, ii, 1)?)?.squeeze(D::Minus1)?)
    });
    let a = attribute(&model, &c, &AttributionOptions { metric: custom, ..Default::default() }).unwrap();
    let b = attribute(&model, &c, &AttributionOptions::default()).unwrap();
    for (x, y) in a.scores.iter().flatten().zip(b.scores.iter().flatten()) {
        assert!((x - y).abs() < 1e-6);
    }
    let wrong = Metric::custom(|out: &glassbox::ForwardOutput| Ok(out.logits.clone()));
    assert!(attribute(&model, &c, &AttributionOptions { metric: wrong, ..Default::default() }).unwrap_err().to_string().contains("one value per prompt"));

    let all: Vec<Head> = (0..2).flat_map(|layer| (0..model.config().n_heads).map(move |head| Head { layer, head })).collect();
    for m in ["logprob", "prob", "kl"] {
        let opts = EvaluatorOptions { metric: Metric::parse(m).unwrap(), ..Default::default() };
        let f = faithfulness(&model, &c, &Circuit { heads: all.clone(), mlps: vec![] }, &opts, None).unwrap();
        assert!((f.sufficiency - 1.0).abs() < 1e-4, "{m}: sufficiency of every head {}", f.sufficiency);
        assert!((f.comprehensiveness - 1.0).abs() < 1e-4, "{m}: comprehensiveness of every head {}", f.comprehensiveness);
    }
    let _ = Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu);
}
