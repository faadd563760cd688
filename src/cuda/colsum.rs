//! Launcher of `kernels/colsum.cu`: a weight's gradient summed over a batch's rows, `out[j] += sum_r
//! a[r, j] b[r, j] s[r]` (b and s optional), deterministic (fixed row groups, added in order).
//! CPU twins: the dw / db sums of `cpu::grad::rmsnorm_backward` and `bias_backward`; test:
//! `tests/cuda_train.rs` (`rmsnorm_backward_matches_cpu`).
use super::device::blocks_for;
use super::Gpu;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

/// Rows each block column sums before the groups are added: enough groups to fill the GPU at d = 896 and
/// a few thousand rows, few enough that the second pass is short.
pub const ROWS_PER_GROUP: usize = 64;

/// out `[d]` += sum over `rows` of a `[rows, d]` (times b `[rows, d]` and s `[rows]` where given).
pub fn colsum(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    a: &CudaView<f32>,
    b: Option<&CudaView<f32>>,
    s: Option<&CudaView<f32>>,
    rows: usize,
) -> Result<()> {
    let d = out.len();
    ensure!(a.len() >= rows * d, "colsum: a too small for [{rows} x {d}]");
    ensure!(b.is_none_or(|b| b.len() >= rows * d) && s.is_none_or(|s| s.len() >= rows), "colsum: b or s too small");
    if rows == 0 || d == 0 {
        return Ok(());
    }
    let groups = rows.div_ceil(ROWS_PER_GROUP);
    let mut partial = gpu.zeros::<f32>(groups * d)?;
    let (rows32, d32, per32, groups32) = (rows as i32, d as i32, ROWS_PER_GROUP as i32, groups as i32);
    let null = 0u64; // how the kernel hears "no b" / "no s"
    let mut l = gpu.launch("colsum_partial")?;
    l.arg(&mut partial).arg(a);
    match b {
        Some(b) => l.arg(b),
        None => l.arg(&null),
    };
    match s {
        Some(s) => l.arg(s),
        None => l.arg(&null),
    };
    l.arg(&rows32).arg(&d32).arg(&per32);
    let cols = blocks_for(d, 256);
    unsafe {
        l.launch(LaunchConfig { grid_dim: (cols, groups as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
    }?;
    let mut l = gpu.launch("colsum_finish")?;
    l.arg(out).arg(&partial).arg(&groups32).arg(&d32);
    unsafe { l.launch(LaunchConfig { grid_dim: (cols, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
    Ok(())
}
