//! Launcher of `kernels/swiglu.cu`: out `[t, f]` = silu(gate) * up over `[t, 2f]` rows of `[gate | up]`, bf16.
//! CPU twin: `cpu::ops::swiglu`; test: `tests/cuda_kernels.rs` (`swiglu_matches_cpu`).
use super::device::blocks_for;
use super::Gpu;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

pub fn swiglu(gpu: &Gpu, out: &mut CudaViewMut<bf16>, gate_up: &CudaView<bf16>, t: usize, f: usize) -> Result<()> {
    let n = t * f;
    ensure!(out.len() >= n && gate_up.len() >= 2 * n, "swiglu: buffers too small for [{t} x {f}]");
    if n == 0 {
        return Ok(());
    }
    let (f32_, n64) = (f as i32, n as i64);
    let mut l = gpu.launch("swiglu_bf16")?;
    l.arg(out).arg(gate_up).arg(&f32_).arg(&n64);
    // A grid-stride loop: enough blocks to fill the GPU, not one thread per element of a long prefill.
    let grid = blocks_for(n, 256).min(65_535);
    unsafe { l.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
    Ok(())
}

/// The backward pass: d_gate_up `[t, 2f]` (bf16) from d_out `[t, f]` (fp32) and the forward's gate_up.
/// CPU twin: `cpu::grad::swiglu_backward`; test: `tests/cuda_train.rs` (`swiglu_backward_matches_cpu`).
pub fn swiglu_backward(
    gpu: &Gpu,
    d_gate_up: &mut CudaViewMut<bf16>,
    d_out: &CudaView<f32>,
    gate_up: &CudaView<bf16>,
    t: usize,
    f: usize,
) -> Result<()> {
    let n = t * f;
    ensure!(
        d_out.len() >= n && gate_up.len() >= 2 * n && d_gate_up.len() >= 2 * n,
        "swiglu_backward: buffers too small for [{t} x {f}]"
    );
    if n == 0 {
        return Ok(());
    }
    let (f32_, n64) = (f as i32, n as i64);
    let mut l = gpu.launch("swiglu_backward_bf16")?;
    l.arg(d_gate_up).arg(d_out).arg(gate_up).arg(&f32_).arg(&n64);
    let grid = blocks_for(n, 256).min(65_535);
    unsafe { l.launch(LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
    Ok(())
}
