//! Paged causal grouped-query attention (`kernels/attention.cu`): the plan of a step, computed on the host once
//! and shared by every layer, and each layer's launches. CPU twin: `cpu::ops::attention_rows`; test:
//! `tests/cuda_attention.rs`.
//!
//! A step's query rows are (sequence, position) pairs. [`build_plan`] cuts them into runs of consecutive rows of
//! one sequence at consecutive positions: a run of one row (a decode token) goes to the split-KV decode kernel,
//! a longer run (a prompt chunk) to the prefill kernel in tiles of at most [`prefill_rows_per_tile`] rows. The
//! decode kernel cuts each row's keys 0..=pos into splits of `split_len` keys ([`split_len`]: enough blocks to
//! fill the GPU when few long rows decode), writes each split's (max, sum, accumulator) to a scratch buffer, and
//! a combine kernel merges them (or, with one split, the decode kernel writes `out` itself). Both kernels write
//! disjoint rows of the same `out`.
//!
//! Metadata, uploaded by [`Attention::plan`] into one reused `u32` buffer: the decode tiles, then the prefill
//! tiles (4 `u32` each: first row, rows, position of the first row, offset of the sequence's block table), then
//! each referenced sequence's block table (only the blocks its rows reach). Buffers only grow, in `plan`;
//! [`Attention::run`] only launches: no allocation, no copy, no host-device sync. [`Attention::plan_fixed`]
//! pads a decode step to a [`FixedGrid`], so that its launches are the same at every step and can be captured
//! once as a CUDA graph (`cuda::graphs`).
//!
//! Determinism: a prefill row's result depends only on its own data (not on the tile or head chunk it shares);
//! a decode row's depends on its data and on `split_len`. The automatic `split_len` depends on the longest
//! decode row and the number of decode rows, so a decode row's bf16 output can change in the last bit with the
//! batch around it; pin it with [`Attention::set_split_len`] where batch invariance matters more than filling
//! the GPU. A row alone in its run (a one-token prompt chunk included) takes the decode path.
use super::Gpu;
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchConfig, PushKernelArg};
use half::bf16;

/// Head sizes with a compiled kernel (`attn_*_hd{64,128}`).
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// Threads per block of the decode and prefill kernels (4 warps); the combine kernel runs one warp.
pub const THREADS: u32 = 128;
/// Keys per shared-memory tile (`KT` in the kernel).
pub const KEYS_PER_TILE: usize = 32;
/// Most queries (rows x heads) one decode block holds (`NW * QPW_DECODE`).
pub const DECODE_QUERIES: usize = 8;
/// Most queries one prefill block holds (`NW * QPW_PREFILL`).
pub const PREFILL_QUERIES: usize = 32;
/// The automatic split count aims at this many decode blocks per SM.
pub const TARGET_BLOCKS_PER_SM: usize = 4;
/// At most this many automatic splits per row ...
pub const MAX_SPLITS: usize = 128;
/// ... of at least this many keys each.
pub const MIN_SPLIT_KEYS: usize = 64;
/// Positions must stay below this (the kernels index keys with 32-bit ints, split ends included).
pub const MAX_POSITION: usize = 1 << 30;

/// The attention geometry of a model: query heads, kv heads (n_heads / n_kv query heads share one), the size
/// of a head and the tokens per KV block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

impl AttnShape {
    pub fn validate(&self) -> Result<()> {
        let s = self;
        ensure!(
            HEAD_DIMS.contains(&s.head_dim),
            "attention: head_dim {} has no CUDA kernel (supported: {HEAD_DIMS:?})",
            s.head_dim
        );
        ensure!(s.n_kv >= 1 && s.n_heads >= 1, "attention: n_heads {} and n_kv {} must be positive", s.n_heads, s.n_kv);
        ensure!(
            s.n_heads.is_multiple_of(s.n_kv),
            "attention: n_heads {} is not a multiple of n_kv {}",
            s.n_heads,
            s.n_kv
        );
        ensure!(s.n_heads <= 65535, "attention: {} query heads exceed a grid dimension (65535)", s.n_heads);
        ensure!(s.block_size >= 1, "attention: block_size must be positive");
        let (chunks, _) = head_chunks(s.group(), DECODE_QUERIES);
        ensure!(s.n_kv * chunks <= 65535, "attention: n_kv {} x {chunks} head chunks exceed a grid dimension", s.n_kv);
        Ok(())
    }

    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv
    }

    /// Elements of a query (and output) row.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Elements of a key (and value) slot.
    pub fn kv_dim(&self) -> usize {
        self.n_kv * self.head_dim
    }
}

/// `rows` query rows `row..row + rows` of sequence `seq` at positions `pos..pos + rows`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub row: usize,
    pub rows: usize,
    pub seq: usize,
    pub pos: usize,
}

/// Maximal runs of consecutive rows of one sequence at consecutive positions, in row order.
pub fn runs(rows: &[(usize, usize)]) -> Vec<Tile> {
    let mut out: Vec<Tile> = Vec::new();
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        match out.last_mut() {
            Some(t) if t.seq == seq && t.pos + t.rows == pos => t.rows += 1,
            _ => out.push(Tile { row: r, rows: 1, seq, pos }),
        }
    }
    out
}

/// (decode rows, prefill tiles): runs of one row are decode rows; longer runs are cut into tiles of at most
/// `max_rows` rows (the last tile of a run may be shorter, down to one row: it stays a prefill tile).
pub fn cut_tiles(rows: &[(usize, usize)], max_rows: usize) -> (Vec<Tile>, Vec<Tile>) {
    assert!(max_rows >= 1);
    let (mut decode, mut prefill) = (Vec::new(), Vec::new());
    for run in runs(rows) {
        if run.rows == 1 {
            decode.push(run);
            continue;
        }
        let mut done = 0;
        while done < run.rows {
            let n = max_rows.min(run.rows - done);
            prefill.push(Tile { row: run.row + done, rows: n, seq: run.seq, pos: run.pos + done });
            done += n;
        }
    }
    (decode, prefill)
}

/// (chunks, heads per chunk): a kv head's `group` query heads cut into the fewest chunks of at most
/// `max_heads`, as even as possible (the last chunk may be smaller).
pub fn head_chunks(group: usize, max_heads: usize) -> (usize, usize) {
    let chunks = group.div_ceil(max_heads).max(1);
    (chunks, group.div_ceil(chunks))
}

/// Rows per prefill tile for a kv head group: as many as fit next to a head chunk in a block.
pub fn prefill_rows_per_tile(group: usize) -> usize {
    let (_, hpc) = head_chunks(group, PREFILL_QUERIES);
    (PREFILL_QUERIES / hpc).max(1)
}

/// Keys per decode split when the longest decode row has `max_len` keys and one split of every row is
/// `blocks_per_split` blocks (decode rows x kv heads x head chunks): as many splits as keep the grid within
/// about [`TARGET_BLOCKS_PER_SM`] blocks per SM, at most [`MAX_SPLITS`], of at least [`MIN_SPLIT_KEYS`] keys,
/// a multiple of [`KEYS_PER_TILE`]. One split (`split_len >= max_len`) when the rows alone fill the GPU.
pub fn split_len(max_len: usize, blocks_per_split: usize, sm_count: usize) -> usize {
    let splits = (sm_count.max(1) * TARGET_BLOCKS_PER_SM / blocks_per_split.max(1)).clamp(1, MAX_SPLITS);
    max_len.max(1).div_ceil(splits).max(MIN_SPLIT_KEYS).next_multiple_of(KEYS_PER_TILE)
}

/// Lengths of the split scratch buffers: (accumulators in f32, (max, sum) pairs in f32).
pub fn scratch_lens(n_decode: usize, n_heads: usize, splits: usize, head_dim: usize) -> (usize, usize) {
    let entries = n_decode * n_heads * splits;
    (entries * head_dim, entries * 2)
}

/// Everything a step's launches need, computed on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    /// Query rows of the step.
    pub rows: usize,
    pub decode: Vec<Tile>,
    pub prefill: Vec<Tile>,
    /// Keys per decode split, and splits per decode row (0 without decode rows).
    pub split_len: usize,
    pub splits: usize,
    /// Decode tiles, prefill tiles (4 u32 each), then the block tables: what the kernels read.
    pub meta: Vec<u32>,
    /// Index in `meta` of the first block-table entry.
    pub tables_at: usize,
    /// The largest block id any row reaches: the pool must hold it.
    pub max_block: u32,
}

impl HostPlan {
    /// Index in `meta` of the first prefill tile.
    pub fn prefill_at(&self) -> usize {
        4 * self.decode.len()
    }
}

/// The launch grid of a decode step replayed as a CUDA graph, which must be the same at every replay:
/// `rows` decode rows (the step's, then padding rows) and `splits` splits of exactly the pinned split length
/// per row (a row shorter than that many splits leaves the rest empty, as in any plan whose longest row is
/// longer than it). A padding row is a decode tile at position 0 of the first row's sequence: it reads that
/// key and writes only its own output row, which nothing reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FixedGrid {
    pub rows: usize,
    pub splits: usize,
}

/// The plan of a step (see the module docs): validates the rows against the tables, cuts the tiles, chooses
/// the splits (`fixed_split_len`, or [`split_len`] for `sm_count` SMs; `grid`'s count for a fixed grid) and
/// packs the metadata.
pub fn build_plan(
    shape: &AttnShape,
    rows: &[(usize, usize)],
    tables: &[&[u32]],
    sm_count: usize,
    fixed_split_len: Option<usize>,
    grid: Option<FixedGrid>,
) -> Result<HostPlan> {
    shape.validate()?;
    let bs = shape.block_size;
    ensure!(rows.len() <= i32::MAX as usize, "attention: {} query rows are too many", rows.len());
    // Blocks each sequence's rows reach.
    let mut need = vec![0usize; tables.len()];
    for (r, &(seq, pos)) in rows.iter().enumerate() {
        ensure!(
            seq < tables.len(),
            "attention: row {r} is of sequence {seq} but there are {} block tables",
            tables.len()
        );
        ensure!(pos < MAX_POSITION, "attention: row {r} is at position {pos}, beyond {MAX_POSITION}");
        ensure!(
            pos / bs < tables[seq].len(),
            "attention: row {r} (sequence {seq}, position {pos}) needs block {} of its table, which has {} blocks",
            pos / bs,
            tables[seq].len()
        );
        need[seq] = need[seq].max(pos / bs + 1);
    }
    let (mut decode, prefill) = cut_tiles(rows, prefill_rows_per_tile(shape.group()));
    let (split_len, splits) = match (decode.iter().map(|t| t.pos + 1).max(), grid) {
        (_, Some(grid)) => {
            let len = fixed_split_len.context("attention: a fixed grid needs a pinned split length")?;
            ensure!(len >= 1, "attention: a split must hold at least one key");
            ensure!(prefill.is_empty(), "attention: a fixed grid takes decode rows only");
            let first = decode.first().context("attention: a fixed grid needs at least one row")?.seq;
            ensure!(
                decode.len() <= grid.rows,
                "attention: {} decode rows do not fit a grid of {} rows",
                decode.len(),
                grid.rows
            );
            let longest = decode.iter().map(|t| t.pos + 1).max().unwrap_or(1);
            ensure!(
                longest.div_ceil(len) <= grid.splits,
                "attention: a row of {longest} keys needs more than the grid's {} splits of {len}",
                grid.splits
            );
            decode.extend((decode.len()..grid.rows).map(|row| Tile { row, rows: 1, seq: first, pos: 0 }));
            (len, grid.splits)
        }
        (None, None) => (1, 0),
        (Some(max_len), None) => {
            let len = match fixed_split_len {
                Some(l) => {
                    ensure!(l >= 1, "attention: a split must hold at least one key");
                    l
                }
                None => {
                    let (chunks, _) = head_chunks(shape.group(), DECODE_QUERIES);
                    split_len(max_len, decode.len() * shape.n_kv * chunks, sm_count)
                }
            };
            // A split longer than the longest row is one split; clamping keeps split ends within i32.
            let len = len.min(max_len);
            (len, max_len.div_ceil(len))
        }
    };
    ensure!(
        decode.len() * splits <= i32::MAX as usize,
        "attention: {} decode rows x {splits} splits exceed the grid",
        decode.len()
    );
    let tables_at = 4 * (decode.len() + prefill.len());
    let mut table_off = vec![0usize; tables.len()];
    let mut at = tables_at;
    for (s, &n) in need.iter().enumerate() {
        table_off[s] = at - tables_at;
        at += n;
    }
    ensure!(at <= u32::MAX as usize, "attention: {at} words of metadata are too many");
    let mut meta = Vec::with_capacity(at);
    for t in decode.iter().chain(&prefill) {
        meta.extend([t.row, t.rows, t.pos, table_off[t.seq]].map(|x| x as u32));
    }
    let mut max_block = 0u32;
    for (s, &n) in need.iter().enumerate() {
        meta.extend_from_slice(&tables[s][..n]);
        max_block = tables[s][..n].iter().copied().fold(max_block, u32::max);
    }
    debug_assert_eq!(meta.len(), at);
    let rows = grid.map_or(rows.len(), |g| g.rows);
    Ok(HostPlan { rows, decode, prefill, split_len, splits, meta, tables_at, max_block })
}

/// The attention of a model on the GPU: the current step's plan and the device buffers (metadata, split
/// scratch) that every step reuses, grown when a step needs more.
pub struct Attention {
    shape: AttnShape,
    fixed_split_len: Option<usize>,
    sm_count: Option<usize>,
    plan: Option<HostPlan>,
    meta: Option<CudaSlice<u32>>,
    part_acc: Option<CudaSlice<f32>>,
    part_ml: Option<CudaSlice<f32>>,
}

/// `buf` with at least `n` elements (a new, larger allocation when it is too small; the old one is freed in
/// stream order, after the launches that use it).
fn ensure_len<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    buf: &mut Option<CudaSlice<T>>,
    n: usize,
) -> Result<()> {
    if buf.as_ref().is_none_or(|b| b.len() < n) {
        *buf = Some(gpu.zeros::<T>(n.max(64).next_power_of_two())?);
    }
    Ok(())
}

/// Whether a device buffer starts at a multiple of `align` bytes.
fn aligned<T>(gpu: &Gpu, p: &impl DevicePtr<T>, align: u64) -> bool {
    let (ptr, _sync) = p.device_ptr(&gpu.stream);
    ptr % align == 0
}

impl Attention {
    pub fn new(shape: AttnShape) -> Result<Attention> {
        shape.validate()?;
        Ok(Attention {
            shape,
            fixed_split_len: None,
            sm_count: None,
            plan: None,
            meta: None,
            part_acc: None,
            part_ml: None,
        })
    }

    pub fn shape(&self) -> AttnShape {
        self.shape
    }

    /// Pins the keys per decode split from the next `plan` on (`None`: chosen per step by [`split_len`]).
    /// A fixed length makes each decode row's result independent of the batch around it.
    pub fn set_split_len(&mut self, keys: Option<usize>) -> Result<()> {
        ensure!(keys != Some(0), "attention: a split must hold at least one key");
        self.fixed_split_len = keys;
        Ok(())
    }

    /// The current plan (after `plan`).
    pub fn planned(&self) -> Option<&HostPlan> {
        self.plan.as_ref()
    }

    /// Once per model step, shared by every layer: `rows[r]` = (sequence index, position), `tables[s]` = block table
    /// of sequence s. Computes the plan on the host and uploads the metadata (stream-ordered, no sync).
    pub fn plan(&mut self, gpu: &Gpu, rows: &[(usize, usize)], tables: &[&[u32]]) -> Result<()> {
        self.plan_on(gpu, rows, tables, None)
    }

    /// `plan` for a decode step on a fixed grid ([`FixedGrid`]; needs a pinned split length), whose launches
    /// are the same for every step with the same grid and buffers (`buffer_addresses`).
    pub fn plan_fixed(&mut self, gpu: &Gpu, rows: &[(usize, usize)], tables: &[&[u32]], grid: FixedGrid) -> Result<()> {
        self.plan_on(gpu, rows, tables, Some(grid))
    }

    /// Device addresses of the metadata and split scratch buffers (0 for one not yet made): a captured launch
    /// holds them, so it is valid only while they stay.
    pub fn buffer_addresses(&self, gpu: &Gpu) -> [u64; 3] {
        [gpu.address(self.meta.as_ref()), gpu.address(self.part_acc.as_ref()), gpu.address(self.part_ml.as_ref())]
    }

    fn plan_on(
        &mut self,
        gpu: &Gpu,
        rows: &[(usize, usize)],
        tables: &[&[u32]],
        grid: Option<FixedGrid>,
    ) -> Result<()> {
        self.plan = None;
        let sm_count = match self.sm_count {
            Some(n) => n,
            None => {
                let attr = cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
                let n = gpu.ctx.attribute(attr).context("reading the SM count")?.max(1) as usize;
                self.sm_count = Some(n);
                n
            }
        };
        let plan = build_plan(&self.shape, rows, tables, sm_count, self.fixed_split_len, grid)?;
        if plan.rows > 0 {
            ensure_len(gpu, &mut self.meta, plan.meta.len())?;
            let meta = self.meta.as_mut().expect("allocated above");
            gpu.stream.memcpy_htod(&plan.meta[..], &mut meta.slice_mut(..plan.meta.len()))?;
            let (acc, ml) = scratch_lens(plan.decode.len(), self.shape.n_heads, plan.splits, self.shape.head_dim);
            ensure_len(gpu, &mut self.part_acc, acc)?;
            ensure_len(gpu, &mut self.part_ml, ml)?;
        }
        self.plan = Some(plan);
        Ok(())
    }

    /// Once per layer: out = attention(q, k, v) for the planned rows. q and out: `[rows, n_heads * head_dim]`;
    /// k and v: the layer's pool, `[num_blocks * block_size, n_kv * head_dim]`.
    pub fn run(
        &mut self,
        gpu: &Gpu,
        out: &mut CudaViewMut<bf16>,
        q: &CudaView<bf16>,
        k: &CudaView<bf16>,
        v: &CudaView<bf16>,
    ) -> Result<()> {
        let plan = self.plan.as_ref().ok_or_else(|| anyhow!("attention: run before plan (or the last plan failed)"))?;
        let s = self.shape;
        let (qd, kvd, hd) = (s.q_dim(), s.kv_dim(), s.head_dim);
        ensure!(
            q.len() >= plan.rows * qd && out.len() >= plan.rows * qd,
            "attention: {} rows need {} elements of q and out, which have {} and {}",
            plan.rows,
            plan.rows * qd,
            q.len(),
            out.len()
        );
        if plan.rows == 0 {
            return Ok(());
        }
        let pool = (plan.max_block as usize + 1) * s.block_size * kvd;
        ensure!(
            k.len() >= pool && v.len() >= pool,
            "attention: the rows reach block {}, beyond the KV pool (k has {} elements, v {}, {pool} needed)",
            plan.max_block,
            k.len(),
            v.len()
        );
        ensure!(
            aligned(gpu, k, 16) && aligned(gpu, v, 16),
            "attention: the K and V pools must start at a multiple of 16 bytes"
        );
        ensure!(
            aligned(gpu, q, 4) && aligned(gpu, &*out, 4),
            "attention: q and out must start at a multiple of 4 bytes"
        );
        let (Some(meta), Some(part_acc), Some(part_ml)) = (&self.meta, &self.part_acc, &self.part_ml) else {
            return Err(anyhow!("attention: planned buffers are missing"));
        };
        let tables = meta.slice(plan.tables_at..plan.meta.len());
        let i = |x: usize| x as i32;
        let (n_heads, n_kv, group, bs) = (i(s.n_heads), i(s.n_kv), i(s.group()), i(s.block_size));
        let scale_log2 = (std::f64::consts::LOG2_E / (hd as f64).sqrt()) as f32;

        if !plan.prefill.is_empty() {
            let (chunks, hpc) = head_chunks(s.group(), PREFILL_QUERIES);
            let tiles = meta.slice(plan.prefill_at()..plan.tables_at);
            let (chunks_i, hpc_i) = (i(chunks), i(hpc));
            let name = format!("attn_prefill_hd{hd}");
            let mut l = gpu.launch(&name)?;
            l.arg(&mut *out).arg(q).arg(k).arg(v).arg(&tiles).arg(&tables);
            l.arg(&n_heads).arg(&n_kv).arg(&group).arg(&chunks_i).arg(&hpc_i).arg(&bs).arg(&scale_log2);
            let cfg = LaunchConfig {
                grid_dim: (plan.prefill.len() as u32, (s.n_kv * chunks) as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            unsafe { l.launch(cfg) }.with_context(|| format!("launching {name}"))?;
        }
        if !plan.decode.is_empty() {
            let (chunks, hpc) = head_chunks(s.group(), DECODE_QUERIES);
            let tiles = meta.slice(0..plan.prefill_at());
            let (chunks_i, hpc_i, split_len, splits) = (i(chunks), i(hpc), i(plan.split_len), i(plan.splits));
            let name = format!("attn_decode_hd{hd}");
            let mut l = gpu.launch(&name)?;
            l.arg(&mut *out).arg(q).arg(k).arg(v).arg(&tiles).arg(&tables).arg(part_acc).arg(part_ml);
            l.arg(&n_heads).arg(&n_kv).arg(&group).arg(&chunks_i).arg(&hpc_i).arg(&bs).arg(&scale_log2);
            l.arg(&split_len).arg(&splits);
            let cfg = LaunchConfig {
                grid_dim: ((plan.decode.len() * plan.splits) as u32, (s.n_kv * chunks) as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            unsafe { l.launch(cfg) }.with_context(|| format!("launching {name}"))?;
            if plan.splits > 1 {
                let name = format!("attn_combine_hd{hd}");
                let mut l = gpu.launch(&name)?;
                l.arg(&mut *out).arg(&tiles).arg(part_acc).arg(part_ml).arg(&n_heads).arg(&splits);
                let cfg = LaunchConfig {
                    grid_dim: (plan.decode.len() as u32, s.n_heads as u32, 1),
                    block_dim: (32, 1, 1),
                    shared_mem_bytes: 0,
                };
                unsafe { l.launch(cfg) }.with_context(|| format!("launching {name}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n_heads: usize, n_kv: usize, head_dim: usize) -> AttnShape {
        AttnShape { n_heads, n_kv, head_dim, block_size: 16 }
    }

    #[test]
    fn shapes_are_validated() {
        assert!(Attention::new(shape(6, 2, 64)).is_ok());
        assert!(Attention::new(shape(6, 2, 128)).is_ok());
        for bad in [shape(6, 2, 96), shape(6, 2, 32), shape(6, 4, 64), shape(6, 0, 64), shape(0, 1, 64)] {
            assert!(Attention::new(bad).is_err(), "{bad:?}");
        }
        let zero_block = AttnShape { block_size: 0, ..shape(6, 2, 64) };
        assert!(Attention::new(zero_block).is_err());
        let msg = format!("{:#}", Attention::new(shape(6, 2, 96)).err().unwrap());
        assert!(msg.contains("head_dim 96"), "{msg}");
    }

    #[test]
    fn runs_follow_sequences_and_positions() {
        // Decode row, a 3-row chunk, a jump in position (new run), a sequence change, a repeated position.
        let rows = [(0, 9), (1, 4), (1, 5), (1, 6), (1, 10), (2, 0), (2, 1), (2, 1)];
        let t = |row, rows, seq, pos| Tile { row, rows, seq, pos };
        assert_eq!(runs(&rows), [t(0, 1, 0, 9), t(1, 3, 1, 4), t(4, 1, 1, 10), t(5, 2, 2, 0), t(7, 1, 2, 1)]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn tiles_cut_long_runs_and_keep_decode_rows() {
        let mut rows = vec![(3, 100)];
        rows.extend((0..10).map(|p| (0, 5 + p)));
        rows.push((1, 0));
        rows.extend((0..4).map(|p| (2, p)));
        let (decode, prefill) = cut_tiles(&rows, 4);
        let t = |row, rows, seq, pos| Tile { row, rows, seq, pos };
        assert_eq!(decode, [t(0, 1, 3, 100), t(11, 1, 1, 0)]);
        assert_eq!(prefill, [t(1, 4, 0, 5), t(5, 4, 0, 9), t(9, 2, 0, 13), t(12, 4, 2, 0)]);
        // A run one longer than a tile leaves a one-row prefill tile.
        let rows: Vec<_> = (0..5).map(|p| (0, p)).collect();
        assert_eq!(cut_tiles(&rows, 4).1, [t(0, 4, 0, 0), t(4, 1, 0, 4)]);
        // Every row lands in exactly one tile.
        let rows: Vec<_> = (0..100).map(|r| (r / 7 % 3, r)).collect();
        let (d, p) = cut_tiles(&rows, 3);
        let mut seen = vec![0; rows.len()];
        for t in d.iter().chain(&p) {
            assert!(t.rows <= 3);
            for k in 0..t.rows {
                seen[t.row + k] += 1;
                assert_eq!(rows[t.row + k], (t.seq, t.pos + k));
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn head_chunks_fit_the_blocks() {
        assert_eq!(head_chunks(1, 8), (1, 1));
        assert_eq!(head_chunks(7, 8), (1, 7));
        assert_eq!(head_chunks(8, 8), (1, 8));
        assert_eq!(head_chunks(9, 8), (2, 5));
        assert_eq!(head_chunks(20, 8), (3, 7));
        assert_eq!(head_chunks(64, 32), (2, 32));
        for group in 1..100 {
            for max in [DECODE_QUERIES, PREFILL_QUERIES] {
                let (c, h) = head_chunks(group, max);
                assert!(h <= max && c * h >= group && (c - 1) * h < group, "group {group} max {max}");
            }
            let rows = prefill_rows_per_tile(group);
            let (_, h) = head_chunks(group, PREFILL_QUERIES);
            assert!(rows >= 1 && rows * h <= PREFILL_QUERIES, "group {group}");
        }
        assert_eq!(prefill_rows_per_tile(1), 32);
        assert_eq!(prefill_rows_per_tile(3), 10);
        assert_eq!(prefill_rows_per_tile(7), 4);
    }

    #[test]
    fn splits_fill_the_gpu_for_few_long_rows() {
        // One long row on 132 SMs, 3 kv heads: many splits, within the caps.
        let len = split_len(4097, 3, 132);
        let splits = 4097usize.div_ceil(len);
        assert!(len.is_multiple_of(KEYS_PER_TILE) && len >= MIN_SPLIT_KEYS);
        assert!(splits > 16 && splits <= MAX_SPLITS, "len {len} splits {splits}");
        // A big batch fills the GPU alone: one split.
        assert!(split_len(4097, 64 * 8, 132) >= 4097);
        // Short rows: one split of at least MIN_SPLIT_KEYS.
        assert_eq!(split_len(1, 1, 132), MIN_SPLIT_KEYS);
        assert_eq!(split_len(50, 1, 132), MIN_SPLIT_KEYS);
        // Degenerate inputs do not divide by zero.
        assert!(split_len(0, 0, 0) >= 1);
        // More blocks per split, never more splits.
        let mut last = 0;
        for b in 1..600 {
            let l = split_len(100_000, b, 132);
            assert!(l >= last);
            last = l;
        }
    }

    #[test]
    fn scratch_holds_every_split() {
        assert_eq!(scratch_lens(3, 6, 5, 128), (3 * 6 * 5 * 128, 3 * 6 * 5 * 2));
        assert_eq!(scratch_lens(0, 6, 0, 64), (0, 0));
    }

    #[test]
    fn plan_packs_tiles_and_tables() {
        let s = shape(6, 2, 64); // group 3: 10 rows per prefill tile
        let t0: Vec<u32> = vec![7, 3, 9];
        let t1: Vec<u32> = vec![4, 0];
        let t2: Vec<u32> = vec![12, 2, 5, 8];
        let tables: [&[u32]; 3] = [&t0, &t1, &t2];
        // Sequence 0 decodes at 40 (block 2); sequence 2 prefills positions 3..15 (blocks 0); sequence 1 is absent.
        let mut rows = vec![(0, 40)];
        rows.extend((3..15).map(|p| (2, p)));
        let p = build_plan(&s, &rows, &tables, 132, Some(16), None).unwrap();
        assert_eq!(p.rows, 13);
        assert_eq!(p.decode, [Tile { row: 0, rows: 1, seq: 0, pos: 40 }]);
        assert_eq!(p.prefill, [Tile { row: 1, rows: 10, seq: 2, pos: 3 }, Tile { row: 11, rows: 2, seq: 2, pos: 13 }]);
        assert_eq!((p.split_len, p.splits), (16, 3));
        assert_eq!(p.tables_at, 12);
        assert_eq!(p.prefill_at(), 4);
        // Tables: sequence 0's three blocks at 0, sequence 1 none at 3, sequence 2's first block at 3.
        assert_eq!(p.meta, [0, 1, 40, 0, 1, 10, 3, 3, 11, 2, 13, 3, 7, 3, 9, 12]);
        assert_eq!(p.max_block, 12);
        // Automatic splits: one row of 41 keys is one split.
        let p = build_plan(&s, &rows, &tables, 132, None, None).unwrap();
        assert_eq!(p.splits, 1);
        assert_eq!(p.split_len, 41);
        let p = build_plan(&s, &rows, &tables, 132, Some(usize::MAX), None).unwrap();
        assert_eq!((p.split_len, p.splits), (41, 1));
        // No decode rows: no splits.
        let p = build_plan(&s, &rows[1..], &tables, 132, None, None).unwrap();
        assert_eq!((p.decode.len(), p.splits), (0, 0));
        // No rows at all.
        let p = build_plan(&s, &[], &tables, 132, None, None).unwrap();
        assert_eq!((p.rows, p.meta.len()), (0, 0));
    }

    #[test]
    fn plan_rejects_rows_beyond_their_tables() {
        let s = shape(6, 2, 64);
        let t0: Vec<u32> = vec![1, 2];
        let tables: [&[u32]; 1] = [&t0];
        assert!(build_plan(&s, &[(0, 31)], &tables, 132, None, None).is_ok());
        let e = build_plan(&s, &[(0, 32)], &tables, 132, None, None).unwrap_err();
        assert!(format!("{e:#}").contains("position 32"), "{e:#}");
        let e = build_plan(&s, &[(1, 0)], &tables, 132, None, None).unwrap_err();
        assert!(format!("{e:#}").contains("sequence 1"), "{e:#}");
        assert!(build_plan(&s, &[(0, MAX_POSITION)], &tables, 132, None, None).is_err());
        assert!(build_plan(&s, &[(0, 3)], &tables, 132, Some(0), None).is_err());
    }

    /// A fixed grid (a CUDA graph's) pads the decode rows and the splits; its real rows come out of the
    /// emulated kernels bit for bit as from the step's own plan, and what it cannot hold is an error.
    #[test]
    fn a_fixed_grid_pads_rows_and_splits_and_changes_no_real_row() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let s = shape(6, 2, 64);
        let qd = s.q_dim();
        // Decode rows of 5, 70 and 129 keys over scattered blocks (15 blocks of 16).
        let tables: Vec<Vec<u32>> = vec![vec![3], vec![0, 7, 5, 1, 9], vec![2, 4, 6, 8, 10, 11, 12, 13, 14]];
        let refs: Vec<&[u32]> = tables.iter().map(Vec::as_slice).collect();
        let rows = [(0, 4), (1, 69), (2, 128)];
        let n = 15 * 16 * s.kv_dim();
        let k: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let q: Vec<f32> = (0..8 * qd).map(|_| rng.random_range(-2.0..2.0)).collect();
        let grid = FixedGrid { rows: 8, splits: 4 };
        let p = build_plan(&s, &rows, &refs, 132, Some(64), Some(grid)).unwrap();
        assert_eq!((p.rows, p.decode.len(), p.split_len, p.splits), (8, 8, 64, 4));
        assert!(p.prefill.is_empty());
        for (r, t) in p.decode.iter().enumerate().skip(3) {
            assert_eq!(*t, Tile { row: r, rows: 1, seq: 0, pos: 0 }, "padding row {r}");
        }
        let own = build_plan(&s, &rows, &refs, 132, Some(64), None).unwrap();
        assert_eq!((own.rows, own.splits), (3, 3));
        let got = emulate(&s, &p, &q, &k, &v);
        assert_eq!(got[..3 * qd], emulate(&s, &own, &q[..3 * qd], &k, &v)[..]);
        // One short row: its own plan writes out directly (one split), the grid goes through the combine.
        let one = [(1, 40)];
        let own = build_plan(&s, &one, &refs, 132, Some(64), None).unwrap();
        let p = build_plan(&s, &one, &refs, 132, Some(64), Some(FixedGrid { rows: 2, splits: 2 })).unwrap();
        assert_eq!((own.splits, p.splits), (1, 2));
        assert_eq!(emulate(&s, &p, &q[..2 * qd], &k, &v)[..qd], emulate(&s, &own, &q[..qd], &k, &v)[..]);

        let e = |rows: &[(usize, usize)], split: Option<usize>, grid| {
            format!("{:#}", build_plan(&s, rows, &refs, 132, split, Some(grid)).unwrap_err())
        };
        assert!(e(&[(2, 10), (2, 11)], Some(64), grid).contains("decode rows only"));
        assert!(e(&rows, Some(64), FixedGrid { rows: 2, splits: 4 }).contains("do not fit"));
        assert!(e(&rows, Some(64), FixedGrid { rows: 8, splits: 2 }).contains("129 keys"));
        assert!(e(&rows, None, grid).contains("pinned split length"));
        assert!(e(&[], Some(64), grid).contains("at least one row"));
    }

    /// The kernels' arithmetic on the CPU, reading only the packed metadata, as `attention.cu` does: block
    /// (tile, kv head, head chunk, split) -> queries, key range, online softmax over 32-key tiles, split scratch,
    /// combine. f32 throughout (no bf16 rounding), so it must match the CPU twin to fp32 precision; a GPU failure
    /// with this passing points at the CUDA side (barriers, shared memory, loads), not at the plan.
    fn emulate(s: &AttnShape, plan: &HostPlan, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (hd, kvd, qd, group, bs) = (s.head_dim, s.kv_dim(), s.q_dim(), s.group(), s.block_size);
        let tables = &plan.meta[plan.tables_at..];
        let scale_log2 = (std::f64::consts::LOG2_E / (hd as f64).sqrt()) as f32;
        let mut out = vec![f32::NAN; plan.rows * qd];
        // One block: (m, l, acc) per query i = (row i / nh, head h0 + i % nh).
        let attend = |t: &[u32], g: usize, h0: usize, nh: usize, k0: usize, k1: usize| {
            let (row0, nrows, pos0, tbl) = (t[0] as usize, t[1] as usize, t[2] as usize, t[3] as usize);
            let nq = nrows * nh;
            let mut st: Vec<(f32, f32, Vec<f32>)> = vec![(f32::NEG_INFINITY, 0.0, vec![0.0; hd]); nq];
            let mut kt0 = k0;
            while kt0 < k1 {
                for (i, (m, l, acc)) in st.iter_mut().enumerate() {
                    let (r, h) = (i / nh, h0 + i % nh);
                    let last = pos0 + r;
                    let qi = &q[(row0 + r) * qd + h * hd..][..hd];
                    let mut sc = [f32::NEG_INFINITY; KEYS_PER_TILE];
                    let mut rows = [None; KEYS_PER_TILE];
                    for (j, sj) in sc.iter_mut().enumerate() {
                        let kp = kt0 + j;
                        if kp < k1 {
                            let slot = tables[tbl + kp / bs] as usize * bs + kp % bs;
                            let off = slot * kvd + g * hd;
                            rows[j] = Some(off);
                            if kp <= last {
                                let d: f32 = qi.iter().zip(&k[off..off + hd]).map(|(a, b)| a * b).sum();
                                *sj = d * scale_log2;
                            }
                        }
                    }
                    let m_new = sc.iter().copied().fold(*m, f32::max);
                    let m_use = if m_new == f32::NEG_INFINITY { 0.0 } else { m_new };
                    let alpha = (*m - m_use).exp2();
                    let p: Vec<f32> = sc.iter().map(|&x| (x - m_use).exp2()).collect();
                    *l = *l * alpha + p.iter().sum::<f32>();
                    *m = m_new;
                    acc.iter_mut().for_each(|a| *a *= alpha);
                    for (j, off) in rows.iter().enumerate() {
                        if let &Some(off) = off {
                            acc.iter_mut().zip(&v[off..off + hd]).for_each(|(a, x)| *a += p[j] * x);
                        }
                    }
                }
                kt0 += KEYS_PER_TILE;
            }
            st
        };
        let put = |out: &mut Vec<f32>, t: &[u32], h0: usize, nh: usize, st: &[(f32, f32, Vec<f32>)]| {
            for (i, (_, l, acc)) in st.iter().enumerate() {
                let (r, h) = (i / nh, h0 + i % nh);
                let o = &mut out[(t[0] as usize + r) * qd + h * hd..][..hd];
                o.iter_mut().zip(acc).for_each(|(o, a)| *o = a / l);
            }
        };
        let (chunks, hpc) = head_chunks(group, PREFILL_QUERIES);
        for x in 0..plan.prefill.len() {
            let t = &plan.meta[plan.prefill_at() + 4 * x..][..4];
            for y in 0..s.n_kv * chunks {
                let (g, c) = (y / chunks, y % chunks);
                let (h0, nh) = (g * group + c * hpc, hpc.min(group - c * hpc));
                assert!(t[1] as usize * nh <= PREFILL_QUERIES);
                let st = attend(t, g, h0, nh, 0, (t[2] + t[1]) as usize);
                put(&mut out, t, h0, nh, &st);
            }
        }
        let (chunks, hpc) = head_chunks(group, DECODE_QUERIES);
        let (n_dec, splits) = (plan.decode.len(), plan.splits);
        let (acc_len, ml_len) = scratch_lens(n_dec, s.n_heads, splits, hd);
        let (mut part_acc, mut part_ml) = (vec![f32::NAN; acc_len], vec![f32::NAN; ml_len]);
        for x in 0..n_dec * splits {
            let (ti, split) = (x / splits, x % splits);
            let t = &plan.meta[4 * ti..][..4];
            assert_eq!(t[1], 1);
            let len = t[2] as usize + 1;
            let k0 = split * plan.split_len;
            let k1 = len.min(k0 + plan.split_len);
            for y in 0..s.n_kv * chunks {
                let (g, c) = (y / chunks, y % chunks);
                let (h0, nh) = (g * group + c * hpc, hpc.min(group - c * hpc));
                assert!(nh <= DECODE_QUERIES);
                let base = ti * s.n_heads;
                if k0 >= k1 {
                    for h in h0..h0 + nh {
                        let e = (base + h) * splits + split;
                        part_ml[2 * e..2 * e + 2].copy_from_slice(&[f32::NEG_INFINITY, 0.0]);
                    }
                    continue;
                }
                let st = attend(t, g, h0, nh, k0, k1);
                if splits == 1 {
                    put(&mut out, t, h0, nh, &st);
                    continue;
                }
                for (i, (m, l, acc)) in st.iter().enumerate() {
                    let e = (base + h0 + i) * splits + split;
                    part_ml[2 * e..2 * e + 2].copy_from_slice(&[*m, *l]);
                    part_acc[e * hd..(e + 1) * hd].copy_from_slice(acc);
                }
            }
        }
        if splits > 1 {
            for ti in 0..n_dec {
                for h in 0..s.n_heads {
                    let base = (ti * s.n_heads + h) * splits;
                    let ml = |s: usize| (part_ml[2 * (base + s)], part_ml[2 * (base + s) + 1]);
                    let mx = (0..splits).filter(|&s| ml(s).1 > 0.0).map(|s| ml(s).0).fold(f32::NEG_INFINITY, f32::max);
                    let (mut sum, mut o) = (0f32, vec![0f32; hd]);
                    for sp in (0..splits).filter(|&s| ml(s).1 > 0.0) {
                        let w = (ml(sp).0 - mx).exp2();
                        sum += w * ml(sp).1;
                        o.iter_mut().zip(&part_acc[(base + sp) * hd..][..hd]).for_each(|(o, a)| *o += w * a);
                    }
                    let row = plan.meta[4 * ti] as usize;
                    out[row * qd + h * hd..][..hd].iter_mut().zip(&o).for_each(|(d, o)| *d = o / sum);
                }
            }
        }
        out
    }

    #[test]
    fn plan_drives_an_emulated_kernel_to_the_cpu_result() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // (positions held, rows of this step = the last n positions), interleaved decode rows and chunks.
        let seqs: [(usize, usize); 8] = [(1, 1), (87, 50), (100, 1), (17, 17), (300, 1), (97, 33), (16, 1), (7, 2)];
        for (n_heads, n_kv, head_dim, split) in
            [(6, 2, 64, None), (9, 3, 64, Some(48)), (14, 2, 128, None), (40, 2, 64, Some(7)), (2, 2, 128, Some(1000))]
        {
            let s = AttnShape { n_heads, n_kv, head_dim, block_size: 16 };
            let per: Vec<usize> = seqs.iter().map(|&(len, _)| len.div_ceil(16) + 1).collect();
            let blocks = per.iter().sum::<usize>() + 2;
            let mut ids: Vec<u32> = (0..blocks as u32).collect();
            use rand::seq::SliceRandom;
            ids.shuffle(&mut rng);
            let mut at = 0;
            let tables: Vec<Vec<u32>> = per
                .iter()
                .map(|&n| {
                    at += n;
                    ids[at - n..at].to_vec()
                })
                .collect();
            let refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
            let rows: Vec<(usize, usize)> =
                seqs.iter().enumerate().flat_map(|(q, &(len, n))| (len - n..len).map(move |p| (q, p))).collect();
            let n = blocks * 16 * s.kv_dim();
            let k: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let q: Vec<f32> = (0..rows.len() * s.q_dim()).map(|_| rng.random_range(-2.0..2.0)).collect();
            let plan = build_plan(&s, &rows, &refs, 132, split, None).unwrap();
            assert!(!plan.prefill.is_empty() && !plan.decode.is_empty());
            let got = emulate(&s, &plan, &q, &k, &v);
            let mut want = vec![0f32; got.len()];
            crate::cpu::ops::attention_rows(&mut want, &q, &k, &v, &rows, [n_heads, n_kv, head_dim], |q, j| {
                (tables[q][j / 16] as usize * 16 + j % 16) * s.kv_dim()
            });
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * w.abs() + 1e-5, "{s:?} split {split:?}: index {i}: {g} vs {w}");
            }
        }
    }
}
