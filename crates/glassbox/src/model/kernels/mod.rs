//! Matrix products for the skinny shapes of interpretability work: a few dozen token rows
//! against large weight matrices. `gemm` (behind candle's matmul) packs the whole weight for
//! every call, which costs more than the product itself at 15 rows; these kernels stream each
//! weight row once, keep the token rows in cache, and split the weight across threads.
//! Quantized weights (`quant::QMatrix`) are streamed as their blocks and dequantized on the
//! way, a few rows at a time into a buffer in cache. x86-64 with AVX2, FMA and F16C only;
//! callers fall back to candle's matmul elsewhere (and the loader then keeps f32 weights).
//!
//! - `schedule`: the kernels' threads, how a product is cut into parts, two streams at once.
//! - `products`: the f32 and quantized products (`x_wt`, `g_w`, `x_wt_q`, `g_w_q`).
//! - `dequant`: quantized blocks to f32, bit for bit as candle.
//! - `math`: the vectorised `exp`.
//! - `tile`: the small products inside an attention tile (`C += A · B`, `A` strided).
//!
//! Every `unsafe fn` states its contract under `# Safety`; the safe functions check sizes
//! and the CPU before they call one.

mod dequant;
mod math;
mod products;
mod schedule;
mod tile;

pub(crate) use dequant::dequant_row;
pub use math::exp_neg;
pub use products::{g_w, g_w_q, x_wt, x_wt_q};
pub use schedule::{concurrently, for_ranges, map_in_two_streams};
pub use tile::{gemm_acc, Strided};

/// Whether the kernels beat `gemm` for `m` token rows against an `n × k` weight: up to 256
/// rows for layer-sized weights, up to 32 rows for vocabulary-sized ones (where `gemm`'s
/// packing pays off). Measured with `cargo run --release -p glassbox --example mm`.
pub fn preferred(m: usize, n: usize) -> bool {
    available() && (m <= 32 || (m <= 256 && n <= 8192))
}

/// Whether the kernels run: the CPU has AVX2, FMA and F16C, and `GLASSBOX_KERNELS` is not
/// `portable` (which runs candle's portable products everywhere, as on CPUs without them;
/// `.ci/run` runs the test suite both ways).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_has_kernels() && std::env::var("GLASSBOX_KERNELS").as_deref() != Ok("portable"))
}

pub(crate) fn cpu_has_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What the kernels' tests (and the quantized formats') share.
#[cfg(test)]
pub(crate) mod test_support {
    /// `n` floats in [-1, 1) spread over 200 steps, a fixed function of `seed`.
    pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 200) as f32 / 100.0 - 1.0).collect()
    }

    /// Fails the test where this CPU cannot run the kernels (their tests are ignored off x86-64).
    pub(crate) fn require_kernels() {
        assert!(super::cpu_has_kernels(), "this CPU lacks AVX2, FMA or F16C: the kernels cannot be tested here");
    }
}
