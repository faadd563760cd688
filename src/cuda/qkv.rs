//! Launcher of `kernels/qkv.cu`: bias, q/k norm, RoPE and the KV-pool append for a step's tokens, in one pass;
//! and its backward pass for training.
//! CPU twin: the tail of `CpuModel::attn_in_by` and the pool write of the CPU step; test:
//! `tests/cuda_kernels.rs` (`qkv_matches_cpu`).
use super::colsum::colsum;
use super::Gpu;
use anyhow::{bail, ensure, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// A layer's optional pieces: biases `[q_dim + 2 kv_dim]` (qwen2) and per-head norms `[head_dim]` (qwen3).
#[derive(Clone, Copy)]
pub struct QkvExtras<'a> {
    pub bias: Option<&'a CudaView<'a, bf16>>,
    pub norms: Option<(&'a CudaView<'a, bf16>, &'a CudaView<'a, bf16>)>,
}

/// Shapes of the attention inputs.
#[derive(Clone, Copy, Debug)]
pub struct QkvShape {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub eps: f32,
}

/// The forward kernel for a head size: one per size so each lane's values stay in registers.
pub fn kernel_name(head_dim: usize) -> Result<&'static str> {
    Ok(match head_dim {
        64 => "qkv_rope_append_64",
        128 => "qkv_rope_append_128",
        256 => "qkv_rope_append_256",
        _ => bail!("the CUDA backend supports head_dim 64, 128 and 256, not {head_dim}"),
    })
}

/// The backward kernel for a head size (the sizes of [`kernel_name`]).
fn backward_kernel_name(head_dim: usize) -> Result<&'static str> {
    Ok(match kernel_name(head_dim)? {
        "qkv_rope_append_64" => "qkv_backward_64",
        "qkv_rope_append_128" => "qkv_backward_128",
        _ => "qkv_backward_256",
    })
}

/// From `qkv` `[t, q_dim + 2 kv_dim]` fp32: q `[t, q_dim]` bf16, and keys/values into pool rows `slots[r]` of
/// `k_pool`/`v_pool` (`[slots, kv_dim]` bf16); `positions[r]` turns row r; `inv_freq` `[head_dim / 2]`.
#[allow(clippy::too_many_arguments)] // the kernel's operands
pub fn qkv_rope_append(
    gpu: &Gpu,
    q: &mut CudaViewMut<bf16>,
    k_pool: &mut CudaViewMut<bf16>,
    v_pool: &mut CudaViewMut<bf16>,
    qkv: &CudaView<f32>,
    extras: QkvExtras,
    inv_freq: &CudaView<f32>,
    positions: &CudaView<i32>,
    slots: &CudaView<i32>,
    s: QkvShape,
) -> Result<()> {
    let name = kernel_name(s.head_dim)?;
    let (t, qd, kvd) = (positions.len(), s.n_heads * s.head_dim, s.n_kv * s.head_dim);
    ensure!(
        slots.len() == t && qkv.len() >= t * (qd + 2 * kvd) && q.len() >= t * qd && inv_freq.len() * 2 == s.head_dim,
        "qkv_rope_append: buffers do not fit {t} rows"
    );
    ensure!(
        k_pool.len() == v_pool.len() && k_pool.len() % kvd == 0,
        "qkv_rope_append: the pool is not [slots, kv_dim]"
    );
    if t == 0 {
        return Ok(());
    }
    let null = 0u64;
    let (nh, nkv) = (s.n_heads as i32, s.n_kv as i32);
    let mut l = gpu.launch(name)?;
    l.arg(q).arg(k_pool).arg(v_pool).arg(qkv);
    match extras.bias {
        Some(b) => l.arg(b),
        None => l.arg(&null),
    };
    match extras.norms {
        Some((qn, kn)) => l.arg(qn).arg(kn),
        None => l.arg(&null).arg(&null),
    };
    l.arg(inv_freq).arg(positions).arg(slots).arg(&nh).arg(&nkv).arg(&s.eps);
    unsafe { l.launch(LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
    Ok(())
}

/// Where the backward pass's weight gradients go (accumulated): the bias's `[q_dim + 2 kv_dim]` and the
/// q and k head norms' `[head_dim]` each, present exactly when the layer has them.
pub struct QkvWeightGrads<'a, 'b> {
    pub bias: Option<&'a mut CudaViewMut<'b, f32>>,
    pub norms: Option<(&'a mut CudaViewMut<'b, f32>, &'a mut CudaViewMut<'b, f32>)>,
}

/// The backward pass of the fused tail for a training batch (row r at `positions[r]`): d_qkv `[t, q_dim +
/// 2 kv_dim]` (bf16, overwritten) from dq `[t, q_dim]`, dk and dv `[t, kv_dim]` (fp32) and the forward's
/// `qkv` rows (fp32, before the bias); the weights' gradients are added into `grads`.
/// CPU twin: `cpu::grad::rope_backward`, `rmsnorm_backward` per head and `bias_backward`; test:
/// `tests/cuda_train.rs` (`qkv_backward_matches_cpu`).
#[allow(clippy::too_many_arguments)] // the kernel's operands
pub fn qkv_backward(
    gpu: &Gpu,
    d_qkv: &mut CudaViewMut<bf16>,
    grads: QkvWeightGrads,
    dq: &CudaView<f32>,
    dk: &CudaView<f32>,
    dv: &CudaView<f32>,
    qkv: &CudaView<f32>,
    extras: QkvExtras,
    inv_freq: &CudaView<f32>,
    positions: &CudaView<i32>,
    s: QkvShape,
) -> Result<()> {
    let name = backward_kernel_name(s.head_dim)?;
    let (t, hd) = (positions.len(), s.head_dim);
    let (qd, kvd) = (s.n_heads * hd, s.n_kv * hd);
    let width = qd + 2 * kvd;
    ensure!(
        qkv.len() >= t * width && d_qkv.len() >= t * width && inv_freq.len() * 2 == hd,
        "qkv_backward: buffers do not fit {t} rows"
    );
    ensure!(dq.len() >= t * qd && dk.len() >= t * kvd && dv.len() >= t * kvd, "qkv_backward: dq, dk or dv too small");
    ensure!(
        grads.bias.is_some() == extras.bias.is_some() && grads.norms.is_some() == extras.norms.is_some(),
        "qkv_backward: weight gradients must match the layer's biases and norms"
    );
    if t == 0 {
        return Ok(());
    }
    let mut d32 = match grads.bias {
        Some(_) => Some(gpu.zeros::<f32>(t * width)?),
        None => None,
    };
    let mut partial = match grads.norms {
        Some(_) => Some(gpu.zeros::<f32>(2 * t * hd)?),
        None => None,
    };
    let null = 0u64;
    let (nh, nkv) = (s.n_heads as i32, s.n_kv as i32);
    let mut l = gpu.launch(name)?;
    l.arg(&mut *d_qkv);
    match d32.as_mut() {
        Some(b) => l.arg(b),
        None => l.arg(&null),
    };
    match partial.as_mut() {
        Some(p) => l.arg(p),
        None => l.arg(&null),
    };
    l.arg(dq).arg(dk).arg(dv).arg(qkv);
    match extras.bias {
        Some(b) => l.arg(b),
        None => l.arg(&null),
    };
    match extras.norms {
        Some((qn, kn)) => l.arg(qn).arg(kn),
        None => l.arg(&null).arg(&null),
    };
    l.arg(inv_freq).arg(positions).arg(&nh).arg(&nkv).arg(&s.eps);
    // 256 threads: the kernel's shared scratch holds 8 warps.
    unsafe { l.launch(LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
    if let (Some(db), Some(d32)) = (grads.bias, &d32) {
        colsum(gpu, db, &d32.slice(..), None, None, t)?;
    }
    if let (Some((dqn, dkn)), Some(p)) = (grads.norms, &partial) {
        colsum(gpu, dqn, &p.slice(..t * hd), None, None, t)?;
        colsum(gpu, dkn, &p.slice(t * hd..), None, None, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn head_sizes_without_a_kernel_are_refused() {
        assert!(super::kernel_name(64).is_ok() && super::kernel_name(128).is_ok());
        let err = super::kernel_name(96).unwrap_err().to_string();
        assert!(err.contains("head_dim") && err.contains("96"), "{err}");
    }
}
