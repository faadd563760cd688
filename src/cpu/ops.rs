//! Elementwise and attention operations of the decoder, in f32. Each is the CPU twin of a CUDA kernel
//! (kernels/<name>.cu) and the reference it is tested against.
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
/// out: `[t, n_heads * hd]`. Query i (absolute position len - t + i) sees keys 0..=len - t + i. Each (row,
/// head) is one `attend`, as in the paged step; (row, head) pairs run in parallel.
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
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    let start = k_cache.len() / kvd - t;
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (u, o)| {
        let (i, h) = (u / n_heads, u % n_heads);
        let kv_off = h / (n_heads / n_kv) * hd;
        let slots = (0..=start + i).map(|j| j * kvd + kv_off);
        attend(o, &q[i * qd + h * hd..][..hd], k_cache, v_cache, slots, scores);
    });
}

/// One query row of one head: out = softmax(q k_j / sqrt(hd)) v_j over the keys and values starting at
/// `slots` (in position order) of `k`/`v`. The order is fixed, so the result depends on nothing else:
/// scores in position order (each a `dot8`), their max, exp and sum in order, the weighted sum of values in
/// order, then one scale. `scores` is scratch. Compiled for AVX2 where the CPU has it: separate multiplies
/// and adds (never fused) in fixed lanes give the same bits at any vector width.
pub fn attend(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    slots: impl Iterator<Item = usize> + Clone,
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // Safety: the CPU has AVX2 (just checked).
        return unsafe { attend_avx2(out, q, k, v, slots, scores) };
    }
    attend_body(out, q, k, v, slots, scores)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attend_avx2(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    slots: impl Iterator<Item = usize> + Clone,
    scores: &mut Vec<f32>,
) {
    attend_body(out, q, k, v, slots, scores)
}

#[inline(always)]
fn attend_body(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    slots: impl Iterator<Item = usize> + Clone,
    scores: &mut Vec<f32>,
) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    scores.clear();
    // A plain loop, not `extend`, so that it is compiled for AVX2 with the rest.
    for s in slots.clone() {
        scores.push(dot8(q, &k[s..][..hd]) * scale);
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (&e, s) in scores.iter().zip(slots) {
        out.iter_mut().zip(&v[s..][..hd]).for_each(|(o, &x)| *o += e * x);
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// A dot product in a fixed order: lane l sums a[k] b[k] for k = l (mod 8) in order, then a halving tree.
/// Separate multiply and add (never fused), so every SIMD width gives the same bits.
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = ac.remainder().iter().zip(bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in tail.enumerate() {
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
