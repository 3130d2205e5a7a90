//! Load time, resident memory and forward speed of one model, for before/after comparisons:
//! `load_forward MODEL [rounds]` prints the median load time over `rounds` loads, the resident
//! memory after the first load and at the end (VmRSS, VmHWM), and the median forward and
//! forward + backward (to every `hook_z`) on the IOI prompt.
use glassbox::{registry, Batch, HookPoint, Hooks, Model};

fn status_mb(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    for (k, v) in glassbox::threads::candle_env() {
        // Sound here: no other thread has started yet.
        std::env::set_var(k, v);
    }
    let spec = std::env::args().nth(1).unwrap_or_else(|| registry::DEFAULT_MODEL.to_string());
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let path = registry::resolve(&spec, &mut |m| eprintln!("{m}")).unwrap();
    let t = std::time::Instant::now();
    let model = Model::load(&path).unwrap();
    let mut loads = vec![t.elapsed().as_secs_f64()];
    let (rss, file) = (status_mb("VmRSS:"), std::fs::metadata(&path).map(|m| m.len() as f64 / 1048576.0).unwrap_or(f64::NAN));
    for _ in 1..rounds {
        let t = std::time::Instant::now();
        std::hint::black_box(Model::load(&path).unwrap());
        loads.push(t.elapsed().as_secs_f64());
    }
    let ids = model.tokenize("When Mary and John went to the store, John gave a drink to").unwrap();
    let batch = Batch::new(&[ids]).unwrap();
    let taps: Vec<HookPoint> = (0..model.config().n_layers).map(HookPoint::Z).collect();
    let mut fwd = Vec::new();
    let mut bwd = Vec::new();
    for _ in 0..10 {
        let t = std::time::Instant::now();
        std::hint::black_box(model.forward(&batch, &Hooks::new()).unwrap());
        fwd.push(t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        let out = model.forward(&batch, &Hooks::new().grad_tap(taps.iter().copied())).unwrap();
        std::hint::black_box(out.backward(&out.logits.sum_all().unwrap()).unwrap());
        bwd.push(t.elapsed().as_secs_f64());
    }
    println!(
        "{spec}: file {file:.0} MiB | load {:.0} ms | RSS after load {rss:.0} MiB | peak RSS {:.0} MiB | forward {:.1} ms | forward+backward {:.1} ms",
        median(loads) * 1e3,
        status_mb("VmHWM:"),
        median(fwd) * 1e3,
        median(bwd) * 1e3
    );
}
