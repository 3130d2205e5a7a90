//! Times the three parts of a Taylor attribution pass (corrupted forward, clean forward with
//! taps, backward) on the default model's IOI prompt: `phases N`.
use glassbox::model::Batch;
use glassbox::methods::Contrast;
use glassbox::model::hooks::HookPoint;
use glassbox::{registry, Model};
use std::time::Instant;
fn main() {
    for (k, v) in glassbox::threads::candle_env() {
        // Sound here: no other thread has started yet.
        std::env::set_var(k, v);
    }
    let path = registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}")).unwrap();
    let model = Model::load(&path).unwrap();
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let c = Contrast::new(&model, "When Mary and John went to the store, John gave a drink to", " Mary", " John", None).unwrap();
    let points: Vec<HookPoint> = (0..model.config().n_layers).map(HookPoint::Z).collect();
    let (mut a, mut b, mut d) = (0.0, 0.0, 0.0);
    for _ in 0..n {
        let t = Instant::now();
        let corr = model.forward(&Batch::new(std::slice::from_ref(&c.corrupted)).unwrap(), &c.ld_hooks().cache(points.iter().copied())).unwrap();
        let t1 = Instant::now();
        let hooks = c.ld_hooks().cache(points.iter().copied()).grad_tap(points.iter().copied());
        let clean = model.forward(&Batch::new(std::slice::from_ref(&c.clean)).unwrap(), &hooks).unwrap();
        let ld = clean.logit_diff(&[c.correct_id], &[c.incorrect_id]).unwrap();
        if a == 0.0 {
            eprintln!("{} nodes in the backward graph", ld.sorted_nodes().len());
        }
        let t2 = Instant::now();
        let g = clean.backward(&ld).unwrap();
        let t3 = Instant::now();
        std::hint::black_box((corr, g));
        a += (t1 - t).as_secs_f64();
        b += (t2 - t1).as_secs_f64();
        d += (t3 - t2).as_secs_f64();
    }
    let k = 1e3 / n as f64;
    eprintln!("corrupted forward {:.1} ms, clean forward {:.1} ms, backward {:.1} ms", a * k, b * k, d * k);
}
