//! Runs the default model's forward on the IOI prompt in a loop (for profilers):
//! `profile_forward [N] [batch] [repeat]`.
use glassbox::{registry, Hooks, Model};
fn main() {
    for (k, v) in glassbox::threads::candle_env() {
        // Sound here: no other thread has started yet.
        std::env::set_var(k, v);
    }
    glassbox::threads::tune_allocator();
    let path = registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}")).unwrap();
    let model = Model::load(&path).unwrap();
    eprintln!("{} weight matrices kept quantized", model.quantized_matrices());
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(50);
    let b: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    // A third argument repeats the prompt that many times (long prompts).
    let repeat: usize = std::env::args().nth(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let prompt = vec!["When Mary and John went to the store, John gave a drink to"; repeat].join(" ");
    let prompts = vec![prompt.as_str(); b];
    let batch = model.batch(&prompts).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(model.forward(&batch, &Hooks::new()).unwrap());
    }
    eprintln!("{:.1} ms per forward", t.elapsed().as_secs_f64() * 1e3 / n as f64);
}
