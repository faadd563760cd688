//! The training kernels against their CPU twins on fresh random inputs (never zeros) with ragged shapes:
//! the products of a linear layer's backward pass, RMSNorm's and SwiGLU's backward passes, the embedding's
//! scatter-add, the fused LM head + clipped policy-gradient loss, and the AdamW step with its gradient
//! norm. Runs on a machine with a CUDA device; elsewhere each test prints why it skipped.
//!
//! Tolerances, stated per test: inputs are bf16-exact, so the twin reads what the GPU reads; a bf16 output
//! carries one rounding (relative 2^-8); fp32 sums in another order add ~n 2^-24 of the summed magnitude.
mod common;
use common::gpu::{assert_close, download_bf16, gpu_or_skip, random_bf16, upload_bf16};
use half::bf16;
use mappa::cuda::lm_head::{self, LmHead};
use mappa::cuda::norm::{self, EmbedGrad};
use mappa::cuda::optim::GpuAdamW;
use mappa::cuda::swiglu;
use mappa::optim::{clip_grad_norm, AdamW, AdamWConfig};
use mappa::rl::{pg_loss, token_weights, Action, Aggregation, PgLossConfig};

/// Row counts and widths that are not multiples of a warp, a block or each other.
const SHAPES: [(usize, usize); 4] = [(1, 576), (7, 129), (129, 896), (3, 4097)];

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// dx = dy W (fp32) and dW += dy^T x (fp32, onto a non-zero start) against `linear_backward`.
#[test]
fn gemm_gradients_match_cpu() {
    let Some(gpu) = gpu_or_skip("gemm_gradients_match_cpu") else { return };
    for (t, inp, out) in [(1, 576, 1536), (7, 129, 65), (129, 896, 4864), (4097, 64, 96)] {
        let dy = random_bf16(t * out, -1.0, 1.0, out as u64);
        let x = random_bf16(t * inp, -1.0, 1.0, inp as u64);
        let w = random_bf16(out * inp, -0.1, 0.1, 3 + out as u64);
        let dw0 = random_bf16(out * inp, -0.5, 0.5, 4);
        let (mut want_dx, mut want_dw) = (vec![0f32; t * inp], dw0.clone());
        mappa::cpu::grad::linear_backward(&dy, &x, &w, t, inp, out, &mut want_dx, &mut want_dw);
        let (dyd, xd, wd) = (upload_bf16(&gpu, &dy), upload_bf16(&gpu, &x), upload_bf16(&gpu, &w));
        let mut dx = gpu.zeros::<f32>(t * inp).unwrap();
        gpu.blas.linear_dx(&mut dx.slice_mut(..), &dyd.slice(..), &wd.slice(..), t, inp, out, false).unwrap();
        let mut dw = gpu.upload(&dw0).unwrap();
        gpu.blas.linear_dw(&mut dw.slice_mut(..), &dyd.slice(..), &xd.slice(..), t, inp, out, true).unwrap();
        // fp32 sums of `out` (dx) or `t` (dW) products of magnitude <= 0.1 (dx) or 1 (dW), in another order.
        let what = format!("{t}x{inp}x{out}");
        assert_close(&format!("dx {what}"), &gpu.download(&dx.slice(..)).unwrap(), &want_dx, 1e-4, 1e-6 * out as f32);
        assert_close(&format!("dW {what}"), &gpu.download(&dw.slice(..)).unwrap(), &want_dw, 1e-4, 1e-6 * t as f32);
    }
}

/// The residual stream's gradient through add + RMSNorm, and the weight's gradient (accumulated).
#[test]
fn rmsnorm_backward_matches_cpu() {
    let Some(gpu) = gpu_or_skip("rmsnorm_backward_matches_cpu") else { return };
    for (rows, d) in SHAPES {
        let x = random_bf16(rows * d, -3.0, 3.0, d as u64);
        let dy = random_bf16(rows * d, -1.0, 1.0, 2 + d as u64);
        let w = random_bf16(d, 0.5, 1.5, 3 + d as u64);
        let resid0 = random_bf16(rows * d, -1.0, 1.0, 4 + d as u64);
        let dw0 = random_bf16(d, -1.0, 1.0, 5 + d as u64);
        let eps = 1e-5;
        let (mut want_dx, mut want_dw) = (vec![0f32; rows * d], dw0.clone());
        mappa::cpu::grad::rmsnorm_backward(&dy, &x, &w, eps, &mut want_dx, &mut want_dw);
        let want: Vec<f32> = want_dx.iter().zip(&resid0).map(|(a, b)| a + b).collect();

        let (xd, dyd, wd) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap(), upload_bf16(&gpu, &w));
        let (mut resid, mut dw) = (gpu.upload(&resid0).unwrap(), gpu.upload(&dw0).unwrap());
        let mut resid16 = gpu.zeros::<bf16>(rows * d).unwrap();
        norm::rmsnorm_backward(
            &gpu,
            &mut resid.slice_mut(..),
            &mut resid16.slice_mut(..),
            &mut dw.slice_mut(..),
            &dyd.slice(..),
            &xd.slice(..),
            &wd.slice(..),
            rows,
            eps,
        )
        .unwrap();
        // fp32 throughout; the row sums (d terms) and the weight's sum over rows in another order.
        let what = format!("{rows}x{d}");
        let got = gpu.download(&resid.slice(..)).unwrap();
        assert_close(&format!("d resid {what}"), &got, &want, 1e-4, 1e-5);
        assert_close(&format!("d resid bf16 {what}"), &download_bf16(&gpu, &resid16), &got, 1.0 / 256.0, 0.0);
        assert_close(&format!("dw {what}"), &gpu.download(&dw.slice(..)).unwrap(), &want_dw, 1e-4, 1e-5 * rows as f32);
    }
}

#[test]
fn swiglu_backward_matches_cpu() {
    let Some(gpu) = gpu_or_skip("swiglu_backward_matches_cpu") else { return };
    for (t, f) in SHAPES {
        let gu = random_bf16(t * 2 * f, -4.0, 4.0, f as u64);
        let d_out = random_bf16(t * f, -1.0, 1.0, 1 + f as u64);
        let mut want = vec![0f32; t * 2 * f];
        mappa::cpu::grad::swiglu_backward(&d_out, &gu, f, &mut want);
        let (gud, dod) = (upload_bf16(&gpu, &gu), gpu.upload(&d_out).unwrap());
        let mut got = gpu.zeros::<bf16>(t * 2 * f).unwrap();
        swiglu::swiglu_backward(&gpu, &mut got.slice_mut(..), &dod.slice(..), &gud.slice(..), t, f).unwrap();
        // One bf16 rounding of the output; expf against the CPU's exp differs by an ulp or two.
        assert_close(&format!("swiglu backward {t}x{f}"), &download_bf16(&gpu, &got), &want, 1.0 / 128.0, 1e-5);
    }
}

/// Repeated ids sum in position order, as on the CPU: the result is bit-identical.
#[test]
fn embed_backward_matches_cpu() {
    let Some(gpu) = gpu_or_skip("embed_backward_matches_cpu") else { return };
    for (vocab, d, t) in [(7, 64, 1), (1000, 129, 37), (49152, 576, 4097)] {
        let tokens: Vec<u32> = (0..t).map(|i| ((i * 7919 + 3) % vocab.min(50)) as u32).collect();
        let d_x = random_bf16(t * d, -1.0, 1.0, d as u64);
        let table0 = random_bf16(vocab * d, -1.0, 1.0, 1 + d as u64);
        let mut want = table0.clone();
        mappa::cpu::grad::embedding_backward(&d_x, &tokens, d, &mut want);
        let mut table = gpu.upload(&table0).unwrap();
        let dxd = gpu.upload(&d_x).unwrap();
        norm::embed_backward(&gpu, &mut table.slice_mut(..), &dxd.slice(..), &EmbedGrad::new(&tokens), d).unwrap();
        assert_eq!(gpu.download(&table.slice(..)).unwrap(), want, "embedding backward {vocab}x{d}, {t} tokens");
    }
}

/// Actions over a packed batch of `t` tokens: ragged lengths, gaps between them, some tokens masked out.
fn actions_and_mask(t: usize) -> (Vec<Action>, Vec<bool>) {
    let (mut actions, mut mask, mut at) = (Vec::new(), vec![false; t], 0);
    let mut k = 0;
    while at < t {
        let len = (1 + (k * 13) % 29).min(t - at);
        actions.push(Action { offset: at, len, agent: 0, reward: 0.0, truncated: false, group: k });
        for (j, m) in mask[at..at + len].iter_mut().enumerate() {
            *m = (j + k) % 5 != 0;
        }
        at += len + k % 3;
        k += 1;
    }
    (actions, mask)
}

/// Log-probs, log-sum-exp and entropy; the loss and d loss / d logp for each aggregation and with the
/// dual clip and a KL term; d(hidden) and d(W) — against token_logprobs, pg_loss and
/// token_logprobs_backward, with ragged vocabulary chunks and the Qwen2.5 vocabulary.
#[test]
fn lm_head_loss_matches_cpu() {
    let Some(gpu) = gpu_or_skip("lm_head_loss_matches_cpu") else { return };
    for (t, d, v, chunk, temperature) in
        [(1, 64, 1000, 1000, 1.0), (7, 129, 4097, 1024, 0.7), (129, 576, 49152, 0, 1.0), (37, 896, 151_936, 0, 1.0)]
    {
        let chunk = if chunk == 0 { lm_head::chunk_rows(t, v) } else { chunk };
        let h = random_bf16(t * d, -2.0, 2.0, d as u64);
        let w = random_bf16(v * d, -0.1, 0.1, v as u64);
        let targets: Vec<u32> = (0..t).map(|i| ((i * 104_729 + 11) % v) as u32).collect();
        let want = mappa::cpu::logprob::token_logprobs(&h, &w, &targets, t, d, v, temperature, chunk, true).unwrap();
        let (hd, wd, td) = (upload_bf16(&gpu, &h), upload_bf16(&gpu, &w), gpu.upload(&targets).unwrap());
        let head = LmHead { h: hd.slice(..), w: wd.slice(..), targets: td.slice(..), t, d, v, temperature, chunk };
        let got = head.logprobs(&gpu, true).unwrap();
        // Logits are fp32 sums of d bf16 products (|l| <~ 3): ~1e-6 each, in another order; the log-sum-exp
        // over v of them, and the entropy, move by about as much.
        let what = format!("t {t} d {d} v {v} chunk {chunk}");
        let lse = gpu.download(&got.lse.slice(..)).unwrap();
        let logp = gpu.download(&got.logp.slice(..)).unwrap();
        assert_close(&format!("lse {what}"), &lse, &want.lse, 1e-5, 1e-4);
        assert_close(&format!("logp {what}"), &logp, &want.logp, 1e-5, 1e-4);
        let entropy = gpu.download(&got.entropy.as_ref().unwrap().slice(..)).unwrap();
        assert_close(&format!("entropy {what}"), &entropy, want.entropy.as_ref().unwrap(), 1e-4, 1e-4);

        // The loss, on the CPU's log-probs for both (so only the loss kernel differs), with old log-probs
        // near enough that some ratios fall inside the clip range and some outside.
        let (actions, mask) = actions_and_mask(t);
        let noise = random_bf16(t, -0.4, 0.4, 7);
        let old: Vec<f32> = want.logp.iter().zip(&noise).map(|(l, n)| l + n).collect();
        let reference: Vec<f32> = want.logp.iter().zip(&noise).map(|(l, n)| l - 0.5 * n).collect();
        let adv = random_bf16(t, -2.0, 2.0, 8);
        let [logp_d, old_d, ref_d, adv_d] = [&want.logp, &old, &reference, &adv].map(|x| gpu.upload(x).unwrap());
        for cfg in [
            PgLossConfig::default(),
            PgLossConfig { aggregation: Aggregation::TokenMean, dual_clip: Some(1.5), ..Default::default() },
            PgLossConfig { aggregation: Aggregation::SeqSum, kl_loss_coef: Some(0.1), ..Default::default() },
        ] {
            let cpu = pg_loss(&want.logp, &old, &reference, &adv, &mask, &actions, &cfg).unwrap();
            let (weights, tokens) = token_weights(&mask, &actions, cfg.aggregation).unwrap();
            let weights: Vec<f32> = weights.iter().map(|&x| x as f32).collect();
            let wd = gpu.upload(&weights).unwrap();
            let (dlogp, stats) = lm_head::pg_loss(
                &gpu,
                &logp_d.slice(..),
                &old_d.slice(..),
                &ref_d.slice(..),
                &adv_d.slice(..),
                &wd.slice(..),
                tokens,
                &cfg,
            )
            .unwrap();
            let cfg_what = format!("{what} {cfg:?}");
            // f64 throughout; the weights are rounded to f32 once (relative 2^-24).
            assert_close(
                &format!("dlogp {cfg_what}"),
                &gpu.download(&dlogp.slice(..)).unwrap(),
                &cpu.dlogp,
                1e-6,
                1e-9,
            );
            assert_close(&format!("loss {cfg_what}"), &[stats.loss], &[cpu.loss], 1e-5, 1e-7);
            assert_eq!(stats.clip_frac, cpu.clip_frac, "{cfg_what}: the same tokens are clipped");
            assert_close(&format!("approx kl {cfg_what}"), &[stats.approx_kl], &[cpu.approx_kl], 1e-5, 1e-7);
            assert_eq!(stats.tokens, cpu.tokens);
        }

        // The backward pass of one loss: the same dlogp into both, onto non-zero gradients.
        let cpu = pg_loss(&want.logp, &old, &reference, &adv, &mask, &actions, &PgLossConfig::default()).unwrap();
        let dw0 = random_bf16(v * d, -1e-3, 1e-3, 9);
        let mut want_dw = dw0.clone();
        let want_dh = mappa::cpu::logprob::token_logprobs_backward(
            &h,
            &w,
            &targets,
            &want.lse,
            &cpu.dlogp,
            t,
            d,
            v,
            temperature,
            chunk,
            &mut want_dw,
        )
        .unwrap();
        let (lse_d, dlogp_d) = (gpu.upload(&want.lse).unwrap(), gpu.upload(&cpu.dlogp).unwrap());
        let mut dh = gpu.zeros::<f32>(t * d).unwrap();
        let mut dw = gpu.upload(&dw0).unwrap();
        head.backward(&gpu, &lse_d.slice(..), &dlogp_d.slice(..), &mut dh.slice_mut(..), &mut dw.slice_mut(..))
            .unwrap();
        // d logits are rounded to bf16 (relative 2^-9 each) before the two products: each gradient moves
        // by at most 2^-8 of the sum of its terms' magnitudes, bounded here by 1 % of the largest value.
        let (dh, dw) = (gpu.download(&dh.slice(..)).unwrap(), gpu.download(&dw.slice(..)).unwrap());
        assert_close(&format!("d hidden {what}"), &dh, &want_dh, 1.0 / 128.0, 1e-2 * max_abs(&want_dh));
        let dw_delta: Vec<f32> = want_dw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        assert_close(&format!("d W {what}"), &dw, &want_dw, 1.0 / 128.0, 1e-2 * max_abs(&dw_delta));
    }
}

/// Three AdamW steps without clipping are bit-identical to the CPU's (master weights, moments, the bf16
/// copy); the norm agrees to f64 rounding; a clipped step agrees to an f32 ulp or two (the coefficient comes
/// from norms that differ in their last bits); the state round-trips through the CPU's file format.
#[test]
fn adamw_matches_cpu() {
    let Some(gpu) = gpu_or_skip("adamw_matches_cpu") else { return };
    let sizes = [("a", 1usize), ("b", 129), ("c", 70_001), ("d", 16_384 * 3 + 5)];
    let params: Vec<(String, usize)> = sizes.iter().map(|(n, s)| (n.to_string(), *s)).collect();
    let n: usize = sizes.iter().map(|s| s.1).sum();
    let config = AdamWConfig { weight_decay: 0.01, ..Default::default() };
    let mut cpu = AdamW::new(params.iter().cloned(), config).unwrap();
    let mut gpu_opt = GpuAdamW::new(&gpu, &params, config).unwrap();
    let mut want = random_bf16(n, -1.0, 1.0, 1);
    let mut master = gpu.upload(&want).unwrap();
    let mut weights = gpu.zeros::<bf16>(n).unwrap();
    let split = |flat: &mut [f32]| -> Vec<Vec<f32>> {
        let mut at = 0;
        sizes.iter().map(|&(_, s)| (flat[at..at + s].to_vec(), at += s).0).collect()
    };
    for step in 0..4u64 {
        let mut g = random_bf16(n, -0.01, 0.01, 10 + step);
        let gd = gpu.upload(&g).unwrap();
        let clipped = step == 3;
        let max_norm = if clipped { 0.1 } else { f32::INFINITY };
        gpu_opt.clip_grad_norm(&gpu, &gd.slice(..), max_norm).unwrap();
        let mut parts = split(&mut g);
        let norm = clip_grad_norm(&mut parts.iter_mut().map(|p| p.as_mut_slice()).collect::<Vec<_>>(), max_norm);
        assert_close(&format!("norm at step {step}"), &[gpu_opt.last_norm(&gpu).unwrap()], &[norm], 1e-6, 0.0);
        let lr = 1e-3 / (1 + step) as f32;
        gpu_opt.step(&gpu, &mut master.slice_mut(..), &gd.slice(..), &mut weights.slice_mut(..), lr).unwrap();
        let mut p = split(&mut want);
        let grads: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        cpu.step(&mut p.iter_mut().map(|p| p.as_mut_slice()).collect::<Vec<_>>(), &grads, lr).unwrap();
        want = p.concat();
        let got = gpu.download(&master.slice(..)).unwrap();
        if clipped {
            assert_close("clipped step", &got, &want, 1e-6, 1e-9);
        } else {
            assert_eq!(got, want, "step {step}: the GPU's update is the CPU's, bit for bit");
            let copy: Vec<f32> = want.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
            assert_eq!(download_bf16(&gpu, &weights), copy, "the bf16 copy is the master rounded");
            assert_eq!(gpu_opt.to_cpu(&gpu).unwrap(), cpu, "moments and step count equal the CPU's");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    gpu_opt.save(&gpu, &path).unwrap();
    let loaded = GpuAdamW::from_cpu(&gpu, &AdamW::load(&path).unwrap()).unwrap();
    assert_eq!(loaded.to_cpu(&gpu).unwrap(), gpu_opt.to_cpu(&gpu).unwrap(), "the state survives a save and load");
}

/// dq, dk, dv over packed sequences of ragged lengths (1, 7, 129, 4097 and others), GQA ratios 1, 2, 3, 7,
/// head sizes 64 and 128, against `attention_backward` on the same bf16 inputs.
#[test]
fn attention_backward_matches_cpu() {
    use mappa::cpu::grad::{attention_backward, Packed};
    use mappa::cuda::attention_backward::{self as ab, PackedShape};
    let Some(gpu) = gpu_or_skip("attention_backward_matches_cpu") else { return };
    for (seq_lens, n_heads, n_kv, hd) in [
        (vec![1usize, 7, 129], 3, 1, 64),
        (vec![129, 1, 7], 7, 1, 128),
        (vec![600, 33], 6, 2, 64),
        (vec![5, 300], 4, 4, 128),
        (vec![4097], 2, 1, 64),
    ] {
        let t: usize = seq_lens.iter().sum();
        let (qd, kvd) = (n_heads * hd, n_kv * hd);
        let seed = (t * hd) as u64;
        let q = random_bf16(t * qd, -1.0, 1.0, seed);
        let k = random_bf16(t * kvd, -1.0, 1.0, seed + 1);
        let v = random_bf16(t * kvd, -1.0, 1.0, seed + 2);
        let d_out = random_bf16(t * qd, -1.0, 1.0, seed + 3);
        let (mut wq, mut wk, mut wv) = (vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        let p = Packed { seq_lens: &seq_lens, n_heads, n_kv, hd };
        attention_backward(&d_out, &q, &k, &v, p, &mut wq, &mut wk, &mut wv);
        let (qd_, kd, vd) = (upload_bf16(&gpu, &q), upload_bf16(&gpu, &k), upload_bf16(&gpu, &v));
        let dod = gpu.upload(&d_out).unwrap();
        let (mut dq, mut dk, mut dv) =
            (gpu.zeros::<f32>(t * qd).unwrap(), gpu.zeros::<f32>(t * kvd).unwrap(), gpu.zeros::<f32>(t * kvd).unwrap());
        let shape = PackedShape { seq_lens: &seq_lens, n_heads, n_kv, hd };
        ab::attention_backward(
            &gpu,
            &mut dq.slice_mut(..),
            &mut dk.slice_mut(..),
            &mut dv.slice_mut(..),
            &dod.slice(..),
            &qd_.slice(..),
            &kd.slice(..),
            &vd.slice(..),
            None,
            &shape,
        )
        .unwrap();
        // The same keys and values scattered over a larger pool (as a training forward leaves them), read
        // through their slots: the gradients must not change at all.
        let slots: Vec<i32> = (0..t as i32).rev().map(|r| r + 5).collect();
        let n_slots = t + 5;
        let (mut kp, mut vp) = (vec![9f32; n_slots * kvd], vec![9f32; n_slots * kvd]);
        for (r, &s) in slots.iter().enumerate() {
            kp[s as usize * kvd..][..kvd].copy_from_slice(&k[r * kvd..][..kvd]);
            vp[s as usize * kvd..][..kvd].copy_from_slice(&v[r * kvd..][..kvd]);
        }
        let (kpd, vpd, sd) = (upload_bf16(&gpu, &kp), upload_bf16(&gpu, &vp), gpu.upload(&slots).unwrap());
        let (mut dq2, mut dk2, mut dv2) =
            (gpu.zeros::<f32>(t * qd).unwrap(), gpu.zeros::<f32>(t * kvd).unwrap(), gpu.zeros::<f32>(t * kvd).unwrap());
        ab::attention_backward(
            &gpu,
            &mut dq2.slice_mut(..),
            &mut dk2.slice_mut(..),
            &mut dv2.slice_mut(..),
            &dod.slice(..),
            &qd_.slice(..),
            &kpd.slice(..),
            &vpd.slice(..),
            Some(&sd.slice(..)),
            &shape,
        )
        .unwrap();
        for (name, a, b) in [("dq", &dq, &dq2), ("dk", &dk, &dk2), ("dv", &dv, &dv2)] {
            assert_eq!(
                gpu.download(&a.slice(..)).unwrap(),
                gpu.download(&b.slice(..)).unwrap(),
                "{name} through slots"
            );
        }
        // fp32 throughout on both sides, sums of up to (group x) 600 terms in another order, and expf
        // against exp: a few 1e-6 of the largest gradient, bounded here by 1e-4 of it.
        let what = format!("{seq_lens:?} heads {n_heads}/{n_kv} hd {hd}");
        for (name, got, want) in [("dq", dq, wq), ("dk", dk, wk), ("dv", dv, wv)] {
            let got = gpu.download(&got.slice(..)).unwrap();
            assert_close(&format!("{name} {what}"), &got, &want, 1e-3, 1e-4 * max_abs(&want));
        }
    }
}

/// The fused q/k/v tail's backward pass (RoPE's transpose, the qwen3 head norms, the qwen2 biases) for
/// each architecture and head size, at positions up to 4096, against rope_backward, rmsnorm_backward per
/// head and bias_backward.
#[test]
fn qkv_backward_matches_cpu() {
    use mappa::config::Arch;
    use mappa::cpu::grad::{bias_backward, rmsnorm_backward, rope_backward};
    use mappa::cuda::qkv::{self, QkvExtras, QkvShape, QkvWeightGrads};
    let Some(gpu) = gpu_or_skip("qkv_backward_matches_cpu") else { return };
    for (arch, hd, n_heads, n_kv) in
        [(Arch::Llama, 64, 9, 3), (Arch::Qwen2, 128, 14, 2), (Arch::Qwen3, 128, 16, 8), (Arch::Qwen3, 256, 2, 1)]
    {
        let mut cfg = common::tiny_config(arch);
        (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta) = (hd, n_heads, n_kv, 1e6);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let width = qd + 2 * kvd;
        let positions: Vec<i32> = vec![0, 1, 6, 128, 4096, 17, 4095];
        let t = positions.len();
        let seed = (hd * n_heads) as u64;
        let raw = random_bf16(t * width, -2.0, 2.0, seed);
        let (dq, dk, dv) = (
            random_bf16(t * qd, -1.0, 1.0, seed + 1),
            random_bf16(t * kvd, -1.0, 1.0, seed + 2),
            random_bf16(t * kvd, -1.0, 1.0, seed + 3),
        );
        let bias = (arch == Arch::Qwen2).then(|| random_bf16(width, -0.5, 0.5, 3));
        let norms = (arch == Arch::Qwen3).then(|| (random_bf16(hd, 0.5, 1.5, 4), random_bf16(hd, 0.5, 1.5, 5)));
        let eps = 1e-6;
        let rope = mappa::cpu::ops::Rope::new(&cfg);

        // The CPU twin, row by row.
        let mut want = vec![0f32; t * width];
        let (mut want_dqn, mut want_dkn) = (vec![0f32; hd], vec![0f32; hd]);
        for r in 0..t {
            let (cos, sin) = rope.table(positions[r] as usize, 1);
            let mut u = raw[r * width..][..width].to_vec();
            if let Some(b) = &bias {
                u.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
            let out = &mut want[r * width..][..width];
            for (g, at, n, dw) in
                [(&dq[r * qd..][..qd], 0, 0, &mut want_dqn), (&dk[r * kvd..][..kvd], qd, 1, &mut want_dkn)]
            {
                let mut g = g.to_vec();
                rope_backward(&mut g, &cos, &sin);
                if let Some(ws) = &norms {
                    let w = if n == 0 { &ws.0 } else { &ws.1 };
                    let mut du = vec![0f32; g.len()];
                    rmsnorm_backward(&g, &u[at..at + g.len()], w, eps, &mut du, dw);
                    g = du;
                }
                out[at..at + g.len()].copy_from_slice(&g);
            }
            out[qd + kvd..].copy_from_slice(&dv[r * kvd..][..kvd]);
        }
        let mut want_db = vec![0f32; width];
        bias_backward(&want, t, width, &mut want_db);

        let (rawd, freqd, posd) =
            (gpu.upload(&raw).unwrap(), gpu.upload(rope.inv_freq()).unwrap(), gpu.upload(&positions).unwrap());
        let [dqd, dkd, dvd] = [&dq, &dk, &dv].map(|x| gpu.upload(x).unwrap());
        let biasd = bias.as_ref().map(|b| upload_bf16(&gpu, b));
        let normsd = norms.as_ref().map(|(a, b)| (upload_bf16(&gpu, a), upload_bf16(&gpu, b)));
        let bias_v = biasd.as_ref().map(|b| b.slice(..));
        let norm_v = normsd.as_ref().map(|(a, b)| (a.slice(..), b.slice(..)));
        let extras = QkvExtras { bias: bias_v.as_ref(), norms: norm_v.as_ref().map(|(a, b)| (a, b)) };
        let mut d_qkv = gpu.zeros::<bf16>(t * width).unwrap();
        let (mut db, mut dqn, mut dkn) =
            (gpu.zeros::<f32>(width).unwrap(), gpu.zeros::<f32>(hd).unwrap(), gpu.zeros::<f32>(hd).unwrap());
        let (mut db_v, mut dqn_v, mut dkn_v) = (db.slice_mut(..), dqn.slice_mut(..), dkn.slice_mut(..));
        let grads = QkvWeightGrads {
            bias: bias.is_some().then_some(&mut db_v),
            norms: norms.is_some().then_some((&mut dqn_v, &mut dkn_v)),
        };
        let shape = QkvShape { n_heads, n_kv, head_dim: hd, eps };
        qkv::qkv_backward(
            &gpu,
            &mut d_qkv.slice_mut(..),
            grads,
            &dqd.slice(..),
            &dkd.slice(..),
            &dvd.slice(..),
            &rawd.slice(..),
            extras,
            &freqd.slice(..),
            &posd.slice(..),
            shape,
        )
        .unwrap();
        // One bf16 rounding of d_qkv; sincosf at angles up to 4096 rad agrees with the CPU's to a few 1e-7.
        let what = format!("{arch:?} hd {hd}");
        assert_close(&format!("{what} d_qkv"), &download_bf16(&gpu, &d_qkv), &want, 1.0 / 128.0, 2e-3);
        // fp32 sums over 7 rows (and the row's heads) in another order.
        if bias.is_some() {
            assert_close(&format!("{what} d bias"), &gpu.download(&db.slice(..)).unwrap(), &want_db, 1e-4, 1e-4);
        }
        if norms.is_some() {
            assert_close(&format!("{what} d q norm"), &gpu.download(&dqn.slice(..)).unwrap(), &want_dqn, 1e-4, 1e-4);
            assert_close(&format!("{what} d k norm"), &gpu.download(&dkn.slice(..)).unwrap(), &want_dkn, 1e-4, 1e-4);
        }
    }
}
