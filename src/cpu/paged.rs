//! The CPU backend's paged KV pool and its batched step, `CpuModel::forward_paged`: the one inference path
//! (`CpuModel::forward` is this step on a single sequence).
//!
//! A step concatenates every sequence's new tokens into one `[T, hidden]` activation, so each weight
//! matrix is read once per step for the whole batch (`rowwise`); RoPE turns each token by its own position;
//! each token's key and value go to slot `(block_table[p / bs], p % bs)`; each query row attends over its
//! sequence's positions 0..=p read through the block table; the final norm and LM head run only on the
//! rows whose logits are wanted.
//!
//! Batch invariance: every number computed for a row depends only on that row and on its own sequence's
//! keys and values, through computations whose order is fixed (the row-wise product, the per-query
//! attention of `ops::attention_rows`, the per-row norms), so a sequence's logits are bitwise the same alone
//! or in any batch, its prompt fed at once or in chunks, or recomputed after a preemption.
use super::model::CpuModel;
use super::ops::{attention_rows, rmsnorm};
use super::rowwise;
use crate::config::ModelConfig;
use crate::model::{KvPool, StepBatch};
use anyhow::{bail, ensure, Result};
use std::any::Any;

/// Keys and values of `num_blocks` blocks of `block_size` positions: per layer, `[num_blocks, block_size,
/// kv_dim]` each.
#[derive(Clone)]
pub struct CpuKvPool {
    num_blocks: usize,
    block_size: usize,
    kv_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuKvPool {
    /// Bytes of one block: keys and values of every layer (saturating: `new` rejects what does not fit).
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize) -> usize {
        (cfg.num_layers * 2 * cfg.kv_dim() * 4).saturating_mul(block_size)
    }

    /// A pool of `num_blocks` zeroed blocks; zero blocks or a size past the address space is an error.
    pub fn new(cfg: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<CpuKvPool> {
        ensure!(
            num_blocks > 0 && block_size > 0,
            "a KV pool needs blocks ({num_blocks}) and positions per block ({block_size})"
        );
        let mut pool = CpuKvPool::empty(cfg, block_size);
        pool.grow(num_blocks)?;
        Ok(pool)
    }

    /// A pool with no blocks yet (a `KvCache` grows it).
    pub(super) fn empty(cfg: &ModelConfig, block_size: usize) -> CpuKvPool {
        let n = cfg.num_layers;
        CpuKvPool { num_blocks: 0, block_size, kv_dim: cfg.kv_dim(), k: vec![Vec::new(); n], v: vec![Vec::new(); n] }
    }

    /// Adds zeroed blocks up to `num_blocks` in all.
    pub(super) fn grow(&mut self, num_blocks: usize) -> Result<()> {
        let floats = num_blocks.checked_mul(self.block_size).and_then(|n| n.checked_mul(self.kv_dim));
        let bytes = floats.and_then(|n| n.checked_mul(4 * 2 * self.k.len()));
        let Some(floats) = floats.filter(|_| bytes.is_some_and(|b| b <= isize::MAX as usize)) else {
            bail!("a KV pool of {num_blocks} blocks of {} positions does not fit in memory", self.block_size);
        };
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            match buf.is_empty() {
                // vec! of zeros is lazily zeroed memory: pages are touched only when a block is written.
                true => *buf = vec![0f32; floats],
                false => buf.resize(floats.max(buf.len()), 0.0),
            }
        }
        self.num_blocks = self.num_blocks.max(num_blocks);
        Ok(())
    }

    /// Where position `p` of a sequence with `table` starts in a layer's buffer.
    fn slot(&self, table: &[u32], p: usize) -> usize {
        (table[p / self.block_size] as usize * self.block_size + p % self.block_size) * self.kv_dim
    }

    /// Copies block `from` onto block `to` in every layer, keys and values.
    fn copy_block(&mut self, from: u32, to: u32) {
        let n = self.block_size * self.kv_dim;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.copy_within(from as usize * n..(from as usize + 1) * n, to as usize * n);
        }
    }
}

impl KvPool for CpuKvPool {
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    fn block_size(&self) -> usize {
        self.block_size
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl CpuModel {
    /// Logits `[n, vocab]` of the last token of each sequence of `batch` that samples, in batch order.
    pub fn forward_paged(&self, pool: &mut CpuKvPool, batch: &StepBatch) -> Result<Vec<f32>> {
        let mut rows = Vec::new();
        let mut end = 0usize;
        for s in &batch.seqs {
            end += s.tokens.len();
            // (A sequence without tokens is an error in `step`.)
            if let (Some(_), Some(last)) = (s.sample, end.checked_sub(1)) {
                rows.push(last);
            }
        }
        self.step(pool, batch, &rows)
    }

    /// Runs `batch` (copies, then every sequence's tokens as one activation) and returns the logits of the
    /// step's rows `rows` (indices into the concatenated tokens), `[rows.len(), vocab]`.
    pub(super) fn step(&self, pool: &mut CpuKvPool, batch: &StepBatch, rows: &[usize]) -> Result<Vec<f32>> {
        crate::model::check_step(&self.config, pool, batch)?;
        for &(from, to) in &batch.copies {
            pool.copy_block(from, to);
        }
        let c = &self.config;
        let (d, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        // Per row: its sequence and position; its token; its rope row.
        let mut at = Vec::new();
        let mut tokens = Vec::new();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for (i, s) in batch.seqs.iter().enumerate() {
            at.extend((s.pos..s.pos + s.tokens.len()).map(|p| (i, p)));
            tokens.extend_from_slice(s.tokens);
            let (cs, sn) = self.rope.table(s.pos, s.tokens.len());
            cos.extend(cs);
            sin.extend(sn);
        }
        let t = tokens.len();
        let w = &self.arena;
        let mut x = self.embed(&tokens);
        let mut att = vec![0f32; t * qd];
        for (l, layer) in self.layers.iter().enumerate() {
            let a = self.attn_in_by(rowwise::linear, layer, &x, &cos, &sin, false);
            for (r, &(i, p)) in at.iter().enumerate() {
                let slot = pool.slot(batch.seqs[i].block_table, p);
                pool.k[l][slot..][..kvd].copy_from_slice(&a.k[r * kvd..][..kvd]);
                pool.v[l][slot..][..kvd].copy_from_slice(&a.v[r * kvd..][..kvd]);
            }
            let pool = &*pool;
            let shape = [c.num_heads, c.num_kv_heads, c.head_dim];
            let slot = |i: usize, j: usize| pool.slot(batch.seqs[i].block_table, j);
            attention_rows(&mut att, &a.q, &pool.k[l], &pool.v[l], &at, shape, slot);
            rowwise::linear(&mut x, &att, &w[layer.wo.clone()], t, qd, d, true);
            self.mlp_by(rowwise::linear, layer, &mut x);
        }
        let picked: Vec<f32> = rows.iter().flat_map(|&r| &x[r * d..][..d]).copied().collect();
        let mut normed = vec![0f32; picked.len()];
        rmsnorm(&mut normed, &picked, &w[self.norm.clone()], c.rms_norm_eps);
        let mut logits = vec![0f32; rows.len() * c.vocab_size];
        rowwise::linear(&mut logits, &normed, &w[self.head()], rows.len(), d, c.vocab_size, false);
        Ok(logits)
    }
}
