//! Launchers of the residual stream's kernels: the embedding gather (`kernels/embedding.cu`, CPU twin
//! `CpuModel::embed`) and the residual add fused with RMSNorm (`kernels/rmsnorm.cu`, CPU twin
//! `cpu::ops::rmsnorm` after the add). Tests: `tests/cuda_kernels.rs`.
use super::Gpu;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

const THREADS: u32 = 256;

/// x `[t, d]` = rows `tokens` of `table` `[vocab, d]`, in fp32 (ids checked on the host beforehand).
pub fn embed(
    gpu: &Gpu,
    x: &mut CudaViewMut<f32>,
    table: &CudaView<bf16>,
    tokens: &CudaView<u32>,
    d: usize,
) -> Result<()> {
    let t = tokens.len();
    ensure!(x.len() >= t * d && table.len() >= d, "embed: buffers too small for {t} rows of {d}");
    if t == 0 {
        return Ok(());
    }
    let d32 = d as i32;
    let mut l = gpu.launch("embed_bf16")?;
    l.arg(x).arg(table).arg(tokens).arg(&d32);
    unsafe { l.launch(LaunchConfig { grid_dim: (t as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }) }?;
    Ok(())
}

/// Which rows of the residual stream an `add_rmsnorm` normalises.
pub enum Rows<'a> {
    /// The first `n`, into y rows 0..n.
    First(usize),
    /// These rows (device indices), into y rows 0..len.
    Picked(&'a CudaView<'a, i32>),
}

/// x += delta (when given), then y = rmsnorm(x) * w for `rows`; x and delta `[.., d]` fp32, y bf16.
pub fn add_rmsnorm(
    gpu: &Gpu,
    x: &mut CudaViewMut<f32>,
    delta: Option<&CudaView<f32>>,
    y: &mut CudaViewMut<bf16>,
    w: &CudaView<bf16>,
    rows: Rows,
    eps: f32,
) -> Result<()> {
    let d = w.len();
    let n = match &rows {
        Rows::First(n) => *n,
        Rows::Picked(r) => r.len(),
    };
    ensure!(y.len() >= n * d, "add_rmsnorm: output too small for {n} rows of {d}");
    if let Rows::First(n) = rows {
        ensure!(x.len() >= n * d && delta.is_none_or(|dl| dl.len() >= n * d), "add_rmsnorm: inputs too small");
    }
    if n == 0 {
        return Ok(());
    }
    // A null pointer is how the kernel hears "no delta" / "all rows".
    let null = 0u64;
    let d32 = d as i32;
    let mut l = gpu.launch("add_rmsnorm_bf16")?;
    l.arg(x);
    match delta {
        Some(dl) => l.arg(dl),
        None => l.arg(&null),
    };
    l.arg(y).arg(w);
    match &rows {
        Rows::Picked(r) => l.arg(*r),
        Rows::First(_) => l.arg(&null),
    };
    l.arg(&d32).arg(&eps);
    unsafe { l.launch(LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }) }?;
    Ok(())
}
