//! Generation (issue 13): the key/value cache gives the logits of a full recompute on every
//! family, greedy decoding on the real models gives `transformers`' tokens (recorded by
//! `scripts/make_fixtures.py --only generation`), sampling is reproducible by seed, hooks act
//! at every step, and bad options are refused.

mod common;

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use common::{fixtures, load_tiny, max_abs_diff};
use glassbox::{registry, Action, Batch, GenerateOptions, HookPoint, Hooks, Intervention, KvCache, Model, Sampling, Start, StopReason};

const IOI: &str = "When Mary and John went to the store, John gave a drink to";
const FAMILIES: &[&str] = &[
    "tiny-gpt2", "tiny-llama", "tiny-llama-tied", "tiny-qwen2", "tiny-mistral", "tiny-mixtral", "tiny-neox", "tiny-opt", "tiny-opt-postln",
    "tiny-gptneo", "tiny-gemma", "tiny-gemma2", "tiny-gemma3", "tiny-qwen3", "tiny-qwen3-moe", "tiny-qwen2-moe", "tiny-phi3", "tiny-olmo2",
];

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions { max_new_tokens: n, stop_at_eos: false, ..GenerateOptions::default() }
}

/// The logits of `ids` run whole, and run as a prefix followed by pieces against the cache.
fn whole_and_pieces(model: &Model, ids: &[u32], cuts: &[usize], hooks: &Hooks) -> (Tensor, Tensor) {
    let whole = model.forward(&Batch::new(&[ids.to_vec()]).unwrap(), hooks).unwrap().logits.squeeze(0).unwrap();
    let mut cache = KvCache::new();
    let mut parts = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&ids.len()]) {
        let batch = Batch::new(&[ids[start..end].to_vec()]).unwrap();
        let out = model.forward_from(Start::Continue { batch: &batch, cache: &mut cache }, hooks).unwrap();
        parts.push(out.logits.squeeze(0).unwrap());
        start = end;
        assert_eq!(cache.len(), end);
    }
    (whole, Tensor::cat(&parts, 0).unwrap())
}

#[test]
fn kv_cache_gives_the_logits_of_a_full_recompute_on_every_family() {
    for name in FAMILIES {
        let model = load_tiny(name);
        let ids = model.tokenize(IOI).unwrap();
        let n = ids.len();
        // A prefix, single tokens, then a chunk of three: every path through the cache.
        let cuts = [n - 6, n - 5, n - 4, n - 3];
        let (whole, pieces) = whole_and_pieces(&model, &ids, &cuts, &Hooks::new());
        let d = max_abs_diff(&whole, &pieces);
        assert!(d <= 1e-4, "{name}: cached logits differ from a full recompute by {d:e}");

        // A steering hook acts the same on cached and whole runs.
        // Not constant: a LayerNorm removes a constant shift.
        let d = model.config().d_model;
        let v = Tensor::from_vec((0..d).map(|i| if i % 3 == 0 { 1.0f32 } else { -0.5 }).collect(), d, &Device::Cpu).unwrap();
        let hooks = Hooks::new().intervene(Intervention::new(HookPoint::ResidPre(1), Action::Add(v)));
        let (whole_h, pieces_h) = whole_and_pieces(&model, &ids, &cuts, &hooks);
        let d = max_abs_diff(&whole_h, &pieces_h);
        assert!(d <= 1e-4, "{name}: steered cached logits differ by {d:e}");
        assert!(max_abs_diff(&whole, &whole_h) > 1e-3, "{name}: the steering hook changed nothing");
    }
}

#[test]
fn sliding_window_is_kept_across_the_cache() {
    // tiny-mistral and tiny-gemma2/3 have windows shorter than the IOI prompt: a long
    // continuation crosses them one token at a time.
    for name in ["tiny-mistral", "tiny-gemma2", "tiny-gemma3"] {
        let model = load_tiny(name);
        let window = model.config().layers.iter().filter_map(|l| l.sliding_window).min().expect("a sliding window");
        let mut ids = model.tokenize(IOI).unwrap();
        while ids.len() < window + 8 {
            ids.extend_from_within(1..ids.len().min(8));
        }
        let cuts: Vec<usize> = (2..ids.len()).collect();
        let (whole, pieces) = whole_and_pieces(&model, &ids, &cuts, &Hooks::new());
        let d = max_abs_diff(&whole, &pieces);
        assert!(d <= 1e-4, "{name} (window {window}, {} tokens): {d:e}", ids.len());
    }
}

#[test]
fn greedy_generation_equals_a_loop_of_full_forwards() {
    for name in ["tiny-gpt2", "tiny-llama", "tiny-gemma3", "tiny-mixtral"] {
        let model = load_tiny(name);
        let g = model.generate(IOI, &greedy(12), &Hooks::new()).unwrap();
        assert_eq!(g.stop, StopReason::MaxNewTokens);
        let mut seq = model.tokenize(IOI).unwrap();
        assert_eq!(g.prompt_tokens, seq);
        for (step, &tok) in g.tokens.iter().enumerate() {
            let out = model.forward(&Batch::new(std::slice::from_ref(&seq)).unwrap(), &Hooks::new()).unwrap();
            let last: Vec<f32> = out.last_logits().unwrap().squeeze(0).unwrap().to_vec1().unwrap();
            let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
            assert_eq!(tok as usize, best, "{name}: step {step}");
            let log_z = last.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            assert!((g.logprobs[step] as f64 - (last[best] as f64 - log_z)).abs() < 1e-4, "{name}: logprob at step {step}");
            seq.push(tok);
        }
        assert_eq!(g.text, model.to_string(&g.tokens));
    }
}

fn generation_fixture(model: &Model, file: &str) {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("generation").join(file)).unwrap()).unwrap();
    let n = doc["max_new_tokens"].as_u64().unwrap() as usize;
    for run in doc["runs"].as_array().unwrap() {
        let ids: Vec<u32> = run["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = run["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let prompt = run["prompt"].as_str().unwrap();
        assert_eq!(model.tokenize(prompt).unwrap(), ids, "{file}: tokens of {prompt:?}");
        let g = model.generate_from_tokens(&ids, &greedy(n), &Hooks::new()).unwrap();
        assert_eq!(g.tokens, want, "{file}: greedy continuation of {prompt:?} ({:?})", g.text);
    }
}

#[test]
fn greedy_generation_matches_transformers_on_smollm2() {
    static MODEL: OnceLock<Model> = OnceLock::new();
    let model = MODEL.get_or_init(|| {
        Model::load(&registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}")).unwrap()).unwrap()
    });
    generation_fixture(model, "smollm2.json");
    // SmolLM2's GGUF names <|im_end|> (2) as its end of sequence.
    assert!(model.tokenizer().eos_tokens().contains(&2), "{:?}", model.tokenizer().eos_tokens());
}

#[test]
fn greedy_generation_matches_transformers_on_gemma3() {
    let model = Model::load(&registry::resolve("gemma3-270m", &mut |m| eprintln!("{m}")).unwrap()).unwrap();
    generation_fixture(&model, "gemma3.json");
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let model = load_tiny("tiny-llama");
    let sample = |seed| GenerateOptions {
        max_new_tokens: 16,
        sampling: Sampling::Sample { temperature: 1.5, top_k: Some(50), top_p: Some(0.95), seed },
        stop_at_eos: false,
        ..GenerateOptions::default()
    };
    let a = model.generate(IOI, &sample(7), &Hooks::new()).unwrap();
    let b = model.generate(IOI, &sample(7), &Hooks::new()).unwrap();
    let c = model.generate(IOI, &sample(8), &Hooks::new()).unwrap();
    assert_eq!((&a.tokens, &a.logprobs, &a.text), (&b.tokens, &b.logprobs, &b.text));
    assert_ne!(a.tokens, c.tokens, "two seeds gave the same 16 tokens");
    let g = model.generate(IOI, &greedy(16), &Hooks::new()).unwrap();
    assert_ne!(a.tokens, g.tokens, "sampling at temperature 1.5 gave the greedy tokens");
    // top_k 1 is greedy whatever the seed and temperature.
    let k1 = GenerateOptions { sampling: Sampling::Sample { temperature: 3.0, top_k: Some(1), top_p: None, seed: 1 }, ..greedy(16) };
    assert_eq!(model.generate(IOI, &k1, &Hooks::new()).unwrap().tokens, g.tokens);
}

#[test]
fn generation_stops_at_stop_tokens_and_the_context() {
    let model = load_tiny("tiny-gpt2");
    let g = model.generate(IOI, &greedy(10), &Hooks::new()).unwrap();
    let stop = g.tokens[3];
    let first = g.tokens.iter().position(|&t| t == stop).unwrap();
    let opts = GenerateOptions { stop_tokens: vec![stop], ..greedy(10) };
    let s = model.generate(IOI, &opts, &Hooks::new()).unwrap();
    assert_eq!(s.stop, StopReason::StopToken(stop));
    assert_eq!(s.tokens, g.tokens[..=first]);

    // A prompt near the end of the context: generation stops when the context is full.
    let n_ctx = model.config().n_ctx;
    let ids: Vec<u32> = model.tokenize(IOI).unwrap().into_iter().cycle().take(n_ctx - 3).collect();
    let full = model.generate_from_tokens(&ids, &greedy(100), &Hooks::new()).unwrap();
    assert_eq!(full.stop, StopReason::ContextFull);
    assert_eq!(full.tokens.len(), 4, "a context of {n_ctx} holds a prompt of {} and 3 more, and gives a 4th", n_ctx - 3);
}

#[test]
fn bad_generation_arguments_are_refused() {
    let model = load_tiny("tiny-llama");
    let err = |opts: GenerateOptions, hooks: Hooks| model.generate(IOI, &opts, &hooks).unwrap_err().to_string();
    let sample = |temperature, top_k, top_p| GenerateOptions { sampling: Sampling::Sample { temperature, top_k, top_p, seed: 0 }, ..greedy(4) };
    assert!(err(greedy(0), Hooks::new()).contains("max_new_tokens is 0"));
    assert!(err(sample(0.0, None, None), Hooks::new()).contains("temperature is 0"));
    assert!(err(sample(f32::NAN, None, None), Hooks::new()).contains("temperature is NaN"));
    assert!(err(sample(1.0, Some(0), None), Hooks::new()).contains("top_k is 0"));
    assert!(err(sample(1.0, None, Some(0.0)), Hooks::new()).contains("top_p is 0"));
    assert!(err(sample(1.0, None, Some(1.5)), Hooks::new()).contains("top_p is 1.5"));
    let at_pos = Hooks::new().intervene(Intervention::new(HookPoint::ResidPre(0), Action::Zero).positions(vec![0]));
    assert!(err(greedy(4), at_pos).contains("position"));
    assert!(err(greedy(4), Hooks::new().logits_for(&[1, 2])).contains("logits_for"));
    assert!(model.generate("", &greedy(4), &Hooks::new()).is_err());
    let vocab = model.config().d_vocab as u32;
    assert!(model.generate_from_tokens(&[1, vocab], &greedy(4), &Hooks::new()).unwrap_err().to_string().contains("outside the vocabulary"));
    let long: Vec<u32> = vec![1; model.config().n_ctx + 1];
    assert!(model.generate_from_tokens(&long, &greedy(4), &Hooks::new()).is_err());
}

#[test]
fn steering_vector_is_the_difference_of_mean_activations() {
    use glassbox::methods::steering::{load_steering_vector, mean_activation, steering_hooks, steering_vector};
    let model = load_tiny("tiny-llama");
    let point = HookPoint::ResidPre(1);
    // By hand: the cached activation averaged over the positions after BOS.
    let mean_by_hand = |text: &str| {
        let ids = model.tokenize(text).unwrap();
        let skip = usize::from(model.tokenizer().bos() == Some(ids[0]));
        let out = model.forward(&Batch::new(std::slice::from_ref(&ids)).unwrap(), &Hooks::new().cache([point])).unwrap();
        let a: Vec<Vec<f32>> = out.cache.get(point).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let n = (ids.len() - skip) as f32;
        (0..model.config().d_model).map(|j| a[skip..].iter().map(|r| r[j]).sum::<f32>() / n).collect::<Vec<f32>>()
    };
    let got: Vec<f32> = mean_activation(&model, point, "I love it here").unwrap().to_vec1().unwrap();
    let want = mean_by_hand("I love it here");
    assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
    let v = steering_vector(&model, point, "I love it here", "I hate it there").unwrap();
    let want2 = mean_by_hand("I hate it there");
    let got_v: Vec<f32> = v.to_vec1().unwrap();
    assert!(got_v.iter().zip(want.iter().zip(&want2)).all(|(g, (a, b))| (g - (a - b)).abs() < 1e-5));

    // Scale 0 is no steering; a scale moves generation off the unsteered tokens.
    let plain = model.generate(IOI, &greedy(8), &Hooks::new()).unwrap();
    let zero = model.generate(IOI, &greedy(8), &steering_hooks(&model, point, &v, 0.0).unwrap()).unwrap();
    assert_eq!((plain.tokens, plain.logprobs), (zero.tokens.clone(), zero.logprobs));
    let strong = model.generate(IOI, &greedy(8), &steering_hooks(&model, point, &v, 50.0).unwrap()).unwrap();
    assert_ne!(zero.tokens, strong.tokens);
    assert!(steering_hooks(&model, point, &v, f32::NAN).is_err());
    assert!(steering_hooks(&model, HookPoint::ResidPre(99), &v, 1.0).is_err());

    // A file: one tensor, or several with one named after the hook; NaN and junk refused.
    let dir = common::scratch("steering");
    let one = dir.join("one.safetensors");
    candle_core::safetensors::save(&std::collections::HashMap::from([("v".to_string(), v.clone())]), &one).unwrap();
    assert_eq!(load_steering_vector(&one, point).unwrap().to_vec1::<f32>().unwrap(), got_v);
    let two = dir.join("two.safetensors");
    let named = std::collections::HashMap::from([(point.to_string(), v.clone()), ("other".to_string(), v.clone())]);
    candle_core::safetensors::save(&named, &two).unwrap();
    assert!(load_steering_vector(&two, point).is_ok());
    assert!(load_steering_vector(&two, HookPoint::ResidPre(0)).unwrap_err().to_string().contains("none is named"));
    let nan = dir.join("nan.safetensors");
    let bad = Tensor::from_vec(vec![f32::NAN; 4], 4, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("v".to_string(), bad)]), &nan).unwrap();
    assert!(load_steering_vector(&nan, point).unwrap_err().to_string().contains("NaN"));
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
    assert!(load_steering_vector(&junk, point).is_err());
}

#[test]
fn hooks_cache_at_every_step_of_a_generation() {
    let model = load_tiny("tiny-qwen2");
    let points = [HookPoint::ResidPost(1), HookPoint::Pattern(0)];
    let g = model.generate(IOI, &greedy(5), &Hooks::new().cache(points)).unwrap();
    let n = g.prompt_tokens.len();
    assert_eq!(g.caches.len(), 5, "the prompt's run and a run per generated token but the last");
    // Together the steps' residuals are the full sequence's, and each step's pattern row is the
    // full run's row at that position.
    let mut seq = g.prompt_tokens.clone();
    seq.extend_from_slice(&g.tokens[..4]);
    let full = model.forward(&Batch::new(&[seq]).unwrap(), &Hooks::new().cache(points)).unwrap();
    let resid: Vec<Tensor> = g.caches.iter().map(|c| c.get(HookPoint::ResidPost(1)).unwrap().clone()).collect();
    let d = max_abs_diff(&Tensor::cat(&resid, 1).unwrap(), full.cache.get(HookPoint::ResidPost(1)).unwrap());
    assert!(d <= 1e-4, "{d:e}");
    let full_pattern = full.cache.get(HookPoint::Pattern(0)).unwrap();
    for (step, c) in g.caches.iter().enumerate().skip(1) {
        let p = c.get(HookPoint::Pattern(0)).unwrap();
        let pos = n + step - 1;
        assert_eq!(p.dims()[2..], [1, pos + 1]);
        let want = full_pattern.narrow(2, pos, 1).unwrap().narrow(3, 0, pos + 1).unwrap();
        assert!(max_abs_diff(p, &want) <= 1e-5, "step {step}");
    }
    assert!(model.generate(IOI, &greedy(5), &Hooks::new()).unwrap().caches.is_empty());
}
