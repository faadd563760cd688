//! Elementwise and attention operations of the decoder, in f32. Each is the CPU twin of a CUDA kernel
//! (`kernels/<name>.cu`) and the reference it is tested against.
use super::linear::{matmul, View};
use crate::config::ModelConfig;
use rayon::prelude::*;

/// 1 / sqrt(mean(x^2) + eps) of one row: the scale RMSNorm applies, shared with its backward (cpu::grad).
pub fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// RMSNorm of each `w.len()`-wide row of `x` into `y`: y = x / sqrt(mean(x^2) + eps) * w.
pub fn rmsnorm(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let inv = inv_rms(xr, eps);
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// In-place RMSNorm of each row (qwen3's per-head q/k norm).
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    for xr in x.chunks_exact_mut(w.len()) {
        let inv = inv_rms(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v *= inv * g;
        }
    }
}

/// Rotary position embedding in the rotate-half layout (Hugging Face's): dimension i pairs with i + hd/2.
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Rope {
        let hd = cfg.head_dim;
        let mut inv_freq: Vec<f32> =
            (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / hd as f32)).collect();
        if let Some(s) = cfg.rope_scaling {
            // Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
            let old = s.original_max_position_embeddings as f32;
            let (low_wl, high_wl) = (old / s.low_freq_factor, old / s.high_freq_factor);
            for f in &mut inv_freq {
                let wl = 2.0 * std::f32::consts::PI / *f;
                if wl > low_wl {
                    *f /= s.factor;
                } else if wl >= high_wl {
                    let smooth = (old / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        Rope { inv_freq }
    }

    /// The rotation frequency of each dimension pair, `[hd / 2]` (llama3 scaling applied): what the CUDA
    /// kernel turns by.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// cos and sin of every (position, frequency) pair for positions start..start + t: `[t, hd / 2]` each.
    /// Computed once per forward pass and shared by all layers.
    pub fn table(&self, start: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) =
            (Vec::with_capacity(t * self.inv_freq.len()), Vec::with_capacity(t * self.inv_freq.len()));
        for pos in start..start + t {
            for &f in &self.inv_freq {
                let (s, c) = (pos as f32 * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        (cos, sin)
    }

    /// Rotates every head (`head_dim`-wide chunk) of one token's q or k vector by that token's row of the
    /// table (`cos`, `sin`: `hd / 2` values each).
    pub fn apply(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        for head in x.chunks_exact_mut(2 * half) {
            let (a, b) = head.split_at_mut(half);
            for (((x1, x2), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
                let (u, v) = (*x1, *x2);
                *x1 = u * c - v * s;
                *x2 = v * c + u * s;
            }
        }
    }
}

/// SwiGLU over rows of `[gate | up]` (the fused gate/up projection, `2f` wide): out = silu(gate) * up,
/// `f` wide.
pub fn swiglu(out: &mut [f32], gate_up: &[f32], f: usize) {
    for (o, gu) in out.chunks_exact_mut(f).zip(gate_up.chunks_exact(2 * f)) {
        let (g, u) = gu.split_at(f);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// log(sum(exp(x))), stable. The sum runs in f64: over a 50k-150k vocabulary an f32 running sum drifts by
/// ~1e-4, which shows in log-probs and cross-entropies.
pub fn logsumexp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + x.iter().map(|v| (v - max).exp() as f64).sum::<f64>().ln() as f32
}

/// Causal grouped-query attention of `t` new tokens against a contiguous cache that already holds them.
/// q: `[t, n_heads * hd]`; k_cache/v_cache: `[len, n_kv * hd]` where the new tokens are the last `t` rows;
/// out: `[t, n_heads * hd]`. Query i (absolute position len - t + i) sees keys 0..=len - t + i.
#[allow(clippy::too_many_arguments)] // the shapes are the arguments; a struct would only rename them
pub fn attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    t: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
) {
    let kvd = n_kv * hd;
    let start = k_cache.len() / kvd - t;
    let rows: Vec<(usize, usize)> = (start..start + t).map(|p| (0, p)).collect();
    attention_rows(out, q, k_cache, v_cache, &rows, [n_heads, n_kv, hd], |_, j| j * kvd);
}

/// Causal GQA attention of query rows `rows` (sequence, position) over keys and values of every position
/// 0..=position of the row's sequence: `slot(seq, j)` is where position j's `[n_kv * hd]` key (and value)
/// starts in `k` (and `v`). q and out are `[rows, n_heads * hd]`; rows of a sequence are consecutive, in
/// position order. Every (row, head) gets exactly what `attend` gives it alone; the work runs in parallel
/// over runs of up to 4 consecutive rows of one sequence times kv heads, which share their key/value loads.
pub fn attention_rows(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[(usize, usize)],
    [n_heads, n_kv, hd]: [usize; 3],
    slot: impl Fn(usize, usize) -> usize + Sync,
) {
    let (qd, group) = (n_heads * hd, n_heads / n_kv);
    // Runs of rows: (first row, rows).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut run_of = Vec::with_capacity(rows.len());
    for (r, &(seq, _)) in rows.iter().enumerate() {
        match runs.last_mut() {
            Some((first, n)) if rows[*first].0 == seq && *n < 4 => *n += 1,
            _ => runs.push((r, 1)),
        }
        run_of.push(runs.len() - 1);
    }
    // Each unit's outputs, in (row, head) order.
    let mut outs: Vec<Vec<&mut [f32]>> = (0..runs.len() * n_kv).map(|_| Vec::new()).collect();
    for (u, o) in out.chunks_mut(hd).enumerate() {
        let (r, h) = (u / n_heads, u % n_heads);
        outs[run_of[r] * n_kv + h / group].push(o);
    }
    outs.into_par_iter().enumerate().for_each_init(Scratch::default, |sc, (u, mut o)| {
        let ((first, n), g) = (runs[u / n_kv], u % n_kv);
        let (seq, p0) = rows[first];
        sc.slots.clear();
        sc.slots.extend((0..p0 + n).map(|j| slot(seq, j) + g * hd));
        sc.qs.clear();
        sc.last.clear();
        for r in first..first + n {
            for h in g * group..(g + 1) * group {
                sc.qs.push(r * qd + h * hd);
                sc.last.push(rows[r].1);
            }
        }
        attend(&mut o, q, k, v, sc);
    });
}

/// Per-thread buffers of `attention_rows`: a unit's key/value offsets, query offsets, last positions,
/// scores and softmax scales.
#[derive(Default)]
struct Scratch {
    slots: Vec<usize>,
    qs: Vec<usize>,
    last: Vec<usize>,
    scores: Vec<f32>,
    inv: Vec<f32>,
}

/// Queries `q[sc.qs[i]..][..hd]` that share a kv head, each over the keys and values at `sc.slots[..=sc.last[i]]`
/// of `k`/`v` (position order): out[i] = softmax(q k_j / sqrt(hd)) v_j. Each query's order is fixed, so its
/// result depends on nothing else: scores in position order (each a `dot8`), their max, exp and sum in order,
/// the weighted sum of values in position order, one scale; the queries only share the loads. Compiled for
/// AVX2 where the CPU has it: separate multiplies and adds (never fused) in fixed lanes give the same bits at
/// any vector width.
fn attend(out: &mut [&mut [f32]], q: &[f32], k: &[f32], v: &[f32], sc: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2 (just checked).
        return unsafe { attend_avx2(out, q, k, v, sc) };
    }
    attend_body(out, q, k, v, sc, dot8)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attend_avx2(out: &mut [&mut [f32]], q: &[f32], k: &[f32], v: &[f32], sc: &mut Scratch) {
    attend_body(out, q, k, v, sc, |a, b| dot8_avx2(a, b))
}

#[inline(always)]
fn attend_body(
    out: &mut [&mut [f32]],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    sc: &mut Scratch,
    dot8: impl Fn(&[f32], &[f32]) -> f32,
) {
    let Scratch { slots, qs, last, scores, inv } = sc;
    let (hd, len) = (out[0].len(), slots.len());
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    scores.resize(qs.len() * len, 0.0);
    for (j, &s) in slots.iter().enumerate() {
        let kj = &k[s..][..hd];
        for (i, &qi) in qs.iter().enumerate() {
            if j <= last[i] {
                scores[i * len + j] = dot8(&q[qi..][..hd], kj) * scale;
            }
        }
    }
    inv.clear();
    for (i, &l) in last.iter().enumerate() {
        let row = &mut scores[i * len..][..=l];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        inv.push(1.0 / sum);
    }
    out.iter_mut().for_each(|o| o.fill(0.0));
    for (j, &s) in slots.iter().enumerate() {
        let vj = &v[s..][..hd];
        for (i, o) in out.iter_mut().enumerate() {
            if j <= last[i] {
                let e = scores[i * len + j];
                o.iter_mut().zip(vj).for_each(|(o, &x)| *o += e * x);
            }
        }
    }
    for (o, &f) in out.iter_mut().zip(inv.iter()) {
        o.iter_mut().for_each(|o| *o *= f);
    }
}

/// A dot product in a fixed order: lane l sums a[k] b[k] for k = l (mod 8) in order (the last partial chunk
/// lane by lane), then a halving tree. Separate multiply and add (never fused), so `dot8_avx2` gives the same
/// bits.
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let full = a.len() - a.len() % 8;
    for (x, y) in a[..full].chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    dot8_finish(lanes, &a[full..], &b[full..])
}

/// `dot8` with one AVX register for the 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot8_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let full = a.len() - a.len() % 8;
    assert!(b.len() >= full);
    let mut acc = _mm256_setzero_ps();
    for k in (0..full).step_by(8) {
        // Safety: k + 8 <= full, within both slices (asserted above).
        let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(k)), _mm256_loadu_ps(b.as_ptr().add(k))) };
        acc = _mm256_add_ps(acc, _mm256_mul_ps(x, y));
    }
    let mut lanes = [0f32; 8];
    // Safety: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    dot8_finish(lanes, &a[full..], &b[full..])
}

/// The tail (fewer than 8 values, lane by lane) and the halving tree of `dot8`.
#[inline(always)]
fn dot8_finish(mut lanes: [f32; 8], a: &[f32], b: &[f32]) -> f32 {
    for (l, (x, y)) in a.iter().zip(b).enumerate() {
        lanes[l] += x * y;
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = lanes;
    ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7))
}

/// Causal attention probabilities of one head: softmax(q K^T / sqrt(hd)) as `[q.rows, k.rows]`, where the
/// queries are the last `q.rows` positions of the `k.rows` keys (query i sees keys 0..=k.rows - q.rows + i)
/// and the masked entries are 0. Used by the training code (cpu::grad).
pub fn causal_probs(qh: View, kh: View) -> Vec<f32> {
    let (t, len) = (qh.rows, kh.rows);
    let start = len - t;
    let mut s = vec![0f32; t * len];
    matmul(&mut s, qh, kh.t(), 1.0 / (qh.cols as f32).sqrt(), false, gemm::Parallelism::None);
    for (i, row) in s.chunks_exact_mut(len).enumerate() {
        let (seen, future) = row.split_at_mut(start + i + 1);
        softmax(seen);
        future.fill(0.0);
    }
    s
}

/// Copies the rows of a contiguous `width`-wide block into columns `col..col + width` of a row-major matrix
/// with row stride `stride`: how one head's output joins the `[t, heads * hd]` layout.
pub fn scatter_rows(dst: &mut [f32], block: &[f32], width: usize, col: usize, stride: usize) {
    for (i, row) in block.chunks_exact(width).enumerate() {
        dst[i * stride + col..][..width].copy_from_slice(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The AVX2 attention path gives the portable path's bits (ragged head sizes, several queries).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn attend_avx2_equals_portable() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("SKIPPED attend_avx2_equals_portable: no AVX2");
            return;
        }
        for hd in [1, 7, 8, 13, 64] {
            let (k, v, q) = (values(40 * hd, 1), values(40 * hd, 2), values(3 * hd, 3));
            let mut sc = Scratch {
                slots: (0..40).map(|j| (j * 7 % 40) * hd).collect(),
                qs: vec![0, hd, 2 * hd],
                last: vec![5, 39, 0],
                ..Default::default()
            };
            let (mut a, mut b) = (vec![0f32; 3 * hd], vec![0f32; 3 * hd]);
            attend_body(&mut a.chunks_mut(hd).collect::<Vec<_>>(), &q, &k, &v, &mut sc, dot8);
            // Safety: the CPU has AVX2 (checked above).
            unsafe { attend_avx2(&mut b.chunks_mut(hd).collect::<Vec<_>>(), &q, &k, &v, &mut sc) };
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "hd {hd}");
            assert!(a.iter().all(|x| x.is_finite()));
        }
    }
}
