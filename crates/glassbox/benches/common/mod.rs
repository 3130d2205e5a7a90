//! Timing helpers shared by the bench binaries: medians over repeated runs, peak memory.
#![allow(dead_code)]

use std::time::Instant;

use glassbox::{registry, Model};

/// Median wall time in seconds of `runs` calls of `f` (after one warm-up call).
pub fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Peak resident memory of this process so far (VmHWM), in MB.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn default_model_path() -> std::path::PathBuf {
    registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}")).expect("default model")
}

pub fn load_default() -> Model {
    Model::load(&default_model_path()).expect("loading the default model")
}

pub fn row(what: &str, secs: f64) {
    println!("| {what:<58} | {:>10.1} ms |", secs * 1e3);
}

pub const IOI: &str = "When Mary and John went to the store, John gave a drink to";
