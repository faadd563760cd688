//! Token sampling on the device: kernel `sample_f32` (kernels/sample.cu) picks each row's next token and
//! its log-probability with one block of 1024 threads per row, the same choice as the CPU twin
//! [`crate::sample::sample`] given the same fp32 logits. Test: `tests/cuda_sample.rs`.
//!
//! A step is one upload of the rows' parameters (32 bytes a row), one launch (grid = rows, block = 1024)
//! and one download of (id, log-prob) pairs. The buffers, and the kernel's `[rows, vocab]` scratch of
//! probabilities, grow to the largest batch seen and are reused.
//!
//! The kernel walks the kept candidates in (prob desc, index asc) order when a top-k or top-p cut is made
//! and in index order otherwise, and sums the top-p mass in f64: the rule `sample::draw` must follow too.
//! [`RowParams::new`] decides the walk order, per row.
use super::Gpu;
use crate::sample::SamplingParams;
use anyhow::{bail, ensure, Context, Result};
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};

/// Threads per block: `SAMPLE_THREADS` in kernels/sample.cu (the kernel refuses any other block size).
const THREADS: u32 = 1024;
/// `SAMPLE_SORTED_WALK` in kernels/sample.cu: walk the kept candidates by (prob desc, index asc).
const SORTED_WALK: u32 = 1;
/// The kernel indexes a row with `int`, and slices it per thread without overflow up to here.
pub const MAX_VOCAB: usize = 1 << 30;

/// One row's parameters as the kernel reads them (`SampleRow` in kernels/sample.cu: 32 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowParams {
    pub seed: u64,
    /// Which generated token of its sequence this is: the draw is `uniform(seed, index)`.
    pub index: u64,
    /// 0 means greedy.
    pub temperature: f32,
    /// 1 means no nucleus cut.
    pub top_p: f32,
    /// 0 means no top-k cut; always < vocab.
    pub top_k: i32,
    /// `SORTED_WALK` or 0.
    pub flags: u32,
}

// Plain old data with the kernel's layout (checked in the tests below); all-zero bits are a valid value.
unsafe impl DeviceRepr for RowParams {}
unsafe impl ValidAsZeroBits for RowParams {}

impl RowParams {
    /// The kernel's view of `params` for the `index`-th generated token, over a vocabulary of `vocab`.
    pub fn new(params: &SamplingParams, index: u64, vocab: usize) -> Result<RowParams> {
        params.validate()?;
        // A top-k cut only when 0 < top_k < vocab (as `sample::draw`); the walk is sorted whenever a cut is made.
        let cut_k = params.top_k > 0 && params.top_k < vocab;
        let sorted = cut_k || params.top_p < 1.0;
        Ok(RowParams {
            seed: params.seed,
            index,
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: if cut_k { i32::try_from(params.top_k).context("top-k beyond i32")? } else { 0 },
            flags: if sorted { SORTED_WALK } else { 0 },
        })
    }
}

/// Checks the shapes and every row's parameters; the rows as the kernel reads them.
pub fn pack(rows: &[(SamplingParams, u64)], vocab: usize, logits_len: usize) -> Result<Vec<RowParams>> {
    ensure!((1..=MAX_VOCAB).contains(&vocab), "sampling: vocabulary size {vocab} is not in 1..={MAX_VOCAB}");
    ensure!(rows.len() <= i32::MAX as usize, "sampling: {} rows is more than one launch takes", rows.len());
    let want = rows.len().checked_mul(vocab).context("sampling: rows x vocab overflows")?;
    ensure!(
        logits_len == want,
        "sampling: the logits hold {logits_len} values, expected {} rows x vocab {vocab} = {want}",
        rows.len()
    );
    rows.iter()
        .enumerate()
        .map(|(i, (p, index))| RowParams::new(p, *index, vocab).with_context(|| format!("sampling row {i}")))
        .collect()
}

/// Device buffers for per-row parameters and results, reused across steps.
#[derive(Default)]
pub struct Sampler {
    params: Option<CudaSlice<RowParams>>,
    /// `[rows, 2]`: token id, log-prob as f32 bits.
    out: Option<CudaSlice<u32>>,
    /// `[rows, vocab]` prob bit patterns, the kernel's scratch.
    probs: Option<CudaSlice<u32>>,
}

/// `buf`, reallocated (zeroed) when it holds fewer than `n` elements.
fn at_least<'a, T: DeviceRepr + ValidAsZeroBits>(
    buf: &'a mut Option<CudaSlice<T>>,
    gpu: &Gpu,
    n: usize,
) -> Result<&'a mut CudaSlice<T>> {
    if buf.as_ref().is_none_or(|b| b.len() < n) {
        *buf = None; // free the old one before allocating the larger
        *buf = Some(gpu.zeros::<T>(n.max(1))?);
    }
    Ok(buf.as_mut().expect("allocated above"))
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler::default()
    }

    /// `logits`: `[rows.len(), vocab]` fp32 on the device; `rows[i]` = (params, token index) of row i.
    /// Returns (id, logprob) per row (one small download per step).
    pub fn sample(
        &mut self,
        gpu: &Gpu,
        logits: &CudaView<f32>,
        vocab: usize,
        rows: &[(SamplingParams, u64)],
    ) -> Result<Vec<(u32, f32)>> {
        let host = pack(rows, vocab, logits.len())?;
        let n = host.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        // Greedy rows never touch the scratch.
        let scratch = if host.iter().any(|r| r.temperature > 0.0) { n * vocab } else { 1 };
        let probs = at_least(&mut self.probs, gpu, scratch)?;
        let out = at_least(&mut self.out, gpu, 2 * n)?;
        let params = at_least(&mut self.params, gpu, n)?;
        gpu.stream.memcpy_htod(&host, params)?;
        let vocab_arg = vocab as i32; // <= MAX_VOCAB
        let mut launch = gpu.launch("sample_f32")?;
        launch.arg(logits).arg(&vocab_arg).arg(&*params).arg(&mut *probs).arg(&mut *out);
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        unsafe { launch.launch(cfg) }.context("launching sample_f32")?;
        let raw = gpu.download(&out.slice(0..2 * n))?;
        unpack(&raw, vocab)
    }
}

/// The kernel's `[rows, 2]` output as (id, log-prob) pairs; an id outside the vocabulary is an error.
fn unpack(raw: &[u32], vocab: usize) -> Result<Vec<(u32, f32)>> {
    raw.chunks_exact(2)
        .enumerate()
        .map(|(row, pair)| {
            if pair[0] as usize >= vocab {
                bail!("sample_f32 returned token {} for row {row} of a {vocab}-token vocabulary", pair[0]);
            }
            Ok((pair[0], f32::from_bits(pair[1])))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn row_params_have_the_kernels_layout() {
        assert_eq!(size_of::<RowParams>(), 32);
        assert_eq!(
            [
                offset_of!(RowParams, seed),
                offset_of!(RowParams, index),
                offset_of!(RowParams, temperature),
                offset_of!(RowParams, top_p),
                offset_of!(RowParams, top_k),
                offset_of!(RowParams, flags),
            ],
            [0, 8, 16, 20, 24, 28]
        );
    }

    #[test]
    fn rows_pack_as_the_twin_decides_cuts_and_walk_order() {
        let p = |temperature, top_k, top_p| SamplingParams { temperature, top_k, top_p, seed: 9, top_logprobs: 0 };
        let rows = [
            (p(0.0, 0, 1.0), 3),  // greedy
            (p(1.0, 0, 1.0), 4),  // no cut: index order
            (p(0.7, 40, 1.0), 5), // top-k only: sorted
            (p(0.7, 0, 0.9), 6),  // top-p only: sorted
            (p(0.7, 50, 1.0), 7), // top_k >= vocab is no cut
            (p(0.7, 49, 1.0), 8), // top_k = vocab - 1 is a cut
        ];
        let packed = pack(&rows, 50, 6 * 50).unwrap();
        let got: Vec<(i32, u32, u64)> = packed.iter().map(|r| (r.top_k, r.flags, r.index)).collect();
        assert_eq!(got, [(0, 0, 3), (0, 0, 4), (40, 1, 5), (0, 1, 6), (0, 0, 7), (49, 1, 8)]);
        assert_eq!(packed[2], RowParams { seed: 9, index: 5, temperature: 0.7, top_p: 1.0, top_k: 40, flags: 1 });
    }

    #[test]
    fn bad_shapes_and_params_are_refused() {
        let ok = SamplingParams::default();
        assert!(pack(&[(ok, 0)], 0, 0).is_err(), "empty vocabulary");
        assert!(pack(&[(ok, 0)], MAX_VOCAB + 1, MAX_VOCAB + 1).is_err(), "vocabulary too large");
        let e = pack(&[(ok, 0), (ok, 1)], 10, 19).unwrap_err();
        assert!(format!("{e:#}").contains("expected 2 rows x vocab 10 = 20"), "{e:#}");
        let bad = SamplingParams { temperature: 1.0, top_p: 0.0, ..ok };
        let e = pack(&[(ok, 0), (bad, 1)], 10, 20).unwrap_err();
        assert!(format!("{e:#}").contains("sampling row 1") && format!("{e:#}").contains("top-p"), "{e:#}");
        let nan = SamplingParams { temperature: f32::NAN, ..ok };
        assert!(pack(&[(nan, 0)], 10, 10).is_err());
        assert!(pack(&[], 10, 0).unwrap().is_empty());
        assert!(unpack(&[3, 0, 10, 0], 10).is_err(), "an id >= vocab is an error");
        assert_eq!(unpack(&[3, 0x3f80_0000], 10).unwrap(), [(3, 1.0)]);
    }

    /// kernels/sample.cu's `expf_glibc` (glibc's expf as its x86-64 FMA build computes it), line for line.
    fn expf_glibc(x: f32) -> f32 {
        const TAB: [u64; 32] = [
            0x3ff0000000000000,
            0x3fefd9b0d3158574,
            0x3fefb5586cf9890f,
            0x3fef9301d0125b51,
            0x3fef72b83c7d517b,
            0x3fef54873168b9aa,
            0x3fef387a6e756238,
            0x3fef1e9df51fdee1,
            0x3fef06fe0a31b715,
            0x3feef1a7373aa9cb,
            0x3feedea64c123422,
            0x3feece086061892d,
            0x3feebfdad5362a27,
            0x3feeb42b569d4f82,
            0x3feeab07dd485429,
            0x3feea47eb03a5585,
            0x3feea09e667f3bcd,
            0x3fee9f75e8ec5f74,
            0x3feea11473eb0187,
            0x3feea589994cce13,
            0x3feeace5422aa0db,
            0x3feeb737b0cdc5e5,
            0x3feec49182a3f090,
            0x3feed503b23e255d,
            0x3feee89f995ad3ad,
            0x3feeff76f2fb5e47,
            0x3fef199bdd85529c,
            0x3fef3720dcef9069,
            0x3fef5818dcfba487,
            0x3fef7c97337b9b5f,
            0x3fefa4afa2a490da,
            0x3fefd0765b6e4540,
        ];
        let inv_ln2_n = f64::from_bits(0x3ff71547652b82fe) * 32.0;
        let shift = f64::from_bits(0x4338000000000000); // 0x1.8p52
        let c0 = f64::from_bits(0x3fac6af84b912394) / 32.0 / 32.0 / 32.0;
        let c1 = f64::from_bits(0x3fcebfce50fac4f3) / 32.0 / 32.0;
        let c2 = f64::from_bits(0x3fe62e42ff0c52d6) / 32.0;
        let ix = x.to_bits();
        let abstop = (ix >> 20) & 0x7ff;
        if abstop >= 0x42b {
            if ix == 0xff80_0000 {
                return 0.0;
            }
            if abstop >= 0x7f8 {
                return x + x;
            }
            if x > f32::from_bits(0x42b1_7217) {
                return f32::INFINITY;
            }
            if x < -f32::from_bits(0x42cf_f1b4) {
                return 0.0;
            }
        }
        let xd = x as f64;
        let kd = inv_ln2_n.mul_add(xd, shift);
        let ki = kd.to_bits();
        let kd = kd - shift;
        let r = inv_ln2_n.mul_add(xd, -kd);
        let s = f64::from_bits(TAB[(ki & 31) as usize].wrapping_add(ki << 47));
        let z = c0.mul_add(r, c1);
        let r2 = r * r;
        let y = z.mul_add(r2, c2.mul_add(r, 1.0)) * s;
        y as f32
    }

    /// The kernel gives p_i the twin's bits only if this machine's f32::exp is glibc's expf (x86-64, FMA
    /// build); checked on the whole range the sampler evaluates (x <= 0), every 61st float, plus edges.
    #[test]
    fn kernel_exp_matches_host_exp() {
        let edges = [0.0f32, -0.0, -1e-30, -87.0, -88.0, -103.0, -103.97, -104.0, -200.0, f32::NEG_INFINITY];
        let sweep = (0x8000_0000u32..=0xc2d0_0000).step_by(61).map(f32::from_bits);
        let mut bad = Vec::new();
        for x in edges.into_iter().chain(sweep) {
            if expf_glibc(x).to_bits() != x.exp().to_bits() {
                bad.push(x);
            }
        }
        assert!(
            bad.is_empty(),
            "{} inputs differ, first {:?}: the GPU's probs will not match the CPU twin",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
}
