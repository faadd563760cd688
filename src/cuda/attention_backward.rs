//! Launcher of `kernels/attention_backward.cu`: dq, dk, dv of causal grouped-query attention over packed
//! training sequences (the layout of `cpu::grad::Packed`), from q, k, v (bf16, after RoPE) and the output's
//! gradient (fp32), recomputing the probabilities instead of storing them.
//! CPU twin: `cpu::grad::attention_backward`; test: `tests/cuda_train.rs` (`attention_backward_matches_cpu`).
use super::device::blocks_for;
use super::Gpu;
use anyhow::{ensure, Result};
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig, PushKernelArg};
use half::bf16;

/// Each row's sequence as (first row, one past the last row), `[T]` each: row r attends to keys
/// `starts[r]..=r`, and its key is seen by queries `r..ends[r]`.
pub fn row_bounds(seq_lens: &[usize]) -> (Vec<i32>, Vec<i32>) {
    let (mut starts, mut ends, mut at) = (Vec::new(), Vec::new(), 0i32);
    for &len in seq_lens {
        let end = at + len as i32;
        starts.extend(std::iter::repeat_n(at, len));
        ends.extend(std::iter::repeat_n(end, len));
        at = end;
    }
    (starts, ends)
}

/// The packed layout: `seq_lens` sequences end to end, `n_heads` query heads of `hd`, `n_kv` kv heads.
pub struct PackedShape<'a> {
    pub seq_lens: &'a [usize],
    pub n_heads: usize,
    pub n_kv: usize,
    pub hd: usize,
}

/// dq `[T, n_heads hd]`, dk and dv `[T, n_kv hd]` (fp32, overwritten) from d_out `[T, n_heads hd]`. Row r's
/// key and value are row `kv_rows[r]` of k and v (a KV pool's slots), or row r without `kv_rows`.
#[allow(clippy::too_many_arguments)] // three gradients, three inputs, the upstream gradient and the layout
pub fn attention_backward(
    gpu: &Gpu,
    dq: &mut CudaViewMut<f32>,
    dk: &mut CudaViewMut<f32>,
    dv: &mut CudaViewMut<f32>,
    d_out: &CudaView<f32>,
    q: &CudaView<bf16>,
    k: &CudaView<bf16>,
    v: &CudaView<bf16>,
    kv_rows: Option<&CudaView<i32>>,
    shape: &PackedShape,
) -> Result<()> {
    let PackedShape { seq_lens, n_heads, n_kv, hd } = *shape;
    ensure!(hd % 32 == 0 && hd <= 256, "attention backward: head size {hd} is not a multiple of 32 up to 256");
    ensure!(n_kv > 0 && n_heads % n_kv == 0, "attention backward: {n_heads} heads are not groups of {n_kv}");
    let t: usize = seq_lens.iter().sum();
    let (qd, kvd) = (n_heads * hd, n_kv * hd);
    ensure!(
        q.len() >= t * qd && d_out.len() >= t * qd && dq.len() >= t * qd,
        "attention backward: q-shaped buffers too small for {t} rows"
    );
    ensure!(dk.len() >= t * kvd && dv.len() >= t * kvd, "attention backward: dk or dv too small for {t} rows");
    match kv_rows {
        // The slots were checked when the forward wrote them; k and v must hold a row for each.
        Some(r) => ensure!(r.len() == t && k.len() == v.len() && k.len() % kvd == 0, "attention backward: kv rows"),
        None => ensure!(k.len() >= t * kvd && v.len() >= t * kvd, "attention backward: k or v too small for {t} rows"),
    }
    if t == 0 {
        return Ok(());
    }
    let (starts, ends) = row_bounds(seq_lens);
    let (starts, ends) = (gpu.upload(&starts)?, gpu.upload(&ends)?);
    let mut stats = gpu.zeros::<f32>(2 * t * n_heads)?;
    let (t32, nh, nk, hd32) = (t as i32, n_heads as i32, n_kv as i32, hd as i32);
    let scale = 1.0 / (hd as f32).sqrt();
    // One warp per (row, head): 8 per block of 256 threads.
    let cfg = |warps: usize| LaunchConfig {
        grid_dim: (blocks_for(warps, 8), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };

    let null = 0u64; // no kv_rows: k and v are packed like q
    let mut l = gpu.launch("attn_bwd_rows")?;
    l.arg(&mut stats).arg(q).arg(k).arg(v).arg(d_out).arg(&starts);
    match kv_rows {
        Some(r) => l.arg(r),
        None => l.arg(&null),
    };
    l.arg(&t32).arg(&nh).arg(&nk).arg(&hd32).arg(&scale);
    unsafe { l.launch(cfg(t * n_heads)) }?;
    let mut l = gpu.launch("attn_bwd_dq")?;
    l.arg(dq).arg(&stats).arg(q).arg(k).arg(v).arg(d_out).arg(&starts);
    match kv_rows {
        Some(r) => l.arg(r),
        None => l.arg(&null),
    };
    l.arg(&t32).arg(&nh).arg(&nk).arg(&hd32).arg(&scale);
    unsafe { l.launch(cfg(t * n_heads)) }?;
    let mut l = gpu.launch("attn_bwd_dkv")?;
    l.arg(dk).arg(dv).arg(&stats).arg(q).arg(k).arg(v).arg(d_out).arg(&ends);
    match kv_rows {
        Some(r) => l.arg(r),
        None => l.arg(&null),
    };
    l.arg(&t32).arg(&nh).arg(&nk).arg(&hd32).arg(&scale);
    unsafe { l.launch(cfg(t * n_kv)) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn row_bounds_name_each_rows_sequence() {
        let (starts, ends) = super::row_bounds(&[2, 0, 3, 1]);
        assert_eq!(starts, [0, 0, 2, 2, 2, 5]);
        assert_eq!(ends, [2, 2, 5, 5, 5, 6]);
    }
}
