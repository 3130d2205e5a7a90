//! This machine's peak f32 FMA rate: 12 independent AVX2 FMA chains per thread, in registers
//! only, on 1 and on all threads. The ceiling the products' GFLOP/s are compared with.
//! Run: `cargo run --release -p glassbox --example peak`.
/// `iters` rounds of 12 independent FMA chains; their sum, so that nothing is optimised away.
///
/// # Safety
/// AVX2 and FMA are there.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut a = [_mm256_set1_ps(0.0); 12];
    let (x, y) = (_mm256_set1_ps(1.000_000_1), _mm256_set1_ps(0.999_999));
    for _ in 0..iters {
        for v in a.iter_mut() {
            *v = _mm256_fmadd_ps(*v, x, y);
        }
    }
    let mut out = [0f32; 8];
    let mut s = 0.0;
    for v in a {
        _mm256_storeu_ps(out.as_mut_ptr(), v);
        s += out[0];
    }
    s
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        if !glassbox::model::kernels_available() {
            eprintln!("no AVX2/FMA on this CPU");
            return;
        }
        let iters = 100_000_000usize;
        let all = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        for threads in [1, all] {
            let t = std::time::Instant::now();
            let handles: Vec<_> = (0..threads).map(|_| std::thread::spawn(move || unsafe { chains(iters) })).collect();
            for h in handles {
                std::hint::black_box(h.join().unwrap());
            }
            let flops = (threads * iters * 12 * 16) as f64;
            println!("{threads} thread(s): {:.1} GFLOP/s", flops / t.elapsed().as_secs_f64() / 1e9);
        }
    }
}
