//! Runs one method in a loop on the default model (for profilers):
//! `profile_method taylor|ig|analyze|patching|eap N [PREFIX_FILE]` (a file's text put before
//! the IOI prompt makes a long prompt).
use glassbox::methods::analyze::{analyze, AnalyzeOptions};
use glassbox::methods::attribution::{attribute, AttributionOptions, Method};
use glassbox::methods::edges::{edge_attribution, EdgeOptions};
use glassbox::methods::patching::{exact_patching, PatchingOptions};
use glassbox::methods::Contrast;
use glassbox::{registry, Model};
fn main() {
    for (k, v) in glassbox::threads::candle_env() {
        // Sound here: no other thread has started yet.
        std::env::set_var(k, v);
    }
    glassbox::threads::tune_allocator();
    let path = registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}")).unwrap();
    let model = Model::load(&path).unwrap();
    let which = std::env::args().nth(1).unwrap_or_else(|| "taylor".into());
    let n: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let prefix = std::env::args().nth(3).map(|f| std::fs::read_to_string(f).unwrap() + " ").unwrap_or_default();
    let prompt = prefix + "When Mary and John went to the store, John gave a drink to";
    let c = Contrast::new(&model, &prompt, " Mary", " John", None).unwrap();
    let method = if which == "ig" { Method::IntegratedGradients } else { Method::Taylor };
    let opts = AttributionOptions { method, ..Default::default() };
    let t = std::time::Instant::now();
    for _ in 0..n {
        match which.as_str() {
            "analyze" => drop(std::hint::black_box(analyze(&model, &c, &AnalyzeOptions::default()).unwrap())),
            "patching" => drop(std::hint::black_box(exact_patching(&model, &c, &PatchingOptions::default()).unwrap())),
            "eap" => drop(std::hint::black_box(edge_attribution(&model, &c, &EdgeOptions::default()).unwrap())),
            _ => drop(std::hint::black_box(attribute(&model, &c, &opts).unwrap())),
        }
    }
    eprintln!("{:.1} ms per call", t.elapsed().as_secs_f64() * 1e3 / n as f64);
}
