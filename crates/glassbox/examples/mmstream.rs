//! Times the products the way the model runs them: each call on a different weight, so the
//! weights stream from memory instead of sitting in cache.
use glassbox::bench as kernels;
fn main() {
    let (k, n, copies) = (576, 1536, 60);
    let ws: Vec<Vec<f32>> = (0..copies).map(|c| (0..n * k).map(|i| ((i + c) % 5) as f32).collect()).collect();
    for m in [1usize, 15, 30, 120] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32).collect();
        let g: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32).collect();
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let s = std::time::Instant::now();
            for w in &ws { std::hint::black_box(kernels::x_wt(&x, w, m, k, n).unwrap()); }
            let a = s.elapsed().as_secs_f64() / copies as f64;
            let s = std::time::Instant::now();
            for w in &ws { std::hint::black_box(kernels::g_w(&g, w, m, n, k).unwrap()); }
            let b = s.elapsed().as_secs_f64() / copies as f64;
            best = (best.0.min(a), best.1.min(b));
        }
        let gf = (2 * m * n * k) as f64 / 1e9;
        let gb = (n * k * 4) as f64 / 1e9;
        println!("m{m}: x_wt {:.3} ms {:.0} GFLOP/s {:.1} GB/s | g_w {:.3} ms {:.0} GFLOP/s {:.1} GB/s", best.0 * 1e3, gf / best.0, gb / best.0, best.1 * 1e3, gf / best.1, gb / best.1);
    }
}
