//! Times the Q4_1 products at SmolLM2-135M's four weight shapes, 15 token rows, each call on
//! a different copy so the weights stream from memory: `mmq41 [m]`.
use glassbox::bench::Q41Weight;
fn main() {
    let m: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(15);
    let mut shapes = vec![(576usize, 576usize), (192, 576), (1536, 576), (576, 1536)];
    if let Some(extra) = std::env::args().nth(2) {
        shapes = extra.split(',').map(|s| { let (a, b) = s.split_once('x').unwrap(); (a.parse().unwrap(), b.parse().unwrap()) }).collect();
    }
    for (n, k) in shapes {
        let copies = (64 << 20) / (n * k * 5 / 8);
        let block = |i: usize| -> [u8; 20] {
            let mut b = [0u8; 20];
            b[..2].copy_from_slice(&0x211eu16.to_le_bytes()); // d ≈ 0.01
            b[2..4].copy_from_slice(&0xaa66u16.to_le_bytes()); // m ≈ -0.05
            for (t, v) in b[4..].iter_mut().enumerate() {
                *v = ((i * 7 + t * 13) % 256) as u8;
            }
            b
        };
        let qs: Vec<Q41Weight> = (0..copies)
            .map(|c| Q41Weight::new(n, k, (0..n * k / 32).flat_map(|i| block(i + c)).collect()).unwrap())
            .collect();
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let g: Vec<f32> = (0..m * n).map(|i| (i % 3) as f32 * 0.1).collect();
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let s = std::time::Instant::now();
            for q in &qs {
                std::hint::black_box(q.x_wt(&x, m).unwrap());
            }
            let a = s.elapsed().as_secs_f64() / copies as f64;
            let s = std::time::Instant::now();
            for q in &qs {
                std::hint::black_box(q.g_w(&g, m).unwrap());
            }
            let b = s.elapsed().as_secs_f64() / copies as f64;
            best = (best.0.min(a), best.1.min(b));
        }
        let gf = (2 * m * n * k) as f64 / 1e9;
        println!("{n}x{k} m{m}: x_wt {:.1} us {:.0} GFLOP/s | g_w {:.1} us {:.0} GFLOP/s", best.0 * 1e6, gf / best.0, best.1 * 1e6, gf / best.1);
    }
}
