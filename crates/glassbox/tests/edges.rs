//! Edge attribution patching against exact edge patching and its own building blocks.

mod common;

use candle_core::DType;
use common::{eps_close, load_tiny};
use glassbox::methods::attribution::Method;
use glassbox::methods::edges::edge_attribution;
use glassbox::methods::Contrast;
use glassbox::{Action, Batch, HookPoint, Hooks, Intervention};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

use common::last_ld as ld;

/// The norm VJP that carries receiver gradients back through a head's own norm equals
/// autograd: the MLP's input gradient (tap at `hook_mlp_in`) from the gradient at
/// `ln2.hook_normalized`.
#[test]
fn norm_vjp_matches_autograd() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name).to_dtype(DType::F64).unwrap();
        let tokens = model.tokenize(IOI).unwrap();
        let taps = [HookPoint::MlpIn(0), HookPoint::Ln2Normalized(0)];
        let hooks = Hooks::new().grad_tap(taps).cache([HookPoint::Ln2Normalized(0), HookPoint::Ln2Scale(0)]);
        let out = model.forward(&Batch::new(&[tokens]).unwrap(), &hooks).unwrap();
        let ld = out.logit_diff(&[5], &[6]).unwrap().sum_all().unwrap();
        let g = out.backward(&ld).unwrap();
        let vjp = model
            .norm_backward(g.get(HookPoint::Ln2Normalized(0)).unwrap(), out.cache.get(HookPoint::Ln2Normalized(0)).unwrap(), out.cache.get(HookPoint::Ln2Scale(0)).unwrap())
            .unwrap();
        let d = common::max_abs_diff(&vjp, g.get(HookPoint::MlpIn(0)).unwrap());
        assert!(d < 1e-10, "{name}: {d:e}");
    }
}

/// In the linear regime each edge's EAP score equals exact edge patching: the receiver alone
/// sees the sender's corrupted output (edges into the logits and into MLPs).
#[test]
fn eap_matches_exact_edge_patching() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let (model, contrast) = eps_close(name, 1e-4);
        let eap = edge_attribution(&model, &contrast, &glassbox::methods::edges::EdgeOptions { method: Method::Taylor, top_k: usize::MAX, ..Default::default() }).unwrap();
        let (c, i) = (contrast.correct_id, contrast.incorrect_id);
        let clean = ld(&model, &contrast.clean, c, i, Hooks::new());
        let mut cache: Vec<HookPoint> = vec![HookPoint::Embed];
        if HookPoint::PosEmbed.present_in(model.config()) {
            cache.push(HookPoint::PosEmbed);
        }
        cache.extend((0..2).flat_map(|l| [HookPoint::AttnOut(l), HookPoint::MlpOut(l)]));
        let runs = model.forward(&contrast.batch().unwrap(), &Hooks::new().cache(cache)).unwrap();
        let delta = |p: HookPoint| {
            let t = runs.cache.get(p).unwrap();
            (t.get(0).unwrap() - t.get(1).unwrap()).unwrap().unsqueeze(0).unwrap()
        };
        let mut checked = 0;
        let (mut max_err, mut max_score) = (0f64, 0f64);
        for e in &eap.top_edges {
            let (point, sent) = match (e.sender.as_str(), e.receiver.as_str()) {
                (s, "logits") if s.starts_with("MLP") => (HookPoint::ResidPost(1), delta(HookPoint::MlpOut(s[3..].parse().unwrap()))),
                ("MLP00", "MLP01") => (HookPoint::MlpIn(1), delta(HookPoint::MlpOut(0))),
                _ => continue,
            };
            let patched = ld(&model, &contrast.clean, c, i, Hooks::new().intervene(Intervention::new(point, Action::Add(sent.neg().unwrap()))));
            max_err = max_err.max((clean - patched - e.score as f64).abs());
            max_score = max_score.max(e.score.abs() as f64);
            checked += 1;
        }
        assert_eq!(checked, 3, "{name}");
        assert!(max_score > 1e-7);
        assert!(max_err / max_score < 2e-2, "{name}: max error {max_err:e} vs max score {max_score:e}");
        // Every sender → receiver pair that exists in the graph is scored once.
        let c = &model.config();
        let senders = 1 + c.n_layers * (c.n_heads + 1);
        assert!(eap.n_edges < senders * (c.n_layers * (c.n_heads + 2 * c.n_kv_heads + 1) + 1));
    }
}

#[test]
fn eap_ig_runs_on_both_families() {
    for name in ["tiny-gpt2", "tiny-llama"] {
        let model = load_tiny(name);
        let contrast = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
        let r = edge_attribution(&model, &contrast, &glassbox::methods::edges::EdgeOptions { method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 10, top_k: 20, metric: Default::default() }).unwrap();
        assert_eq!(r.top_edges.len(), 20);
        assert!(r.top_edges[0].score.abs() >= r.top_edges[19].score.abs());
    }
}
