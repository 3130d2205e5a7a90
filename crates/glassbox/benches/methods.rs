//! Every method on SmolLM2-135M with the IOI prompt (name-swap corruption), median wall time.
//! Run: `cargo bench -p glassbox --bench methods`.

mod common;

use common::*;
use glassbox::methods::attention::attention_patterns;
use glassbox::methods::attribution::{attribute, Component, Method};
use glassbox::methods::edges::edge_attribution;
use glassbox::methods::logit_lens::logit_lens;
use glassbox::methods::token_attribution::{token_attribution, Baseline};
use glassbox::methods::analyze::{analyze, AnalyzeOptions};
use glassbox::methods::path_patching::{path_patching, PathReceiver};
use glassbox::methods::patching::{exact_patching, Direction};
use glassbox::methods::stability::attribution_stability;
use glassbox::methods::{Contrast, Head};

fn main() {
    for (k, v) in glassbox::threads::candle_env() {
        // Sound here: no other thread has started yet.
        std::env::set_var(k, v);
    }
    glassbox::threads::tune_allocator();
    let model = load_default();
    let contrast = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let (c, i) = (contrast.correct_id, contrast.incorrect_id);
    let tokens = contrast.clean.clone();
    println!("SmolLM2-135M-Instruct, IOI prompt ({} tokens), name-swap corruption", tokens.len());
    println!("| {:<58} | {:>13} |", "method", "median");
    println!("|{}|{}|", "-".repeat(60), "-".repeat(15));
    let t = median_secs(7, || {
        attribute(&model, &contrast, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: Method::Taylor, metric: Default::default(), n_steps: 20 }).unwrap();
    });
    row("attribution patching (Taylor), all 270 heads", t);
    let t = median_secs(3, || {
        attribute(&model, &contrast, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 20, metric: Default::default() }).unwrap();
    });
    row("integrated gradients, 20 steps, all heads", t);
    let t = median_secs(2, || {
        attribute(&model, &contrast, &glassbox::methods::attribution::AttributionOptions { component: Component::Heads, method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 50, metric: Default::default() }).unwrap();
    });
    row("integrated gradients, 50 steps, all heads", t);
    let t = median_secs(5, || {
        attribute(&model, &contrast, &glassbox::methods::attribution::AttributionOptions { component: Component::Mlp, method: Method::Taylor, metric: Default::default(), n_steps: 20 }).unwrap();
    });
    row("MLP attribution (Taylor), 30 layers", t);
    let t = median_secs(7, || {
        logit_lens(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::logit_lens::LogitLensOptions { top_k: 5 }).unwrap();
    });
    row("logit lens + direct effects + top-5 per layer", t);
    let t = median_secs(5, || {
        edge_attribution(&model, &contrast, &glassbox::methods::edges::EdgeOptions { method: Method::Taylor, top_k: 50, ..Default::default() }).unwrap();
    });
    row("edge attribution patching (EAP), 70 651 edges", t);
    let t = median_secs(2, || {
        edge_attribution(&model, &contrast, &glassbox::methods::edges::EdgeOptions { method: glassbox::methods::attribution::Method::IntegratedGradients, n_steps: 20, top_k: 50, metric: Default::default() }).unwrap();
    });
    row("EAP-IG, 20 steps", t);
    let t = median_secs(7, || {
        token_attribution(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::token_attribution::TokenAttributionOptions { method: glassbox::methods::token_attribution::TokenMethod::GradientXInput, ..Default::default() }).unwrap();
    });
    row("token attribution (gradient x input)", t);
    let t = median_secs(3, || {
        token_attribution(&model, &glassbox::methods::Prompt { tokens: (tokens).to_vec(), correct: c, incorrect: i }, &glassbox::methods::token_attribution::TokenAttributionOptions { method: glassbox::methods::token_attribution::TokenMethod::IntegratedGradients, n_steps: 20, baseline: Baseline::Token(1) }).unwrap();
    });
    row("token attribution (integrated gradients, 20 steps)", t);
    let t = median_secs(5, || {
        attention_patterns(&model, &tokens, &glassbox::methods::attention::AttentionOptions { heads: None, top_k: 10, seed: 0 }).unwrap();
    });
    row("attention patterns + head typing (all heads, 2 runs)", t);
    let t = median_secs(5, || {
        analyze(&model, &contrast, &AnalyzeOptions::default()).unwrap();
    });
    row("analyze (Taylor + minimum faithful circuit, exact figures)", t);
    let t = median_secs(2, || {
        exact_patching(&model, &contrast, &glassbox::methods::patching::PatchingOptions { direction: Direction::IntoClean, metric: Default::default() }).unwrap();
    });
    row("exact activation patching, 270 heads + 30 MLPs", t);
    let t = median_secs(2, || {
        path_patching(&model, &contrast, &glassbox::methods::path_patching::PathPatchingOptions { receiver: PathReceiver::Q(Head { layer: 23, head: 3 }), senders: None, metric: Default::default() }).unwrap();
    });
    row("path patching, 207 senders -> L23H03 query", t);
    let t = median_secs(2, || {
        attribution_stability(&model, &glassbox::methods::Prompt { tokens: tokens.clone(), correct: c, incorrect: i }, &glassbox::methods::stability::StabilityOptions { n_corruptions: 25, p: 0.3, seed: 42 }).unwrap();
    });
    row("attribution stability, 25 corruptions", t);
}
