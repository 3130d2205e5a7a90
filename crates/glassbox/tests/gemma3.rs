//! Gemma 3 270M from its Q4_K_M GGUF (four Python packages joined in order) against
//! `transformers` loading the same file with token ids from llama.cpp's tokenizer rule
//! (reference recorded by `scripts/make_fixtures.py`; see shared NOTES on why not the ids of
//! `transformers`' own GGUF tokenizer).

mod common;

use std::sync::OnceLock;

use candle_core::DType;
use common::{fixtures, Reference};
use glassbox::methods::analyze::{analyze, AnalyzeOptions};
use glassbox::methods::Contrast;
use glassbox::{registry, Hooks, Model};

fn gemma3() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = registry::resolve("gemma3-270m", &mut |m| eprintln!("{m}")).expect("pulling gemma3-270m");
        Model::load(&path).expect("loading Gemma 3")
    })
}

const IOI: &str = "When Mary and John went to the store, John gave a drink to";

#[test]
fn config_and_tokenizer() {
    let m = gemma3();
    let c = &m.config();
    assert_eq!((c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_model, c.d_mlp, c.d_vocab), (18, 4, 1, 256, 640, 2048, 262_144));
    let globals: Vec<usize> = (0..18).filter(|&l| c.layers[l].sliding_window.is_none()).collect();
    assert_eq!(globals, vec![5, 11, 17]);
    assert_eq!(c.layers[5].rope_base, 1_000_000.0);
    assert_eq!(c.layers[0].rope_base, 10_000.0);
    let reference = Reference::load(fixtures().join("gemma3/reference.safetensors"));
    reference.assert_tokenizes_prompts(m);
    assert_eq!(m.tokenize(IOI).unwrap(), vec![2, 4420, 8712, 532, 3415, 3939, 531, 506, 4762, 236764, 3415, 5877, 496, 6092, 531]);
    assert_eq!(m.answer_token(" Mary").unwrap(), 8712);
}

#[test]
fn last_logits_match_transformers() {
    let m = gemma3();
    let reference = Reference::load(fixtures().join("gemma3/reference.safetensors"));
    reference.assert_last_logits_match(m, &Hooks::new().last_logits_only());
    let out = m.forward(&m.batch(&[IOI]).unwrap(), &Hooks::new().last_logits_only()).unwrap();
    let ld = out.logit_diff(&[8712], &[3415]).unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()[0];
    assert!((ld - 5.2201).abs() < 1e-3, "{ld}");
}

#[test]
fn analyze_runs_on_gemma3() {
    let m = gemma3();
    let c = Contrast::new(m, IOI, " Mary", " John", None).unwrap();
    let a = analyze(m, &c, &AnalyzeOptions::default()).unwrap();
    eprintln!("gemma3 circuit {:?} {:?}", a.circuit.iter().map(|h| h.to_string()).collect::<Vec<_>>(), a.faithfulness);
    assert!(!a.circuit.is_empty());
    assert!(a.faithfulness.sufficiency.is_finite() && a.faithfulness.comprehensiveness.is_finite());
}

/// SentencePiece merges run through a priority queue (issue 12: the old loop rescanned every
/// pair per merge and took 42 s on 32,000 characters): 40,000 characters of varied text
/// tokenize, spell the text back exactly, and an overlong text is refused by its length in
/// characters before any work.
#[test]
fn long_text_tokenizes_in_linearithmic_time() {
    let m = gemma3();
    let words = ["When", " Mary", " and", " John", " went", " to", " the", " store,", " über", " naïve", " 東京", " 🙂", "\n", " 1984", " x"];
    let mut text = String::new();
    let mut i = 0usize;
    while text.chars().count() < 40_000 {
        text.push_str(words[(i * 7 + i / 3) % words.len()]);
        i += 1;
    }
    let ids = m.tokenize(&text).unwrap();
    assert!(ids.len() > 5_000 && ids.len() < m.config().n_ctx, "{}", ids.len());
    let spelled: String = ids[1..].iter().map(|&t| m.tokenizer().token_str(t)).collect();
    assert_eq!(spelled, text);
    let e = m.tokenize(&"a".repeat((1 << 20) - 1)).unwrap_err();
    assert!(matches!(e, glassbox::Error::PromptTooLong { .. }), "{e}");
}

/// The Q5_0, Q8_0, Q4_K and Q6_K matrices of the file (and the Q8_0 tied embedding) stay
/// quantized, and the logits and the gradients at every layer's `hook_z` equal, bit for bit,
/// those of the same model with every matrix dequantized to f32 (candle's dequantization).
/// The weights then take about the file's size in memory.
#[test]
fn quantized_weights_give_the_f32_figures_bit_for_bit() {
    let model = gemma3();
    if !glassbox::model::kernels_available() {
        assert_eq!(model.quantized_matrices(), 0);
        return;
    }
    assert_eq!(model.quantized_matrices(), 7 * model.config().n_layers + 1);
    let file = std::fs::metadata(registry::resolve("gemma3-270m", &mut |_| {}).unwrap()).unwrap().len() as f64;
    let held = model.weights().memory_bytes() as f64;
    assert!(held < 1.1 * file, "weights hold {held} bytes for a file of {file}");
    common::assert_quantized_equals_dense(model, &[IOI]);
}
