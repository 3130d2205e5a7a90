use glassbox::bench as kernels;
fn t(f: impl Fn()) -> f64 { f(); let s=std::time::Instant::now(); for _ in 0..20 { f() }; s.elapsed().as_secs_f64()*1e3/20.0 }
fn main() {
    for (m,k,n) in [(120,576,49152),(64,576,49152),(15,576,1536),(15,1536,576),(15,576,49152),(1,576,49152),(3,576,49152),(120,576,1536)] {
        let x: Vec<f32> = (0..m*k).map(|i| (i % 7) as f32).collect();
        let w: Vec<f32> = (0..n*k).map(|i| (i % 5) as f32).collect();
        let a = t(|| { std::hint::black_box(kernels::x_wt(&x, &w, m, k, n).unwrap()); });
        let g: Vec<f32> = (0..m*n).map(|i| (i % 3) as f32).collect();
        let b = t(|| { std::hint::black_box(kernels::g_w(&g, &w, m, n, k).unwrap()); });
        let gf = (2*m*n*k) as f64/1e9;
        println!("m{m} k{k} n{n}: x_wt {a:.3} ms ({:.1} GFLOP/s, {:.1} GB/s) | g_w {b:.3} ms ({:.1} GFLOP/s)", gf/a*1e3, (n*k*4) as f64/1e6/a, gf/b*1e3);
    }
}
