//! How methods run work beside the forward pass: two streams at once (`concurrently`,
//! `map_in_two_streams`: each keeps a core busy where one stream's serial steps would leave one
//! idle) and plain products of activation rows (`rows_times`). Methods reach the kernels and
//! the thread scheduling only through this module. The streams carry the caller's controls
//! (progress and cancellation, `crate::controls`) into the second thread; `map_in_two_streams`
//! reports each finished item and stops between items when asked.

use candle_core::{Device, Tensor};

use crate::controls;
use crate::error::Result;
use crate::model::kernels;

/// Runs `a` on a second thread and `b` on this one, at once (the products of each then run on
/// its own thread alone; the figures are the same bit for bit as one after the other).
pub fn concurrently<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    let c = controls::current();
    kernels::concurrently(move || controls::with(&c, a), b)
}

/// `f` over `items` in two streams (the even-indexed items on a second thread, the odd ones on
/// this one), results in the items' order; each finished item is reported as progress of
/// `stage`, and a cancelled run stops before its next item (its error comes back in that
/// item's place: make `R` a `Result`).
pub fn map_in_two_streams<T: Sync, R: Send>(items: &[T], stage: &str, f: impl Fn(&T) -> R + Sync, cancelled: impl Fn() -> R + Sync) -> Vec<R> {
    let c = controls::current();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let total = items.len();
    let run = |item: &T| -> R {
        controls::with(&c, || {
            if controls::check().is_err() {
                return cancelled();
            }
            let r = f(item);
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            controls::step(n, total, stage);
            r
        })
    };
    kernels::map_in_two_streams(items, run)
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` for plain f32 rows (the kernels where the CPU has them,
/// candle's product elsewhere).
pub fn rows_times(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Result<Vec<f32>> {
    if kernels::available() {
        return Ok(kernels::x_wt(x, w, m, k, n));
    }
    let xt = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
    let wt = Tensor::from_slice(w, (n, k), &Device::Cpu)?;
    Ok(xt.matmul(&wt.t()?)?.flatten_all()?.to_vec1::<f32>()?)
}
