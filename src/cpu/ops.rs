//! Elementwise and attention operations of the decoder, in f32. Each is the CPU twin of a CUDA kernel
//! (kernels/<name>.cu) and the reference it is tested against.
use crate::config::ModelConfig;
use rayon::prelude::*;

/// RMSNorm of each `w.len()`-wide row of `x` into `y`: y = x / sqrt(mean(x^2) + eps) * w.
pub fn rmsnorm(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    for (yr, xr) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// In-place RMSNorm of each row (qwen3's per-head q/k norm).
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
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
        let mut inv_freq: Vec<f32> = (0..hd / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / hd as f32)).collect();
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
        let (mut cos, mut sin) = (Vec::with_capacity(t * self.inv_freq.len()), Vec::with_capacity(t * self.inv_freq.len()));
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

/// Causal grouped-query attention of `t` new tokens against a cache that already holds them.
/// q: `[t, n_heads * hd]`; k_cache/v_cache: `[len, n_kv * hd]` where the new tokens are the last `t` rows;
/// out: `[t, n_heads * hd]`. Query i (absolute position len - t + i) sees keys 0..=len - t + i.
pub fn attention(out: &mut [f32], q: &[f32], k_cache: &[f32], v_cache: &[f32], t: usize, n_heads: usize, n_kv: usize, hd: usize) {
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    let len = k_cache.len() / kvd;
    let group = n_heads / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (token, head); each writes its own hd-wide slice of `out`.
    out.par_chunks_mut(hd).enumerate().for_each_init(
        || vec![0f32; len],
        |scores, (idx, o)| {
            let (i, h) = (idx / n_heads, idx % n_heads);
            let kv_off = (h / group) * hd;
            let qv = &q[i * qd + h * hd..][..hd];
            let visible = len - t + i + 1;
            let s = &mut scores[..visible];
            for (j, sj) in s.iter_mut().enumerate() {
                let kj = &k_cache[j * kvd + kv_off..][..hd];
                *sj = qv.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            softmax(s);
            o.fill(0.0);
            for (j, &p) in s.iter().enumerate() {
                let vj = &v_cache[j * kvd + kv_off..][..hd];
                for (ov, &vv) in o.iter_mut().zip(vj) {
                    *ov += p * vv;
                }
            }
        },
    );
}
