//! The residual-stream kernels and the cuBLASLt product against their CPU twins, on fresh random inputs
//! (never zeros) with ragged shapes. Runs on a machine with a CUDA device; elsewhere each test prints why
//! it skipped (the only tests allowed to skip). Attention and sampling have their own files.
//!
//! Tolerances: inputs are bf16-exact, so the CPU twin sees what the GPU reads. A bf16 output carries one
//! rounding, relative 2^-8 (0.0039); fp32 sums in another order add ~1e-6 relative. Each test states its
//! bound from that.
mod common;
use common::gpu::{assert_close, download_bf16, gpu_or_skip, random_bf16, to_bf16, upload_bf16};
use mappa::config::Arch;
use mappa::cuda::{norm, qkv, swiglu};

/// Row counts and widths that are not multiples of a warp, a block or each other.
const SHAPES: [(usize, usize); 4] = [(1, 576), (7, 129), (129, 896), (3, 4097)];

#[test]
fn embed_matches_cpu() {
    let Some(gpu) = gpu_or_skip("embed_matches_cpu") else { return };
    for (vocab, d) in [(7, 64), (1000, 129), (49152, 576)] {
        let table = random_bf16(vocab * d, -1.0, 1.0, d as u64);
        let tokens: Vec<u32> = (0..37).map(|i| (i * 7919 + 3) as u32 % vocab as u32).collect();
        let (td, tokd) = (upload_bf16(&gpu, &table), gpu.upload(&tokens).unwrap());
        let mut x = gpu.zeros::<f32>(tokens.len() * d).unwrap();
        norm::embed(&gpu, &mut x.slice_mut(..), &td.slice(..), &tokd.slice(..), d).unwrap();
        let got = gpu.download(&x.slice(..)).unwrap();
        let want: Vec<f32> = tokens.iter().flat_map(|&t| &table[t as usize * d..][..d]).copied().collect();
        assert_eq!(got, want, "a gather is exact");
    }
}

#[test]
fn add_rmsnorm_matches_cpu() {
    let Some(gpu) = gpu_or_skip("add_rmsnorm_matches_cpu") else { return };
    for (rows, d) in SHAPES {
        let x = random_bf16(rows * d, -3.0, 3.0, d as u64);
        let delta = random_bf16(rows * d, -1.0, 1.0, 2 + d as u64);
        let w = random_bf16(d, 0.5, 1.5, 1 + d as u64);
        let (wd, deltad) = (upload_bf16(&gpu, &w), gpu.upload(&delta).unwrap());
        let eps = 1e-5;
        // With the add, all rows.
        let mut xd = gpu.upload(&x).unwrap();
        let mut yd = gpu.zeros(rows * d).unwrap();
        let rows_all = norm::Rows::First(rows);
        norm::add_rmsnorm(
            &gpu,
            &mut xd.slice_mut(..),
            Some(&deltad.slice(..)),
            &mut yd.slice_mut(..),
            &wd.slice(..),
            rows_all,
            eps,
        )
        .unwrap();
        let sum: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
        assert_eq!(gpu.download(&xd.slice(..)).unwrap(), sum, "the residual add is one fp32 add");
        let mut want = vec![0f32; rows * d];
        mappa::cpu::ops::rmsnorm(&mut want, &sum, &w, eps);
        // One bf16 rounding of the output: relative 2^-8, plus a little for fp32 sum order.
        assert_close(&format!("add_rmsnorm {rows}x{d}"), &download_bf16(&gpu, &yd), &want, 1.0 / 128.0, 1e-3);

        // Without the add, on picked rows (the final norm): y row i is x row picked[i].
        let picked: Vec<i32> = (0..rows as i32).rev().step_by(2).collect();
        let pd = gpu.upload(&picked).unwrap();
        let mut xd = gpu.upload(&x).unwrap();
        let mut yd = gpu.zeros(picked.len() * d).unwrap();
        let pv = pd.slice(..);
        norm::add_rmsnorm(
            &gpu,
            &mut xd.slice_mut(..),
            None,
            &mut yd.slice_mut(..),
            &wd.slice(..),
            norm::Rows::Picked(&pv),
            eps,
        )
        .unwrap();
        let src: Vec<f32> = picked.iter().flat_map(|&r| &x[r as usize * d..][..d]).copied().collect();
        let mut want = vec![0f32; src.len()];
        mappa::cpu::ops::rmsnorm(&mut want, &src, &w, eps);
        assert_close(&format!("rmsnorm picked {rows}x{d}"), &download_bf16(&gpu, &yd), &want, 1.0 / 128.0, 1e-3);
    }
}

#[test]
fn swiglu_matches_cpu() {
    let Some(gpu) = gpu_or_skip("swiglu_matches_cpu") else { return };
    for (t, f) in SHAPES {
        let gu = random_bf16(t * 2 * f, -4.0, 4.0, f as u64);
        let gud = upload_bf16(&gpu, &gu);
        let mut out = gpu.zeros(t * f).unwrap();
        swiglu::swiglu(&gpu, &mut out.slice_mut(..), &gud.slice(..), t, f).unwrap();
        let mut want = vec![0f32; t * f];
        mappa::cpu::ops::swiglu(&mut want, &gu, f);
        // One bf16 rounding of the output; expf differs from the CPU's exp by an ulp or two.
        assert_close(&format!("swiglu {t}x{f}"), &download_bf16(&gpu, &out), &want, 1.0 / 128.0, 1e-4);
    }
}

/// The fused q/k/v tail for each architecture's extras (none; qwen2 biases; qwen3 q/k norms) and each head
/// size, at positions up to 4096 (large RoPE angles), into a shuffled pool.
#[test]
fn qkv_matches_cpu() {
    let Some(gpu) = gpu_or_skip("qkv_matches_cpu") else { return };
    for (arch, hd, n_heads, n_kv) in
        [(Arch::Llama, 64, 9, 3), (Arch::Qwen2, 128, 14, 2), (Arch::Qwen3, 128, 16, 8), (Arch::Llama, 256, 2, 1)]
    {
        let mut cfg = common::tiny_config(arch);
        (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.rope_theta) = (hd, n_heads, n_kv, 1e6);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let width = qd + 2 * kvd;
        let positions: Vec<i32> = vec![0, 1, 6, 128, 4096, 17, 4095];
        let t = positions.len();
        let n_slots = 64;
        // The last row is a padding row (slot -1, as a CUDA graph's): its q is written, its k and v go nowhere.
        let slots: Vec<i32> =
            (0..t as i32).map(|r| if r + 1 == t as i32 { -1 } else { (r * 37 + 5) % n_slots }).collect();
        let raw = random_bf16(t * width, -2.0, 2.0, hd as u64);
        let bias = (arch == Arch::Qwen2).then(|| random_bf16(width, -0.5, 0.5, 3));
        let norms = (arch == Arch::Qwen3).then(|| (random_bf16(hd, 0.5, 1.5, 4), random_bf16(hd, 0.5, 1.5, 5)));
        let rope = mappa::cpu::ops::Rope::new(&cfg);

        let (rawd, freqd) = (gpu.upload(&raw).unwrap(), gpu.upload(rope.inv_freq()).unwrap());
        let (posd, slotd) = (gpu.upload(&positions).unwrap(), gpu.upload(&slots).unwrap());
        let biasd = bias.as_ref().map(|b| upload_bf16(&gpu, b));
        let normsd = norms.as_ref().map(|(a, b)| (upload_bf16(&gpu, a), upload_bf16(&gpu, b)));
        // Pools filled with a marker, so a write to a wrong slot shows.
        let marker = vec![7.0f32; n_slots as usize * kvd];
        let (mut kd, mut vd) = (upload_bf16(&gpu, &marker), upload_bf16(&gpu, &marker));
        let mut qdv = gpu.zeros(t * qd).unwrap();
        let bias_v = biasd.as_ref().map(|b| b.slice(..));
        let norm_v = normsd.as_ref().map(|(a, b)| (a.slice(..), b.slice(..)));
        let extras = qkv::QkvExtras { bias: bias_v.as_ref(), norms: norm_v.as_ref().map(|(a, b)| (a, b)) };
        let shape = qkv::QkvShape { n_heads, n_kv, head_dim: hd, eps: 1e-6 };
        qkv::qkv_rope_append(
            &gpu,
            &mut qdv.slice_mut(..),
            &mut kd.slice_mut(..),
            &mut vd.slice_mut(..),
            &rawd.slice(..),
            extras,
            &freqd.slice(..),
            &posd.slice(..),
            &slotd.slice(..),
            shape,
        )
        .unwrap();

        // The CPU twin, row by row.
        let (mut want_q, mut want_k, mut want_v) = (vec![0f32; t * qd], marker.clone(), marker.clone());
        for r in 0..t {
            let mut row = raw[r * width..][..width].to_vec();
            if let Some(b) = &bias {
                row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
            }
            let (q, rest) = row.split_at_mut(qd);
            let (k, v) = rest.split_at_mut(kvd);
            if let Some((nq, nk)) = &norms {
                mappa::cpu::ops::rmsnorm_inplace(q, nq, 1e-6);
                mappa::cpu::ops::rmsnorm_inplace(k, nk, 1e-6);
            }
            let (cos, sin) = rope.table(positions[r] as usize, 1);
            mappa::cpu::ops::Rope::apply(q, &cos, &sin);
            mappa::cpu::ops::Rope::apply(k, &cos, &sin);
            want_q[r * qd..][..qd].copy_from_slice(q);
            if slots[r] < 0 {
                continue;
            }
            let s = slots[r] as usize * kvd;
            want_k[s..][..kvd].copy_from_slice(k);
            want_v[s..][..kvd].copy_from_slice(v);
        }
        // One bf16 rounding; sincosf at angles up to 4096 rad agrees with the CPU's to a few 1e-7 absolute.
        let what = format!("{arch:?} hd {hd}");
        assert_close(&format!("{what} q"), &download_bf16(&gpu, &qdv), &want_q, 1.0 / 128.0, 2e-3);
        assert_close(&format!("{what} k pool"), &download_bf16(&gpu, &kd), &want_k, 1.0 / 128.0, 2e-3);
        let want_v: Vec<f32> = want_v.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        assert_eq!(download_bf16(&gpu, &vd), want_v, "{what}: values are copied (bias added), untouched elsewhere");
    }
}

/// y = x W^T into bf16 and fp32, and y += x W^T into fp32 (the residual-add form), against the CPU's
/// product of the same bf16 inputs.
#[test]
fn gemm_matches_cpu() {
    let Some(gpu) = gpu_or_skip("gemm_matches_cpu") else { return };
    for (t, inp, out) in [(1, 576, 1536), (7, 129, 65), (129, 896, 4864), (64, 576, 49152)] {
        let x = random_bf16(t * inp, -1.0, 1.0, inp as u64);
        let w = random_bf16(out * inp, -0.1, 0.1, out as u64);
        let y0 = random_bf16(t * out, -1.0, 1.0, 9);
        let (xd, wd) = (upload_bf16(&gpu, &x), upload_bf16(&gpu, &w));
        let mut want = vec![0f32; t * out];
        mappa::cpu::linear::linear(&mut want, &x, &w, t, inp, out, false);
        // fp32 sums of `inp` products in another order: relative ~inp * 2^-24 of the magnitude summed.
        let abs = 1e-5 * inp as f32 * 0.1;

        let mut y32 = gpu.zeros::<f32>(t * out).unwrap();
        gpu.blas.linear(&mut y32.slice_mut(..), &xd.slice(..), &wd.slice(..), t, inp, out, false).unwrap();
        assert_close(&format!("gemm f32 {t}x{inp}x{out}"), &gpu.download(&y32.slice(..)).unwrap(), &want, 1e-4, abs);

        let mut y16 = gpu.upload(&to_bf16(&y0)).unwrap();
        gpu.blas.linear(&mut y16.slice_mut(..), &xd.slice(..), &wd.slice(..), t, inp, out, false).unwrap();
        assert_close(&format!("gemm bf16 {t}x{inp}x{out}"), &download_bf16(&gpu, &y16), &want, 1.0 / 128.0, abs);

        let mut acc = gpu.upload(&y0).unwrap();
        gpu.blas.linear(&mut acc.slice_mut(..), &xd.slice(..), &wd.slice(..), t, inp, out, true).unwrap();
        let want_acc: Vec<f32> = want.iter().zip(&y0).map(|(a, b)| a + b).collect();
        assert_close(&format!("gemm += {t}x{inp}x{out}"), &gpu.download(&acc.slice(..)).unwrap(), &want_acc, 1e-4, abs);
    }
}
