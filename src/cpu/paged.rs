//! STUB (to be written): the paged KV pool of the CPU backend and the batched paged forward step.
use super::model::CpuModel;
use crate::config::ModelConfig;
use crate::model::{KvPool, StepBatch};
use anyhow::{bail, Result};
use std::any::Any;

pub struct CpuKvPool {
    num_blocks: usize,
    block_size: usize,
}

impl CpuKvPool {
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize) -> usize {
        cfg.num_layers * 2 * block_size * cfg.kv_dim() * 4
    }
    pub fn new(_cfg: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<CpuKvPool> {
        Ok(CpuKvPool { num_blocks, block_size })
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
    pub fn forward_paged(&self, _pool: &mut CpuKvPool, _batch: &StepBatch) -> Result<Vec<f32>> {
        bail!("not written yet")
    }
}
