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
//! prompt's end) sees the whole real prompt, so no row is empty. f32 and f64; on CPUs with AVX2
//! and FMA the tile loops are compiled for them.

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
    fn k_tiles(&self) -> usize {
        self.kp.div_ceil(BK)
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

/// `a · b + c`, as one fused multiply-add where the CPU has one (the tile loops' only product).
#[inline(always)]
fn madd<T: Elem, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Keys `j0..j1` of key/value head `g` of prompt `bi`: keys transposed (`kt[t][j]`, rows of
/// `BK`) and values as rows (`vr[j][t]`); with `vt`, the values transposed too.
fn gather<T: Elem>(d: &Dims, (k, v): (&[T], &[T]), (bi, g, j0, j1): (usize, usize, usize, usize), kt: &mut [T], vr: &mut [T], vt: Option<&mut [T]>) {
    for (c, j) in (j0..j1).enumerate() {
        let (kj, vj) = (d.k(bi, j, g), d.v(bi, j, g));
        for (t, &x) in k[kj..kj + d.dh].iter().enumerate() {
            kt[t * BK + c] = x;
        }
        vr[c * d.dv..(c + 1) * d.dv].copy_from_slice(&v[vj..vj + d.dv]);
    }
    if let Some(vt) = vt {
        for (c, j) in (j0..j1).enumerate() {
            for (t, &x) in v[d.v(bi, j, g)..][..d.dv].iter().enumerate() {
                vt[t * BK + c] = x;
            }
        }
    }
}

/// `out[c] = Σ_t a[t] · m[t][c]` for the `n` columns of a transposed tile (rows of `BK`); the
/// sums stay in registers over the whole row (columns past `n` are computed and dropped).
#[inline(always)]
fn row_times_tile<T: Elem, const FMA: bool>(a: &[T], m: &[T], n: usize, out: &mut [T]) {
    let mut acc = [T::zero(); BK];
    for (t, &x) in a.iter().enumerate() {
        let row = &m[t * BK..(t + 1) * BK];
        for (s, &w) in acc.iter_mut().zip(row) {
            *s = madd::<T, FMA>(x, w, *s);
        }
    }
    out[..n].copy_from_slice(&acc[..n]);
}

/// `out += Σ_c p[c] · rows[c]` for `n` rows of width `out.len()`, in chunks of 64 columns whose
/// sums stay in registers while the rows pass.
#[inline(always)]
fn probs_times_rows<T: Elem, const FMA: bool>(p: &[T], rows: &[T], n: usize, out: &mut [T]) {
    let w = out.len();
    for (ci, o) in out.chunks_mut(64).enumerate() {
        let off = ci * 64;
        if o.len() == 64 {
            let mut acc = [T::zero(); 64];
            acc.copy_from_slice(o);
            for (c, &pc) in p[..n].iter().enumerate() {
                let r = &rows[c * w + off..c * w + off + 64];
                for (s, &x) in acc.iter_mut().zip(r) {
                    *s = madd::<T, FMA>(pc, x, *s);
                }
            }
            o.copy_from_slice(&acc);
        } else {
            for (c, &pc) in p[..n].iter().enumerate() {
                axpy::<T, FMA>(o, pc, &rows[c * w + off..c * w + off + o.len()]);
            }
        }
    }
}

/// `y += a · x`
#[inline(always)]
fn axpy<T: Elem, const FMA: bool>(y: &mut [T], a: T, x: &[T]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = madd::<T, FMA>(a, x, *y);
    }
}

impl AttnSpec {
    /// The scores of one query row against a key tile (raw products in `s`): scaled, capped
    /// (the caps' `tanh` kept in `caps` for the backward), keys the query does not see −∞.
    #[inline(always)]
    fn finish_scores<T: Elem>(&self, s: &mut [T], caps: &mut [T], (j0, lo, hi): (usize, usize, usize)) {
        let scale = t::<T>(self.scale);
        for (c, x) in s.iter_mut().enumerate() {
            let j = j0 + c;
            if j < lo || j >= hi {
                *x = T::neg_infinity();
                continue;
            }
            *x *= scale;
            if let Some(cap) = self.softcap {
                let cap = t::<T>(cap);
                let th = (*x / cap).tanh();
                caps[c] = th;
                *x = th * cap;
            }
        }
    }
}

/// Scratch of one unit: the tiles and one row's scores.
struct Scratch<T> {
    kt: Vec<T>,
    vr: Vec<T>,
    vt: Vec<T>,
    kr: Vec<T>,
    s: Vec<T>,
    e: Vec<T>,
    caps: Vec<T>,
    dp: Vec<T>,
}

impl<T: Elem> Scratch<T> {
    fn new(d: &Dims) -> Self {
        let z = T::zero();
        Scratch { kt: vec![z; d.dh * BK], vr: vec![z; BK * d.dv], vt: vec![z; d.dv * BK], kr: vec![z; BK * d.dh], s: vec![z; BK], e: vec![z; BK], caps: vec![z; BK], dp: vec![z; BK] }
    }
}

impl AttnOp {
    /// Units (of one query tile of one head) a part gets at least, by the work of one.
    fn min_units(d: &Dims) -> usize {
        MIN_PART / (BQ * d.kp.min(4 * BK) * d.dh).max(1) + 1
    }

    /// Runs `unit(u, scratch, avx)` for every unit `u < units`, split across the kernels'
    /// threads with one scratch per part; `avx` says whether AVX2 and FMA are there.
    fn for_units<T: Elem>(d: &Dims, units: usize, unit: &(dyn Fn(usize, &mut Scratch<T>, bool) + Sync)) {
        let avx = kernels::available();
        kernels::for_ranges(units, Self::min_units(d), &|u0, u1| {
            let mut sc = Scratch::<T>::new(d);
            for u in u0..u1 {
                unit(u, &mut sc, avx);
            }
        });
    }

    fn fwd<T: Elem>(&self, d: &Dims, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<f64>) {
        let mut z = vec![T::zero(); d.b * d.p * d.h * d.dv];
        let mut lse = vec![0f64; d.b * d.h * d.p];
        let (zs, ls) = (Shared::of(&mut z), Shared::of(&mut lse));
        Self::for_units(d, d.b * d.h * d.q_tiles(), &|u, sc, avx| {
            if avx {
                // SAFETY: the CPU has AVX2 and FMA (`available`); the unit writes only its own
                // rows of z and lse.
                unsafe { self.fwd_unit_avx(d, (q, k, v), d.query_unit(u), sc, (&zs, &ls)) }
            } else {
                // SAFETY: as above, without the instruction sets.
                unsafe { self.fwd_unit::<T, false>(d, (q, k, v), d.query_unit(u), sc, (&zs, &ls)) }
            }
        });
        (z, lse)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA, and no other part writes this unit's rows of `z` and `lse`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fwd_unit_avx<T: Elem>(&self, d: &Dims, qkv: (&[T], &[T], &[T]), unit: (usize, usize, usize), sc: &mut Scratch<T>, out: (&Shared<T>, &Shared<f64>)) {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.fwd_unit::<T, true>(d, qkv, unit, sc, out) }
    }

    /// Query tile `qt` of head `hh` of prompt `bi`: its rows of `z` and of the log-sum-exp.
    ///
    /// # Safety
    /// No other part writes this unit's rows of `z` and `lse` while it runs.
    #[inline(always)]
    unsafe fn fwd_unit<T: Elem, const FMA: bool>(&self, d: &Dims, (q, k, v): (&[T], &[T], &[T]), (bi, hh, qt): (usize, usize, usize), sc: &mut Scratch<T>, (zs, ls): (&Shared<T>, &Shared<f64>)) {
        let mask = &self.spec.mask;
        let g = hh / d.group();
        let (i0, i1) = d.query_rows(qt);
        let rows = i1 - i0;
        let mut m = vec![T::neg_infinity(); rows];
        let mut l = vec![T::zero(); rows];
        let mut acc = vec![T::zero(); rows * d.dv];
        for (j0, j1) in d.key_tiles_seen(mask, bi, (i0, i1)) {
            let n = j1 - j0;
            gather(d, (k, v), (bi, g, j0, j1), &mut sc.kt, &mut sc.vr, None);
            for (r, i) in (i0..i1).enumerate() {
                let (klo, khi) = mask.keys(bi, i);
                if khi <= j0 || klo >= j1 {
                    continue;
                }
                row_times_tile::<T, FMA>(&q[d.q(bi, i, hh)..][..d.dh], &sc.kt, n, &mut sc.s);
                self.spec.finish_scores(&mut sc.s[..n], &mut sc.caps, (j0, klo, khi));
                let tile_max = sc.s[..n].iter().fold(T::neg_infinity(), |a, &b| Float::max(a, b));
                let new_m = Float::max(m[r], tile_max);
                let corr = if m[r] == T::neg_infinity() { T::zero() } else { (m[r] - new_m).exp() };
                for (a, &s) in sc.dp[..n].iter_mut().zip(&sc.s[..n]) {
                    *a = new_m - s;
                }
                T::exp_neg(&sc.dp[..n], &mut sc.e[..n]);
                let row = &mut acc[r * d.dv..(r + 1) * d.dv];
                if corr != T::one() {
                    row.iter_mut().for_each(|a| *a *= corr);
                }
                let mut sum = T::zero();
                for (p, &s) in sc.e[..n].iter_mut().zip(&sc.s[..n]) {
                    if s == T::neg_infinity() {
                        *p = T::zero();
                    }
                    sum += *p;
                }
                probs_times_rows::<T, FMA>(&sc.e, &sc.vr, n, row);
                l[r] = l[r] * corr + sum;
                m[r] = new_m;
            }
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
        let (mut dq, mut dk, mut dv) = (vec![T::zero(); q.len()], vec![T::zero(); k.len()], vec![T::zero(); v.len()]);
        let ctx = GradCtx { d: *d, q, k, v, dz, lse, dd: &dd };
        // dk and dv: one unit per key tile of a key/value head (its keys are its own).
        let (dks, dvs) = (Shared::of(&mut dk), Shared::of(&mut dv));
        Self::for_units(d, d.b * d.kv * d.k_tiles(), &|u, sc, avx| {
            let unit = (u / (d.kv * d.k_tiles()), (u / d.k_tiles()) % d.kv, u % d.k_tiles());
            if avx {
                // SAFETY: AVX2 and FMA are there; the unit writes only its keys' rows.
                unsafe { self.dkv_unit_avx(&ctx, unit, sc, (&dks, &dvs)) }
            } else {
                // SAFETY: as above, without the instruction sets.
                unsafe { self.dkv_unit::<T, false>(&ctx, unit, sc, (&dks, &dvs)) }
            }
        });
        // dq: one unit per query tile of a head.
        let dqs = Shared::of(&mut dq);
        Self::for_units(d, d.b * d.h * d.q_tiles(), &|u, sc, avx| {
            if avx {
                // SAFETY: AVX2 and FMA are there; the unit writes only its queries' rows.
                unsafe { self.dq_unit_avx(&ctx, d.query_unit(u), sc, &dqs) }
            } else {
                // SAFETY: as above, without the instruction sets.
                unsafe { self.dq_unit::<T, false>(&ctx, d.query_unit(u), sc, &dqs) }
            }
        });
        (dq, dk, dv)
    }

    /// The probabilities of query row `i` (head `hh`) against the key tile in `sc`, and `dS`
    /// (into `sc.s`): `P` into `sc.e`, `dP` into `sc.dp`. `n` keys from `j0`.
    #[inline(always)]
    fn row_grads<T: Elem, const FMA: bool>(&self, c: &GradCtx<T>, (bi, hh, i): (usize, usize, usize), (j0, n): (usize, usize), sc: &mut Scratch<T>) {
        let d = &c.d;
        let (klo, khi) = self.spec.mask.keys(bi, i);
        row_times_tile::<T, FMA>(&c.q[d.q(bi, i, hh)..][..d.dh], &sc.kt, n, &mut sc.s);
        self.spec.finish_scores(&mut sc.s[..n], &mut sc.caps, (j0, klo, khi));
        let li = (bi * d.h + hh) * d.p + i;
        let l = t::<T>(c.lse[li]);
        for (e, &s) in sc.e[..n].iter_mut().zip(&sc.s[..n]) {
            *e = if s == T::neg_infinity() { T::zero() } else { (s - l).exp() };
        }
        row_times_tile::<T, FMA>(&c.dz[d.z(bi, i, hh)..][..d.dv], &sc.vt, n, &mut sc.dp);
        let (dd, scale) = (c.dd[li], t::<T>(self.spec.scale));
        for cc in 0..n {
            let mut ds = sc.e[cc] * (sc.dp[cc] - dd);
            if self.spec.softcap.is_some() {
                let th = sc.caps[cc];
                ds *= T::one() - th * th;
            }
            sc.s[cc] = if sc.e[cc] == T::zero() { T::zero() } else { ds * scale };
        }
    }

    /// # Safety
    /// AVX2 and FMA are there; no other part writes this unit's rows of `dk` and `dv`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dkv_unit_avx<T: Elem>(&self, c: &GradCtx<T>, unit: (usize, usize, usize), sc: &mut Scratch<T>, out: (&Shared<T>, &Shared<T>)) {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.dkv_unit::<T, true>(c, unit, sc, out) }
    }

    /// Key tile `kt` of key/value head `g` of prompt `bi`: its rows of `dk` and `dv`, from every
    /// query of the group's heads that sees one of its keys.
    ///
    /// # Safety
    /// No other part writes this unit's rows of `dk` and `dv` while it runs.
    #[inline(always)]
    unsafe fn dkv_unit<T: Elem, const FMA: bool>(&self, c: &GradCtx<T>, (bi, g, kt): (usize, usize, usize), sc: &mut Scratch<T>, (dks, dvs): (&Shared<T>, &Shared<T>)) {
        let d = &c.d;
        let (j0, j1) = (kt * BK, ((kt + 1) * BK).min(d.kp));
        let n = j1 - j0;
        gather(d, (c.k, c.v), (bi, g, j0, j1), &mut sc.kt, &mut sc.vr, Some(&mut sc.vt));
        let mut dkt = vec![T::zero(); n * d.dh];
        let mut dvt = vec![T::zero(); n * d.dv];
        for hh in g * d.group()..(g + 1) * d.group() {
            for i in 0..d.p {
                let (klo, khi) = self.spec.mask.keys(bi, i);
                if khi <= j0 || klo >= j1 {
                    continue;
                }
                self.row_grads::<T, FMA>(c, (bi, hh, i), (j0, n), sc);
                let (qi, zi) = (d.q(bi, i, hh), d.z(bi, i, hh));
                for cc in 0..n {
                    if sc.e[cc] == T::zero() {
                        continue;
                    }
                    axpy::<T, FMA>(&mut dvt[cc * d.dv..(cc + 1) * d.dv], sc.e[cc], &c.dz[zi..zi + d.dv]);
                    axpy::<T, FMA>(&mut dkt[cc * d.dh..(cc + 1) * d.dh], sc.s[cc], &c.q[qi..qi + d.dh]);
                }
            }
        }
        for (cc, j) in (j0..j1).enumerate() {
            let (kj, vj) = (d.k(bi, j, g), d.v(bi, j, g));
            // SAFETY: key j of head g of prompt bi belongs to this unit alone.
            unsafe { dks.slice(kj, kj + d.dh) }.copy_from_slice(&dkt[cc * d.dh..(cc + 1) * d.dh]);
            // SAFETY: as above.
            unsafe { dvs.slice(vj, vj + d.dv) }.copy_from_slice(&dvt[cc * d.dv..(cc + 1) * d.dv]);
        }
    }

    /// # Safety
    /// AVX2 and FMA are there; no other part writes this unit's rows of `dq`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dq_unit_avx<T: Elem>(&self, c: &GradCtx<T>, unit: (usize, usize, usize), sc: &mut Scratch<T>, dqs: &Shared<T>) {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.dq_unit::<T, true>(c, unit, sc, dqs) }
    }

    /// Query tile `qt` of head `hh` of prompt `bi`: its rows of `dq`.
    ///
    /// # Safety
    /// No other part writes this unit's rows of `dq` while it runs.
    #[inline(always)]
    unsafe fn dq_unit<T: Elem, const FMA: bool>(&self, c: &GradCtx<T>, (bi, hh, qt): (usize, usize, usize), sc: &mut Scratch<T>, dqs: &Shared<T>) {
        let d = &c.d;
        let mask = &self.spec.mask;
        let g = hh / d.group();
        let (i0, i1) = d.query_rows(qt);
        let rows = i1 - i0;
        let mut acc = vec![T::zero(); rows * d.dh];
        for (j0, j1) in d.key_tiles_seen(mask, bi, (i0, i1)) {
            let n = j1 - j0;
            gather(d, (c.k, c.v), (bi, g, j0, j1), &mut sc.kt, &mut sc.vr, Some(&mut sc.vt));
            for (cc, j) in (j0..j1).enumerate() {
                let kj = d.k(bi, j, g);
                sc.kr[cc * d.dh..(cc + 1) * d.dh].copy_from_slice(&c.k[kj..kj + d.dh]);
            }
            for (r, i) in (i0..i1).enumerate() {
                let (klo, khi) = mask.keys(bi, i);
                if khi <= j0 || klo >= j1 {
                    continue;
                }
                self.row_grads::<T, FMA>(c, (bi, hh, i), (j0, n), sc);
                let row = &mut acc[r * d.dh..(r + 1) * d.dh];
                for cc in 0..n {
                    if sc.s[cc] != T::zero() {
                        axpy::<T, FMA>(row, sc.s[cc], &sc.kr[cc * d.dh..(cc + 1) * d.dh]);
                    }
                }
            }
        }
        for (r, i) in (i0..i1).enumerate() {
            let qi = d.q(bi, i, hh);
            // SAFETY: row i of head hh of prompt bi belongs to this unit alone.
            unsafe { dqs.slice(qi, qi + d.dh) }.copy_from_slice(&acc[r * d.dh..(r + 1) * d.dh]);
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
}
