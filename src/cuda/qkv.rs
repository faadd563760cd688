//! Launcher of `kernels/qkv.cu`: bias, q/k norm, RoPE and the KV-pool append for a step's tokens, in one pass.
//! CPU twin: the tail of `CpuModel::attn_in_by` and the pool write of the CPU step; test:
//! `tests/cuda_kernels.rs` (`qkv_matches_cpu`).
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

/// The kernel for a head size: one per size so each lane's values stay in registers.
pub fn kernel_name(head_dim: usize) -> Result<&'static str> {
    Ok(match head_dim {
        64 => "qkv_rope_append_64",
        128 => "qkv_rope_append_128",
        256 => "qkv_rope_append_256",
        _ => bail!("the CUDA backend supports head_dim 64, 128 and 256, not {head_dim}"),
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

#[cfg(test)]
mod tests {
    #[test]
    fn head_sizes_without_a_kernel_are_refused() {
        assert!(super::kernel_name(64).is_ok() && super::kernel_name(128).is_ok());
        let err = super::kernel_name(96).unwrap_err().to_string();
        assert!(err.contains("head_dim") && err.contains("96"), "{err}");
    }
}
