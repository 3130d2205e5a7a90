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
        // SAFETY-free in edition 2021, and sound here: no other thread has started yet.
        std::env::set_var(k, v);
    }
    let model = load_default();
    let contrast = Contrast::new(&model, IOI, " Mary", " John", None).unwrap();
    let (c, i) = (contrast.correct_id, contrast.incorrect_id);
    let tokens = contrast.clean.clone();
    println!("SmolLM2-135M-Instruct, IOI prompt ({} tokens), name-swap corruption", tokens.len());
    println!("| {:<58} | {:>13} |", "method", "median");
    println!("|{}|{}|", "-".repeat(60), "-".repeat(15));
    let t = median_secs(7, || {
        attribute(&model, &contrast, Component::Heads, Method::Taylor, 0).unwrap();
    });
    row("attribution patching (Taylor), all 270 heads", t);
    let t = median_secs(3, || {
        attribute(&model, &contrast, Component::Heads, Method::IntegratedGradients, 20).unwrap();
    });
    row("integrated gradients, 20 steps, all heads", t);
    let t = median_secs(2, || {
        attribute(&model, &contrast, Component::Heads, Method::IntegratedGradients, 50).unwrap();
    });
    row("integrated gradients, 50 steps, all heads", t);
    let t = median_secs(5, || {
        attribute(&model, &contrast, Component::Mlp, Method::Taylor, 0).unwrap();
    });
    row("MLP attribution (Taylor), 30 layers", t);
    let t = median_secs(7, || {
        logit_lens(&model, &tokens, c, i, 5).unwrap();
    });
    row("logit lens + direct effects + top-5 per layer", t);
    let t = median_secs(5, || {
        edge_attribution(&model, &contrast, Method::Taylor, 0, 50).unwrap();
    });
    row("edge attribution patching (EAP), 70 651 edges", t);
    let t = median_secs(2, || {
        edge_attribution(&model, &contrast, Method::IntegratedGradients, 20, 50).unwrap();
    });
    row("EAP-IG, 20 steps", t);
    let t = median_secs(7, || {
        token_attribution(&model, &tokens, c, i, None).unwrap();
    });
    row("token attribution (gradient x input)", t);
    let t = median_secs(3, || {
        token_attribution(&model, &tokens, c, i, Some((20, Baseline::Token(1)))).unwrap();
    });
    row("token attribution (integrated gradients, 20 steps)", t);
    let t = median_secs(5, || {
        attention_patterns(&model, &tokens, None, 10, 0).unwrap();
    });
    row("attention patterns + head typing (all heads, 2 runs)", t);
    let t = median_secs(5, || {
        analyze(&model, &contrast, &AnalyzeOptions::default()).unwrap();
    });
    row("analyze (Taylor + minimum faithful circuit, exact figures)", t);
    let t = median_secs(2, || {
        exact_patching(&model, &contrast, Direction::IntoClean).unwrap();
    });
    row("exact activation patching, 270 heads + 30 MLPs", t);
    let t = median_secs(2, || {
        path_patching(&model, &contrast, PathReceiver::Q(Head { layer: 23, head: 3 }), None).unwrap();
    });
    row("path patching, 207 senders -> L23H03 query", t);
    let t = median_secs(2, || {
        attribution_stability(&model, &tokens, c, i, 25, 0.3, 42, &mut |_, _| {}).unwrap();
    });
    row("attribution stability, 25 corruptions", t);
}
