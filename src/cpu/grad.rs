//! Backward passes of the decoder's individual ops, in f32: the CPU reference for training. Each function is
//! the gradient of one forward op in `ops` / `linear` (given the upstream gradient and the forward's
//! inputs, it returns the gradients of those inputs), checked against central finite differences in
//! tests/cpu_grad.rs; the CUDA backward kernels will be tested against these, as the forward kernels are
//! against `ops`.
//!
//! Conventions: arguments come in the order inputs, then outputs. Gradients of activations (dx, dq, ...)
//! are overwritten; gradients of weights (dw, db, d_embed) are accumulated (+=), so that micro-batches and
//! shared weights (a tied LM head, the q/k norm applied to every head) add up without a scratch buffer.
//! Nothing here depends on the thread count: every sum runs in a fixed order, so results are bitwise
//! reproducible.
use super::linear::{matmul, parallelism, View};
use super::ops::{causal_probs, inv_rms, scatter_rows};
use rayon::prelude::*;

/// Backward of y = x W^T (`linear`): x is `[t, inp]`, W `[out, inp]`, dy `[t, out]`.
/// Writes dx = dy W (`[t, inp]`) and accumulates dW += dy^T x (`[out, inp]`).
#[allow(clippy::too_many_arguments)] // the shapes are the arguments, as in `linear`
pub fn linear_backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    t: usize,
    inp: usize,
    out: usize,
    dx: &mut [f32],
    dw: &mut [f32],
) {
    assert_eq!(dy.len(), t * out, "linear_backward: dy has {} values, want {t} x {out}", dy.len());
    assert_eq!(x.len(), t * inp, "linear_backward: x has {} values, want {t} x {inp}", x.len());
    assert_eq!(w.len(), out * inp, "linear_backward: w has {} values, want {out} x {inp}", w.len());
    assert_eq!(dx.len(), t * inp, "linear_backward: dx has {} values, want {t} x {inp}", dx.len());
    assert_eq!(dw.len(), out * inp, "linear_backward: dw has {} values, want {out} x {inp}", dw.len());
    let par = parallelism(t * inp * out);
    let dy = View::rows(dy, t, out);
    matmul(dx, dy, View::rows(w, out, inp), 1.0, false, par);
    matmul(dw, dy.t(), View::rows(x, t, inp), 1.0, true, par);
}

/// Backward of adding a bias to every `width`-wide row: db += sum over the rows of dy (`[rows, width]`).
pub fn bias_backward(dy: &[f32], rows: usize, width: usize, db: &mut [f32]) {
    assert_eq!(dy.len(), rows * width, "bias_backward: dy has {} values, want {rows} x {width}", dy.len());
    assert_eq!(db.len(), width, "bias_backward: db has {} values, want {width}", db.len());
    for row in dy.chunks_exact(width) {
        db.iter_mut().zip(row).for_each(|(b, g)| *b += g);
    }
}

/// Backward of `rmsnorm` / `rmsnorm_inplace` over the `w.len()`-wide rows of x (the pre-norm input), so also
/// qwen3's per-head q/k norm (rows `head_dim` wide). With r = 1 / sqrt(mean(x^2) + eps) and y = x r w:
/// dx = r (dy w) - x r^3 / d * sum(dy w x) (overwritten), dw += sum over rows of dy x r.
pub fn rmsnorm_backward(dy: &[f32], x: &[f32], w: &[f32], eps: f32, dx: &mut [f32], dw: &mut [f32]) {
    let d = w.len();
    assert!(d > 0 && x.len() % d == 0, "rmsnorm_backward: x has {} values, not rows of {d}", x.len());
    assert_eq!(dy.len(), x.len(), "rmsnorm_backward: dy has {} values, x {}", dy.len(), x.len());
    assert_eq!(dx.len(), x.len(), "rmsnorm_backward: dx has {} values, x {}", dx.len(), x.len());
    assert_eq!(dw.len(), d, "rmsnorm_backward: dw has {} values, w {d}", dw.len());
    for ((gr, xr), dxr) in dy.chunks_exact(d).zip(x.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
        let r = inv_rms(xr, eps);
        let dot: f32 = gr.iter().zip(xr).zip(w).map(|((g, v), w)| g * w * v).sum();
        let c = r * r * r / d as f32 * dot;
        for ((((o, dwi), &g), &v), &wi) in dxr.iter_mut().zip(dw.iter_mut()).zip(gr).zip(xr).zip(w) {
            *o = r * g * wi - c * v;
            *dwi += g * v * r;
        }
    }
}

/// Backward of `Rope::apply` on one token's q or k vector (every head): the rotation is orthogonal, so the
/// gradient is rotated back by the same angle (sin negated), in place.
pub fn rope_backward(dx: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    assert_eq!(sin.len(), half, "rope_backward: cos has {half} values, sin {}", sin.len());
    assert!(half > 0 && dx.len() % (2 * half) == 0, "rope_backward: {} values, not heads of {}", dx.len(), 2 * half);
    for head in dx.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for (((x1, x2), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            let (u, v) = (*x1, *x2);
            *x1 = u * c + v * s;
            *x2 = v * c - u * s;
        }
    }
}

/// Backward of `swiglu` (out = silu(gate) * up over `[gate | up]` rows, `2f` wide): with s = sigmoid(gate),
/// d_gate = d_out up s (1 + gate (1 - s)), d_up = d_out gate s; `d_gate_up` (`[rows, 2f]`) is overwritten.
pub fn swiglu_backward(d_out: &[f32], gate_up: &[f32], f: usize, d_gate_up: &mut [f32]) {
    assert!(f > 0 && d_out.len() % f == 0, "swiglu_backward: d_out has {} values, not rows of {f}", d_out.len());
    let rows = d_out.len() / f;
    assert_eq!(
        gate_up.len(),
        rows * 2 * f,
        "swiglu_backward: gate_up has {} values, want {rows} x {}",
        gate_up.len(),
        2 * f
    );
    assert_eq!(
        d_gate_up.len(),
        rows * 2 * f,
        "swiglu_backward: d_gate_up has {} values, want {rows} x {}",
        d_gate_up.len(),
        2 * f
    );
    for ((go, gu), dgu) in d_out.chunks_exact(f).zip(gate_up.chunks_exact(2 * f)).zip(d_gate_up.chunks_exact_mut(2 * f))
    {
        let (g, u) = gu.split_at(f);
        let (dg, du) = dgu.split_at_mut(f);
        for ((((&o, &g), &u), dg), du) in go.iter().zip(g).zip(u).zip(dg).zip(du) {
            let s = 1.0 / (1.0 + (-g).exp());
            *dg = o * u * s * (1.0 + g * (1.0 - s));
            *du = o * g * s;
        }
    }
}

/// Packed causal self-attention shapes: several sequences laid end to end, T = sum of `seq_lens` rows.
/// q and its gradients are `[T, n_heads * hd]`, k and v and theirs `[T, n_kv * hd]`; sequence j occupies
/// rows `off_j .. off_j + seq_lens[j]`, and its token i (within the sequence) attends to its tokens 0..=i
/// only, never across sequences. Positions (rope) are the caller's business, so no cache offset.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    pub seq_lens: &'a [usize],
    pub n_heads: usize,
    pub n_kv: usize,
    pub hd: usize,
}

impl Packed<'_> {
    /// Checks the shapes of q, k, v (and anything shaped like them) and returns T.
    fn check(&self, what: &str, q: &[&[f32]], kv: &[&[f32]]) -> usize {
        let Packed { seq_lens, n_heads, n_kv, hd } = *self;
        assert!(n_kv > 0 && hd > 0 && n_heads % n_kv == 0, "{what}: {n_heads} heads are not groups of {n_kv} kv heads");
        let t: usize = seq_lens.iter().sum();
        for (i, a) in q.iter().enumerate() {
            assert_eq!(
                a.len(),
                t * n_heads * hd,
                "{what}: q-shaped argument {i} has {} values, want {t} x {n_heads} x {hd}",
                a.len()
            );
        }
        for (i, a) in kv.iter().enumerate() {
            assert_eq!(
                a.len(),
                t * n_kv * hd,
                "{what}: kv-shaped argument {i} has {} values, want {t} x {n_kv} x {hd}",
                a.len()
            );
        }
        t
    }

    /// (first row, length) of every non-empty sequence.
    fn spans(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.seq_lens
            .iter()
            .scan(0, |off, &len| {
                *off += len;
                Some((*off - len, len))
            })
            .filter(|&(_, len)| len > 0)
    }
}

/// One head `h` of one sequence (rows `off .. off + len`): the strided views of its q, k, v rows.
fn head_views<'a>(
    p: Packed,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    h: usize,
    off: usize,
    len: usize,
) -> [View<'a>; 3] {
    let (qd, kvd) = (p.n_heads * p.hd, p.n_kv * p.hd);
    let kv_off = off * kvd + (h / (p.n_heads / p.n_kv)) * p.hd;
    let view = |data: &'a [f32], rs| View { data, rows: len, cols: p.hd, rs, cs: 1 };
    [view(&q[off * qd + h * p.hd..], qd), view(&k[kv_off..], kvd), view(&v[kv_off..], kvd)]
}

/// Causal GQA self-attention over packed sequences (layout in `Packed`): out (`[T, n_heads * hd]`) = P V per
/// head and sequence. Equal to `ops::attention` run on each sequence alone with a cache holding just it.
pub fn attention_packed_forward(q: &[f32], k: &[f32], v: &[f32], p: Packed, out: &mut [f32]) {
    p.check("attention_packed_forward", &[q, out], &[k, v]);
    let qd = p.n_heads * p.hd;
    let heads: Vec<Vec<f32>> = (0..p.n_heads)
        .into_par_iter()
        .map(|h| {
            let mut o = vec![0f32; out.len() / p.n_heads];
            for (off, len) in p.spans() {
                let [qh, kh, vh] = head_views(p, q, k, v, h, off, len);
                let pr = causal_probs(qh, kh);
                let dst = &mut o[off * p.hd..(off + len) * p.hd];
                matmul(dst, View::rows(&pr, len, len), vh, 1.0, false, gemm::Parallelism::None);
            }
            o
        })
        .collect();
    for (h, o) in heads.iter().enumerate() {
        scatter_rows(out, o, p.hd, h * p.hd, qd);
    }
}

/// Backward of `attention_packed_forward`: writes dq, dk, dv (shapes of q, k, v). Per head and sequence,
/// with P recomputed and scale = 1 / sqrt(hd): dV += P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)),
/// dQ = scale dS K, dK += scale dS^T Q. dk and dv sum over the query heads of a kv group, in head order;
/// groups run in parallel.
#[allow(clippy::too_many_arguments)] // three inputs, three outputs, the upstream gradient and the layout
pub fn attention_backward(
    d_out: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: Packed,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let t = p.check("attention_backward", &[d_out, q, dq], &[k, v, dk, dv]);
    let (qd, kvd, hd) = (p.n_heads * p.hd, p.n_kv * p.hd, p.hd);
    let group = p.n_heads / p.n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let serial = gemm::Parallelism::None;
    // Per kv head: dq of its query heads (`[group, T, hd]`), its dk and dv (`[T, hd]` each).
    let grads: Vec<[Vec<f32>; 3]> = (0..p.n_kv)
        .into_par_iter()
        .map(|g| {
            let (mut gq, mut gk, mut gv) = (vec![0f32; group * t * hd], vec![0f32; t * hd], vec![0f32; t * hd]);
            for (off, len) in p.spans() {
                let rows = off * hd..(off + len) * hd;
                for (j, gq) in gq.chunks_exact_mut(t * hd).enumerate() {
                    let h = g * group + j;
                    let [qh, kh, vh] = head_views(p, q, k, v, h, off, len);
                    let doh = View { data: &d_out[off * qd + h * hd..], rows: len, cols: hd, rs: qd, cs: 1 };
                    let pr = causal_probs(qh, kh);
                    let prv = View::rows(&pr, len, len);
                    matmul(&mut gv[rows.clone()], prv.t(), doh, 1.0, true, serial);
                    let mut ds = vec![0f32; len * len];
                    matmul(&mut ds, doh, vh.t(), 1.0, false, serial);
                    for (dr, pr) in ds.chunks_exact_mut(len).zip(pr.chunks_exact(len)) {
                        let dot: f32 = dr.iter().zip(pr).map(|(d, p)| d * p).sum();
                        dr.iter_mut().zip(pr).for_each(|(d, p)| *d = p * (*d - dot));
                    }
                    let dsv = View::rows(&ds, len, len);
                    matmul(&mut gq[rows.clone()], dsv, kh, scale, false, serial);
                    matmul(&mut gk[rows.clone()], dsv.t(), qh, scale, true, serial);
                }
            }
            [gq, gk, gv]
        })
        .collect();
    for (g, [gq, gk, gv]) in grads.iter().enumerate() {
        for (j, gq) in gq.chunks_exact(t * hd).enumerate() {
            scatter_rows(dq, gq, hd, (g * group + j) * hd, qd);
        }
        scatter_rows(dk, gk, hd, g * hd, kvd);
        scatter_rows(dv, gv, hd, g * hd, kvd);
    }
}

/// Backward of the embedding lookup `x[i] = E[tokens[i]]` (`d` wide): `d_embed[tokens[i]] += d_x[i]`. A
/// deterministic scatter-add: tokens are visited in order, so repeated ids sum in a fixed order.
pub fn embedding_backward(d_x: &[f32], tokens: &[u32], d: usize, d_embed: &mut [f32]) {
    assert_eq!(
        d_x.len(),
        tokens.len() * d,
        "embedding_backward: d_x has {} values, want {} x {d}",
        d_x.len(),
        tokens.len()
    );
    assert!(
        d > 0 && d_embed.len() % d == 0,
        "embedding_backward: d_embed has {} values, not rows of {d}",
        d_embed.len()
    );
    let vocab = d_embed.len() / d;
    for (&id, g) in tokens.iter().zip(d_x.chunks_exact(d)) {
        assert!((id as usize) < vocab, "embedding_backward: token id {id} is outside the vocabulary (size {vocab})");
        d_embed[id as usize * d..][..d].iter_mut().zip(g).for_each(|(e, g)| *e += g);
    }
}
