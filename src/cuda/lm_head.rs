//! The fused LM head on the GPU (`kernels/lm_head.cu`): each target token's log-prob under softmax(h W^T /
//! temperature) by an online log-sum-exp over vocabulary chunks, never a `[T, V]` logits tensor; the
//! clipped policy-gradient loss over those log-probs with its statistics; and the backward pass, which
//! recomputes each chunk's logits and writes d(hidden) and d(W) through two cuBLASLt products per chunk.
//! Forward only, it gives the reference and old-policy log-probs.
//! Memory on top of the inputs and gradients: a `[T, chunk]` fp32 scratch and its bf16 gradient
//! ([`chunk_rows`] bounds them), and 32 bytes of state per position.
//! CPU twins: `cpu::logprob::token_logprobs` / `token_logprobs_backward` and `rl::loss::pg_loss`; test:
//! `tests/cuda_train.rs` (`lm_head_loss_matches_cpu`).
use super::device::blocks_for;
use super::Gpu;
use crate::rl::PgLossConfig;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// Bytes the per-chunk scratch may take: the fp32 logits and their bf16 gradient.
const SCRATCH_BYTES: usize = 256 << 20;

/// Vocabulary rows per chunk for `t` positions: as many as fit 256 MiB (6 bytes a logit), a
/// multiple of 128 (the GEMM's tile), at least 128 and at most `v`.
pub fn chunk_rows(t: usize, v: usize) -> usize {
    let fit = SCRATCH_BYTES / (6 * t.max(1));
    (fit / 128 * 128).max(128).min(v.max(1))
}

/// The head's operands: `h` `[t, d]` final hidden states (bf16, after the final norm), `w` `[v, d]` the
/// head matrix, `targets` `[t]` the token each position is scored on (checked against `v` on the host).
pub struct LmHead<'a> {
    pub h: CudaView<'a, bf16>,
    pub w: CudaView<'a, bf16>,
    pub targets: CudaView<'a, u32>,
    pub t: usize,
    pub d: usize,
    pub v: usize,
    pub temperature: f32,
    /// Vocabulary rows per chunk ([`chunk_rows`] unless a test wants ragged chunks).
    pub chunk: usize,
}

/// Per-position results, `[t]` each, on the device.
pub struct Logprobs {
    pub logp: CudaSlice<f32>,
    /// log-sum-exp of logits / temperature: what the backward pass needs.
    pub lse: CudaSlice<f32>,
    pub entropy: Option<CudaSlice<f32>>,
}

/// The loss's totals, as `rl::PgLoss` reports them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgStats {
    pub loss: f32,
    pub clip_frac: f32,
    pub approx_kl: f32,
    pub tokens: usize,
}

impl LmHead<'_> {
    fn check(&self) -> Result<()> {
        let (t, d, v) = (self.t, self.d, self.v);
        // (An empty batch is refused rather than given zero-length device buffers, which CUDA cannot allocate.)
        ensure!(t > 0 && v > 0 && self.chunk > 0, "lm_head: no positions, an empty vocabulary or chunk 0");
        ensure!(self.temperature > 0.0 && self.temperature.is_finite(), "lm_head: temperature must be positive");
        ensure!(
            self.h.len() >= t * d && self.w.len() >= v * d && self.targets.len() >= t,
            "lm_head: operands too small for t {t}, d {d}, vocabulary {v}"
        );
        Ok(())
    }

    /// The vocabulary chunks as (first row, row count).
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let c = self.chunk.min(self.v);
        (0..self.v).step_by(c).map(move |v0| (v0, c.min(self.v - v0)))
    }

    /// scratch `[t, rows]` = h W[v0..v0 + rows]^T (not yet divided by the temperature: the kernels do it).
    fn chunk_logits(&self, gpu: &Gpu, scratch: &mut CudaSlice<f32>, v0: usize, rows: usize) -> Result<()> {
        let wc = self.w.slice(v0 * self.d..(v0 + rows) * self.d);
        gpu.blas.linear(&mut scratch.slice_mut(..self.t * rows), &self.h, &wc, self.t, self.d, rows, false)
    }

    /// Each position's log-prob of its target, log-sum-exp and (when asked) entropy.
    pub fn logprobs(&self, gpu: &Gpu, with_entropy: bool) -> Result<Logprobs> {
        self.check()?;
        let t = self.t;
        let mut state = gpu.upload(&[f64::NEG_INFINITY, 0.0, 0.0, 0.0].repeat(t))?;
        let mut scratch = gpu.zeros::<f32>(t * self.chunk.min(self.v))?;
        let inv_temp = 1.0 / self.temperature;
        for (v0, rows) in self.chunks() {
            self.chunk_logits(gpu, &mut scratch, v0, rows)?;
            let (rows32, v032) = (rows as i32, v0 as i32);
            let mut l = gpu.launch("lm_head_lse_chunk")?;
            l.arg(&mut state).arg(&scratch).arg(&rows32).arg(&v032).arg(&self.targets).arg(&inv_temp);
            unsafe {
                l.launch(LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
            }?;
        }
        let (mut lse, mut logp) = (gpu.zeros::<f32>(t)?, gpu.zeros::<f32>(t)?);
        let mut entropy = if with_entropy { Some(gpu.zeros::<f32>(t)?) } else { None };
        let (t32, null) = (t as i32, 0u64);
        let mut l = gpu.launch("lm_head_lse_finish")?;
        l.arg(&state).arg(&t32).arg(&mut lse).arg(&mut logp);
        match entropy.as_mut() {
            Some(e) => l.arg(e),
            None => l.arg(&null),
        };
        let grid = blocks_for(t, 256);
        unsafe { l.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
        Ok(Logprobs { logp, lse, entropy })
    }

    /// The gradient of sum_t dlogp_t logp_t: dh `[t, d]` (fp32) += its gradient w.r.t. h, dw `[v, d]` (fp32)
    /// += its gradient w.r.t. W. `lse` comes from [`LmHead::logprobs`].
    pub fn backward(
        &self,
        gpu: &Gpu,
        lse: &CudaView<f32>,
        dlogp: &CudaView<f32>,
        dh: &mut CudaViewMut<f32>,
        dw: &mut CudaViewMut<f32>,
    ) -> Result<()> {
        self.check()?;
        let (t, d) = (self.t, self.d);
        ensure!(lse.len() >= t && dlogp.len() >= t, "lm_head backward: lse or dlogp too short for {t} positions");
        ensure!(dh.len() >= t * d && dw.len() >= self.v * d, "lm_head backward: dh or dw too small");
        let c = self.chunk.min(self.v);
        let mut scratch = gpu.zeros::<f32>(t * c)?;
        let mut dlogits = gpu.zeros::<bf16>(t * c)?;
        let inv_temp = 1.0 / self.temperature;
        for (v0, rows) in self.chunks() {
            self.chunk_logits(gpu, &mut scratch, v0, rows)?;
            let (rows32, v032) = (rows as i32, v0 as i32);
            let mut l = gpu.launch("lm_head_dlogits")?;
            l.arg(&mut dlogits)
                .arg(&scratch)
                .arg(&rows32)
                .arg(&v032)
                .arg(&self.targets)
                .arg(lse)
                .arg(dlogp)
                .arg(&inv_temp);
            unsafe {
                l.launch(LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
            }?;
            let g = dlogits.slice(..t * rows);
            let wc = self.w.slice(v0 * d..(v0 + rows) * d);
            gpu.blas.linear_dx(dh, &g, &wc, t, d, rows, true)?;
            gpu.blas.linear_dw(&mut dw.slice_mut(v0 * d..(v0 + rows) * d), &g, &self.h, t, d, rows, true)?;
        }
        Ok(())
    }
}

/// The clipped policy-gradient loss over `t` tokens and d loss / d logp (`[t]`, 0 where masked out).
/// `weights` are each token's share of the aggregated loss, 0 for a masked token (`rl::token_weights`);
/// `logp_ref` is read only with a KL loss term (`cfg.kl_loss_coef`).
#[allow(clippy::too_many_arguments)]
pub fn pg_loss(
    gpu: &Gpu,
    logp: &CudaView<f32>,
    logp_old: &CudaView<f32>,
    logp_ref: &CudaView<f32>,
    adv: &CudaView<f32>,
    weights: &CudaView<f32>,
    tokens: usize,
    cfg: &PgLossConfig,
) -> Result<(CudaSlice<f32>, PgStats)> {
    cfg.check()?;
    let t = logp.len();
    ensure!(t > 0, "pg_loss: no tokens");
    ensure!(
        [logp_old.len(), logp_ref.len(), adv.len(), weights.len()].iter().all(|&n| n == t),
        "pg_loss: every per-token input needs {t} values"
    );
    let mut dlogp = gpu.zeros::<f32>(t)?;
    let mut terms = gpu.zeros::<f64>(3 * t)?;
    let mut stats = gpu.zeros::<f64>(3)?;
    let t32 = t as i32;
    let dual = cfg.dual_clip.unwrap_or(0.0);
    let kl = cfg.kl_loss_coef.unwrap_or(0.0);
    let mut l = gpu.launch("pg_loss_terms")?;
    l.arg(&mut dlogp).arg(&mut terms).arg(logp).arg(logp_old).arg(logp_ref).arg(adv).arg(weights).arg(&t32);
    l.arg(&cfg.eps_low).arg(&cfg.eps_high).arg(&dual).arg(&kl);
    let grid = blocks_for(t, 256);
    unsafe { l.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
    let mut l = gpu.launch("pg_loss_sum")?;
    l.arg(&mut stats).arg(&terms).arg(&t32);
    unsafe { l.launch(LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 }) }?;
    let s = gpu.download(&stats.slice(..))?;
    let per_token = |x: f64| if tokens == 0 { 0.0 } else { (x / tokens as f64) as f32 };
    Ok((dlogp, PgStats { loss: s[0] as f32, clip_frac: per_token(s[1]), approx_kl: per_token(s[2]), tokens }))
}
