//! The kernels' threads: how a product is cut into parts (`by_columns`, `by_rows`,
//! `for_ranges`), the pool the parts run on, and two streams of work at once
//! (`concurrently`), during which each product runs on its caller's thread alone.

fn threads() -> usize {
    crate::threads::kernel_threads()
}

/// Streams of work running at once under `concurrently`.
static STREAMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether two streams run at once: each product's parts then run one after another on its
/// caller's thread (each stream keeps its own core busy). The parts stay the same, so the
/// figures do not depend on which way they ran.
fn streams_running() -> bool {
    STREAMS.load(std::sync::atomic::Ordering::Relaxed) >= 2
}

/// Runs `a` on a new thread and `b` on this one, at once. While both run, each product and
/// fused op runs on its caller's thread alone: the two streams keep two cores busy, where one
/// stream alternates split products with serial steps that leave a core idle. When either
/// finishes, the other's products run on all the threads again. The figures are the same bit
/// for bit either way (a product is cut into the same parts, summed in the same order).
pub fn concurrently<A: Send, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B) -> (A, B) {
    use std::sync::atomic::Ordering::Relaxed;
    /// Counts its stream out when dropped (a panic included).
    struct Stream;
    impl Drop for Stream {
        fn drop(&mut self) {
            STREAMS.fetch_sub(1, Relaxed);
        }
    }
    STREAMS.fetch_add(2, Relaxed);
    let a = std::sync::Mutex::new(Some(a));
    let take_a = || a.lock().ok().and_then(|mut a| a.take());
    let (ra, rb) = std::thread::scope(|scope| {
        let handle = std::thread::Builder::new().spawn_scoped(scope, || {
            let _stream = Stream;
            take_a().map(|a| a())
        });
        let rb = {
            let _stream = Stream;
            b()
        };
        let ra = match handle {
            Ok(h) => match h.join() {
                Ok(ra) => ra,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            // The system would not start a thread: the first stream's counter was never
            // taken, so release it here; `a` runs below on this thread.
            Err(_) => {
                STREAMS.fetch_sub(1, Relaxed);
                None
            }
        };
        (ra, rb)
    });
    let ra = match ra {
        Some(ra) => ra,
        None => match take_a() {
            Some(a) => a(),
            None => unreachable_stream(),
        },
    };
    (ra, rb)
}

/// `a` was taken by its thread, which then returned nothing: impossible (it returns `a`'s
/// value or panics, and a panic is resumed above).
fn unreachable_stream<A>() -> A {
    unreachable!("the first stream's closure ran without a result")
}

/// `f` over `items`, in two streams (`concurrently`): the even-indexed items on a second
/// thread, the odd ones on this one. The results come back in the items' order. Fewer than
/// two items run here alone.
pub fn map_in_two_streams<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() < 2 {
        return items.iter().map(f).collect();
    }
    let stream = |first: usize| items.iter().skip(first).step_by(2).map(&f).collect::<Vec<R>>();
    let (even, odd) = concurrently(|| stream(0), || stream(1));
    let (mut even, mut odd) = (even.into_iter(), odd.into_iter());
    (0..items.len()).filter_map(|i| if i % 2 == 0 { even.next() } else { odd.next() }).collect()
}

/// The kernels' own pool: one worker fewer than the parts, since the calling thread runs the
/// first part. (Sharing rayon's global pool left one of its workers spinning on a core the
/// product needed.) `None` where the system would not start the threads: the parts then run
/// one after another on the calling thread, with the same figures.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads().saturating_sub(1).max(1))
            .thread_name(|i| format!("glassbox-kernel-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// An `m × n` output whose columns are split into one range per thread (ranges rounded to the
/// 4-row blocks so each part writes its own columns): `cols(j0, j1, y)` fills columns j0..j1.
pub(super) fn by_columns(m: usize, n: usize, cols: &(dyn Fn(usize, usize, *mut f32) + Sync)) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let parts = threads().min(n.div_ceil(64)).max(1);
    let per = n.div_ceil(parts).div_ceil(4) * 4;
    let yp = SendPtr(y.as_mut_ptr());
    let run = |t: usize| {
        let (j0, j1) = (t * per, ((t + 1) * per).min(n));
        if j0 < j1 {
            cols(j0, j1, yp.get());
        }
    };
    in_parts(parts, &run);
    y
}

/// An `m × k` sum over the `n` weight rows, split into one range of rows per thread:
/// `rows(j0, j1, acc)` adds rows j0..j1's share into its own zeroed `acc`; the parts are summed.
pub(super) fn by_rows(m: usize, n: usize, k: usize, rows: &(dyn Fn(usize, usize, *mut f32) + Sync)) -> Vec<f32> {
    let parts = threads().min(n.div_ceil(64)).max(1);
    let per = n.div_ceil(parts);
    let mut partial: Vec<Vec<f32>> = (0..parts).map(|_| vec![0f32; m * k]).collect();
    let ptrs: Vec<SendPtr> = partial.iter_mut().map(|acc| SendPtr(acc.as_mut_ptr())).collect();
    let run = |t: usize| rows(t * per, ((t + 1) * per).min(n), ptrs[t].get());
    in_parts(parts, &run);
    let mut out = partial.pop().unwrap_or_else(|| vec![0f32; m * k]);
    for p in partial {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// Runs `run(0..parts)`: part 0 on the calling thread, the others on the kernels' pool. (With
/// `rayon::scope` a caller outside the pool hands the whole body to a worker and sleeps until
/// it is done, a wake-up and a hand-off for every product.)
fn in_parts(parts: usize, run: &(dyn Fn(usize) + Sync)) {
    let pool = match pool() {
        Some(pool) if parts > 1 && !streams_running() => pool,
        _ => {
            (0..parts).for_each(run);
            return;
        }
    };
    pool.in_place_scope(|s| {
        for t in 1..parts {
            s.spawn(move |_| run(t));
        }
        run(0);
    });
}

/// Runs `f(start, end)` over `0..n` in one range per thread, each of at least `min` items
/// (one range when `n < 2 min`), the first on the calling thread. For the fused ops' rows and
/// heads; any CPU.
pub fn for_ranges(n: usize, min: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let parts = threads().min(n / min.max(1)).max(1);
    let per = n.div_ceil(parts);
    in_parts(parts, &|t| {
        let (a, b) = (t * per, ((t + 1) * per).min(n));
        if a < b {
            f(a, b);
        }
    });
}

/// A pointer into an output that the parts of a product fill, each in its own places.
pub(super) struct SendPtr(pub(super) *mut f32);
impl SendPtr {
    pub(super) fn get(&self) -> *mut f32 {
        self.0
    }
}
// SAFETY: a `SendPtr` is made only by `by_columns` and `by_rows`, for an output that outlives
// the parts (`in_parts` returns after every part has); each part writes only its own columns
// (`by_columns`) or its own buffer (`by_rows`), so no two threads touch the same float.
unsafe impl Sync for SendPtr {}
// SAFETY: as for `Sync`: the pointer crosses to the pool's threads only for disjoint writes
// while the output lives.
unsafe impl Send for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::test_support::{data, require_kernels};
    use crate::model::kernels::{g_w, x_wt};

    /// Two streams at once give the products bit for bit what one stream gives (the parts are
    /// the same, run one after another), and both streams' results come back.
    #[test]
    #[cfg_attr(not(target_arch = "x86_64"), ignore = "the kernels are x86-64 only")]
    fn concurrent_streams_give_the_same_figures() {
        require_kernels();
        let (m, n, k) = (15, 1024, 96);
        let (g, w) = (data(m * n, 3), data(n * k, 4));
        let alone = g_w(&g, &w, m, n, k);
        let x = data(m * k, 5);
        let y = x_wt(&x, &w, m, k, n);
        let (a, b) = concurrently(|| g_w(&g, &w, m, n, k), || (g_w(&g, &w, m, n, k), x_wt(&x, &w, m, k, n)));
        assert_eq!(a, alone);
        assert_eq!(b.0, alone);
        assert_eq!(b.1, y);
    }
}
