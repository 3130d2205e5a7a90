//! The activation cache's TransformerLens helpers (issue 13): the decompositions add up to the
//! residual stream on every family (pre-norm; post-LN models renormalise and do not), and the
//! cache's `logit_attrs` are the logit lens's direct effects.

mod common;

use candle_core::{DType, Tensor};
use common::{load_tiny, max_abs_diff};
use glassbox::methods::logit_lens::logit_lens;
use glassbox::{Batch, Decompose, HookPoint, Hooks, Model};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";
const FAMILIES: &[&str] = &[
    "tiny-gpt2", "tiny-llama", "tiny-llama-tied", "tiny-qwen2", "tiny-mistral", "tiny-mixtral", "tiny-neox", "tiny-opt", "tiny-gptneo",
    "tiny-gemma", "tiny-gemma2", "tiny-gemma3", "tiny-qwen3", "tiny-qwen3-moe", "tiny-qwen2-moe", "tiny-phi3", "tiny-olmo2",
];

fn run(model: &Model) -> glassbox::ForwardOutput {
    let ids = model.tokenize(IOI).unwrap();
    model.forward(&Batch::new(&[ids]).unwrap(), &Hooks::new().cache_all()).unwrap()
}

#[test]
fn decompositions_sum_to_the_residual_stream() {
    for name in FAMILIES {
        let model = load_tiny(name);
        let out = run(&model);
        let c = &out.cache;
        let n = model.config().n_layers;
        let resid = c.get(HookPoint::ResidPost(n - 1)).unwrap();

        let parts = c.decompose_resid(&model, None, Decompose::All, false, true).unwrap();
        assert_eq!(parts.labels.last().unwrap(), &format!("{}_mlp_out", n - 1));
        let d = max_abs_diff(&parts.sum().unwrap(), resid);
        assert!(d <= 1e-4, "{name}: decompose_resid sums to resid_post within {d:e}");

        // Heads + attention biases + embeddings + MLPs.
        let heads = c.stack_head_results(&model, None, false, false).unwrap();
        assert_eq!(heads.labels.len(), n * model.config().n_heads);
        assert_eq!(heads.labels[1], "L0H1");
        let p = resid.dim(1).unwrap();
        let mut total = (heads.sum().unwrap() + c.decompose_resid(&model, Some(0), Decompose::All, false, true).unwrap().sum().unwrap()).unwrap();
        total = (total + c.decompose_resid(&model, None, Decompose::Mlp, false, false).unwrap().sum().unwrap()).unwrap();
        for l in 0..n {
            let scale = model.attn_post_scale(l, c.get(HookPoint::Z(l)).unwrap()).unwrap();
            total = (total + model.attn_bias_result(l, (1, p), scale.as_ref()).unwrap()).unwrap();
        }
        let d = max_abs_diff(&total, resid);
        assert!(d <= 1e-4, "{name}: heads, biases, embeddings and MLPs sum to resid_post within {d:e}");

        // With the remainder the stack sums to the stream at any layer.
        let upto = c.stack_head_results(&model, Some(1), false, true).unwrap();
        let d = max_abs_diff(&upto.sum().unwrap(), c.get(HookPoint::ResidPre(1)).unwrap());
        assert!(d <= 1e-5, "{name}: remainder {d:e}");

        if model.config().parallel_block {
            assert!(c.accumulated_resid(&model, None, true, false).is_err(), "{name}: no resid_mid in a parallel block");
            let acc = c.accumulated_resid(&model, None, false, false).unwrap();
            assert_eq!(acc.labels.len(), n + 1);
        } else {
            let acc = c.accumulated_resid(&model, None, true, false).unwrap();
            assert_eq!(acc.labels.len(), 2 * n + 1);
            assert_eq!(acc.labels[1], "0_mid");
            assert_eq!(max_abs_diff(&acc.tensor.get(2 * n).unwrap(), resid), 0.0);
        }
    }
}

#[test]
fn logit_attrs_are_the_logit_lens_direct_effects() {
    for name in FAMILIES {
        let model = load_tiny(name);
        let ids = model.tokenize(IOI).unwrap();
        let (c, i) = (model.answer_token(" Mary").unwrap(), model.answer_token(" John").unwrap());
        let lens = logit_lens(&model, &glassbox::methods::Prompt { tokens: (ids).to_vec(), correct: c, incorrect: i }, &glassbox::methods::logit_lens::LogitLensOptions { top_k: 1 }).unwrap();
        let out = run(&model);
        let last = out.cache.at_positions(&[ids.len() - 1]).unwrap();
        let heads = last.stack_head_results(&model, None, true, false).unwrap();
        let attrs = last.logit_attrs(&model, &heads, c, Some(i)).unwrap().flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = lens.head_direct_effects.iter().flatten().copied().collect();
        let d = attrs.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-5, "{name}: logit_attrs vs direct effects differ by {d:e}");
        let mlps = last.decompose_resid(&model, None, Decompose::Mlp, true, false).unwrap();
        let attrs = last.logit_attrs(&model, &mlps, c, Some(i)).unwrap().flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        let d = attrs.iter().zip(&lens.mlp_direct_effects).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-5, "{name}: MLP logit_attrs differ by {d:e}");
    }
}

#[test]
fn neuron_results_sum_to_the_mlp_output() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-gemma2", "tiny-olmo2", "tiny-phi3"] {
        let model = load_tiny(name);
        let out = run(&model);
        let c = out.cache.at_positions(&[3]).unwrap();
        let neurons = c.stack_neuron_results(&model, Some(1), false, false).unwrap();
        assert_eq!(neurons.labels.len(), model.config().d_mlp);
        let mut sum = neurons.sum().unwrap();
        if let Some(b) = &model.weights().layers[0].mlp.b_out {
            sum = sum.broadcast_add(b).unwrap();
        }
        let d = max_abs_diff(&sum, c.get(HookPoint::MlpOut(0)).unwrap());
        assert!(d <= 1e-4, "{name}: neurons sum to hook_mlp_out within {d:e}");
    }
    let moe = load_tiny("tiny-mixtral");
    let out = run(&moe);
    assert!(out.cache.stack_neuron_results(&moe, Some(1), false, false).is_err());
}

#[test]
fn slicing_tokens_and_strings() {
    let model = load_tiny("tiny-llama");
    let ids = model.tokenize(IOI).unwrap();
    let batch = Batch::new(&[ids.clone(), ids[..5].to_vec()]).unwrap();
    let out = model.forward(&batch, &Hooks::new().cache([HookPoint::Pattern(0), HookPoint::ResidPre(1)])).unwrap();
    let row = out.cache.batch_rows(&[1]).unwrap();
    assert_eq!(row.get(HookPoint::ResidPre(1)).unwrap().dims(), &[1, ids.len(), 64]);
    let pos = out.cache.at_positions(&[0, 4]).unwrap();
    assert_eq!(pos.get(HookPoint::Pattern(0)).unwrap().dims(), &[2, 4, 2, ids.len()], "query axis of the pattern");
    assert!(out.cache.at_positions(&[99]).is_err() && out.cache.batch_rows(&[2]).is_err());
    let strs = model.to_str_tokens(&ids);
    assert_eq!(strs.len(), ids.len());
    assert_eq!(model.to_string(&ids), IOI);
    assert_eq!(strs.concat(), IOI);
    let _ = Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu);
}

/// The norm conventions of `apply_ln_to_stack_as` on every family: `FrozenWeighted` at the
/// final norm is glassbox's `apply_ln_to_stack`; `Frozen` times the weight is `FrozenWeighted`;
/// `Recomputed` is each component through the final norm on its own; at a block, `Frozen` of
/// the stream entering it is its attention norm's `hook_normalized` (where the block reads a
/// normalised stream); `Recomputed` there is refused.
#[test]
fn stack_norm_conventions() {
    use glassbox::StackNorm;
    for name in FAMILIES {
        let model = load_tiny(name);
        let out = run(&model);
        let c = &out.cache;
        let acc = c.accumulated_resid(&model, None, false, false).unwrap();
        let weighted = c.apply_ln_to_stack_as(&model, &acc, None, false, StackNorm::FrozenWeighted).unwrap();
        let ours = c.apply_ln_to_stack(&model, &acc).unwrap();
        assert!(max_abs_diff(&weighted.tensor, &ours.tensor) <= 1e-6, "{name}: FrozenWeighted is apply_ln_to_stack");
        let recomputed = c.apply_ln_to_stack_as(&model, &acc, None, false, StackNorm::Recomputed).unwrap();
        for k in 0..acc.labels.len() {
            let one = model.final_norm(&acc.tensor.get(k).unwrap()).unwrap();
            assert!(max_abs_diff(&recomputed.tensor.get(k).unwrap(), &one) <= 1e-5, "{name}: Recomputed component {k}");
        }
        if model.config().variants.no_final_norm {
            continue;
        }
        let plain = c.apply_ln_to_stack_as(&model, &acc, None, false, StackNorm::Frozen).unwrap();
        let w = &model.weights().ln_final.w;
        assert!(max_abs_diff(&plain.tensor.broadcast_mul(w).unwrap(), &weighted.tensor) <= 1e-5, "{name}: Frozen × weight = FrozenWeighted");
        if HookPoint::Ln1Scale(1).present_in(model.config()) && !model.config().variants.post_ln {
            // The stream entering block 1, through its attention norm with the frozen scale.
            let stream = c.accumulated_resid(&model, Some(2), false, false).unwrap();
            let normed = c.apply_ln_to_stack_as(&model, &stream, Some(1), false, StackNorm::Frozen).unwrap();
            let want = c.get(HookPoint::Ln1Normalized(1)).unwrap();
            assert!(max_abs_diff(&normed.tensor.get(1).unwrap(), want) <= 1e-4, "{name}: block 1's frozen norm of its own stream is its hook_normalized");
            let e = c.apply_ln_to_stack_as(&model, &stream, Some(1), false, StackNorm::Recomputed).unwrap_err().to_string();
            assert!(e.contains("final norm only"), "{e}");
        }
    }
}
