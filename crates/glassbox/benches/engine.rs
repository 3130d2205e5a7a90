//! Engine benchmark on SmolLM2-135M (the default model) with the 15-token IOI prompt:
//! model load, one forward, forward + backward to all `hook_z` taps, a batch of 8 prompts,
//! generation with and without the key/value cache, and peak memory. Run: `cargo bench -p glassbox --bench engine`.

mod common;

use common::*;
use glassbox::{Batch, GenerateOptions, HookPoint, Hooks, Model};

const PROMPTS: [&str; 8] = [
    IOI,
    "When Alice and Bob entered the room, Bob handed the key to",
    "After Tom and Anna left the party, Anna gave a ride to",
    "When Sarah and Mike arrived at the office, Mike sent an email to",
    "While Emma and David were at the park, David threw the ball to",
    "When Lisa and Mark sat down for dinner, Mark passed the salt to",
    "After Kate and Paul finished the game, Paul gave the prize to",
    "When Laura and James visited the museum, James showed the map to",
];

fn main() {
    for (k, v) in glassbox::threads::candle_env() {
        // Sound here: no other thread has started yet.
        std::env::set_var(k, v);
    }
    glassbox::threads::tune_allocator();
    let path = default_model_path();
    let rss_start = peak_rss_mb();
    let load = median_secs(3, || {
        let m = Model::load(&path).unwrap();
        std::hint::black_box(&m);
    });
    let model = Model::load(&path).unwrap();
    let rss_loaded = peak_rss_mb();

    let batch = model.batch(&[IOI]).unwrap();
    let mary = model.answer_token(" Mary").unwrap();
    let john = model.answer_token(" John").unwrap();
    let forward = median_secs(20, || {
        std::hint::black_box(model.forward(&batch, &Hooks::new()).unwrap());
    });
    let taps: Vec<HookPoint> = (0..model.config().n_layers).map(HookPoint::Z).collect();
    let fwd_bwd = median_secs(10, || {
        let out = model.forward(&batch, &Hooks::new().grad_tap(taps.iter().copied())).unwrap();
        let ld = out.logit_diff(&[mary], &[john]).unwrap().sum_all().unwrap();
        std::hint::black_box(out.backward(&ld).unwrap());
    });
    let batch8: Batch = model.batch(&PROMPTS).unwrap();
    let forward8 = median_secs(10, || {
        std::hint::black_box(model.forward(&batch8, &Hooks::new()).unwrap());
    });
    let cache_all = median_secs(10, || {
        std::hint::black_box(model.forward(&batch, &Hooks::new().cache_all()).unwrap());
    });
    // 32 greedy tokens after the IOI prompt: with the key/value cache, and recomputing the
    // whole sequence at every step (what a loop of forwards without a cache does).
    const NEW: usize = 32;
    let opts = GenerateOptions { max_new_tokens: NEW, stop_at_eos: false, ..GenerateOptions::default() };
    let generate = median_secs(3, || {
        std::hint::black_box(model.generate(IOI, &opts, &Hooks::new()).unwrap());
    });
    let recompute = median_secs(3, || {
        let mut ids = model.tokenize(IOI).unwrap();
        for _ in 0..NEW {
            let out = model.forward(&Batch::new(std::slice::from_ref(&ids)).unwrap(), &Hooks::new().last_logits_only()).unwrap();
            let last: Vec<f32> = out.last_logits().unwrap().squeeze(0).unwrap().to_vec1().unwrap();
            ids.push((0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32);
        }
        std::hint::black_box(ids);
    });

    let weights_mb = model.weights().memory_bytes() as f64 / 1e6;
    println!(
        "SmolLM2-135M-Instruct (Q4_1 GGUF; weights held in {weights_mb:.0} MB, {} matrices quantized), IOI prompt ({} tokens), {} threads",
        model.quantized_matrices(),
        batch.n_pos(),
        rayon_threads()
    );
    println!("| {:<58} | {:>13} |", "what", "median");
    println!("|{}|{}|", "-".repeat(60), "-".repeat(15));
    row("load GGUF + tokenizer", load);
    row("forward (1 prompt)", forward);
    row("forward + backward to all 30 hook_z taps", fwd_bwd);
    row(&format!("forward, batch of 8 prompts (padded to {})", batch8.n_pos()), forward8);
    row("forward caching every hook point", cache_all);
    row(&format!("generate {NEW} tokens, greedy, key/value cache"), generate);
    row(&format!("{NEW} tokens recomputing the sequence each step"), recompute);
    println!("| {:<58} | {:>10.1} /s |", "generated tokens per second (key/value cache)", NEW as f64 / generate);
    println!("| {:<58} | {:>10.2} x  |", "forward+backward / forward", fwd_bwd / forward);
    println!("| {:<58} | {:>10.0} MB |", "peak RSS before loading", rss_start);
    println!("| {:<58} | {:>10.0} MB |", "peak RSS after one load", rss_loaded);
    println!("| {:<58} | {:>10.0} MB |", "peak RSS at the end (3 more loads, all runs)", peak_rss_mb());
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
