//! The fused LM head + token log-prob (src/cpu/logprob.rs) against a naive f64 implementation that builds the
//! full `[T, V]` logits: log-probs, log-sum-exp and entropy for chunk sizes that do and do not divide V, the
//! analytic gradient and central finite differences, out-of-range targets, chunk-size independence on a
//! larger case, and bit-identical results for any thread count.
use mappa::cpu::logprob::{token_logprobs, token_logprobs_backward, LogprobOut};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T: usize = 13;
const D: usize = 24;
const V: usize = 97;

fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Seeded inputs: h `[t, d]`, w `[v, d]`, targets `[t]`, dlogp `[t]`.
#[derive(Clone)]
struct Case {
    h: Vec<f32>,
    w: Vec<f32>,
    targets: Vec<u32>,
    dlogp: Vec<f32>,
    t: usize,
    d: usize,
    v: usize,
}

impl Case {
    fn new(seed: u64, t: usize, d: usize, v: usize) -> Case {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, w) = (uniform(&mut rng, t * d), uniform(&mut rng, v * d));
        let targets = (0..t).map(|_| rng.random_range(0..v as u32)).collect();
        let dlogp = uniform(&mut rng, t);
        Case { h, w, targets, dlogp, t, d, v }
    }

    fn forward(&self, temperature: f32, chunk: usize) -> LogprobOut {
        token_logprobs(&self.h, &self.w, &self.targets, self.t, self.d, self.v, temperature, chunk, true).unwrap()
    }

    /// (dh, dw), with dw accumulated onto `dw0`.
    fn backward(&self, temperature: f32, chunk: usize, dw0: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let lse = self.forward(temperature, chunk).lse;
        let mut dw = dw0.to_vec();
        let (c, g) = (self, &self.dlogp);
        let dh = token_logprobs_backward(&c.h, &c.w, &c.targets, &lse, g, c.t, c.d, c.v, temperature, chunk, &mut dw)
            .unwrap();
        (dh, dw)
    }
}

/// The naive reference in f64: (logp, lse, entropy, dh, dw) from the full `[T, V]` softmax.
struct Naive {
    logp: Vec<f64>,
    lse: Vec<f64>,
    entropy: Vec<f64>,
    dh: Vec<f64>,
    dw: Vec<f64>,
}

fn naive(c: &Case, temperature: f64) -> Naive {
    let (t, d, v) = (c.t, c.d, c.v);
    let mut out = Naive { logp: vec![], lse: vec![], entropy: vec![], dh: vec![0.0; t * d], dw: vec![0.0; v * d] };
    for i in 0..t {
        let hr = &c.h[i * d..(i + 1) * d];
        let logits: Vec<f64> = (0..v)
            .map(|j| {
                let wr = &c.w[j * d..(j + 1) * d];
                hr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / temperature
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        let p: Vec<f64> = logits.iter().map(|l| (l - lse).exp()).collect();
        let target = c.targets[i] as usize;
        out.logp.push(logits[target] - lse);
        out.lse.push(lse);
        out.entropy.push(-p.iter().zip(&logits).map(|(p, l)| p * (l - lse)).sum::<f64>());
        let dhr = &mut out.dh[i * d..(i + 1) * d];
        for (j, (pj, (wr, dwr))) in p.iter().zip(c.w.chunks_exact(d).zip(out.dw.chunks_exact_mut(d))).enumerate() {
            let dl = c.dlogp[i] as f64 * ((j == target) as u8 as f64 - pj) / temperature;
            for (((dh, dw), &wk), &hk) in dhr.iter_mut().zip(dwr).zip(wr).zip(hr) {
                *dh += dl * wk as f64;
                *dw += dl * hk as f64;
            }
        }
    }
    out
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: impl IntoIterator<Item = f64>, tol: f64) {
    let want: Vec<f64> = want.into_iter().collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w} (tol {tol})");
    }
}

#[test]
fn forward_matches_naive_for_every_chunk_size_and_temperature() {
    let c = Case::new(1, T, D, V);
    for temperature in [1.0f32, 0.6] {
        let want = naive(&c, temperature as f64);
        // The distributions must be far from uniform and from one-hot for the test to mean something.
        assert!(want.entropy.iter().all(|&e| e > 0.5 && e < (V as f64).ln() - 0.1), "{:?}", want.entropy);
        for chunk in [1, 16, 97, 200] {
            let got = c.forward(temperature, chunk);
            let at = format!("temperature {temperature}, chunk {chunk}");
            assert_close(&format!("logp ({at})"), &got.logp, want.logp.iter().copied(), 1e-5);
            assert_close(&format!("lse ({at})"), &got.lse, want.lse.iter().copied(), 1e-5);
            assert_close(&format!("entropy ({at})"), got.entropy.as_ref().unwrap(), want.entropy.iter().copied(), 1e-5);
        }
    }
}

#[test]
fn entropy_only_when_asked() {
    let c = Case::new(2, T, D, V);
    let out = token_logprobs(&c.h, &c.w, &c.targets, T, D, V, 1.0, 16, false).unwrap();
    assert!(out.entropy.is_none());
    assert_eq!(out.logp, c.forward(1.0, 16).logp);
}

#[test]
fn backward_matches_naive_gradient_and_accumulates_into_dw() {
    let c = Case::new(3, T, D, V);
    let dw0 = uniform(&mut ChaCha8Rng::seed_from_u64(33), V * D);
    for temperature in [1.0f32, 0.6] {
        let want = naive(&c, temperature as f64);
        for chunk in [1, 16, 97, 200] {
            let (dh, dw) = c.backward(temperature, chunk, &dw0);
            let at = format!("temperature {temperature}, chunk {chunk}");
            assert_close(&format!("dh ({at})"), &dh, want.dh.iter().copied(), 1e-5);
            let added: Vec<f32> = dw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
            assert_close(&format!("dw ({at})"), &added, want.dw.iter().copied(), 1e-5);
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    let c = Case::new(4, T, D, V);
    let temperature = 0.6;
    let chunk = 16;
    let (dh, dw) = c.backward(temperature, chunk, &vec![0.0; V * D]);
    // L = sum_t g_t logp_t, summed in f64.
    let loss = |c: &Case| -> f64 {
        let logp = c.forward(temperature, chunk).logp;
        logp.iter().zip(&c.dlogp).map(|(&l, &g)| l as f64 * g as f64).sum()
    };
    // Observed errors are ~5e-5 (f32 log-probs over a 2e-2 step); a wrong gradient is off by far more.
    let eps = 1e-2f32;
    let mut rng = ChaCha8Rng::seed_from_u64(44);
    for _ in 0..8 {
        for in_h in [true, false] {
            let (len, grad) = if in_h { (T * D, &dh) } else { (V * D, &dw) };
            let k = rng.random_range(0..len);
            let shifted = |delta: f32| {
                let mut p = c.clone();
                if in_h {
                    p.h[k] += delta;
                } else {
                    p.w[k] += delta;
                }
                loss(&p)
            };
            let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
            let what = if in_h { "dh" } else { "dw" };
            assert!(
                (fd - grad[k] as f64).abs() <= 2e-4 + 1e-3 * fd.abs(),
                "{what}[{k}]: analytic {}, fd {fd}",
                grad[k]
            );
        }
    }
}

#[test]
fn out_of_range_target_is_an_error() {
    let mut c = Case::new(5, T, D, V);
    c.targets[7] = V as u32;
    let err = token_logprobs(&c.h, &c.w, &c.targets, T, D, V, 1.0, 16, false).err().expect("target V must fail");
    assert!(err.to_string().contains("target 97 at position 7"), "{err}");
    let (lse, mut dw) = (vec![0.0; T], vec![0.0; V * D]);
    assert!(token_logprobs_backward(&c.h, &c.w, &c.targets, &lse, &c.dlogp, T, D, V, 1.0, 16, &mut dw).is_err());
    c.targets[7] = u32::MAX;
    assert!(token_logprobs(&c.h, &c.w, &c.targets, T, D, V, 1.0, 16, false).is_err());
}

#[test]
fn large_case_chunked_matches_single_chunk() {
    let c = Case::new(6, 64, 64, 4099);
    let dw0 = vec![0.0; 4099 * 64];
    for temperature in [1.0f32, 0.6] {
        let (small, whole) = (c.forward(temperature, 512), c.forward(temperature, 4099));
        let wide = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        assert_close("logp", &small.logp, wide(&whole.logp), 1e-5);
        assert_close("lse", &small.lse, wide(&whole.lse), 1e-5);
        assert_close("entropy", small.entropy.as_ref().unwrap(), wide(whole.entropy.as_ref().unwrap()), 1e-5);
        let ((dh_s, dw_s), (dh_w, dw_w)) = (c.backward(temperature, 512, &dw0), c.backward(temperature, 4099, &dw0));
        assert_close("dh", &dh_s, wide(&dh_w), 1e-5);
        assert_close("dw", &dw_s, wide(&dw_w), 1e-5);
    }
}

#[test]
fn same_bits_for_any_thread_count() {
    let c = Case::new(7, 64, 64, 4099);
    let dw0 = vec![0.0; 4099 * 64];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let out = c.forward(0.6, 512);
            let (dh, dw) = c.backward(0.6, 512, &dw0);
            (out.logp, out.lse, out.entropy, dh, dw)
        })
    };
    let one = run(1);
    for threads in [2, 3, 4] {
        assert!(one == run(threads), "{threads} threads differ from 1");
    }
}
