//! The README's "Library" section as one program on the default model: the activation cache's
//! helpers, a method with an option struct and a metric, a closure hook, generation.
//!
//! ```text
//! cargo run --release -p glassbox --example library_tour
//! ```

use glassbox::methods::attribution::{attribute, AttributionOptions, Method};
use glassbox::methods::patching::{exact_patching, PatchingOptions};
use glassbox::methods::{Contrast, Metric, Position};
use glassbox::{registry, Batch, GenerateOptions, HookPoint, Hooks, Model, Sampling};

fn main() -> glassbox::Result<()> {
    let model = Model::load(&registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}"))?)?;
    let prompt = "When Mary and John went to the store, John gave a drink to";

    // 1. The activation cache and its TransformerLens helpers.
    let ids = model.tokenize(prompt)?;
    let out = model.forward(&Batch::new(std::slice::from_ref(&ids))?, &Hooks::new().cache_all())?;
    let cache = out.cache.at_positions(&[ids.len() - 1])?; // the last position only
    let heads = cache.stack_head_results(&model, None, true, false)?; // through the frozen final norm
    let (mary, john) = (model.answer_token(" Mary")?, model.answer_token(" John")?);
    let direct = cache.logit_attrs(&model, &heads, mary, Some(john))?.flatten_all()?.to_vec1::<f32>()?;
    let best = (0..direct.len()).max_by(|&a, &b| direct[a].total_cmp(&direct[b])).unwrap_or(0);
    println!("tokens: {:?}", model.to_str_tokens(&ids));
    println!("largest direct effect on logit(Mary) - logit(John): {} = {:.3}", heads.labels[best], direct[best]);

    // 2. A method: one input, one option struct, any metric.
    let contrast = Contrast::new(&model, prompt, " Mary", " John", None)?;
    let opts = AttributionOptions { method: Method::IntegratedGradients, n_steps: 16, metric: Metric::Kl { position: Position::Last }, ..Default::default() };
    let attr = attribute(&model, &contrast, &opts)?;
    println!("IG attribution of KL(clean || run), top head: {} {:.4}", attr.top[0].name, attr.top[0].score);
    let custom = Metric::custom(move |out| {
        // p(" Mary") + p(" John") at the last position, one value per prompt.
        let probs = candle_nn_free_softmax(&out.last_logits()?)?;
        Ok((probs.narrow(1, mary as usize, 1)? + probs.narrow(1, john as usize, 1)?)?.squeeze(1)?)
    });
    let patched = exact_patching(&model, &contrast, &PatchingOptions { metric: custom, ..Default::default() })?;
    println!("exact patching with a closure metric: clean {:.4}, corrupted {:.4}", patched.base_ld, patched.source_ld);

    // 3. A closure hook: zero-ablate head 9.6, as TransformerLens' fwd_hooks would.
    let ablate = Hooks::new().hook(HookPoint::Z(9), |z, _point| {
        let mut mask = vec![1f32; z.dim(2)?];
        mask[6] = 0.0;
        let mask = candle_core::Tensor::from_vec(mask, (1, 1, z.dim(2)?, 1), z.device())?;
        Ok(z.broadcast_mul(&mask)?)
    });
    let ablated = model.forward(&Batch::new(std::slice::from_ref(&ids))?, &ablate)?;
    println!(
        "logit difference {:.3} -> {:.3} with L9H6 ablated",
        out.logit_diff(&[mary], &[john])?.to_vec1::<f32>()?[0],
        ablated.logit_diff(&[mary], &[john])?.to_vec1::<f32>()?[0]
    );

    // 4. Generation with the key/value cache: greedy, then sampled with a seed.
    let greedy = model.generate("The capital of France is", &GenerateOptions { max_new_tokens: 12, ..Default::default() }, &Hooks::new())?;
    println!("greedy : The capital of France is{}", greedy.text.replace('\n', "\\n"));
    let sampling = Sampling::Sample { temperature: 0.8, top_k: Some(40), top_p: Some(0.95), seed: 1 };
    let sampled = model.generate("The capital of France is", &GenerateOptions { max_new_tokens: 12, sampling, ..Default::default() }, &Hooks::new())?;
    println!("sampled: The capital of France is{}", sampled.text.replace('\n', "\\n"));
    Ok(())
}

/// Softmax over the last axis with candle's core ops.
fn candle_nn_free_softmax(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(candle_core::D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1)?)
}
