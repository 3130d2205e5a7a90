//! Interventions at hook points, each checked against an independent computation.

mod common;

use candle_core::{Tensor, D};
use common::{fixtures, load_tiny, max_abs_diff, Reference};
use glassbox::{Action, Batch, HookPoint, Hooks, Intervention, Model};

fn ioi_batch(name: &str) -> (Model, Batch, Reference) {
    let model = load_tiny(name);
    let reference = Reference::load(fixtures().join(name).join("reference.safetensors"));
    let batch = Batch::new(&[reference.ids(0)]).unwrap();
    (model, batch, reference)
}

/// Zero-ablating head h at `hook_z` equals the run whose W_O has that head's d_head inputs
/// (TransformerLens's W_O[h] rows) zeroed.
#[test]
fn zero_ablating_a_head_equals_zeroing_its_w_o_rows() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-llama-tied"] {
        let (model, batch, _) = ioi_batch(name);
        let (layer, head) = (1, 2);
        let hooks = Hooks::new().intervene(Intervention::new(HookPoint::Z(layer), Action::Zero).heads(vec![head]));
        let ablated = model.forward(&batch, &hooks).unwrap().logits;

        let mut weights = model.weights().clone();
        let dh = model.config().d_head;
        let w_o = &model.weights().layers[layer].attn.w_o.tensor().unwrap(); // [d_model, heads*d_head]
        let cols = w_o.dim(1).unwrap();
        let keep: Vec<f32> = (0..cols).map(|c| if c / dh == head { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::from_vec(keep, (1, cols), w_o.device()).unwrap();
        weights.layers[layer].attn.w_o = w_o.broadcast_mul(&keep).unwrap().into();
        let edited = model.with_weights(weights);
        let reference = edited.forward(&batch, &Hooks::new()).unwrap().logits;
        let d = max_abs_diff(&ablated, &reference);
        assert!(d <= 1e-5, "{name}: {d:e}");
        let clean = model.forward(&batch, &Hooks::new()).unwrap().logits;
        assert!(max_abs_diff(&clean, &ablated) > 1e-3, "{name}: ablation changed nothing");
    }
}

/// Replacing the whole residual stream at a layer with another prompt's gives that prompt's logits;
/// patching one position changes only positions at or after it.
#[test]
fn replacing_from_another_run_reproduces_it() {
    let model = load_tiny("tiny-llama");
    let a = vec![10u32, 20, 30, 40, 50, 60];
    let b = vec![11u32, 21, 31, 41, 51, 61];
    let (ba, bb) = (Batch::new(&[a]).unwrap(), Batch::new(&[b]).unwrap());
    let point = HookPoint::ResidPre(1);
    let run_b = model.forward(&bb, &Hooks::new().cache([point])).unwrap();
    let cached = run_b.cache.get(point).unwrap().clone();
    let patched = model
        .forward(&ba, &Hooks::new().intervene(Intervention::new(point, Action::Replace(cached.clone()))))
        .unwrap();
    assert!(max_abs_diff(&patched.logits, &run_b.logits) <= 1e-5);

    let clean = model.forward(&ba, &Hooks::new()).unwrap();
    let one = model
        .forward(&ba, &Hooks::new().intervene(Intervention::new(point, Action::Replace(cached)).positions(vec![3])))
        .unwrap();
    let before = |t: &Tensor| t.narrow(1, 0, 3).unwrap();
    assert!(max_abs_diff(&before(&one.logits), &before(&clean.logits)) <= 1e-6);
    assert!(max_abs_diff(&one.logits, &clean.logits) > 1e-3);
}

/// Adding then subtracting the same tensor at two points in a row is the identity; mean
/// ablation over a batch of identical prompts changes nothing.
#[test]
fn add_and_mean_ablation_identities() {
    let (model, batch, reference) = ioi_batch("tiny-gpt2");
    let clean = model.forward(&batch, &Hooks::new()).unwrap().logits;
    let delta = Tensor::ones((1, batch.n_pos(), model.config().d_model), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let hooks = Hooks::new()
        .intervene(Intervention::new(HookPoint::ResidMid(0), Action::Add(delta.clone())))
        .intervene(Intervention::new(HookPoint::ResidMid(0), Action::Add(delta.neg().unwrap())));
    assert!(max_abs_diff(&model.forward(&batch, &hooks).unwrap().logits, &clean) <= 1e-5);

    let twice = Batch::new(&[reference.ids(0), reference.ids(0)]).unwrap();
    let mean = Hooks::new().intervene(Intervention::new(HookPoint::MlpOut(0), Action::MeanOverBatch));
    let out = model.forward(&twice, &mean).unwrap().logits;
    assert!(max_abs_diff(&out.get(0).unwrap().unsqueeze(0).unwrap(), &clean) <= 1e-5);
}

/// The cached hook values obey the model's own algebra: resid_post = resid_mid + mlp_out,
/// patterns are distributions, ln_final.hook_normalized has unit RMS (RMSNorm).
#[test]
fn cached_values_are_consistent() {
    let (model, batch, _) = ioi_batch("tiny-llama");
    let out = model.forward(&batch, &Hooks::new().cache_all()).unwrap();
    let c = &out.cache;
    let sum = (c.get(HookPoint::ResidMid(0)).unwrap() + c.get(HookPoint::MlpOut(0)).unwrap()).unwrap();
    assert!(max_abs_diff(&sum, c.get(HookPoint::ResidPost(0)).unwrap()) <= 1e-5);
    let rows = c.get(HookPoint::Pattern(1)).unwrap().sum(D::Minus1).unwrap();
    assert!(max_abs_diff(&rows, &rows.ones_like().unwrap()) <= 1e-5);
    assert_eq!(c.get(HookPoint::K(0)).unwrap().dims()[2], model.config().n_kv_heads);
    assert_eq!(c.get(HookPoint::MlpPost(0)).unwrap().dims()[2], model.config().d_mlp);
    let n = c.get(HookPoint::LnFinalNormalized).unwrap();
    let rms = n.sqr().unwrap().mean(D::Minus1).unwrap().sqrt().unwrap();
    assert!(max_abs_diff(&rms, &rms.ones_like().unwrap()) <= 1e-3);
    let all = HookPoint::all_for(model.config());
    assert_eq!(c.values.len(), all.len(), "every hook point of the model fires");
    assert!(all.iter().all(|p| c.values.contains_key(p)));
    let gpt2 = load_tiny("tiny-gpt2");
    let out = gpt2.forward(&batch, &Hooks::new().cache_all()).unwrap();
    assert_eq!(out.cache.values.len(), HookPoint::all_for(gpt2.config()).len());
}

#[test]
fn hook_names_round_trip() {
    for p in HookPoint::all(3) {
        let s = p.to_string();
        assert_eq!(s.parse::<HookPoint>().unwrap(), p, "{s}");
    }
    assert_eq!("blocks.11.attn.hook_z".parse::<HookPoint>().unwrap(), HookPoint::Z(11));
    assert_eq!(HookPoint::MlpPost(2).to_string(), "blocks.2.mlp.hook_post");
}

/// Patching through the router: giving a prompt another prompt's router logits in one layer
/// changes which experts run (and the output); giving it its own changes nothing.
#[test]
fn router_logits_can_be_patched() {
    let model = load_tiny("tiny-mixtral");
    let (a, b) = (Batch::new(&[vec![10u32, 20, 30, 40, 50]]).unwrap(), Batch::new(&[vec![60u32, 70, 80, 90, 100]]).unwrap());
    let p = HookPoint::RouterLogits(1);
    let ra = model.forward(&a, &Hooks::new().cache([p, HookPoint::ExpertWeights(1)])).unwrap();
    let rb = model.forward(&b, &Hooks::new().cache([p])).unwrap();
    let w = ra.cache.get(HookPoint::ExpertWeights(1)).unwrap();
    let chosen = w.ne(0f32).unwrap().to_dtype(candle_core::DType::F32).unwrap().sum(candle_core::D::Minus1).unwrap();
    assert!(max_abs_diff(&chosen, &(chosen.ones_like().unwrap() * 2.0).unwrap()) == 0.0, "top-2 of 4");
    let own = model.forward(&a, &Hooks::new().intervene(Intervention::new(p, Action::Replace(ra.cache.get(p).unwrap().clone())))).unwrap();
    assert!(max_abs_diff(&own.logits, &ra.logits) <= 1e-6);
    let other = model.forward(&a, &Hooks::new().intervene(Intervention::new(p, Action::Replace(rb.cache.get(p).unwrap().clone())))).unwrap();
    assert!(max_abs_diff(&other.logits, &ra.logits) > 1e-3);
}

/// A closure hook (TransformerLens' `fwd_hooks`) that zero-ablates a head equals the
/// declarative `Zero` on that head; a closure returning the wrong shape is an error.
#[test]
fn closure_hook_equals_declarative_zero() {
    let model = common::load_tiny("tiny-llama");
    let batch = model.batch(&["When Mary and John went to the store"]).unwrap();
    let declarative = Hooks::new().intervene(Intervention::new(HookPoint::Z(1), Action::Zero).heads(vec![2]));
    let closure = Hooks::new().hook(HookPoint::Z(1), |z, point| {
        assert_eq!(point, HookPoint::Z(1));
        let (b, p, h, d) = z.dims4()?;
        let mask: Vec<f32> = (0..h).map(|i| if i == 2 { 0.0 } else { 1.0 }).collect();
        let m = candle_core::Tensor::from_vec(mask, (1, 1, h, 1), z.device())?.broadcast_as((b, p, h, d))?;
        Ok((z * m)?)
    });
    let a = model.forward(&batch, &declarative).unwrap().logits;
    let b = model.forward(&batch, &closure).unwrap().logits;
    assert!(common::max_abs_diff(&a, &b) <= 1e-6);
    let plain = model.forward(&batch, &Hooks::new()).unwrap().logits;
    assert!(common::max_abs_diff(&a, &plain) > 1e-4, "the ablation changes the logits");
    let wrong = Hooks::new().hook(HookPoint::Z(1), |z, _| Ok(z.narrow(2, 0, 1)?));
    let e = model.forward(&batch, &wrong).err().unwrap().to_string();
    assert!(e.contains("closure returned shape"), "{e}");
}

/// Gradients flow through a closure hook: the gradient at `hook_resid_pre` of layer 0 through
/// a nonlinear closure at layer 0's `hook_z` matches central finite differences (f64).
#[test]
fn gradients_flow_through_a_closure_hook() {
    use candle_core::DType;
    let model = common::load_tiny("tiny-llama").to_dtype(DType::F64).unwrap();
    let ids = model.tokenize("When Mary and John went").unwrap();
    let (c, i) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
    let batch = glassbox::Batch::new(std::slice::from_ref(&ids)).unwrap();
    let closure = |z: &candle_core::Tensor, _: HookPoint| Ok(((z.sqr()? * 0.5)? + z)?);
    let run = |extra: Option<candle_core::Tensor>| {
        let mut h = Hooks::new().hook(HookPoint::Z(0), closure).grad_tap([HookPoint::ResidPre(0)]);
        if let Some(e) = extra {
            h = h.intervene(Intervention::new(HookPoint::ResidPre(0), Action::Add(e)));
        }
        model.forward(&batch, &h).unwrap()
    };
    let out = run(None);
    let ld = out.logit_diff(&[c], &[i]).unwrap().sum_all().unwrap();
    let g = out.backward(&ld).unwrap();
    let grad = g.get(HookPoint::ResidPre(0)).unwrap().squeeze(0).unwrap().to_vec2::<f64>().unwrap();
    let d = model.config().d_model;
    let h = 1e-5;
    for (pos, k) in [(1usize, 3usize), (3, 17), (4, 40)] {
        let bump = |s: f64| {
            let mut v = vec![0f64; ids.len() * d];
            v[pos * d + k] = s;
            candle_core::Tensor::from_vec(v, (1, ids.len(), d), &candle_core::Device::Cpu).unwrap()
        };
        let ldv = |s: f64| run(Some(bump(s))).logit_diff(&[c], &[i]).unwrap().to_vec1::<f64>().unwrap()[0];
        let fd = (ldv(h) - ldv(-h)) / (2.0 * h);
        assert!((fd - grad[pos][k]).abs() <= 1e-6 * (1.0 + fd.abs()), "({pos},{k}): fd {fd} vs grad {}", grad[pos][k]);
    }
}

/// Hooks (without closures) serialise and replay to the same run.
#[test]
fn hooks_serialise_and_replay() {
    let model = common::load_tiny("tiny-llama");
    let batch = model.batch(&["When Mary and John went to the store"]).unwrap();
    let add = candle_core::Tensor::from_vec((0..64).map(|k| (k as f32 * 0.37).sin()).collect::<Vec<_>>(), (1, 1, 64), &candle_core::Device::Cpu).unwrap();
    let hooks = Hooks::new()
        .intervene(Intervention::new(HookPoint::Z(0), Action::Zero).heads(vec![1, 3]).positions(vec![2]))
        .intervene(Intervention::new(HookPoint::ResidPre(1), Action::Add(add)))
        .intervene(Intervention::new(HookPoint::MlpOut(0), Action::MeanOverBatch))
        .cache([HookPoint::Pattern(1)])
        .last_logits_only();
    let json = serde_json::to_string(&hooks).unwrap();
    let back: Hooks = serde_json::from_str(&json).unwrap();
    let a = model.forward(&batch, &hooks).unwrap();
    let b = model.forward(&batch, &back).unwrap();
    assert_eq!(common::max_abs_diff(&a.logits, &b.logits), 0.0);
    assert!(b.cache.get(HookPoint::Pattern(1)).is_ok());
    let closure = Hooks::new().hook(HookPoint::Z(0), |z, _| Ok(z.clone()));
    assert!(serde_json::to_string(&closure).is_err(), "a closure hook cannot be saved");
    assert!(serde_json::from_str::<Hooks>(r#"{"interventions":[{"point":"blocks.0.attn.hook_z","action":{"replace":{"dtype":"f32","shape":[2,2],"data":[1,2,3]}},"batch":null,"positions":null,"heads":null}]}"#).is_err());
}

/// The per-head attention inputs (`hook_q_input`, `hook_k_input`, `hook_v_input`): caching
/// them leaves the logits as they were (to float rounding), and giving one head's query
/// input another prompt's residual equals giving that head's `hook_q` the other prompt's
/// queries: the split path normalises and projects each head exactly as the shared one.
#[test]
fn split_attention_inputs_match_the_shared_path() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-gemma3", "tiny-qwen3", "tiny-olmo2", "tiny-opt-postln", "tiny-neox", "tiny-phi3"] {
        let model = load_tiny(name);
        let cfg = model.config().clone();
        let (a, b) = (vec![10u32, 20, 30, 40, 50, 60], vec![11u32, 21, 31, 41, 51, 61]);
        let (ba, bb) = (Batch::new(&[a]).unwrap(), Batch::new(&[b]).unwrap());
        let layer = 1;
        let split = [HookPoint::QInput(layer), HookPoint::KInput(layer), HookPoint::VInput(layer)];
        let clean = model.forward(&ba, &Hooks::new()).unwrap();
        let cached = model.forward(&ba, &Hooks::new().cache(split)).unwrap();
        assert!(max_abs_diff(&clean.logits, &cached.logits) <= 1e-5, "{name}: the split path changed the logits");
        let q_in = cached.cache.get(HookPoint::QInput(layer)).unwrap();
        assert_eq!(q_in.dims(), &[1, 6, cfg.n_heads, cfg.d_model], "{name}");
        let k_in = cached.cache.get(HookPoint::KInput(layer)).unwrap();
        assert_eq!(k_in.dims(), &[1, 6, cfg.n_kv_heads, cfg.d_model], "{name}");

        let other = model.forward(&bb, &Hooks::new().cache([HookPoint::ResidPre(layer), HookPoint::Q(layer), HookPoint::V(layer)])).unwrap();
        let resid_b = other.cache.get(HookPoint::ResidPre(layer)).unwrap().unsqueeze(2).unwrap();
        for (input, output, head) in [(HookPoint::QInput(layer), HookPoint::Q(layer), 1), (HookPoint::VInput(layer), HookPoint::V(layer), 0)] {
            let n = input.n_heads(&cfg).unwrap();
            let value = resid_b.broadcast_as((1, 6, n, cfg.d_model)).unwrap().contiguous().unwrap();
            let by_input = model
                .forward(&ba, &Hooks::new().intervene(Intervention::new(input, Action::Replace(value)).heads(vec![head])))
                .unwrap()
                .logits;
            let by_output = model
                .forward(&ba, &Hooks::new().intervene(Intervention::new(output, Action::Replace(other.cache.get(output).unwrap().clone())).heads(vec![head])))
                .unwrap()
                .logits;
            let d = max_abs_diff(&by_input, &by_output);
            assert!(d <= 1e-5, "{name} {input}: {d:e}");
            assert!(max_abs_diff(&by_input, &clean.logits) > 1e-4, "{name} {input}: the patch changed nothing");
        }
    }
    assert!("blocks.3.hook_q_input".parse::<HookPoint>().unwrap() == HookPoint::QInput(3));
    assert_eq!(HookPoint::VInput(2).to_string(), "blocks.2.hook_v_input");
}

/// `hook_result` (each head's output before the sum) and `hook_attn_in` (one input per head
/// for query, key and value): hooking them leaves the logits as they were; the heads' results
/// plus the output bias are `hook_attn_out` (before a post-norm); zeroing a head's result is
/// zeroing its `hook_z`; giving one head's `hook_attn_in` another prompt's residual is giving
/// it that prompt's `hook_q_input`, `hook_k_input` and `hook_v_input` together. Models with
/// fewer key/value heads than query heads have no `hook_attn_in`, and a run cannot hook it
/// beside the split inputs.
#[test]
fn head_results_and_attention_inputs() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-gemma3", "tiny-neox", "tiny-opt-postln", "tiny-phi3", "tiny-qwen2"] {
        let model = load_tiny(name);
        let cfg = model.config().clone();
        let (a, b) = (vec![10u32, 20, 30, 40, 50, 60], vec![11u32, 21, 31, 41, 51, 61]);
        let (ba, bb) = (Batch::new(&[a]).unwrap(), Batch::new(&[b]).unwrap());
        let layer = 1;
        let clean = model.forward(&ba, &Hooks::new().cache([HookPoint::AttnOut(layer)])).unwrap();
        let with_result = model.forward(&ba, &Hooks::new().cache([HookPoint::Result(layer)])).unwrap();
        assert!(max_abs_diff(&clean.logits, &with_result.logits) <= 1e-5, "{name}: hooking hook_result changed the logits");
        let result = with_result.cache.get(HookPoint::Result(layer)).unwrap();
        assert_eq!(result.dims(), &[1, 6, cfg.n_heads, cfg.d_model], "{name}");
        if model.weights().layers[layer].extra.ln1_post.is_none() {
            let mut summed = result.sum(2).unwrap();
            if let Some(bias) = &model.weights().layers[layer].attn.b_o {
                summed = summed.broadcast_add(bias).unwrap();
            }
            assert!(max_abs_diff(&summed, clean.cache.get(HookPoint::AttnOut(layer)).unwrap()) <= 1e-5, "{name}: results + bias = attn_out");
        }
        let zero = |p: HookPoint| model.forward(&ba, &Hooks::new().intervene(Intervention::new(p, Action::Zero).heads(vec![2]))).unwrap().logits;
        let d = max_abs_diff(&zero(HookPoint::Result(layer)), &zero(HookPoint::Z(layer)));
        assert!(d <= 1e-5, "{name}: zeroing head 2's result vs its z: {d:e}");

        if cfg.n_kv_heads != cfg.n_heads {
            let e = model.forward(&ba, &Hooks::new().cache([HookPoint::AttnIn(layer)])).err().unwrap().to_string();
            assert!(e.contains("hook_q_input"), "{name}: {e}");
            continue;
        }
        let cached = model.forward(&ba, &Hooks::new().cache([HookPoint::AttnIn(layer)])).unwrap();
        assert!(max_abs_diff(&clean.logits, &cached.logits) <= 1e-5, "{name}: hooking hook_attn_in changed the logits");
        assert_eq!(cached.cache.get(HookPoint::AttnIn(layer)).unwrap().dims(), &[1, 6, cfg.n_heads, cfg.d_model]);
        let other = model.forward(&bb, &Hooks::new().cache([HookPoint::ResidPre(layer)])).unwrap();
        let value = other.cache.get(HookPoint::ResidPre(layer)).unwrap().unsqueeze(2).unwrap().broadcast_as((1, 6, cfg.n_heads, cfg.d_model)).unwrap().contiguous().unwrap();
        let patch = |points: &[HookPoint]| {
            let mut hooks = Hooks::new();
            for &p in points {
                hooks = hooks.intervene(Intervention::new(p, Action::Replace(value.clone())).heads(vec![1]));
            }
            model.forward(&ba, &hooks).unwrap().logits
        };
        let by_attn_in = patch(&[HookPoint::AttnIn(layer)]);
        let by_split = patch(&[HookPoint::QInput(layer), HookPoint::KInput(layer), HookPoint::VInput(layer)]);
        assert!(max_abs_diff(&by_attn_in, &by_split) <= 1e-5, "{name}: hook_attn_in vs the three split inputs");
        assert!(max_abs_diff(&by_attn_in, &clean.logits) > 1e-4, "{name}: the patch changed nothing");
        let e = model.forward(&ba, &Hooks::new().cache([HookPoint::AttnIn(layer), HookPoint::QInput(layer)])).err().unwrap().to_string();
        assert!(e.contains("not both"), "{name}: {e}");
    }
    assert_eq!("blocks.3.attn.hook_result".parse::<HookPoint>().unwrap(), HookPoint::Result(3));
    assert_eq!(HookPoint::AttnIn(2).to_string(), "blocks.2.hook_attn_in");
}
