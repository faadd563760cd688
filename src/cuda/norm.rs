//! Launchers of the residual stream's kernels: the embedding gather (`kernels/embedding.cu`, CPU twin
//! `CpuModel::embed`) and the residual add fused with RMSNorm (`kernels/rmsnorm.cu`, CPU twin
//! `cpu::ops::rmsnorm` after the add), and their backward passes (tests: `tests/cuda_train.rs`). Tests:
//! `tests/cuda_kernels.rs`.
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

/// The backward pass of `add_rmsnorm` over `rows` training rows: dresid `[rows, d]` (the residual
/// stream's gradient, fp32) += the norm's input gradient, its bf16 copy into dresid16, and dw += the
/// weight's gradient. dy is the normalised rows' gradient (fp32), x the forward's residual rows.
/// CPU twin: `cpu::grad::rmsnorm_backward`; test: `tests/cuda_train.rs` (`rmsnorm_backward_matches_cpu`).
#[allow(clippy::too_many_arguments)] // inputs, outputs and the shape
pub fn rmsnorm_backward(
    gpu: &Gpu,
    dresid: &mut CudaViewMut<f32>,
    dresid16: &mut CudaViewMut<bf16>,
    dw: &mut CudaViewMut<f32>,
    dy: &CudaView<f32>,
    x: &CudaView<f32>,
    w: &CudaView<bf16>,
    rows: usize,
    eps: f32,
) -> Result<()> {
    let d = w.len();
    let n = rows * d;
    ensure!(
        dresid.len() >= n && dresid16.len() >= n && dy.len() >= n && x.len() >= n && dw.len() == d,
        "rmsnorm_backward: buffers too small for [{rows} x {d}]"
    );
    if rows == 0 {
        return Ok(());
    }
    let mut rinv = gpu.zeros::<f32>(rows)?;
    let d32 = d as i32;
    let mut l = gpu.launch("rmsnorm_backward")?;
    l.arg(dresid).arg(dresid16).arg(&mut rinv).arg(dy).arg(x).arg(w).arg(&d32).arg(&eps);
    unsafe {
        l.launch(LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
    }?;
    super::colsum::colsum(gpu, dw, dy, Some(x), Some(&rinv.slice(..)), rows)
}

/// A batch's token positions grouped by id, in position order within each id: the work list of the
/// embedding's deterministic scatter-add (`embed_backward`).
#[derive(Debug, PartialEq)]
pub struct EmbedGrad {
    /// The distinct ids, ascending.
    pub ids: Vec<u32>,
    /// Id k's positions are `positions[starts[k]..starts[k + 1]]`.
    pub starts: Vec<u32>,
    pub positions: Vec<u32>,
}

impl EmbedGrad {
    pub fn new(tokens: &[u32]) -> EmbedGrad {
        let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
        order.sort_by_key(|&p| (tokens[p as usize], p));
        let (mut ids, mut starts) = (Vec::new(), Vec::new());
        for (k, &p) in order.iter().enumerate() {
            if ids.last() != Some(&tokens[p as usize]) {
                ids.push(tokens[p as usize]);
                starts.push(k as u32);
            }
        }
        starts.push(order.len() as u32);
        EmbedGrad { ids, starts, positions: order }
    }
}

/// d_table `[vocab, d]` += each position's row of d_x `[t, d]` at its token's row, in position order per
/// id (bit-identical to the CPU twin `cpu::grad::embedding_backward`); ids checked on the host beforehand.
/// Test: `tests/cuda_train.rs` (`embed_backward_matches_cpu`).
pub fn embed_backward(
    gpu: &Gpu,
    d_table: &mut CudaViewMut<f32>,
    d_x: &CudaView<f32>,
    work: &EmbedGrad,
    d: usize,
) -> Result<()> {
    let t = work.positions.len();
    ensure!(d_x.len() >= t * d, "embed_backward: d_x too small for {t} rows of {d}");
    ensure!(
        work.ids.iter().all(|&id| (id as usize + 1) * d <= d_table.len()),
        "embed_backward: a token id is outside the table"
    );
    if work.ids.is_empty() {
        return Ok(());
    }
    let (ids, starts, positions) = (gpu.upload(&work.ids)?, gpu.upload(&work.starts)?, gpu.upload(&work.positions)?);
    let d32 = d as i32;
    let mut l = gpu.launch("embed_backward")?;
    l.arg(d_table).arg(d_x).arg(&ids).arg(&starts).arg(&positions).arg(&d32);
    let grid = (work.ids.len() as u32, 1, 1);
    unsafe { l.launch(LaunchConfig { grid_dim: grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::EmbedGrad;

    #[test]
    fn embedding_work_groups_positions_by_id_in_order() {
        let w = EmbedGrad::new(&[5, 2, 5, 9, 2, 5]);
        assert_eq!(w.ids, [2, 5, 9]);
        assert_eq!(w.starts, [0, 2, 5, 6]);
        assert_eq!(w.positions, [1, 4, 0, 2, 5, 3]);
        assert_eq!(EmbedGrad::new(&[]), EmbedGrad { ids: vec![], starts: vec![0], positions: vec![] });
    }
}
