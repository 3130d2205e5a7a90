//! The attention core in tiles (online softmax, as FlashAttention computes it): scores and
//! probabilities exist one tile of `BQ` queries × `BK` keys at a time, never as a `[heads, p,
//! p]` matrix, so memory grows with the sequence, not its square. Only the key tiles a query
//! can see are visited: causal, within the prompt, and for sliding-window layers (Gemma,
//! Mistral, Qwen2 with a window) only inside the window, so such a layer costs `p × window`.
//!
//! Forward: per query row a running maximum `m`, a running sum `l` and the weighted values;
//! each key tile rescales them by `exp(m_old − m_new)`; `z = acc / l`, and `L = m + ln l` (the
//! row's log-sum-exp) is kept for the backward pass. Backward (FlashAttention-2's): the
//! probabilities are recomputed from `L` tile by tile, `D_i = dz_i · z_i`, `dS = P ⊙ (dP − D)`
//! (times the soft cap's slope and the scale); `dk` and `dv` are accumulated per key tile (each
//! unit owns its keys), `dq` per query tile (each unit owns its queries).
//!
//! The mask is a rule, not a matrix (`AttnMask`): query `past + i` of prompt `b` sees keys
//! `0..=past + i` inside the prompt's real length and the window (a bidirectional model's
//! query sees the whole real prompt); a padding query (past the
//! prompt's end) sees the whole real prompt, so no row is empty. f32 and f64.
//!
//! Every product inside a tile (`Q Kᵀ`, `P V`, `dZ Vᵀ`, `Pᵀ dZ`, `dSᵀ Q`, `dS K`) is one call of
//! `Elem::gemm_acc` (register-blocked AVX2 for f32 where the CPU has it); only the softmax runs
//! row by row. The backward visits each (query tile, key tile) pair once: a unit owns a chunk of
//! one head's query tiles, their rows of `dq`, and a buffer for the `dk`, `dv` of the keys they
//! see, summed over the units of each key/value head at the end.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use num_traits::Float;

use super::{slice, t, Elem, Shared, MIN_PART};
use crate::error::Result;
use crate::model::kernels;

/// Queries per tile.
const BQ: usize = 64;
/// Keys per tile.
const BK: usize = 64;

/// Which keys each query may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttnMask {
    /// Each prompt's real length (of the new positions).
    pub lengths: Arc<Vec<usize>>,
    /// Positions before the queries (a continued run's cache).
    pub past: usize,
    /// A sliding window: a query sees the `window` keys up to itself.
    pub window: Option<usize>,
    /// Bidirectional attention (tracr-compiled and encoder models): every query sees the whole
    /// real prompt, later keys included (no window).
    pub bidirectional: bool,
}

impl AttnMask {
    /// The keys `lo..hi` query `i` (of the new positions) of prompt `b` sees.
    pub fn keys(&self, b: usize, i: usize) -> (usize, usize) {
        let q = self.past + i;
        let real = self.past + self.lengths[b];
        if q >= real || self.bidirectional {
            return (0, real);
        }
        let lo = self.window.map_or(0, |w| (q + 1).saturating_sub(w));
        (lo, q + 1)
    }

    /// Whether query `i` of prompt `b` sees key `j`.
    #[cfg(test)]
    pub fn sees(&self, b: usize, i: usize, j: usize) -> bool {
        let (lo, hi) = self.keys(b, i);
        (lo..hi).contains(&j)
    }
}

/// What the attention core needs besides q, k and v.
#[derive(Debug, Clone)]
pub struct AttnSpec {
    /// Multiplies `q · k` (before any soft cap).
    pub scale: f64,
    /// Gemma 2's attention soft cap: `c · tanh(s / c)`.
    pub softcap: Option<f64>,
    /// Which keys each query sees.
    pub mask: AttnMask,
}

/// `z = softmax(mask(cap(scale · q kᵀ))) v` per query head, each key/value head serving its
/// group of query heads. `q: [b, p, heads, d_head]`, `k, v: [b, past + p, kv_heads, d_head]`;
/// returns `z: [b, p, heads, d_head]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttnSpec) -> Result<Tensor> {
    let op = AttnOp { spec: spec.clone(), lse: OnceLock::new() };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

struct AttnOp {
    spec: AttnSpec,
    /// The forward pass's log-sum-exp per query row, `[b, heads, p]`, for the backward pass.
    lse: OnceLock<Vec<f64>>,
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    /// Queries.
    p: usize,
    /// Keys.
    kp: usize,
    h: usize,
    kv: usize,
    dh: usize,
    dv: usize,
}

impl Dims {
    fn of(q: &[usize], k: &[usize], v: &[usize], mask: &AttnMask) -> candle_core::Result<Self> {
        let ok = q.len() == 4 && k.len() == 4 && v.len() == 4;
        if !ok || q[0] != k[0] || k[..3] != v[..3] || q[3] != k[3] || k[2] == 0 || !q[2].is_multiple_of(k[2]) || k[1] != mask.past + q[1] || mask.lengths.len() != q[0] || mask.lengths.iter().any(|&l| l == 0 || l > q[1]) {
            candle_core::bail!("attention: q {q:?}, k {k:?}, v {v:?} do not fit the mask (past {}, lengths {:?})", mask.past, mask.lengths);
        }
        Ok(Dims { b: q[0], p: q[1], kp: k[1], h: q[2], kv: k[2], dh: q[3], dv: v[3] })
    }
    fn q(&self, bi: usize, i: usize, hh: usize) -> usize {
        ((bi * self.p + i) * self.h + hh) * self.dh
    }
    fn k(&self, bi: usize, j: usize, g: usize) -> usize {
        ((bi * self.kp + j) * self.kv + g) * self.dh
    }
    fn v(&self, bi: usize, j: usize, g: usize) -> usize {
        ((bi * self.kp + j) * self.kv + g) * self.dv
    }
    fn z(&self, bi: usize, i: usize, hh: usize) -> usize {
        ((bi * self.p + i) * self.h + hh) * self.dv
    }
    fn group(&self) -> usize {
        self.h / self.kv
    }
    fn q_tiles(&self) -> usize {
        self.p.div_ceil(BQ)
    }
    /// Unit `u` of the per-query-tile loops as `(prompt, head, query tile)`.
    fn query_unit(&self, u: usize) -> (usize, usize, usize) {
        (u / (self.h * self.q_tiles()), (u / self.q_tiles()) % self.h, u % self.q_tiles())
    }
    /// Query tile `qt`'s rows `i0..i1`.
    fn query_rows(&self, qt: usize) -> (usize, usize) {
        (qt * BQ, ((qt + 1) * BQ).min(self.p))
    }
    /// The key tiles `j0..j1` that some query of rows `i0..i1` of prompt `bi` sees, in order.
    fn key_tiles_seen(&self, mask: &AttnMask, bi: usize, (i0, i1): (usize, usize)) -> impl Iterator<Item = (usize, usize)> {
        let lo = (i0..i1).map(|i| mask.keys(bi, i).0).min().unwrap_or(0);
        let hi = (i0..i1).map(|i| mask.keys(bi, i).1).max().unwrap_or(0);
        let kp = self.kp;
        (lo / BK * BK..hi).step_by(BK).map(move |j0| (j0, (j0 + BK).min(kp)))
    }
}

/// Keys (or values) `j0..j1` of key/value head `g` of prompt `bi`, transposed into `out`
/// (`out[t][c]`, rows of `BK`); `width` is the rows' width (`dh` or `dv`), `at(bi, j, g)` where
/// a row starts.
fn gather_t<T: Elem>(src: &[T], width: usize, at: impl Fn(usize, usize, usize) -> usize, (bi, g, j0, j1): (usize, usize, usize, usize), out: &mut [T]) {
    for (c, j) in (j0..j1).enumerate() {
        for (t, &x) in src[at(bi, j, g)..][..width].iter().enumerate() {
            out[t * BK + c] = x;
        }
    }
}

impl AttnSpec {
    /// The scores of one query row on the keys it sees (raw products in `s`, only that range):
    /// scaled, then capped (the caps' `tanh` kept in `caps` for the backward).
    #[inline(always)]
    fn finish_scores<T: Elem>(&self, s: &mut [T], caps: &mut [T]) {
        let scale = t::<T>(self.scale);
        s.iter_mut().for_each(|x| *x *= scale);
        if let Some(cap) = self.softcap {
            let cap = t::<T>(cap);
            for (x, c) in s.iter_mut().zip(caps.iter_mut()) {
                let th = (*x / cap).tanh();
                *c = th;
                *x = th * cap;
            }
        }
    }
}

/// The keys `c0..c1` of a tile (of `n` keys from `j0`) that a query seeing keys `lo..hi` sees;
/// `None` when it sees none of them.
fn seen_in_tile((j0, n): (usize, usize), (lo, hi): (usize, usize)) -> Option<(usize, usize)> {
    let (c0, c1) = (lo.max(j0) - j0, hi.min(j0 + n).saturating_sub(j0));
    (c0 < c1).then_some((c0, c1))
}

/// The largest value of `s` (eight running maxima, so the loop vectorises).
fn max_of<T: Elem>(s: &[T]) -> T {
    let mut m = [T::neg_infinity(); 8];
    let chunks = s.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &b) in m.iter_mut().zip(c) {
            *a = if b > *a { b } else { *a };
        }
    }
    rest.iter().chain(&m).fold(T::neg_infinity(), |a, &b| if b > a { b } else { a })
}

/// `out[c] = exp(s[c] − shift)`; returns the sum. `tmp` is scratch of the same length.
fn exp_shifted<T: Elem>(s: &[T], shift: T, tmp: &mut [T], out: &mut [T]) -> T {
    for (a, &x) in tmp.iter_mut().zip(s) {
        *a = shift - x;
    }
    T::exp_neg(tmp, out);
    let mut acc = [T::zero(); 8];
    let chunks = out.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &b) in acc.iter_mut().zip(c) {
            *a += b;
        }
    }
    rest.iter().chain(&acc).fold(T::zero(), |a, &b| a + b)
}

/// Scratch of one unit: the key and value tiles transposed, and tiles of `BQ × BK` for the
/// scores (then `dS`), the probabilities, `dP` and the caps' `tanh`.
struct Scratch<T> {
    kt: Vec<T>,
    vt: Vec<T>,
    s: Vec<T>,
    p: Vec<T>,
    dp: Vec<T>,
    caps: Vec<T>,
    tmp: Vec<T>,
}

impl<T: Elem> Scratch<T> {
    fn new(d: &Dims) -> Self {
        let z = T::zero();
        let tile = vec![z; BQ * BK];
        Scratch { kt: vec![z; d.dh * BK], vt: vec![z; d.dv * BK], s: tile.clone(), p: tile.clone(), dp: tile.clone(), caps: tile, tmp: vec![z; BK] }
    }
}

/// One unit of the backward pass: query tiles `qt0..qt1` of head `hh` of prompt `bi`, whose
/// gradients of keys `key0..key1` (of the head's key/value head) go to a buffer of its own at
/// `buf` (`(key1 − key0) · (dh + dv)` values: `dk` rows, then `dv` rows).
#[derive(Clone, Copy)]
struct BwdUnit {
    bi: usize,
    hh: usize,
    qt0: usize,
    qt1: usize,
    key0: usize,
    key1: usize,
    buf: usize,
}

impl BwdUnit {
    /// The values of its buffer.
    fn len(&self, d: &Dims) -> usize {
        (self.key1 - self.key0) * (d.dh + d.dv)
    }
}

impl AttnOp {
    /// Units (of one query tile of one head) a part gets at least, by the work of one.
    fn min_units(d: &Dims) -> usize {
        MIN_PART / (BQ * d.kp.min(4 * BK) * d.dh).max(1) + 1
    }

    /// Runs `unit(u, scratch)` for every unit `u < units`, split across the kernels' threads
    /// with one scratch per part.
    fn for_units<T: Elem>(d: &Dims, units: usize, min_units: usize, unit: &(dyn Fn(usize, &mut Scratch<T>) + Sync)) {
        kernels::for_ranges(units, min_units, &|u0, u1| {
            let mut sc = Scratch::<T>::new(d);
            for u in u0..u1 {
                unit(u, &mut sc);
            }
        });
    }

    fn fwd<T: Elem>(&self, d: &Dims, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<f64>) {
        let mut z = vec![T::zero(); d.b * d.p * d.h * d.dv];
        let mut lse = vec![0f64; d.b * d.h * d.p];
        let (zs, ls) = (Shared::of(&mut z), Shared::of(&mut lse));
        Self::for_units(d, d.b * d.h * d.q_tiles(), Self::min_units(d), &|u, sc| {
            // SAFETY: the unit writes only its own rows of z and lse.
            unsafe { self.fwd_unit(d, (q, k, v), d.query_unit(u), sc, (&zs, &ls)) }
        });
        (z, lse)
    }

    /// Query tile `qt` of head `hh` of prompt `bi`: its rows of `z` and of the log-sum-exp.
    /// Per key tile: `S = Q Kᵀ` as one tile product, the online softmax row by row, then
    /// `acc += P V` as one tile product.
    ///
    /// # Safety
    /// No other part writes this unit's rows of `z` and `lse` while it runs.
    unsafe fn fwd_unit<T: Elem>(&self, d: &Dims, (q, k, v): (&[T], &[T], &[T]), (bi, hh, qt): (usize, usize, usize), sc: &mut Scratch<T>, (zs, ls): (&Shared<T>, &Shared<f64>)) {
        let mask = &self.spec.mask;
        let g = hh / d.group();
        let (i0, i1) = d.query_rows(qt);
        let rows = i1 - i0;
        let mut m = vec![T::neg_infinity(); rows];
        let mut l = vec![T::zero(); rows];
        let mut acc = vec![T::zero(); rows * d.dv];
        let qa = &q[d.q(bi, i0, hh)..];
        for (j0, j1) in d.key_tiles_seen(mask, bi, (i0, i1)) {
            let n = j1 - j0;
            gather_t(k, d.dh, |b, j, g| d.k(b, j, g), (bi, g, j0, j1), &mut sc.kt);
            sc.s[..rows * BK].fill(T::zero());
            T::gemm_acc((rows, n, d.dh), (qa, d.h * d.dh, 1), (&sc.kt, BK), (&mut sc.s, BK));
            for r in 0..rows {
                let (srow, prow) = (&mut sc.s[r * BK..r * BK + n], &mut sc.p[r * BK..r * BK + n]);
                prow.fill(T::zero());
                let Some((c0, c1)) = seen_in_tile((j0, n), mask.keys(bi, i0 + r)) else { continue };
                let seen = &mut srow[c0..c1];
                self.spec.finish_scores(seen, &mut sc.caps[c0..c1]);
                let new_m = Float::max(m[r], max_of(seen));
                let corr = if m[r] == T::neg_infinity() { T::zero() } else { (m[r] - new_m).exp() };
                let sum = exp_shifted(seen, new_m, &mut sc.tmp[c0..c1], &mut prow[c0..c1]);
                if corr != T::one() {
                    acc[r * d.dv..(r + 1) * d.dv].iter_mut().for_each(|a| *a *= corr);
                }
                l[r] = l[r] * corr + sum;
                m[r] = new_m;
            }
            T::gemm_acc((rows, d.dv, n), (&sc.p, BK, 1), (&v[d.v(bi, j0, g)..], d.kv * d.dv), (&mut acc, d.dv));
        }
        for (r, i) in (i0..i1).enumerate() {
            let zi = d.z(bi, i, hh);
            // SAFETY: row i of head hh of prompt bi belongs to this unit alone.
            let zrow = unsafe { zs.slice(zi, zi + d.dv) };
            let inv = T::one() / l[r];
            for (o, &a) in zrow.iter_mut().zip(&acc[r * d.dv..(r + 1) * d.dv]) {
                *o = a * inv;
            }
            let li = (bi * d.h + hh) * d.p + i;
            let lse = m[r].to_f64() + l[r].to_f64().ln();
            // SAFETY: as above.
            let slot = unsafe { ls.slice(li, li + 1) };
            slot[0] = lse;
        }
    }

    /// The backward units: each head's query tiles in as many chunks of equal work as give
    /// every thread a few units, each chunk with the key range its queries see.
    fn bwd_units(&self, d: &Dims) -> Vec<BwdUnit> {
        let mask = &self.spec.mask;
        let chunks = (4 * crate::threads::kernel_threads()).div_ceil(d.b * d.h).clamp(1, d.q_tiles());
        let mut units = Vec::new();
        let mut buf = 0;
        for bi in 0..d.b {
            let work: Vec<usize> = (0..d.q_tiles()).map(|qt| d.key_tiles_seen(mask, bi, d.query_rows(qt)).count()).collect();
            let total: usize = work.iter().sum::<usize>().max(1);
            // Cut where the running work passes each chunk's share.
            let mut cuts = vec![0];
            let mut run = 0;
            for (qt, w) in work.iter().enumerate() {
                run += w;
                if cuts.len() < chunks && run * chunks >= total * cuts.len() && qt + 1 < d.q_tiles() {
                    cuts.push(qt + 1);
                }
            }
            cuts.push(d.q_tiles());
            // Each chunk's key range (the mask is the same for every head).
            let chunk_keys: Vec<(usize, usize, usize, usize)> = cuts
                .windows(2)
                .map(|c| {
                    let (lo, hi) = (c[0]..c[1]).flat_map(|qt| d.key_tiles_seen(mask, bi, d.query_rows(qt))).fold((d.kp, 0), |(lo, hi), (j0, j1)| (lo.min(j0), hi.max(j1)));
                    let (key0, key1) = if lo < hi { (lo, hi) } else { (0, 0) };
                    (c[0], c[1], key0, key1)
                })
                .collect();
            for hh in 0..d.h {
                for &(qt0, qt1, key0, key1) in &chunk_keys {
                    let unit = BwdUnit { bi, hh, qt0, qt1, key0, key1, buf };
                    buf += unit.len(d);
                    units.push(unit);
                }
            }
        }
        units
    }

    /// `[dq, dk, dv]` from `dz`, the output `z` and the log-sum-exp of the forward pass.
    fn grad<T: Elem>(&self, d: &Dims, (q, k, v): (&[T], &[T], &[T]), z: &[T], dz: &[T], lse: &[f64]) -> (Vec<T>, Vec<T>, Vec<T>) {
        // D_i = dz_i · z_i per query row and head, [b, h, p].
        let mut dd = vec![T::zero(); d.b * d.h * d.p];
        for bi in 0..d.b {
            for i in 0..d.p {
                for hh in 0..d.h {
                    let zi = d.z(bi, i, hh);
                    dd[(bi * d.h + hh) * d.p + i] = super::dot(&dz[zi..zi + d.dv], &z[zi..zi + d.dv]);
                }
            }
        }
        let units = self.bwd_units(d);
        let size = units.last().map_or(0, |u| u.buf + u.len(d));
        let mut kvbuf = vec![T::zero(); size];
        let mut dq = vec![T::zero(); q.len()];
        let ctx = GradCtx { d: *d, q, k, v, dz, lse, dd: &dd };
        let (dqs, bufs) = (Shared::of(&mut dq), Shared::of(&mut kvbuf));
        Self::for_units(d, units.len(), 1, &|u, sc| {
            let unit = units[u];
            // SAFETY: the unit's buffer and its query rows of dq are its own.
            unsafe { self.bwd_unit(&ctx, unit, sc, &dqs, bufs.slice(unit.buf, unit.buf + unit.len(d))) }
        });
        // Each key/value head's gradients: the sum over its query heads' units.
        let (mut dk, mut dv) = (vec![T::zero(); k.len()], vec![T::zero(); v.len()]);
        for u in &units {
            let g = u.hh / d.group();
            let (bk, bv) = kvbuf[u.buf..u.buf + u.len(d)].split_at((u.key1 - u.key0) * d.dh);
            for (c, j) in (u.key0..u.key1).enumerate() {
                let (kj, vj) = (d.k(u.bi, j, g), d.v(u.bi, j, g));
                dk[kj..kj + d.dh].iter_mut().zip(&bk[c * d.dh..(c + 1) * d.dh]).for_each(|(a, &b)| *a += b);
                dv[vj..vj + d.dv].iter_mut().zip(&bv[c * d.dv..(c + 1) * d.dv]).for_each(|(a, &b)| *a += b);
            }
        }
        (dq, dk, dv)
    }

    /// One backward unit (FlashAttention-2's backward on tiles): per query tile and key tile
    /// it sees, `S = Q Kᵀ` and `dP = dZ Vᵀ` as tile products, `P` from the forward's
    /// log-sum-exp, `dS = P ⊙ (dP − D)` (times the cap's slope and the scale), then
    /// `dV += Pᵀ dZ`, `dK += dSᵀ Q` into the unit's buffer and `dQ += dS K`.
    ///
    /// # Safety
    /// No other part writes this unit's query rows of `dq` while it runs (`buf` is its own).
    unsafe fn bwd_unit<T: Elem>(&self, c: &GradCtx<T>, u: BwdUnit, sc: &mut Scratch<T>, dqs: &Shared<T>, buf: &mut [T]) {
        let d = &c.d;
        let mask = &self.spec.mask;
        let (bi, hh) = (u.bi, u.hh);
        let g = hh / d.group();
        let (dkb, dvb) = buf.split_at_mut((u.key1 - u.key0) * d.dh);
        let scale = t::<T>(self.spec.scale);
        for qt in u.qt0..u.qt1 {
            let (i0, i1) = d.query_rows(qt);
            let rows = i1 - i0;
            let (qa, za) = (&c.q[d.q(bi, i0, hh)..], &c.dz[d.z(bi, i0, hh)..]);
            let mut dqa = vec![T::zero(); rows * d.dh];
            for (j0, j1) in d.key_tiles_seen(mask, bi, (i0, i1)) {
                let n = j1 - j0;
                gather_t(c.k, d.dh, |b, j, g| d.k(b, j, g), (bi, g, j0, j1), &mut sc.kt);
                gather_t(c.v, d.dv, |b, j, g| d.v(b, j, g), (bi, g, j0, j1), &mut sc.vt);
                sc.s[..rows * BK].fill(T::zero());
                sc.dp[..rows * BK].fill(T::zero());
                T::gemm_acc((rows, n, d.dh), (qa, d.h * d.dh, 1), (&sc.kt, BK), (&mut sc.s, BK));
                T::gemm_acc((rows, n, d.dv), (za, d.h * d.dv, 1), (&sc.vt, BK), (&mut sc.dp, BK));
                for r in 0..rows {
                    let i = i0 + r;
                    let (srow, prow) = (&mut sc.s[r * BK..r * BK + n], &mut sc.p[r * BK..r * BK + n]);
                    let seen = seen_in_tile((j0, n), mask.keys(bi, i));
                    // Outside the keys the query sees, P and dS are zero.
                    let (c0, c1) = seen.unwrap_or((0, 0));
                    prow[..c0].fill(T::zero());
                    prow[c1..].fill(T::zero());
                    srow[..c0].fill(T::zero());
                    srow[c1..].fill(T::zero());
                    if seen.is_none() {
                        continue;
                    }
                    let caps = &mut sc.caps[r * BK + c0..r * BK + c1];
                    let (sseen, pseen) = (&mut srow[c0..c1], &mut prow[c0..c1]);
                    self.spec.finish_scores(sseen, caps);
                    let li = (bi * d.h + hh) * d.p + i;
                    exp_shifted(sseen, t::<T>(c.lse[li]), &mut sc.tmp[c0..c1], pseen);
                    let dd = c.dd[li];
                    let dp = &sc.dp[r * BK + c0..r * BK + c1];
                    for ((ds, &p), &dp) in sseen.iter_mut().zip(pseen.iter()).zip(dp) {
                        *ds = p * (dp - dd) * scale;
                    }
                    if self.spec.softcap.is_some() {
                        for (ds, &th) in sseen.iter_mut().zip(caps.iter()) {
                            *ds *= T::one() - th * th;
                        }
                    }
                }
                let (ko, vo) = ((j0 - u.key0) * d.dh, (j0 - u.key0) * d.dv);
                T::gemm_acc((n, d.dv, rows), (&sc.p, 1, BK), (za, d.h * d.dv), (&mut dvb[vo..], d.dv));
                T::gemm_acc((n, d.dh, rows), (&sc.s, 1, BK), (qa, d.h * d.dh), (&mut dkb[ko..], d.dh));
                T::gemm_acc((rows, d.dh, n), (&sc.s, BK, 1), (&c.k[d.k(bi, j0, g)..], d.kv * d.dh), (&mut dqa, d.dh));
            }
            for (r, i) in (i0..i1).enumerate() {
                let qi = d.q(bi, i, hh);
                // SAFETY: row i of head hh of prompt bi belongs to this unit alone.
                unsafe { dqs.slice(qi, qi + d.dh) }.copy_from_slice(&dqa[r * d.dh..(r + 1) * d.dh]);
            }
        }
    }
}

/// What the backward units read.
struct GradCtx<'a, T> {
    d: Dims,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    dz: &'a [T],
    lse: &'a [f64],
    dd: &'a [T],
}

fn fwd_attn<T: Elem>(op: &AttnOp, d: &Dims, a: (&CpuStorage, &Layout), b: (&CpuStorage, &Layout), c: (&CpuStorage, &Layout)) -> candle_core::Result<CpuStorage> {
    let (q, k, v) = (slice::<T>(a.0, a.1, "attention")?, slice::<T>(b.0, b.1, "attention")?, slice::<T>(c.0, c.1, "attention")?);
    let (z, lse) = op.fwd(d, q, k, v);
    let _ = op.lse.set(lse);
    Ok(T::to_cpu_storage_owned(z))
}

impl CustomOp3 for AttnOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, qs: &CpuStorage, ql: &Layout, ks: &CpuStorage, kl: &Layout, vs: &CpuStorage, vl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = Dims::of(ql.dims(), kl.dims(), vl.dims(), &self.spec.mask)?;
        let out = match qs {
            CpuStorage::F32(_) => fwd_attn::<f32>(self, &d, (qs, ql), (ks, kl), (vs, vl))?,
            CpuStorage::F64(_) => fwd_attn::<f64>(self, &d, (qs, ql), (ks, kl), (vs, vl))?,
            _ => candle_core::bail!("attention: f32 or f64 only"),
        };
        Ok((out, Shape::from((d.b, d.p, d.h, d.dv))))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(q.dims(), k.dims(), v.dims(), &self.spec.mask)?;
        fn run<T: Elem>(op: &AttnOp, d: &Dims, (q, k, v, z, dz): (&Tensor, &Tensor, &Tensor, &Tensor, &Tensor)) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
            let vals = |x: &Tensor| super::values::<T>(x);
            let (qv, kv, vv, zv, dzv) = (vals(q)?, vals(k)?, vals(v)?, vals(z)?, vals(&dz.to_dtype(q.dtype())?)?);
            let lse = match op.lse.get() {
                Some(l) => l.clone(),
                // The forward ran elsewhere (never here): run it again for its log-sum-exp.
                None => op.fwd(d, &qv, &kv, &vv).1,
            };
            let (dq, dk, dv) = op.grad(d, (&qv, &kv, &vv), &zv, &dzv, &lse);
            let dev = q.device();
            Ok((Tensor::from_vec(dq, q.shape(), dev)?, Tensor::from_vec(dk, k.shape(), dev)?, Tensor::from_vec(dv, v.shape(), dev)?))
        }
        let args = (q, k, v, res, grad);
        let (dq, dk, dv) = match q.dtype() {
            candle_core::DType::F32 => run::<f32>(self, &d, args)?,
            candle_core::DType::F64 => run::<f64>(self, &d, args)?,
            other => candle_core::bail!("attention backward: f32 or f64 only, not {other:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn data(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64).map(|i| ((i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 1000) as f64 / 500.0 - 1.0).collect()
    }

    /// The tiled core at sizes that span several tiles (two prompts, the second padded; grouped
    /// heads; with and without a soft cap; with and without a sliding window; a continued run
    /// with keys before the queries) against a plain loop in f64, and its gradient against the
    /// directional derivative by central differences.
    #[test]
    fn tiled_attention_matches_a_plain_loop_and_finite_differences() {
        let (b, h, kv, dh) = (2usize, 4usize, 2usize, 8usize);
        let dev = Device::Cpu;
        for (p, past, window, softcap) in [(150usize, 0usize, None, None), (150, 0, Some(70usize), Some(0.7)), (70, 90, None, None), (70, 90, Some(100), Some(2.0))] {
            let kp = past + p;
            let lengths = vec![p, p - 37];
            let mask = AttnMask { lengths: Arc::new(lengths.clone()), past, window, bidirectional: false };
            let spec = AttnSpec { scale: 0.3, softcap, mask: mask.clone() };
            let (qs, ks, vs) = (data(b * p * h * dh, 1), data(b * kp * kv * dh, 2), data(b * kp * kv * dh, 3));
            let q = Var::from_vec(qs.clone(), (b, p, h, dh), &dev).unwrap();
            let k = Var::from_vec(ks.clone(), (b, kp, kv, dh), &dev).unwrap();
            let v = Var::from_vec(vs.clone(), (b, kp, kv, dh), &dev).unwrap();
            let w = Tensor::from_vec(data(b * p * h * dh, 4), (b, p, h, dh), &dev).unwrap();
            let mut want = vec![0f64; b * p * h * dh];
            for bi in 0..b {
                for hh in 0..h {
                    let g = hh / (h / kv);
                    for i in 0..p {
                        let seen: Vec<usize> = (0..kp).filter(|&j| mask.sees(bi, i, j)).collect();
                        assert!(!seen.is_empty());
                        let scores: Vec<f64> = seen
                            .iter()
                            .map(|&j| {
                                let s: f64 = (0..dh).map(|t| qs[((bi * p + i) * h + hh) * dh + t] * ks[((bi * kp + j) * kv + g) * dh + t]).sum::<f64>() * 0.3;
                                softcap.map_or(s, |c| c * (s / c).tanh())
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                        for (&j, s) in seen.iter().zip(&scores) {
                            for t in 0..dh {
                                want[((bi * p + i) * h + hh) * dh + t] += (s - max).exp() / sum * vs[((bi * kp + j) * kv + g) * dh + t];
                            }
                        }
                    }
                }
            }
            let z = attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), &spec).unwrap();
            let got = z.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "p {p}, past {past}, window {window:?}, cap {softcap:?}: differs from the plain loop by {err}");

            let metric = |q: &Tensor, k: &Tensor, v: &Tensor| (attention(q, k, v, &spec).unwrap() * &w).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            let grads = (z * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let dirs: Vec<Tensor> = [(q.dims(), 5), (k.dims(), 6), (v.dims(), 7)].iter().map(|(d, s)| Tensor::from_vec(data(d.iter().product(), *s), d.to_vec(), &dev).unwrap()).collect();
            let analytic: f64 = [&q, &k, &v].iter().zip(&dirs).map(|(x, d)| (grads.get(x.as_tensor()).unwrap() * d).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()).sum();
            let eps = 1e-6;
            let moved = |sign: f64| {
                let m: Vec<Tensor> = [&q, &k, &v].iter().zip(&dirs).map(|(x, d)| (x.as_tensor() + (d * (sign * eps)).unwrap()).unwrap()).collect();
                metric(&m[0], &m[1], &m[2])
            };
            let numeric = (moved(1.0) - moved(-1.0)) / (2.0 * eps);
            assert!((analytic - numeric).abs() < 1e-6 * numeric.abs().max(1.0), "p {p}, past {past}, window {window:?}: gradient {analytic} vs finite difference {numeric}");
        }
    }

    /// The f32 path (the register-blocked tile products where the CPU has them) against the f64
    /// path on the same values: output and the gradients of all three inputs, for head widths
    /// that are and are not multiples of 8 and 16, a window and a soft cap, two prompts.
    #[test]
    fn f32_tiles_match_f64() {
        let dev = Device::Cpu;
        for (p, past, h, kv, dh, window, softcap) in [(200usize, 0usize, 4usize, 2usize, 64usize, None, None), (130, 20, 3, 1, 20, Some(50usize), Some(1.5)), (70, 0, 2, 2, 256, None, None)] {
            let (b, kp) = (2usize, past + p);
            let mask = AttnMask { lengths: Arc::new(vec![p, p - 11]), past, window, bidirectional: false };
            let spec = AttnSpec { scale: 0.2, softcap, mask };
            let shapes = [(b, p, h, dh), (b, kp, kv, dh), (b, kp, kv, dh), (b, p, h, dh)];
            let vals: Vec<Vec<f64>> = shapes.iter().enumerate().map(|(s, &(a, c, e, f))| data(a * c * e * f, s as u64 + 11)).collect();
            let run = |dtype: candle_core::DType| {
                let vars: Vec<Var> = (0..3).map(|i| Var::from_tensor(&Tensor::from_vec(vals[i].clone(), shapes[i], &dev).unwrap().to_dtype(dtype).unwrap()).unwrap()).collect();
                let w = Tensor::from_vec(vals[3].clone(), shapes[3], &dev).unwrap().to_dtype(dtype).unwrap();
                let z = attention(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), &spec).unwrap();
                let grads = (&z * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let mut out = vec![flat(&z)];
                out.extend(vars.iter().map(|v| flat(grads.get(v.as_tensor()).unwrap())));
                out
            };
            let (single, double) = (run(candle_core::DType::F32), run(candle_core::DType::F64));
            for (what, (a, e)) in ["z", "dq", "dk", "dv"].iter().zip(single.iter().zip(&double)) {
                let scale = e.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-3);
                let err = a.iter().zip(e).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(err <= 1e-4 * scale, "p {p}, dh {dh}, window {window:?}: {what} in f32 differs from f64 by {err} (largest {scale})");
            }
        }
    }
}
