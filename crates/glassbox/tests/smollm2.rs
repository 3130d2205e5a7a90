//! The default model, SmolLM2-135M-Instruct from its Q4_1 GGUF, against `transformers` loading
//! the same file (reference recorded by `scripts/make_fixtures.py`). The model is pulled into
//! the cache on first use (`glassbox models pull smollm2-135m`).

mod common;

use std::sync::OnceLock;

use candle_core::{DType, D};
use common::{fixtures, Reference};
use glassbox::{registry, Hooks, Model};

pub fn smollm2() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}"))
            .expect("pulling the default model");
        Model::load(&path).expect("loading SmolLM2")
    })
}

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

#[test]
fn config_read_from_gguf_metadata() {
    let c = &smollm2().config();
    assert_eq!(
        (c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_model, c.d_vocab),
        (30, 9, 3, 64, 576, 49152)
    );
    assert_eq!(c.layers[0].rope_base, 100_000.0);
    assert!(c.tied_embeddings);
}

#[test]
fn tokenizes_like_transformers() {
    let model = smollm2();
    let reference = Reference::load(fixtures().join("smollm2/reference.safetensors"));
    reference.assert_tokenizes_prompts(model);
    let ids = model.tokenize(IOI).unwrap();
    assert_eq!(ids.len(), 15);
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(model.answer_token(" Mary").unwrap(), 5099);
    assert_eq!(model.answer_token(" John").unwrap(), 2322);
}

#[test]
fn last_logits_match_transformers() {
    let model = smollm2();
    let reference = Reference::load(fixtures().join("smollm2/reference.safetensors"));
    reference.assert_last_logits_match(model, &Hooks::new());
}

#[test]
fn ioi_prefers_mary_by_the_reference_margin() {
    let model = smollm2();
    let reference = Reference::load(fixtures().join("smollm2/reference.safetensors"));
    let (mary, john) = (5099usize, 2322usize);
    let theirs = reference.get("p0.last_logits").to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let reference_ld = theirs[mary] - theirs[john];
    assert!((reference_ld - 5.2873).abs() < 1e-3, "fixture LD {reference_ld}");

    let batch = model.batch(&[IOI]).unwrap();
    let out = model.forward(&batch, &Hooks::new()).unwrap();
    let ld = out.logit_diff(&[mary as u32], &[john as u32]).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
    assert!((ld - reference_ld).abs() <= 1e-3, "LD {ld} vs transformers {reference_ld}");
    let top = out.last_logits().unwrap().argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0];
    assert_eq!(model.tokenizer().token_str(top), " Mary");
}

/// Every linear weight of the GGUF (Q4_1) and the tied embedding (Q8_0) stay quantized; running
/// on the blocks gives the same logits and gradients, bit for bit, as running on the f32
/// weights they dequantize to, through the unembedding's backward too. On the portable path
/// (no kernels to stream the blocks) the loader dequantizes every weight.
#[test]
fn quantized_weights_give_the_f32_figures_bit_for_bit() {
    let model = smollm2();
    let expected = if glassbox::model::kernels_available() { 7 * model.config().n_layers + 1 } else { 0 };
    assert_eq!(model.quantized_matrices(), expected);
    common::assert_quantized_equals_dense(model, &[IOI, "The capital of France is"]);
}

/// The standard tasks on SmolLM2: every pair well formed (single-token answers, equal lengths),
/// and the share of prompts where the model gives the correct answer
/// a larger logit than the counterfactual's (printed; BENCHMARKS.md reports it). Arithmetic and
/// induction must be right on most prompts.
#[test]
fn smollm2_prefers_the_correct_answer_on_the_standard_tasks() {
    use glassbox::tasks::{generate, TaskSpec};
    let model = smollm2();
    for (task, must) in [("ioi", true), ("arithmetic", true), ("docstring", true), ("greater-than", true), ("induction", true), ("mcqa", false)] {
        let set = generate(model, &TaskSpec { task: task.into(), n: 32, seed: 0, corruption: None }).unwrap();
        for p in &set {
            let c = &p.contrast;
            c.check(model).unwrap();
            assert_eq!(c.clean.len(), c.corrupted.len(), "{task}");
            assert_eq!(model.tokenizer().encode_plain(&c.correct).unwrap(), vec![c.correct_id], "{task}: {:?} is one token", c.correct);
            assert_eq!(model.tokenizer().encode_plain(&c.incorrect).unwrap(), vec![c.incorrect_id], "{task}: {:?} is one token", c.incorrect);
        }
        let batch = glassbox::Batch::new(&set.iter().map(|p| p.contrast.clean.clone()).collect::<Vec<_>>()).unwrap();
        let logits = model.forward(&batch, &Hooks::default()).unwrap().last_logits().unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        let right = set.iter().zip(&logits).filter(|(p, l)| l[p.contrast.correct_id as usize] > l[p.contrast.incorrect_id as usize]).count();
        let share = right as f32 / set.len() as f32;
        eprintln!("{task}: SmolLM2 prefers the correct answer on {right} of {} prompts ({share:.2})", set.len());
        if must {
            assert!(share > 0.5, "{task}: {share}");
        }
    }
}
