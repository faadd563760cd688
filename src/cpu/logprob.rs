//! The fused LM head + token log-prob: `log π(target_t) = l_t[target_t] - logsumexp_v(l_t[v])` with
//! l_t = h_t W^T / temperature, for every position t, its gradient, and optionally the policy's entropy,
//! without ever holding the `[T, V]` logits. Training scores thousands of positions against a 50k-150k
//! vocabulary, where `[T, V]` in f32 is gigabytes; instead W's rows are walked in chunks, each chunk's
//! `[T, chunk]` logits come from one GEMM into a scratch buffer, and an online log-sum-exp (running max,
//! running sum in f64, as `ops::logsumexp`) folds them into per-position state. The backward pass recomputes
//! each chunk's logits from the saved log-sum-exp rather than storing them. Memory stays O(T x chunk) on top
//! of the inputs and gradients.
//!
//! This is the CPU twin (and reference) of the future CUDA kernel.
//!
//! Threads: the GEMMs run on rayon (`gemm::Parallelism::Rayon`), the per-position reductions are a parallel
//! loop over rows with a fixed order inside each row. Determinism: the reduction order of every value depends
//! only on `chunk`, not on the thread count (gemm splits the output, not the inner dimension), so results are
//! bit-identical for any thread count (tests/cpu_logprob.rs checks it); different `chunk` sizes agree only up to
//! f32 rounding.
use super::linear::{matmul, parallelism, View};
use crate::sample::TopK;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

/// Per-position results of [`token_logprobs`]: `[T]` each.
pub struct LogprobOut {
    /// log π(target_t) under softmax(logits / temperature).
    pub logp: Vec<f32>,
    /// logsumexp over the vocabulary of logits / temperature (what the backward pass needs).
    pub lse: Vec<f32>,
    /// Entropy of softmax(logits / temperature), when asked for.
    pub entropy: Option<Vec<f32>>,
}

/// One position's running reduction over the vocabulary chunks seen so far (all of logits / temperature).
#[derive(Clone, Copy)]
struct Online {
    max: f64,
    /// sum of exp(l - max)
    sum: f64,
    /// sum of exp(l - max) * l, for the entropy
    dot: f64,
    target: f64,
}

/// Checks the shapes (panics, as `matmul` does: a caller bug) and the run-time values (errors).
#[allow(clippy::too_many_arguments)] // the shapes are the arguments; a struct would only rename them
fn check(
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    t: usize,
    d: usize,
    v: usize,
    temperature: f32,
    chunk: usize,
) -> Result<()> {
    assert_eq!(h.len(), t * d, "token_logprobs: h has {} values, want {t} x {d}", h.len());
    assert_eq!(w.len(), v * d, "token_logprobs: w has {} values, want {v} x {d}", w.len());
    assert_eq!(targets.len(), t, "token_logprobs: {} targets for {t} positions", targets.len());
    ensure!(v > 0, "token_logprobs: empty vocabulary");
    ensure!(chunk > 0, "token_logprobs: chunk must be positive");
    ensure!(temperature > 0.0 && temperature.is_finite(), "token_logprobs: temperature {temperature} is not positive");
    if let Some((i, &bad)) = targets.iter().enumerate().find(|&(_, &x)| x as usize >= v) {
        bail!("token_logprobs: target {bad} at position {i} is outside the vocabulary of {v}");
    }
    Ok(())
}

/// The vocabulary chunks as (first row, row count).
fn chunks(v: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..v).step_by(chunk).map(move |v0| (v0, chunk.min(v - v0)))
}

/// scratch = h W[v0..v0 + rows]^T / temperature: the `[T, rows]` logits of one vocabulary chunk.
#[allow(clippy::too_many_arguments)]
fn chunk_logits(
    scratch: &mut [f32],
    h: &[f32],
    w: &[f32],
    t: usize,
    d: usize,
    v0: usize,
    rows: usize,
    temperature: f32,
) {
    let wc = View::rows(&w[v0 * d..(v0 + rows) * d], rows, d).t();
    matmul(scratch, View::rows(h, t, d), wc, 1.0 / temperature, false, parallelism(t * d * rows));
}

/// log π(target_t) for each of the `t` positions, with logits = h W^T / temperature.
/// h: `[t, d]` final hidden states, w: `[v, d]` LM head, targets: `[t]` token ids. `chunk` rows of W are
/// scored at a time (a `[t, chunk]` scratch); `with_entropy` adds the entropy of each position's distribution.
/// Errors on a target outside the vocabulary, an empty vocabulary, chunk 0 or a non-positive temperature.
#[allow(clippy::too_many_arguments)]
pub fn token_logprobs(
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    t: usize,
    d: usize,
    v: usize,
    temperature: f32,
    chunk: usize,
    with_entropy: bool,
) -> Result<LogprobOut> {
    Ok(reduce(h, w, targets, t, d, v, temperature, chunk, with_entropy, 0)?.0)
}

/// [`token_logprobs`] with, at each position, the `k` most likely tokens and their log-probs (most likely
/// first, ties by the lower id), kept as the chunks go by. A target's log-prob and its own entry among the
/// alternatives are the same number (one expression over the same logit and log-sum-exp).
#[allow(clippy::too_many_arguments)]
pub fn token_top_logprobs(
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    t: usize,
    d: usize,
    v: usize,
    temperature: f32,
    chunk: usize,
    k: usize,
) -> Result<(LogprobOut, Vec<Vec<(u32, f32)>>)> {
    reduce(h, w, targets, t, d, v, temperature, chunk, false, k)
}

#[allow(clippy::too_many_arguments)]
fn reduce(
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    t: usize,
    d: usize,
    v: usize,
    temperature: f32,
    chunk: usize,
    with_entropy: bool,
    k: usize,
) -> Result<(LogprobOut, Vec<Vec<(u32, f32)>>)> {
    check(h, w, targets, t, d, v, temperature, chunk)?;
    let chunk = chunk.min(v);
    let mut scratch = vec![0f32; t * chunk];
    let mut state = vec![Online { max: f64::NEG_INFINITY, sum: 0.0, dot: 0.0, target: 0.0 }; t];
    let mut tops = vec![TopK::<f32>::new(k); t];
    for (v0, rows) in chunks(v, chunk) {
        let scratch = &mut scratch[..t * rows];
        chunk_logits(scratch, h, w, t, d, v0, rows, temperature);
        let states = state.par_iter_mut().zip(tops.par_iter_mut());
        scratch.par_chunks(rows).zip(states).zip(targets.par_iter()).for_each(|((row, (s, top)), &tg)| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64)).max(s.max);
            let rescale = (s.max - max).exp();
            let (mut sum, mut dot) = (s.sum * rescale, s.dot * rescale);
            for &l in row.iter() {
                let e = (l as f64 - max).exp();
                sum += e;
                dot += e * l as f64;
            }
            (s.max, s.sum, s.dot) = (max, sum, dot);
            if let Some(l) = (tg as usize).checked_sub(v0).and_then(|j| row.get(j)) {
                s.target = *l as f64;
            }
            if k > 0 {
                for (j, &l) in row.iter().enumerate() {
                    top.offer((v0 + j) as u32, l);
                }
            }
        });
    }
    let lse: Vec<f64> = state.iter().map(|s| s.max + s.sum.ln()).collect();
    let top = tops
        .into_iter()
        .zip(&lse)
        .map(|(top, &l)| top.into_sorted().into_iter().map(|(id, x)| (id, (x as f64 - l) as f32)).collect())
        .collect();
    let out = LogprobOut {
        logp: state.iter().zip(&lse).map(|(s, l)| (s.target - l) as f32).collect(),
        entropy: with_entropy.then(|| state.iter().zip(&lse).map(|(s, l)| (l - s.dot / s.sum) as f32).collect()),
        lse: lse.into_iter().map(|l| l as f32).collect(),
    };
    Ok((out, top))
}

/// The gradient of sum_t dlogp_t * logp_t (logp from [`token_logprobs`], whose `lse` this takes) w.r.t. h,
/// returned as `[t, d]`, and w.r.t. W, added into `dw` (`[v, d]`). Per chunk, with p = exp(logits - lse):
/// dlogits = dlogp_t (onehot(target) - p) / temperature, dh += dlogits W_chunk, dW_chunk += dlogits^T h.
/// Same arguments and errors as the forward pass.
#[allow(clippy::too_many_arguments)]
pub fn token_logprobs_backward(
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    lse: &[f32],
    dlogp: &[f32],
    t: usize,
    d: usize,
    v: usize,
    temperature: f32,
    chunk: usize,
    dw: &mut [f32],
) -> Result<Vec<f32>> {
    check(h, w, targets, t, d, v, temperature, chunk)?;
    assert_eq!(lse.len(), t, "token_logprobs_backward: lse has {} values for {t} positions", lse.len());
    assert_eq!(dlogp.len(), t, "token_logprobs_backward: dlogp has {} values for {t} positions", dlogp.len());
    assert_eq!(dw.len(), v * d, "token_logprobs_backward: dw has {} values, want {v} x {d}", dw.len());
    let chunk = chunk.min(v);
    let mut scratch = vec![0f32; t * chunk];
    let mut dh = vec![0f32; t * d];
    for (v0, rows) in chunks(v, chunk) {
        let scratch = &mut scratch[..t * rows];
        chunk_logits(scratch, h, w, t, d, v0, rows, temperature);
        scratch.par_chunks_mut(rows).zip(targets.par_iter()).zip(lse.par_iter().zip(dlogp.par_iter())).for_each(
            |((row, &tg), (&l, &g))| {
                let g = g / temperature;
                for x in row.iter_mut() {
                    *x = -g * (*x - l).exp();
                }
                if let Some(x) = (tg as usize).checked_sub(v0).and_then(|j| row.get_mut(j)) {
                    *x += g;
                }
            },
        );
        let dlogits = View::rows(scratch, t, rows);
        let wc = &w[v0 * d..(v0 + rows) * d];
        let par = parallelism(t * d * rows);
        matmul(&mut dh, dlogits, View::rows(wc, rows, d), 1.0, true, par);
        matmul(&mut dw[v0 * d..(v0 + rows) * d], dlogits.t(), View::rows(h, t, d), 1.0, true, par);
    }
    Ok(dh)
}
