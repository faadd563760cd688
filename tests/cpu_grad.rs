//! The CPU backward passes (`cpu::grad`) against central finite differences of L = sum(g * f(inputs)), with a
//! random upstream gradient g, for every input and weight of every op; plus the attention properties that a
//! finite-difference check cannot single out (sequence isolation, a length-1 sequence's value-only path).
use mappa::cpu::grad::{
    attention_backward, attention_packed_forward, bias_backward, embedding_backward, linear_backward, rmsnorm_backward,
    rope_backward, swiglu_backward, Packed,
};
use mappa::cpu::linear::linear;
use mappa::cpu::ops::{attention, rmsnorm, rmsnorm_inplace, swiglu, Rope};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values of magnitude 0.25..1 with random signs: never zero, never tiny, so no gradient vanishes by
/// accident and rmsnorm's rows are far from its eps.
fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(0.25f32..1.0) * if rng.random_bool(0.5) { 1.0 } else { -1.0 }).collect()
}

/// L = sum(g * y), summed in f64 so the sum adds no rounding of its own.
fn loss(g: &[f32], y: &[f32]) -> f64 {
    assert_eq!(g.len(), y.len());
    g.iter().zip(y).map(|(&g, &y)| g as f64 * y as f64).sum()
}

/// Finite-difference step. The forward runs in f32: an output's rounding (~1e-7 relative, outputs O(1), a
/// few dozen of them) moves L by ~1e-6, which the central difference divides by 2 EPS = 0.02, ~5e-5 of
/// noise; the truncation error is EPS^2 / 6 * L''' ~ 2e-5 for these O(1) inputs.
const EPS: f32 = 1e-2;
/// |fd - analytic| <= ABS_TOL + REL_TOL |analytic|: ~20x the error budget above, and far below a wrong
/// gradient's error (a flipped sign is off by 2 |analytic|, which `check` requires to exceed 0.1 somewhere).
const ABS_TOL: f64 = 2e-3;
const REL_TOL: f64 = 1e-2;

/// The entries where `analytic` disagrees with the central difference of `l` around `x`.
fn fd_mismatches(x: &[f32], analytic: &[f32], l: impl Fn(&[f32]) -> f64) -> Vec<String> {
    assert_eq!(x.len(), analytic.len());
    let mut xp = x.to_vec();
    let mut bad = Vec::new();
    for i in 0..x.len() {
        xp[i] = x[i] + EPS;
        let up = l(&xp);
        xp[i] = x[i] - EPS;
        let down = l(&xp);
        xp[i] = x[i];
        let fd = (up - down) / (2.0 * EPS as f64);
        let an = analytic[i] as f64;
        if (fd - an).abs() > ABS_TOL + REL_TOL * an.abs() {
            bad.push(format!("[{i}] finite difference {fd:.6}, analytic {an:.6}"));
        }
    }
    bad
}

/// Asserts that `analytic` is the gradient of `l` at `x`, and that it is not so small that a wrong one could
/// pass too.
fn check(what: &str, x: &[f32], analytic: &[f32], l: impl Fn(&[f32]) -> f64) {
    let bad = fd_mismatches(x, analytic, l);
    assert!(bad.is_empty(), "{what}: {} of {} entries off:\n{}", bad.len(), x.len(), bad.join("\n"));
    let largest = analytic.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(largest > 0.05, "{what}: the gradient is too small ({largest}) for the check to mean anything");
}

/// `after - before`: what a function accumulated into a buffer that started at `before`.
fn added(after: &[f32], before: &[f32]) -> Vec<f32> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[test]
fn linear_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (t, inp, out) = (3, 5, 4);
    let (x, w, g) = (rand_vec(&mut rng, t * inp), rand_vec(&mut rng, out * inp), rand_vec(&mut rng, t * out));
    let l = |x: &[f32], w: &[f32]| {
        let mut y = vec![0f32; t * out];
        linear(&mut y, x, w, t, inp, out, false);
        loss(&g, &y)
    };
    let mut dx = vec![0f32; t * inp];
    let dw0 = rand_vec(&mut rng, out * inp);
    let mut dw = dw0.clone();
    linear_backward(&g, &x, &w, t, inp, out, &mut dx, &mut dw);
    check("linear dx", &x, &dx, |x| l(x, &w));
    check("linear dw (accumulated)", &w, &added(&dw, &dw0), |w| l(&x, w));
}

#[test]
fn bias_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (rows, width) = (4, 6);
    let (x, b, g) = (rand_vec(&mut rng, rows * width), rand_vec(&mut rng, width), rand_vec(&mut rng, rows * width));
    let l = |b: &[f32]| {
        let y: Vec<f32> = x.chunks_exact(width).flat_map(|r| r.iter().zip(b).map(|(x, b)| x + b)).collect();
        loss(&g, &y)
    };
    let db0 = rand_vec(&mut rng, width);
    let mut db = db0.clone();
    bias_backward(&g, rows, width, &mut db);
    check("bias db (accumulated)", &b, &added(&db, &db0), l);
}

/// rmsnorm over `rows` rows of `d` (the layer norms), or in place over rows of one head (qwen3's q/k norm).
fn check_rmsnorm(seed: u64, rows: usize, d: usize, per_head: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (x, w, g) = (rand_vec(&mut rng, rows * d), rand_vec(&mut rng, d), rand_vec(&mut rng, rows * d));
    let eps = 1e-6;
    let l = |x: &[f32], w: &[f32]| {
        let mut y = x.to_vec();
        if per_head {
            rmsnorm_inplace(&mut y, w, eps);
        } else {
            rmsnorm(&mut y, x, w, eps);
        }
        loss(&g, &y)
    };
    let mut dx = vec![0f32; rows * d];
    let dw0 = rand_vec(&mut rng, d);
    let mut dw = dw0.clone();
    rmsnorm_backward(&g, &x, &w, eps, &mut dx, &mut dw);
    check("rmsnorm dx", &x, &dx, |x| l(x, &w));
    check("rmsnorm dw (accumulated)", &w, &added(&dw, &dw0), |w| l(&x, w));
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    check_rmsnorm(3, 3, 16, false);
}

#[test]
fn per_head_qk_norm_backward_matches_finite_differences() {
    // 2 tokens x 3 heads of hd 8: the weight is shared by every head, so dw sums over 6 rows.
    check_rmsnorm(4, 2 * 3, 8, true);
}

#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (t, heads, hd) = (3, 2, 8);
    let width = heads * hd;
    let angles: Vec<f32> = (0..t * hd / 2).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
    let (x, g) = (rand_vec(&mut rng, t * width), rand_vec(&mut rng, t * width));
    let rows = |i: usize| (&cos[i * hd / 2..][..hd / 2], &sin[i * hd / 2..][..hd / 2]);
    let l = |x: &[f32]| {
        let mut y = x.to_vec();
        for (i, row) in y.chunks_exact_mut(width).enumerate() {
            let (c, s) = rows(i);
            Rope::apply(row, c, s);
        }
        loss(&g, &y)
    };
    let mut dx = g.clone();
    for (i, row) in dx.chunks_exact_mut(width).enumerate() {
        let (c, s) = rows(i);
        rope_backward(row, c, s);
    }
    check("rope dx", &x, &dx, l);
}

/// The swiglu case: (gate_up, g, the analytic d_gate_up, the loss as a function of gate_up).
fn swiglu_case() -> (Vec<f32>, Vec<f32>, impl Fn(&[f32]) -> f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (rows, f) = (3, 5);
    // Gates over -3..3, so silu is exercised on both sides of its minimum.
    let gate_up: Vec<f32> = rand_vec(&mut rng, rows * 2 * f).iter().map(|v| 3.0 * v).collect();
    let g = rand_vec(&mut rng, rows * f);
    let mut d = vec![0f32; rows * 2 * f];
    swiglu_backward(&g, &gate_up, f, &mut d);
    let l = move |gu: &[f32]| {
        let mut y = vec![0f32; rows * f];
        swiglu(&mut y, gu, f);
        loss(&g, &y)
    };
    (gate_up, d, l)
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let (gate_up, d, l) = swiglu_case();
    check("swiglu d_gate_up", &gate_up, &d, l);
}

#[test]
fn the_check_rejects_a_sign_flipped_gradient() {
    let (gate_up, d, l) = swiglu_case();
    let flipped: Vec<f32> = d.iter().map(|v| -v).collect();
    let bad = fd_mismatches(&gate_up, &flipped, &l);
    // Every entry whose gradient is not tiny must be caught.
    let big = d.iter().filter(|v| v.abs() > 1e-3).count();
    assert!(big > d.len() / 2 && bad.len() >= big, "{} of {big} flipped entries caught", bad.len());
    // One wrong entry alone is caught too.
    let mut one = d.clone();
    let i = (0..d.len()).max_by(|&a, &b| d[a].abs().total_cmp(&d[b].abs())).unwrap();
    one[i] = -one[i];
    assert_eq!(fd_mismatches(&gate_up, &one, &l).len(), 1);
}

/// Packed inputs for attention: q `[T, n_heads * hd]`, k and v `[T, n_kv * hd]`, g like q.
struct AttnCase {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
}

const HD: usize = 8;

fn attn_case(seed: u64, t: usize, n_heads: usize, n_kv: usize) -> AttnCase {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // q and k scaled up so the softmax is far from uniform (scores of a few units).
    let mut big = |n| rand_vec(&mut rng, n).iter().map(|v| 2.0 * v).collect::<Vec<f32>>();
    let (q, k) = (big(t * n_heads * HD), big(t * n_kv * HD));
    AttnCase { q, k, v: rand_vec(&mut rng, t * n_kv * HD), g: rand_vec(&mut rng, t * n_heads * HD) }
}

fn forward(c: &AttnCase, p: Packed, q: &[f32], k: &[f32], v: &[f32]) -> f64 {
    let mut out = vec![0f32; c.q.len()];
    attention_packed_forward(q, k, v, p, &mut out);
    loss(&c.g, &out)
}

/// (dq, dk, dv) of the case's loss.
fn attn_grads(c: &AttnCase, p: Packed) -> [Vec<f32>; 3] {
    let (mut dq, mut dk, mut dv) = (vec![f32::NAN; c.q.len()], vec![f32::NAN; c.k.len()], vec![f32::NAN; c.v.len()]);
    attention_backward(&c.g, &c.q, &c.k, &c.v, p, &mut dq, &mut dk, &mut dv);
    [dq, dk, dv]
}

const LENS: [usize; 3] = [1, 3, 7];
/// (n_heads, n_kv): GQA ratios 1 and 3.
const HEADS: [(usize, usize); 2] = [(2, 2), (6, 2)];

#[test]
fn packed_attention_forward_equals_ops_attention_per_sequence() {
    for (n_heads, n_kv) in HEADS {
        let t = LENS.iter().sum();
        let c = attn_case(7, t, n_heads, n_kv);
        let p = Packed { seq_lens: &LENS, n_heads, n_kv, hd: HD };
        let mut packed = vec![0f32; c.q.len()];
        attention_packed_forward(&c.q, &c.k, &c.v, p, &mut packed);
        let (qd, kvd) = (n_heads * HD, n_kv * HD);
        let mut off = 0;
        for len in LENS {
            // The cache holds just this sequence: no earlier positions to see.
            let mut alone = vec![0f32; len * qd];
            let (q, k, v) =
                (&c.q[off * qd..][..len * qd], &c.k[off * kvd..][..len * kvd], &c.v[off * kvd..][..len * kvd]);
            attention(&mut alone, q, k, v, len, n_heads, n_kv, HD);
            for (a, b) in alone.iter().zip(&packed[off * qd..][..len * qd]) {
                assert!((a - b).abs() <= 1e-6, "{n_heads}/{n_kv} heads, sequence at {off}: {a} vs {b}");
            }
            off += len;
        }
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    for (n_heads, n_kv) in HEADS {
        let c = attn_case(8, LENS.iter().sum(), n_heads, n_kv);
        let p = Packed { seq_lens: &LENS, n_heads, n_kv, hd: HD };
        let [dq, dk, dv] = attn_grads(&c, p);
        let what = |x| format!("attention {x}, {n_heads} heads / {n_kv} kv");
        check(&what("dq"), &c.q, &dq, |q| forward(&c, p, q, &c.k, &c.v));
        check(&what("dk"), &c.k, &dk, |k| forward(&c, p, &c.q, k, &c.v));
        check(&what("dv"), &c.v, &dv, |v| forward(&c, p, &c.q, &c.k, v));
    }
}

#[test]
fn one_token_attention_has_only_the_value_path() {
    // A length-1 sequence attends to itself with probability 1 whatever q and k are: dq = dk = 0 and dv is
    // d_out summed over the group's query heads.
    let (n_heads, n_kv) = (6, 2);
    let c = attn_case(9, 1, n_heads, n_kv);
    let p = Packed { seq_lens: &[1], n_heads, n_kv, hd: HD };
    let [dq, dk, dv] = attn_grads(&c, p);
    assert!(dq.iter().chain(&dk).all(|&v| v == 0.0), "dq {dq:?}, dk {dk:?}");
    for (kv, dv) in dv.chunks_exact(HD).enumerate() {
        for (i, &got) in dv.iter().enumerate() {
            let want: f32 = (0..3).map(|j| c.g[(kv * 3 + j) * HD + i]).sum();
            assert!((got - want).abs() <= 1e-6, "dv[{kv}][{i}] = {got}, want {want}");
        }
    }
}

#[test]
fn packed_sequences_get_no_gradient_from_each_other() {
    for (n_heads, n_kv) in HEADS {
        let (qd, kvd) = (n_heads * HD, n_kv * HD);
        let t = LENS.iter().sum();
        let mut c = attn_case(10, t, n_heads, n_kv);
        // The loss sees only the middle sequence (rows 1..4).
        let rows = 1..4;
        for (i, g) in c.g.chunks_exact_mut(qd).enumerate() {
            if !rows.contains(&i) {
                g.fill(0.0);
            }
        }
        let p = Packed { seq_lens: &LENS, n_heads, n_kv, hd: HD };
        let [dq, dk, dv] = attn_grads(&c, p);
        for (grad, width, name) in [(&dq, qd, "dq"), (&dk, kvd, "dk"), (&dv, kvd, "dv")] {
            for (i, row) in grad.chunks_exact(width).enumerate() {
                let nonzero = row.iter().filter(|&&v| v != 0.0).count();
                if name == "dq" && i == rows.start {
                    // A sequence's first token attends only to itself: its softmax is constant.
                    assert_eq!(nonzero, 0, "dq of the sequence's first token: {row:?}");
                } else if rows.contains(&i) {
                    assert!(nonzero > 0, "{name} row {i} of the loss's own sequence is all zero");
                } else {
                    assert_eq!(nonzero, 0, "{name} row {i} of another sequence has gradient: {row:?}");
                }
            }
        }
    }
}

#[test]
fn embedding_backward_matches_finite_differences_and_accumulates_repeats() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (vocab, d) = (6, 4);
    let tokens = [2u32, 0, 2, 2, 5];
    let (table, g) = (rand_vec(&mut rng, vocab * d), rand_vec(&mut rng, tokens.len() * d));
    let l = |table: &[f32]| {
        let x: Vec<f32> = tokens.iter().flat_map(|&id| table[id as usize * d..][..d].to_vec()).collect();
        loss(&g, &x)
    };
    let de0 = rand_vec(&mut rng, vocab * d);
    let mut de = de0.clone();
    embedding_backward(&g, &tokens, d, &mut de);
    let grad = added(&de, &de0);
    check("embedding d_embed (accumulated)", &table, &grad, l);
    // Token 2 (positions 0, 2, 3) sums three rows, in that order; tokens never seen get nothing.
    for i in 0..d {
        assert_eq!(de[2 * d + i], de0[2 * d + i] + g[i] + g[2 * d + i] + g[3 * d + i]);
    }
    for id in [1, 3, 4] {
        assert_eq!(&de[id * d..][..d], &de0[id * d..][..d], "token {id} never appeared");
    }
}
